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


def test_building_and_counting_warn_nothing():
    code = (
        "import warnings; warnings.simplefilter('error');"
        "from condconv_nas import build_model, count_madds, load_spec;"
        "print(count_madds(build_model(load_spec('condconv-mobilenet-v1'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "601413952" and not out.stderr


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
