"""Choosing how a CondConv layer (``CondConv2d``, ``CondLinear``) executes, per call, from
measurements cached per shape. A layer offers ``forms(x)``, ``shape_key()`` and
``run(form, x, routing_weights, weight, bias)``.

Which form is fastest depends on the number of experts, batch, spatial size, grad mode and
device (the paper says as much), so no fixed rule: the first call with a new shape times every
form that applies on a detached copy of the inputs (forward, plus backward when grad is enabled) and
the fastest is remembered for that shape. Under ``torch.jit.trace`` (fvcore's counting) the
per-example-kernel form is used: it is the served form, the one the MADD convention counts.
Inside ``fixed_forms(...)`` no form is timed: each layer runs the first listed form it offers
(``export.py`` uses it so that the batch stays a tensor dimension, not a group count).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

import torch

STRATEGIES = ("auto", "kernel", "mixture", "expand", "bmm")
ROUNDS = 4  # timed rounds after the warm-up
HOPELESS = 3.0  # a form this many times slower than the fastest warm-up is not timed further
_choices: dict[tuple, str] = {}
_fixed: ContextVar[tuple[str, ...] | None] = ContextVar("fixed_forms", default=None)


@contextlib.contextmanager
def fixed_forms(*forms: str) -> Iterator[None]:
    """Within the block, every ``strategy="auto"`` layer runs the first of ``forms`` that it offers
    (``layer.forms(x)``), untimed, also under tracing; a layer offering none of them raises."""
    unknown = [f for f in forms if f not in STRATEGIES or f == "auto"]
    if not forms or unknown:
        raise ValueError(f"forms must be some of {STRATEGIES[1:]}, got {forms!r}")
    token = _fixed.set(tuple(forms))
    try:
        yield
    finally:
        _fixed.reset(token)


def _key(layer, x: torch.Tensor, grad: bool) -> tuple:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return (
        type(layer).__name__,
        layer.shape_key(),
        tuple(x.shape),
        x.dtype,
        x.device.type,
        channels_last,
        grad,
    )


def _sync(args: tuple) -> None:
    """Wait for the GPU's queued work: its kernels run asynchronously, and a clock read without
    this times only their launch."""
    if args and isinstance(args[0], torch.Tensor) and args[0].is_cuda:
        torch.cuda.synchronize(args[0].device)


def _once(layer, form: str, args: tuple, grad: bool) -> float:
    _sync(args)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        out = layer.run(form, *args)
        if grad:
            out.backward(torch.ones_like(out))
    _sync(args)
    return time.perf_counter() - t0


def measure_forms(
    layer,
    forms: tuple[str, ...],
    args: tuple,
    grad: bool,
    *,
    rounds: int = ROUNDS,
    hopeless: float = HOPELESS,
) -> dict[str, float]:
    """Best time of each form; forms interleaved round by round so that all see the same machine.

    The first round is warm-up; a form over ``hopeless`` times the fastest warm-up is not timed
    further (the n-fold forms at large sizes, the per-example kernels at tiny ones)."""
    warm = {form: _once(layer, form, args, grad) for form in forms}
    best = {form: float("inf") for form, t in warm.items() if t <= hopeless * min(warm.values())}
    for _ in range(rounds):
        for form in best:
            best[form] = min(best[form], _once(layer, form, args, grad))
    return best


def choose_strategy(layer, x: torch.Tensor) -> str:
    """The fastest of the layer's forms for this input shape and grad mode (measured once, then
    cached)."""
    fixed = _fixed.get()
    if fixed is not None:
        offered = layer.forms(x)
        for form in fixed:
            if form in offered:
                return form
        raise ValueError(
            f"{type(layer).__name__} offers none of the fixed forms {fixed} (it offers {offered})"
        )
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "kernel"
    grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in layer.parameters())
    )
    key = _key(layer, x, grad)
    choice = _choices.get(key)
    if choice is None:
        forms = layer.forms(x)
        # Time on detached copies so that no gradient reaches the layer's parameters.
        copy = lambda t: None if t is None else t.detach().clone().requires_grad_(grad)  # noqa: E731
        # Constant routing weights: timing needs no values, and a random draw here would shift
        # the caller's random stream depending on which shapes were timed before.
        r = torch.full(
            (x.shape[0], layer.num_experts),
            1.0 / layer.num_experts,
            dtype=x.dtype,
            device=x.device,
            requires_grad=grad,
        )
        args = (copy(x), r, copy(layer.weight), copy(layer.bias))
        times = measure_forms(layer, forms, args, grad)
        choice = _choices[key] = min(times, key=times.get)
    return choice


def chosen() -> dict[tuple, str]:
    """The choices made so far, in order: (layer class, shape key, input shape, dtype, device,
    channels-last, grad) -> form."""
    return dict(_choices)


def clear_cache() -> None:
    """Forget every measured choice (e.g. after moving to another device)."""
    _choices.clear()
