"""Convolutions on inputs smaller than their kernel: drop the taps that only ever meet padding.

A 5x5 convolution with padding 2 on a 1x1 input reads its centre tap only; on 2x2, its centre
3x3. The result is the same with those taps cut off and the padding cut by as much, and oneDNN
is far faster on the cropped form: a depthwise 5x5 on (64, 1152, 1, 1) took 31 ms forward and
backward, cropped to 1x1 0.5 ms; on (32, 1152, 2, 2), 8.4 ms against 5.5 ms cropped to 3x3. Such
inputs are everyday in the search's proxy (16 px images reach 1x1 at stride 16) and in the last
stages at 64 px.

Under ``torch.jit.trace`` (fvcore's counting) nothing is cropped: the MADD convention counts the
layer's whole kernel.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _used_taps(size: int, k: int, stride: int, pad: int, dilation: int) -> Tuple[int, int]:
    """First and last kernel tap that reads the input at some output position (one dimension)."""
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    used = [i for i in range(k) if any(0 <= o * stride + i * dilation - pad < size for o in range(out))]
    return (used[0], used[-1]) if used else (0, k - 1)


def crop(weight: torch.Tensor, size: Tuple[int, int], stride: Tuple[int, int], padding: Tuple[int, int],
         dilation: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``(weight, padding)`` with the taps that read only padding removed (a view; unchanged if none).

    ``weight``'s last two dimensions are the kernel; the output shape and values are unchanged.
    """
    if torch.jit.is_tracing():
        return weight, padding
    kh, kw = weight.shape[-2:]
    (h0, h1), (w0, w1) = (_used_taps(n, k, s, p, d) for n, k, s, p, d in
                          zip(size, (kh, kw), stride, padding, dilation))
    if (h0, h1, w0, w1) == (0, kh - 1, 0, kw - 1):
        return weight, padding
    new_pad = (padding[0] - h0 * dilation[0], padding[1] - w0 * dilation[1])
    for n, k, s, p, d, (a, b), q in zip(size, (kh, kw), stride, padding, dilation, ((h0, h1), (w0, w1)), new_pad):
        if q < 0 or (n + 2 * q - d * (b - a) - 1) // s != (n + 2 * p - d * (k - 1) - 1) // s:
            return weight, padding  # the cropped call would not give the same output size
    return weight[..., h0:h1 + 1, w0:w1 + 1], new_pad


class CroppingConv2d(nn.Conv2d):
    """``nn.Conv2d`` that crops its kernel to the taps its input reaches (same parameters, same result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = crop(self.weight, x.shape[-2:], self.stride, self.padding, self.dilation)
        if weight is self.weight:
            return super().forward(x)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def use_cropping_convs(model: nn.Module) -> nn.Module:
    """Make every plain zero-padded ``nn.Conv2d`` with a kernel over 1x1 in ``model`` a
    `CroppingConv2d`, in place (its class only: parameters, names and state dict stay)."""
    for m in model.modules():
        if (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
                and m.kernel_size != (1, 1)):
            m.__class__ = CroppingConv2d
    return model
