"""The README's quickstart, line by line, as a user types it on the embedded data: every line
after the search runs verbatim and exits 0 whatever the front holds; here its most accurate spec
is static (the case that once broke the ``analyze`` line)."""

import re
import shlex
from pathlib import Path

import pytest
from helpers import TINY_RECIPE

ROOT = Path(__file__).resolve().parent.parent
# Only static points: the front's best is a static network.
STATIC_SPACE = """
base: mobilenet_v1
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.25]
  begin_stage: [none]
  classifier: [false]
"""


def quickstart() -> list[list[str]]:
    """The commands of the README's quickstart block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart on the embedded data.*?```bash\n(.*?)```", text, re.S)
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_quickstart_block_is_what_this_test_runs():
    commands = quickstart()
    assert commands[0][:4] == ["condconv-nas", "search", "--budget", "400M"], commands[0]
    assert [c[1] for c in commands] == [
        "search", "show", "train", "evaluate", "export", "train", "analyze"
    ]  # fmt: skip


@pytest.mark.slow
def test_every_quickstart_line_after_the_search_works_verbatim_on_a_static_front(tmp_path, cli):
    (tmp_path / "static.yaml").write_text(STATIC_SPACE)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    search, *rest = quickstart()
    # the README's search, into the folder its next lines name, on a small static space
    res = cli(*search[1:], "--space", "static.yaml", "--trainer", "tiny.yaml", "--trials", "1",
              "--run", "efficientnet_b0-400M",
              "--quiet", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "results" / "efficientnet_b0-400M" / "pareto.json").is_file()
    for command in rest:
        res = cli(*command[1:], cwd=tmp_path)
        assert res.returncode == 0, (command, res.stderr[-3000:])
    assert (tmp_path / "runs" / "best" / "model.onnx").is_file()
    assert (tmp_path / "runs" / "cc" / "routing" / "routing.json").is_file()
    # the static best has nothing to analyze, and says so (exit 2), as the README tells
    res = cli("analyze", "runs/best/model.pt", cwd=tmp_path)
    assert res.returncode == 2 and "no CondConv layers" in res.stderr, res.stderr
