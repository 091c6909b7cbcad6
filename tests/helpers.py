"""What several test modules share (their fixtures live in conftest.py)."""

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
