"""A training's own random stream: `own_random_state` runs a function on a fork of torch's random
state, so that a training seeds its own and leaves its caller's as it was."""

from __future__ import annotations

import functools
import os

import torch


def own_random_state(fn):
    """Run ``fn`` on a fork of torch's random state: a training seeds its own stream and leaves the
    caller's as it was (the caller may be a search, a notebook or another training)."""

    @functools.wraps(fn)
    def forked(*args, **kwargs):
        # the CPU stream and this process's GPU (torchrun's LOCAL_RANK), not every GPU's context
        gpu = [int(os.environ.get("LOCAL_RANK", "0"))] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=gpu):
            return fn(*args, **kwargs)

    return forked
