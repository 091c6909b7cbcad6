"""ONNX export: onnxruntime runs the exported graph at any batch size and computes what PyTorch
does."""

import contextlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from condconv_nas import build_model, export_onnx, load_spec
from condconv_nas.errors import UsageError
from condconv_nas.layers import CondConv2d
from condconv_nas.layers.strategy import fixed_forms
from condconv_nas.spec import ArchSpec
from condconv_nas.training import checkpoint

BATCHES = (1, 3, 8)


def calibrated(spec, res: int) -> torch.nn.Module:
    """The spec's model in eval mode, each BatchNorm's statistics those of its own input on 32
    random images, taken layer after layer in one eval-mode pass, no variance below the layer's
    mean variance.

    In a deep untrained network (fresh statistics, or statistics gathered in training mode)
    activations grow block after block, CondConv's per-example kernels most, until two correct
    float32 computations of the logits differ by more than 1e-4 (PyTorch's own against float64:
    up to 4e-3 on CondConv-B0-depth). Statistics measured in order keep every layer near unit
    scale, as training does, and the floor keeps a channel that barely varied on those images
    from scaling another image's value by up to 300 (1 / sqrt(eps))."""
    torch.manual_seed(0)
    model = build_model(spec).eval()

    def measure(bn, inputs):
        x = inputs[0]
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        var = x.var((0, 2, 3))
        bn.running_var.copy_(var.clamp_min(var.mean()))

    hooks = [
        m.register_forward_pre_hook(measure)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad(), fixed_forms("kernel"):  # no timing of forms for a batch seen once
        model(torch.randn(32, 3, res, res))
    for h in hooks:
        h.remove()
    return model


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_matches(model, path, res, *, batches=BATCHES, forms=("kernel",)):
    """onnxruntime's logits against the model's in PyTorch at every batch size, on one graph; by
    default PyTorch runs the per-example-kernel form, not the exported ones (None: timed forms)."""
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, res, res]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in batches:
        x = torch.randn(b, 3, res, res)
        with torch.no_grad(), fixed_forms(*forms) if forms else contextlib.nullcontext():
            ref = model(x).numpy()
        (out,) = session.run(None, {"images": x.numpy()})
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-4, f"batch {b}"


def test_condconv_efficientnet_b0_matches_pytorch(tmp_path):
    res = 96
    model = calibrated(load_spec("condconv-efficientnet-b0").replace(resolution=res), res)
    done = export_onnx(model, tmp_path / "b0.onnx")
    assert (done.path, done.resolution, done.num_classes) == (tmp_path / "b0.onnx", res, 1000)
    # Against the forms PyTorch picks by timing, as the model runs in eager mode.
    assert_matches(model, done.path, res, batches=(1, 5), forms=None)


def variant(base, begin, *, width=0.25, depth=0.5, **routing_and_classifier):
    classifier = routing_and_classifier.pop("classifier", False)
    return ArchSpec.from_dict(
        {
            "base": base,
            "width_multiplier": width,
            "depth_multiplier": depth,
            "resolution": 32,
            "num_classes": 10,
            "condconv": {
                "begin_layer": begin,
                "num_experts": 4,
                "classifier": classifier,
                "routing": routing_and_classifier,
            },
        }
    )


