"""Multiply-adds (MADDs) by the convention of docs/method.md, counted by fvcore from a traced
forward.

One multiply-add per weight use, per example, batch 1, at the spec's resolution. The table
`HANDLES` decides per op: convolutions, FC layers, matmuls (the routing FCs, the kernel
mixing ``r @ W``) are counted with fvcore's handles; batch norm (folds into the conv), pooling,
activations and elementwise ops count zero. An op in neither the table nor `WEIGHTLESS_OPS`
might carry weights that would go uncounted: `count_madds` raises rather than under-count.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore scripts its focal loss on import: torch now warns on that
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
    from fvcore.nn.jit_analysis import JitModelAnalysis
    from fvcore.nn.jit_handles import (
        addmm_flop_jit,
        bmm_flop_jit,
        conv_flop_jit,
        einsum_flop_jit,
        linear_flop_jit,
        matmul_flop_jit,
    )

from .errors import UsageError
from .layers import CondConv2d, CondLinear
from .spec import ArchSpec, load_spec


def _zero(inputs, outputs) -> Counter:
    return Counter()


HANDLES = {
    "aten::_convolution": conv_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    # Counted as zero by the convention (and to override fvcore's defaults).
    "aten::batch_norm": _zero,
    "aten::adaptive_avg_pool2d": _zero,
}

# Ops that carry no weights: nothing for the convention to count.
WEIGHTLESS_OPS = frozenset(
    f"aten::{op}"
    for op in """
    add add_ sub sub_ mul mul_ div div_ neg rsub
    relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ silu silu_
    hardswish hardswish_ hardsigmoid hardsigmoid_
    gelu tanh tanh_ softmax log_softmax clamp clamp_ clamp_min clamp_min_ exp ceil floor
    mean sum amax max_pool2d avg_pool2d adaptive_max_pool2d dropout dropout_ feature_dropout
    flatten reshape view permute transpose t contiguous expand squeeze unsqueeze
    cat stack chunk split size select slice narrow
    new_zeros zeros zeros_like ones ones_like full fill_ to copy_ detach clone
    pad constant_pad_nd
""".split()
)


def count_params(model_or_spec) -> int:
    model = model_or_spec if isinstance(model_or_spec, nn.Module) else _build(model_or_spec)
    return sum(p.numel() for p in model.parameters())


def _build(spec):
    from .models import build_model  # models import timm

    return build_model(spec)


def count_madds(
    spec_or_model: ArchSpec | str | dict | nn.Module, resolution: int | None = None
) -> int:
    """MADDs of one example at ``resolution`` (default: the spec's, or 224 for a bare module).

    Raises ``ValueError`` naming any op fvcore met that may carry weights and has no handle, and
    `UsageError` (a ValueError) before tracing where the forward pass would not fit in memory.
    """
    if isinstance(spec_or_model, nn.Module):
        model = spec_or_model
        spec = getattr(model, "spec", None)
    else:
        spec = load_spec(spec_or_model)
        model = _build(spec)
    if resolution is None:
        resolution = spec.resolution if spec is not None else 224
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")

    _check_memory(model, resolution)
    was_training = model.training
    # Count the served form: per-example kernels (the convention's n * kernel-size mixing cost).
    cond_layers = [m for m in model.modules() if isinstance(m, (CondConv2d, CondLinear))]
    strategies = [m.strategy for m in cond_layers]
    try:
        model.eval()
        for m in cond_layers:
            m.strategy = "kernel" if isinstance(m, CondConv2d) else "auto"
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else "cpu"
        x = torch.zeros(1, 3, resolution, resolution, dtype=dtype, device=device)
        analysis = JitModelAnalysis(model, (x,)).set_op_handle(**HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings(
            "none"
        )
        with torch.no_grad():
            total = analysis.total()
        unknown = sorted(set(analysis.unsupported_ops()) - WEIGHTLESS_OPS)
    finally:
        for m, s in zip(cond_layers, strategies, strict=False):
            m.strategy = s
        model.train(was_training)
    if unknown:
        raise ValueError(
            f"cannot count MADDs: no handle for op(s) {', '.join(unknown)}, which may carry weights"
        )
    return int(total)


def _check_memory(model: nn.Module, resolution: int) -> None:
    """Refuse, before tracing, a count whose forward pass cannot fit in the memory its device has
    free (a spec that skips its downsampling, at a size in the thousands): a bound from the widest
    layer first, then the largest layer's maps measured on the meta device, which holds none."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    free = _available_bytes(device)
    item = param.element_size() if param is not None else 4
    widest = max([getattr(m, "out_channels", 0) for m in model.modules()] + [3])
    # a layer's input and output are at most the widest maps at full size each; the trace holds
    # about twice that
    if free is None or 4 * widest * resolution**2 * item < free:
        return
    try:
        need = 2 * largest_layer_bytes(model, resolution)
    except (NotImplementedError, RuntimeError):  # a module the meta device cannot run: trace
        return
    if need > free:
        raise UsageError(
            f"resolution {resolution}: counting this spec's MADDs needs about "
            f"{need / 2**30:.1f} GB (its largest layer's maps, held while traced), and "
            f"{free / 2**30:.1f} GB are free; count at a smaller resolution"
        )


def largest_layer_bytes(model: nn.Module, resolution: int) -> int:
    """The bytes of the largest input plus output of any leaf module, for one example at
    ``resolution``, found by a forward pass on the meta device (shapes only, no memory)."""
    from .layers.strategy import fixed_forms

    meta = copy.deepcopy(model).to("meta").eval()
    param = next(meta.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    largest = 0

    def hook(module, inputs, output) -> None:
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    for m in meta.modules():
        if not any(True for _ in m.children()):
            m.register_forward_hook(hook)
    with torch.no_grad(), fixed_forms("kernel"):  # the form counted; nothing to time on meta
        meta(torch.empty(1, 3, resolution, resolution, dtype=dtype, device="meta"))
    return largest


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for a new allocation on ``device``: the GPU's own, else the host's (psutil's
    figure where installed, else Linux's MemAvailable); None where unknown, and no check."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil  # installed with the ray extra

        return psutil.virtual_memory().available
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
