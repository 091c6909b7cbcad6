"""CondLinear: a fully-connected layer mixed per example from experts (a 1x1 CondConv)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cond_conv2d import check_routing, mix_experts
from .strategy import STRATEGIES, choose_strategy


class CondLinear(nn.Module):
    """``nn.Linear`` with ``num_experts`` experts; ``forward(x, routing_weights)``, x ``(B,
    in_features)``.

    ``weight``: ``(num_experts, out_features, in_features)``; ``bias``: ``(num_experts,
    out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_experts: int = 8,
        *,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.in_features, self.out_features, self.num_experts = (
            in_features,
            out_features,
            num_experts,
        )
        self.strategy = strategy
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert initialised as ``nn.Linear`` initialises its weight and bias."""
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, num_experts={self.num_experts}, "
            f"strategy={self.strategy}"
        )

    def forms(self, x: torch.Tensor) -> tuple[str, ...]:
        return ("kernel", "mixture", "expand")

    def shape_key(self) -> tuple:
        return (self.in_features, self.out_features, self.num_experts, self.bias is not None)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"CondLinear: expected input (B, {self.in_features}), got {tuple(x.shape)}"
            )
        check_routing(routing_weights, x.shape[0], self.num_experts, "CondLinear")
        strategy = choose_strategy(self, x) if self.strategy == "auto" else self.strategy
        return self.run(strategy, x, routing_weights, self.weight, self.bias)

    def run(
        self,
        strategy: str,
        x: torch.Tensor,
        r: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """One execution form on explicit expert weights (``strategy.py`` times forms on copies)."""
        mixed_bias = None if bias is None else r @ bias
        B, n = x.shape[0], self.num_experts
        if strategy == "mixture":
            # n experts in one matmul, then the routing-weighted sum: never builds per-example
            # weights.
            y = F.linear(x, weight.reshape(-1, self.in_features)).reshape(B, n, -1)
            if torch.compiler.is_exporting():  # onnxruntime's Einsum is far slower than MatMul
                out = torch.bmm(r.unsqueeze(1), y).squeeze(1)
            else:
                out = torch.einsum("bno,bn->bo", y, r)
        elif strategy == "expand":
            # The sum over experts inside one matmul: inputs r[b, i] * x[b] side by side.
            xe = (r.unsqueeze(-1) * x.unsqueeze(1)).reshape(B, n * self.in_features)
            out = F.linear(xe, weight.transpose(0, 1).reshape(self.out_features, -1))
        else:  # "kernel" (or "bmm", the same here)
            # Per-example weight matrices, one batched matmul (the served form; the counted form).
            w = mix_experts(r, weight).reshape(B, self.out_features, self.in_features)
            out = torch.bmm(w, x.unsqueeze(-1)).squeeze(-1)
        return out if mixed_bias is None else out + mixed_bias