# Every base's CondConv blocks, every routing form and a static network, at depth 0.5 and width
# 0.25 (an export takes 10 to 20 s); the presets are these blocks at full size, CondConv-B0 above.
VARIANTS = {
    # every CondConv layer with its own router, from the stem on
    "share layer, stem": variant("efficientnet_b0", 1, share="layer"),
    # the case: a CondConv classifier and a hidden layer with softmax routing
    "classifier, hidden softmax": variant(
        "efficientnet_b0", 4, share="block", hidden="small", activation="softmax", classifier=True
    ),
    "share pair, medium, hierarchical": variant(
        "mobilenet_v2", 3, share="pair", hidden="medium", hierarchical=True
    ),
    "share single, large, softmax, hierarchical, classifier": variant(
        "resnet50",
        4,
        share="single",
        hidden="large",
        activation="softmax",
        hierarchical=True,
        classifier=True,
    ),
    "share block, hierarchical softmax, mnasnet": variant(
        "mnasnet_a1", 5, share="block", activation="softmax", hierarchical=True
    ),
    "classifier only": variant("mobilenet_v1", 8, depth=1.0, classifier=True),
    # small images: the first two halvings at stride 1 (4x4 final maps at 32 px)
    "skip_downsample 2, efficientnet": variant("efficientnet_b0", 6).replace(skip_downsample=2),
    "skip_downsample 2, resnet": variant("resnet50", 6, share="pair").replace(skip_downsample=2),
    # and a network with no CondConv layer at all
    "static": variant("efficientnet_b0", 1).replace(condconv=None),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_routing_variant_exports_and_matches(tmp_path, name):
    model = calibrated(VARIANTS[name], 32)
    assert_matches(model, export_onnx(model, tmp_path / "m.onnx").path, 32)


def test_checkpoint_resolution_and_default_paths(tmp_path, monkeypatch):
    spec = VARIANTS["classifier, hidden softmax"]
    model = calibrated(spec, 40)
    ckpt = tmp_path / "run" / "model.pt"
    checkpoint.save(
        {"spec": spec.to_dict(), "model": model.state_dict(), "recipe": {"resolution": 40}}, ckpt
    )
    done = export_onnx(ckpt)  # the recipe's training resolution, next to the checkpoint
    assert done.path == tmp_path / "run" / "model.onnx" and done.resolution == 40
    assert_matches(model, done.path, 40, batches=(1, 4))
    # A spec file: fresh weights, the spec's resolution, <spec id>.onnx in the current folder.
    monkeypatch.chdir(tmp_path)
    spec_file = spec.save(tmp_path / "spec.json")
    done = export_onnx(spec_file)
    assert done.path.resolve() == tmp_path / f"{spec.id}.onnx" and done.path.is_file()
    assert (done.resolution, done.num_classes) == (spec.resolution, 10)


def test_cli_exports_a_checkpoint(tmp_path, cli):
    spec = VARIANTS["classifier only"]
    model = calibrated(spec, 32)
    ckpt = tmp_path / "last.pt"
    checkpoint.save(
        {"spec": spec.to_dict(), "model": model.state_dict(), "recipe": {"resolution": 24}}, ckpt
    )
    out = tmp_path / "deploy" / "net.onnx"
    res = cli("export", ckpt, "--format", "onnx", "--out", out, "--opset", "18", "--resolution", 32)
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout and "opset 18" in res.stdout and "32, 32" in res.stdout
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain == ""] == [18]
    assert_matches(model, out, 32, batches=(2, 7))
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.onnx"]


def _foreign(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "foreign.pt")
    return [tmp_path / "foreign.pt"]


def _junk(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    return [tmp_path / "junk.pt"]


def _skip1(tmp_path):
    return load_spec("mobilenet-v1").replace(skip_downsample=1).save(tmp_path / "skip1.json")


BAD = {
    "checkpoint not ours": (_foreign, "no spec and model weights"),
    "not a checkpoint": (_junk, "not a condconv-nas checkpoint"),
    "unknown format": (lambda p: ["mobilenet-v1", "--format", "tflite"], "--format: 'tflite'"),
    "out is a directory": (lambda p: ["mobilenet-v1", "--out", p], "is a directory"),
    "out cannot be written": (
        lambda p: ["mobilenet-v1", "--out", p / "file.txt" / "m.onnx"],
        "cannot be written",
    ),
    "opset too old": (lambda p: ["mobilenet-v1", "--opset", "13", "--out", p / "m.onnx"], "opset"),
    # named as the CLI's flag, not the library's keyword
    "resolution too small": (lambda p: ["mobilenet-v1", "--resolution", "5"], "--resolution must"),
    "resolution the stride plan cannot run at": (
        lambda p: [_skip1(p), "--resolution", "20"],
        "--resolution: skip_downsample 1 leaves mobilenet_v1 a total stride of 16",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_input_exit_2_one_line_nothing_written(tmp_path, refuse, case):
    make_args, message = BAD[case]
    (tmp_path / "file.txt").write_text("x")
    args = make_args(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    res = refuse("export", *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_failed_export_leaves_existing_file_untouched(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("broken model")

    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(Exception, match="broken model"):
        export_onnx(Broken(), out, resolution=16)
    assert out.read_bytes() == b"previous export" and sorted(tmp_path.iterdir()) == [out]


def test_api_refuses_what_cannot_export(tmp_path):
    spec = VARIANTS["classifier only"]
    model = build_model(spec)
    with pytest.raises(UsageError, match="resolution"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "a.onnx")
    with pytest.raises(UsageError, match="resolution"):
        export_onnx(model, tmp_path / "a.onnx", resolution=4)
    ckpt = tmp_path / "c.pt"
    checkpoint.save({"spec": spec.to_dict(), "model": model.state_dict()}, ckpt)
    with pytest.raises(UsageError, match="is the file being exported"):
        export_onnx(ckpt, ckpt)
    # A layer pinned to the grouped per-example-kernel form would fix the batch size in the graph.
    pinned = torch.nn.Sequential(CondConv2d(3, 4, 3, num_experts=2, strategy="kernel"))
    with pytest.raises(UsageError, match="strategy 'kernel'"):
        export_onnx(pinned, tmp_path / "a.onnx", resolution=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
