import os
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args, cwd=None, timeout=900, env=None):
    """Run ``condconv-nas`` as a user would (a fresh process); returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "condconv_nas", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def cli():
    return run_cli
