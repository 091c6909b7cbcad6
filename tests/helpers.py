"""What several test modules share (their fixtures live in conftest.py)."""

import contextlib
import io
import os
import signal
import subprocess
import sys


def ctrl_c_default():
    """A child's Ctrl-C as at a terminal (``preexec_fn``): a shell that ran the test suite in
    the background leaves SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


def run_here(*args, cwd=None, env=None, timeout=None):
    """``condconv-nas ARGS`` in this process, through the CLI's ``main``: for input the CLI must
    refuse before any work, and for commands that read a result (``show``, ``madds``). The exit
    status, stdout and stderr are a fresh process's, without its 6 to 8 s of imports (torch,
    timm, Optuna); an exception escaping ``main`` fails the test, as its traceback would.
    Warnings are written to its stderr as the CLI prints them (pytest would record them instead).
    Threads, the working folder, the environment and the warning format are put back;
    ``timeout``, taken as `run_cli` takes it, is not needed."""
    import warnings

    import torch

    from condconv_nas.cli import main

    out, err, threads, here = io.StringIO(), io.StringIO(), torch.get_num_threads(), os.getcwd()
    environ, formatwarning = dict(os.environ), warnings.formatwarning
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("default")  # then Python's own defaults, as a fresh process has
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("ignore", category=ResourceWarning)
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's own errors
                code = e.code
            for w in caught:
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)
        warnings.formatwarning = formatwarning
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


# A tiny proxy recipe: every search trial trains in seconds on digits.
TINY_RECIPE = """
epochs: 3
batch_size: 32
resolution: 32
optimizer: adamw
lr: 0.002
weight_decay: 0.01
bn_momentum: 0.3
expert_lr: rsqrt
bn_recalibrate: 4
train_subset: 0.5
holdout: 0.2
trials: 4
"""
# A small space (MobileNetV1 at small widths) keeps every trial cheap.
TINY_SPACE = """
base: mobilenet_v1
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.25, 0.5, 1.0]
  begin_stage: [4, 5, none]
  num_experts: [2, 4]
  classifier: [false, true]
  routing_share: [block, single]
"""
# The same space at width 0.25 alone (a 1.0x trial costs 3 times as much): for tests where any
# trainable candidate will do (budget 2G), not the ones about the budget.
NARROW_SPACE = TINY_SPACE.replace("[0.25, 0.5, 1.0]", "[0.25]")
