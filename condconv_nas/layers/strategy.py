"""Choosing how a CondConv layer executes, per call, from measurements cached per shape.

Which form is fastest depends on the number of experts, batch, spatial size, grad mode and
device (METHOD.md), so no fixed rule: the first call with a new shape times every form that
applies on a detached copy of the inputs (forward, plus backward when grad is enabled) and
the fastest is remembered for that shape. Under ``torch.jit.trace`` (fvcore's counting) the
per-example-kernel form is used: it is the served form, the one the MADD convention counts.
"""
from __future__ import annotations

import time
from typing import Dict, Tuple

import torch

STRATEGIES = ("auto", "kernel", "mixture", "bmm")
_ROUNDS = 3
_choices: Dict[Tuple, str] = {}


def applicable(layer, x: torch.Tensor) -> Tuple[str, ...]:
    forms = ["kernel", "mixture"]
    if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0) and layer.groups == 1:
        forms.append("bmm")
    return tuple(forms)


def _key(layer, x: torch.Tensor, grad: bool) -> Tuple:
    return (tuple(x.shape), x.dtype, x.device.type, x.is_contiguous(memory_format=torch.channels_last),
            layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups,
            layer.num_experts, layer.bias is not None, grad)


def _time(layer, form: str, args: Tuple, grad: bool) -> float:
    best = float("inf")
    for i in range(_ROUNDS + 1):
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = layer.run(form, *args)
            if grad:
                out.backward(torch.ones_like(out))
        elapsed = time.perf_counter() - t0
        if i:  # the first round is warm-up
            best = min(best, elapsed)
    return best


def choose_strategy(layer, x: torch.Tensor) -> str:
    """The fastest applicable form for this layer and input shape (measured once, then cached)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "kernel"
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))
    key = _key(layer, x, grad)
    choice = _choices.get(key)
    if choice is None:
        forms = applicable(layer, x)
        # Time on detached copies so that no gradient reaches the layer's parameters.
        copy = lambda t: None if t is None else t.detach().clone().requires_grad_(grad)  # noqa: E731
        r = torch.rand(x.shape[0], layer.num_experts, dtype=x.dtype, device=x.device, requires_grad=grad)
        args = (copy(x), r, copy(layer.weight), copy(layer.bias))
        times = {f: _time(layer, f, args, grad) for f in forms}
        choice = _choices[key] = min(times, key=times.get)
    return choice


def clear_cache() -> None:
    """Forget every measured choice (e.g. after moving to another device)."""
    _choices.clear()
