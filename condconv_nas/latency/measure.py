"""Timing on this machine, in inference mode with the process's threads: whole networks
(interleaved round by round, median), a network's units in place (each timed as the network runs
it, so it meets the caches the network leaves it), and routers on their own.

On a shared or noisy machine a single run means little: every figure is the median over rounds,
after warm-up runs (the first lets every CondConv layer time and choose its form for the shape,
as it does when served), and the rounds go on until there are at least ``min_rounds`` of them and
``seconds`` have passed (at most ``max_rounds``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..layers import Router
from .units import routers, units


def clock() -> float:
    """Seconds, for intervals (every timing of this package goes through here)."""
    return time.perf_counter()


@dataclass(frozen=True)
class Rounds:
    """How long to time: warm-up runs, then at least ``min_rounds`` rounds and ``seconds``, at
    most ``max_rounds``."""

    warmup: int = 2
    min_rounds: int = 15
    seconds: float = 2.0
    max_rounds: int = 400


WHOLE = Rounds(warmup=3, min_rounds=15, seconds=2.0, max_rounds=400)  # networks
IN_PLACE = Rounds(warmup=2, min_rounds=11, seconds=1.0, max_rounds=100)  # a network's units
ROUTERS = Rounds(warmup=3, min_rounds=15, seconds=0.2, max_rounds=200)  # small: many rounds


def _repeat(step: Callable[[], None], rounds: Rounds) -> None:
    for _ in range(rounds.warmup):
        step()
    start, n = clock(), 0
    while n < rounds.min_rounds or (n < rounds.max_rounds and clock() - start < rounds.seconds):
        step()
        n += 1


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def whole_ms(
    models: list[nn.Module], inputs: list[torch.Tensor], rounds: Rounds = WHOLE
) -> list[float]:
    """Median forward time of each model on its input, in ms; the models take turns in every
    round, so all of them see the same machine. Each turn runs its model twice and times the
    second run: a served network meets the caches its previous request left, not another
    network's (timing the first run, a network after a large CondConv one measured 20% slower)."""
    times: list[list[float]] = [[] for _ in models]

    def step():
        for k, (model, x) in enumerate(zip(models, inputs, strict=True)):
            model(x)
            t0 = clock()
            model(x)
            times[k].append(clock() - t0)

    for model in models:
        model.eval()
    with torch.inference_mode():
        _repeat(step, rounds)
    for t in times:  # warm-up runs are not figures
        del t[: rounds.warmup]
    return [_median_ms(t) for t in times]


@dataclass(frozen=True)
class InPlace:
    """A network's units timed in place, and the network timed whole in the same rounds (ms)."""

    bodies: list[float]  # each unit's median time without its routers
    totals: list[float]  # each unit's median time with its routers
    best_whole: float  # the fastest run of the whole network
    best_pass: float  # the fastest run of all the units one after another

    @property
    def whole(self) -> float:
        """The network's time, robust to preemption: the sum of its units' medians (each unit
        runs for well under a scheduler's time slice, so its median is a run nobody interrupted)
        plus what the whole network costs over its units run one by one (the fastest of each)."""
        return sum(self.totals) + self.best_whole - self.best_pass


def in_place_ms(model: nn.Module, x: torch.Tensor, rounds: Rounds = IN_PLACE) -> InPlace:
    """Time each unit of ``model`` (``units.units``) as the units run one after another on
    ``x``, and the whole network in the same rounds. A unit's routers are timed by hooks as it
    runs and their time taken off the unit's body."""
    us = [module for _, module in units(model)]
    groups = [routers(module) for module in us]
    state = getattr(model, "routing_state", None)
    bodies: list[list[float]] = [[] for _ in us]
    totals: list[list[float]] = [[] for _ in us]
    whole: list[float] = []
    passes: list[float] = []
    in_routers = [0.0, 0.0]  # time spent in routers by the running unit; start of the current one

    def start(router, args):
        in_routers[1] = clock()

    def stop(router, args, output):
        in_routers[0] += clock() - in_routers[1]

    def step():
        t0 = clock()
        model(x)
        whole.append(clock() - t0)
        hooks = [r.register_forward_pre_hook(start) for g in groups for r in g]
        hooks += [r.register_forward_hook(stop) for g in groups for r in g]
        try:
            h, spent = x, 0.0
            for k, module in enumerate(us):
                in_routers[0] = 0.0
                t0 = clock()
                h = module(h)
                t = clock() - t0
                totals[k].append(t)
                bodies[k].append(t - in_routers[0])
                spent += t
            passes.append(spent)
        finally:
            for hook in hooks:
                hook.remove()
            if state is not None:  # as the network's own forward leaves it
                state.weights = None

    model.eval()
    with torch.inference_mode():
        _repeat(step, rounds)
    for t in (whole, passes, *bodies, *totals):  # warm-up runs are not figures
        del t[: rounds.warmup]
    return InPlace(
        bodies=[_median_ms(b) for b in bodies],
        totals=[_median_ms(t) for t in totals],
        best_whole=min(whole) * 1e3,
        best_pass=min(passes) * 1e3,
    )


def router_ms(items: list[tuple[Router, tuple[int, ...]]], rounds: Rounds = ROUTERS) -> list[float]:
    """Median time of each router on a random input of its shape (and previous routing weights
    when it is hierarchical), in ms; all routers run in every round."""
    args = []
    g = torch.Generator().manual_seed(0)  # the caller's random state is left as it was
    for router, shape in items:
        router.eval()
        prev = (
            torch.rand(shape[0], router.prev_features, generator=g)
            if router.prev_features
            else None
        )
        args.append((torch.randn(shape, generator=g), prev))
    times: list[list[float]] = [[] for _ in items]

    def step():
        for k, ((router, _), (x, prev)) in enumerate(zip(items, args, strict=True)):
            t0 = clock()
            router(x, prev)
            times[k].append(clock() - t0)

    with torch.inference_mode():
        _repeat(step, rounds)
    for t in times:
        del t[: rounds.warmup]
    return [_median_ms(t) for t in times]
