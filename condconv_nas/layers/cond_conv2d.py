"""CondConv2d: a convolution whose kernel is mixed per example from `num_experts` experts.

For every example b the layer convolves x[b] once with `sum_i r[b, i] * W_i`, which equals the
mixture `sum_i r[b, i] * conv(x[b], W_i)` (Yang et al., 2019). Four execution forms give that
result; which one runs is chosen per call (see `strategy`):

- ``kernel``: build the per-example kernels (one matmul), then one grouped convolution over the
  whole batch (the batch folded into the channels, ``groups = groups * B``). This is the form
  whose cost is the MADD convention: the static convolution plus ``n * kernel_size`` for mixing.
- ``mixture``: one ordinary convolution with all experts stacked on the output channels
  (``n`` convolutions in one call), then the routing-weighted sum over experts.
- ``expand``: the same sum taken on the input side: ``x[b]`` scaled by each ``r[b, i]`` and
  stacked on the input channels, so one ordinary convolution with the experts side by side on
  its input channels sums over the experts itself. ``n`` times the static MADDs like
  ``mixture``, but no per-example kernels and no ``n``-fold output: it pays in training at
  small spatial sizes, where per-example kernels cost more to write and read than to use.
- ``bmm`` (1x1, stride 1, unpadded, ungrouped): per-example kernels as one batched matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .crop import crop
from .strategy import STRATEGIES, choose_strategy

_Size = int | tuple[int, int]


def _pair(v: _Size, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def mix_experts(r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``r @ weight.reshape(n, -1)``: per-example kernels, flattened, ``(B, N)``.

    At batch 1 with large kernels, MKL's ``(1 x n) @ (n x N)`` product is slower than the same
    product split into 32 column blocks as one batched matmul, which runs at about the speed of
    reading the experts once (benchmarks/README.md, "Measured figures behind the code").
    """
    n = r.shape[1]
    w = weight.reshape(n, -1)
    N = w.shape[1]
    if r.shape[0] == 1 and N >= 1 << 16 and N % 32 == 0 and not torch.jit.is_tracing():
        return torch.matmul(r.view(1, 1, n), w.view(n, 32, N // 32).transpose(0, 1)).view(1, N)
    return r @ w


def same_padding(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """TensorFlow's 'SAME' padding of ``x``: ``(x, padding)`` for a symmetrically padded conv.

    SAME pads ``total // 2`` before and the rest after; the odd extra zero goes onto ``x`` itself
    (``F.pad``) so that the convolution keeps a symmetric padding, which ``crop`` understands."""
    before, extra = [], []
    for n, k, s, d in zip(x.shape[-2:], kernel, stride, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        before.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        x = F.pad(x, (0, extra[1], 0, extra[0]))
    return x, (before[0], before[1])


def check_routing(routing_weights: torch.Tensor, batch: int, num_experts: int, layer: str) -> None:
    if (
        routing_weights.dim() != 2
        or routing_weights.shape[0] != batch
        or routing_weights.shape[1] != num_experts
    ):
        raise ValueError(
            f"{layer}: routing_weights must have shape (batch={batch}, num_experts={num_experts}), "
            f"got {tuple(routing_weights.shape)}"
        )


class CondConv2d(nn.Module):
    """A drop-in for ``nn.Conv2d`` with per-example kernels; ``forward(x, routing_weights)``.

    ``weight`` has shape ``(num_experts, out_channels, in_channels // groups, kH, kW)``; ``bias``
    ``(num_experts, out_channels)`` or None. ``padding=None`` means ``dilation * (k - 1) // 2``;
    ``padding="same"`` is TensorFlow's 'SAME' (as timm's ``Conv2dSame``), worked out per input size.
    ``strategy`` is ``"auto"`` (measured per shape, see ``layers.strategy``) or one of the forms
    above: ``"kernel"``, ``"mixture"``, ``"expand"`` or ``"bmm"``. Every choice gives the same
    result.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: _Size | None = None,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 8,
        *,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} "
                f"must both be divisible by groups={groups}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        symmetric = tuple(
            d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size, strict=True)
        )
        # TF 'SAME' pads each input size as it needs (more after than before when odd), except where
        # that is always the symmetric padding: stride 1 and an even span (timm's `is_static_pad`).
        self.same = padding == "same" and not (
            self.stride == (1, 1)
            and all(
                d * (k - 1) % 2 == 0 for d, k in zip(self.dilation, self.kernel_size, strict=True)
            )
        )
        if padding is None or padding == "same":
            padding = (0, 0) if self.same else symmetric
        self.padding = _pair(padding, "padding")
        self.num_experts = num_experts
        self.strategy = strategy
        self.weight = nn.Parameter(
            torch.empty(num_experts, out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert initialised as ``nn.Conv2d`` initialises its one kernel."""
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0][0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def _apply(self, fn, recurse=True):
        """``Module.to(memory_format=torch.channels_last)`` converts every 4-D and 5-D tensor, and
        PyTorch refuses channels-last on a 5-D one (as for ``nn.Conv3d``). The expert stack goes
        through such conversions as one 4-D stack ``(n * out, in // groups, kH, kW)`` and is kept
        contiguous: it is mixed, not convolved, so its layout gains nothing."""

        def apply(t: torch.Tensor) -> torch.Tensor:
            if t.dim() != 5:
                return fn(t)
            return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2]).contiguous()

        return super()._apply(apply, recurse)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={'same' if self.same else self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, num_experts={self.num_experts}, "
            f"strategy={self.strategy}"
        )

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CondConv2d: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        check_routing(routing_weights, x.shape[0], self.num_experts, "CondConv2d")
        strategy = self.strategy
        if strategy == "auto":
            strategy = choose_strategy(self, x)
        elif strategy == "bmm" and "bmm" not in self.forms(x):
            raise ValueError(
                f"CondConv2d: strategy {strategy!r} needs a 1x1, stride-1, unpadded, ungrouped conv"
            )
        return self.run(strategy, x, routing_weights, self.weight, self.bias)

    def forms(self, x: torch.Tensor) -> tuple[str, ...]:
        """The execution forms worth timing for this layer (``bmm``: 1x1, stride 1, unpadded,
        ungrouped)."""
        # Grouped `expand` (n inputs per group) was slower than `mixture` and `kernel` at every
        # depthwise layer of CondConv-B0 (benchmarks/condconv_layers.py), so it is not timed.
        if self.groups > 1:
            return ("kernel", "mixture")
        pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        return (
            ("kernel", "mixture", "expand", "bmm") if pointwise else ("kernel", "mixture", "expand")
        )

    def shape_key(self) -> tuple:
        return (
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.num_experts,
            self.bias is not None,
            self.same,
        )

    def run(
        self,
        strategy: str,
        x: torch.Tensor,
        r: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """One execution form on explicit expert weights (``strategy.py`` times forms on copies).

        Kernel taps that only ever read padding for this input size are cropped first (``crop``)."""
        padding = self.padding
        if self.same:
            x, padding = same_padding(x, weight.shape[-2:], self.stride, self.dilation)
        weight, stride, padding = crop(weight, x.shape[-2:], self.stride, padding, self.dilation)
        mixed_bias = None if bias is None else r @ bias  # (B, out)
        return getattr(self, "_forward_" + strategy)(x, r, weight, mixed_bias, stride, padding)

    def _forward_kernel(self, x, r, weight, bias, stride, padding):
        B, C, H, W = x.shape
        Co = self.out_channels
        kernels = mix_experts(r, weight).reshape(B * Co, C // self.groups, *weight.shape[-2:])
        out = F.conv2d(
            x.reshape(1, B * C, H, W),
            kernels,
            None if bias is None else bias.reshape(-1),
            stride,
            padding,
            self.dilation,
            self.groups * B,
        )
        return out.reshape(B, Co, out.shape[-2], out.shape[-1])

    def _forward_bmm(self, x, r, weight, bias, stride, padding):
        """1x1, stride 1, ungrouped: per-example kernels as one batched matmul."""
        B, C, H, W = x.shape
        kernels = mix_experts(r, weight).reshape(B, self.out_channels, C)
        out = torch.bmm(kernels, x.reshape(B, C, H * W))
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        return out.reshape(B, self.out_channels, H, W)

    def _forward_mixture(self, x, r, weight, bias, stride, padding):
        B = x.shape[0]
        n, g, Co = self.num_experts, self.groups, self.out_channels
        # Stack the experts inside each group so that one grouped conv computes every expert's
        # output.
        w = weight.reshape(n, g, Co // g, *weight.shape[2:]).transpose(0, 1)
        y = F.conv2d(
            x, w.reshape(n * Co, *weight.shape[2:]), None, stride, padding, self.dilation, g
        )
        Ho, Wo = y.shape[-2:]
        if torch.compiler.is_exporting():
            # onnxruntime runs an Einsum far slower than the same sum as one broadcast MatMul.
            out = torch.matmul(r.reshape(B, 1, 1, n), y.reshape(B, g, n, -1))
            out = out.reshape(B, Co, Ho, Wo)
        else:
            out = torch.einsum("bgnohw,bn->bgohw", y.reshape(B, g, n, Co // g, Ho, Wo), r)
            out = out.reshape(B, Co, Ho, Wo)
        return out if bias is None else out + bias[:, :, None, None]

    def _forward_expand(self, x, r, weight, bias, stride, padding):
        B, C, H, W = x.shape
        n, g, Co = self.num_experts, self.groups, self.out_channels
        # Input channels ordered (group, expert, channel): group j sees r[b, i] * x[b, group j] for
        # every i.
        xe = (x.reshape(B, g, 1, C // g, H, W) * r.reshape(B, 1, n, 1, 1, 1)).reshape(
            B, g * n * C // g, H, W
        )
        w = weight.reshape(n, g, Co // g, *weight.shape[2:]).permute(1, 2, 0, 3, 4, 5)
        w = w.reshape(Co, n * weight.shape[2], *weight.shape[3:])
        out = F.conv2d(xe, w, None, stride, padding, self.dilation, g)
        return out if bias is None else out + bias[:, :, None, None]
