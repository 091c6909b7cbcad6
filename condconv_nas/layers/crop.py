"""Convolutions on inputs smaller than their kernel: drop the taps that only ever meet padding
(and the stride where there is one output position).

A 5x5 convolution with padding 2 on a 1x1 input reads its centre tap only; on 2x2, its centre
3x3. The result is the same with those taps cut off and the padding cut by as much, and oneDNN
is far faster on the cropped form (benchmarks/README.md, "Measured figures behind the code"). Such
inputs are everyday in the search's proxy (16 px images reach 1x1 at stride 16) and in the last
stages at 64 px.

Under ``torch.jit.trace`` (fvcore's counting) nothing is cropped: the MADD convention counts the
layer's whole kernel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def _used_taps(
    size: int, k: int, stride: int, pad: int, dilation: int, out: int
) -> tuple[int, int]:
    """First and last kernel tap that reads the input at some output position (one dimension)."""
    used = [
        i for i in range(k) if any(0 <= o * stride + i * dilation - pad < size for o in range(out))
    ]
    return (used[0], used[-1]) if used else (0, k - 1)


@functools.lru_cache(maxsize=4096)
def _plan(
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[slice, slice], tuple[int, int], tuple[int, int]] | None:
    """``(tap slices, stride, padding)`` of the cropped convolution, or None when nothing changes.
    Cached: it depends on shapes only, and `crop` runs on every forward of every convolution."""
    taps, new_stride, new_pad = [], list(stride), list(padding)
    for dim, (n, k, s, p, d) in enumerate(
        zip(size, kernel, stride, padding, dilation, strict=False)
    ):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        a, b = _used_taps(n, k, s, p, d, out)
        q = p - a * d
        taps.append(slice(0, k))
        for s2 in (1, s) if out == 1 and s > 1 else (s,):
            # the same output positions
            if q >= 0 and (n + 2 * q - d * (b - a) - 1) // s2 + 1 == out:
                taps[dim], new_stride[dim], new_pad[dim] = slice(a, b + 1), s2, q
                break
    plan = tuple(taps), tuple(new_stride), tuple(new_pad)
    return (
        None
        if plan == ((slice(0, kernel[0]), slice(0, kernel[1])), tuple(stride), tuple(padding))
        else plan
    )


def crop(
    weight: torch.Tensor,
    size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """``(weight, stride, padding)`` for the same convolution with the taps that read only padding
    removed (a view of ``weight``; everything unchanged if there are none), and stride 1 along a
    dimension with one output position (the stride never applies there, and oneDNN is about ten
    times slower at stride 2 on such maps).

    ``weight``'s last two dimensions are the kernel; the output shape and values are unchanged.
    """
    if torch.jit.is_tracing():
        return weight, stride, padding
    plan = _plan(
        tuple(size), tuple(weight.shape[-2:]), tuple(stride), tuple(padding), tuple(dilation)
    )
    if plan is None:
        return weight, stride, padding
    (rows, cols), new_stride, new_pad = plan
    return weight[..., rows, cols], new_stride, new_pad


class CroppingConv2d(nn.Conv2d):
    """``nn.Conv2d`` that crops its kernel to the taps its input reaches (same parameters, same
    result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, stride, padding = crop(
            self.weight, x.shape[-2:], self.stride, self.padding, self.dilation
        )
        # `crop` hands back the layer's own weight only when nothing changes
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, stride, padding, self.dilation, self.groups)


def use_cropping_convs(model: nn.Module) -> nn.Module:
    """Make every plain zero-padded ``nn.Conv2d`` in ``model`` with a kernel over 1x1 or a stride
    over 1 a `CroppingConv2d`, in place (its class only: parameters, names and state dict stay)."""
    for m in model.modules():
        if (
            type(m) is nn.Conv2d
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
            and (m.kernel_size != (1, 1) or m.stride != (1, 1))
        ):
            m.__class__ = CroppingConv2d
    return model
