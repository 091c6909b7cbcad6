import os

import pytest
import torch
from helpers import NARROW_SPACE, TINY_RECIPE, TINY_SPACE, run_cli, run_here

# pytest-xdist runs two tests at a time (setup.cfg): one thread each, so that they do not fight
# over the cores; alone, two.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
torch.set_num_threads(1 if XDIST else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def refuse():
    """The CLI in this process, for input it must refuse before any work (`run_here`)."""
    return run_here


@pytest.fixture
def files(tmp_path):
    """A folder with the tiny recipe (``tiny.yaml``), the small space (``space.yaml``) and the
    small space at width 0.25 alone (``narrow.yaml``)."""
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    (tmp_path / "space.yaml").write_text(TINY_SPACE)
    (tmp_path / "narrow.yaml").write_text(NARROW_SPACE)
    return tmp_path
