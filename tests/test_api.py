"""The public API as the README shows it: importable from the package, and silent."""

import re
import subprocess
import sys
from pathlib import Path

import condconv_nas

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_name_the_readme_api_section_uses_is_exported():
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"condconv_nas\.(\w+)", section))
    used |= {
        n.strip()
        for m in re.findall(r"from condconv_nas import ([\w, ]+)", section)
        for n in m.split(",")
    }
    used |= (
        set(re.findall(r"`(\w+)`", section.split("Also:", 1)[1])) if "Also:" in section else set()
    )
    used -= {"errors", "layers"}  # modules, imported as such
    assert used and used <= set(condconv_nas.__all__), sorted(used - set(condconv_nas.__all__))


def _condconv_mobilenet_v1_madds_by_hand() -> int:
    """CondConv-MobileNetV1's MADDs at 224 px by docs/method.md's convention, counted from timm's
    own MobileNetV1 (its convolutions' output sizes seen by forward hooks, no fvcore): every
    convolution's and the classifier's weight uses, plus for the paper's placement (blocks from
    layer 7, and the classifier; 8 experts, a router per unit) each router's FC (inputs x experts)
    and each CondConv layer's kernel mixing (experts x its weights and biases, per example)."""
    import timm
    import torch
    from torch import nn

    net = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    static = []

    def count(module, _, out):
        per_output = module.weight[0].numel()  # a conv's (in / groups) * kh * kw, an FC's inputs
        static.append(out.numel() * per_output)

    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    experts = 8
    blocks = [block for stage in net.blocks for block in stage]
    condconv = 0
    for block in blocks[7 - 2 :]:  # layer 1 is the stem, layer j + 1 block j
        convs = [c for c in block.children() if isinstance(c, nn.Conv2d)]  # the main path
        condconv += convs[0].in_channels * experts  # the block's router, on its input
        condconv += sum(experts * p.numel() for c in convs for p in c.parameters())  # mixing
    fc = net.classifier
    condconv += fc.in_features * experts + sum(experts * p.numel() for p in fc.parameters())
    return sum(static) + condconv


def test_building_and_counting_warn_nothing():
    code = (
        "import warnings; warnings.simplefilter('error');"
        "from condconv_nas import build_model, count_madds, load_spec;"
        "print(count_madds(build_model(load_spec('condconv-mobilenet-v1'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not out.stderr
    # what it printed is the count: the hand count, within 0.5% of the paper's 600M (Table 1)
    assert int(out.stdout) == _condconv_mobilenet_v1_madds_by_hand()
    assert abs(int(out.stdout) / 600e6 - 1) < 0.005


def test_no_library_function_is_over_80_lines():
    """The house rule (docs/architecture.md): a function longer than 80 lines is split."""
    import ast

    package = Path(condconv_nas.__file__).parent
    long = [
        f"{path.relative_to(package)}:{node.lineno} {node.name} ({n} lines)"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := node.end_lineno - node.lineno + 1) > 80
    ]
    assert not long, long
