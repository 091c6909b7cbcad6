"""Routing: ``r(x) = sigmoid(GlobalAveragePool(x) @ R)`` and its variants, and how routing
weights reach the CondConv layers that share them.

A `Router` maps a feature map (or pooled features) to per-example expert weights. One router
can feed several layers: `Routed` wraps a module (a CondConv layer, or a whole block whose
main-path convolutions are `Routed` layers without a router of their own) and, if it owns a
router, computes routing weights from the module's input and publishes them on the network's
`RoutingState`; every routed layer reads the current weights from there. Networks run their
layers in order, so "current" is exactly the weights of the unit the layer belongs to.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN = {
    "none": None,
    "small": lambda c: max(1, c // 8),
    "medium": lambda c: c,
    "large": lambda c: 8 * c,
}
ACTIVATIONS = ("sigmoid", "softmax")


class Router(nn.Module):
    """Global average pool -> [FC -> ReLU] -> FC -> sigmoid (or softmax) -> expert dropout.

    Args:
        in_features: channels of the input it pools.
        num_experts: experts it weights.
        hidden: ``none``, or a hidden layer with ReLU of size in/8 (``small``), in (``medium``),
        8*in (``large``).
        activation: ``sigmoid`` (several experts may be fully on) or ``softmax``.
        prev_features: hierarchical routing: the previous routing weights (this many) are
            concatenated to the pooled input. 0 for none.
        expert_dropout: in training, each example's weight for each expert is zeroed with this
            probability and the kept ones scaled by 1/(1-p), so the expected kernel is the
            evaluation kernel. Identity in eval mode.
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        *,
        hidden: str = "none",
        activation: str = "sigmoid",
        prev_features: int = 0,
        expert_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden not in HIDDEN:
            raise ValueError(f"hidden must be one of {tuple(HIDDEN)}, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 0.0 <= expert_dropout < 1.0:
            raise ValueError(f"expert_dropout must be in [0, 1), got {expert_dropout}")
        self.in_features, self.num_experts, self.prev_features = (
            in_features,
            num_experts,
            prev_features,
        )
        self.activation, self.expert_dropout = activation, expert_dropout
        # routing logits are divided by this: a routing warm-up starts it high (near-uniform
        # routing) and anneals it to 1 (`set_routing_temperature`)
        self.temperature = 1.0
        fan_in = in_features + prev_features
        width = HIDDEN[hidden]
        if width is None:
            self.fc = nn.Linear(fan_in, num_experts)
        else:
            h = width(in_features)
            self.fc = nn.Sequential(
                nn.Linear(fan_in, h), nn.ReLU(inplace=True), nn.Linear(h, num_experts)
            )

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        pooled = x.mean((2, 3)) if x.dim() == 4 else x
        if self.prev_features:
            if prev is None:
                prev = pooled.new_zeros(pooled.shape[0], self.prev_features)
            pooled = torch.cat([pooled, prev], dim=1)
        logits = self.fc(pooled)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        r = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)
        if self.training and self.expert_dropout > 0:
            r = F.dropout(r, self.expert_dropout)
        return r


def init_router_timm(router: Router) -> None:
    """timm's initialisation of a CondConv routing FC (``_init_weight_goog`` on ``routing_fn``):
    weights uniform in +-1/sqrt(fan_in + fan_out), bias zero, so every example starts with the
    same routing up to its features instead of a random per-expert offset."""
    for fc in router.modules():
        if isinstance(fc, nn.Linear):
            bound = 1.0 / (fc.in_features + fc.out_features) ** 0.5
            nn.init.uniform_(fc.weight, -bound, bound)
            nn.init.zeros_(fc.bias)


def set_routing_temperature(model: nn.Module, temperature: float) -> None:
    """Divide every router's logits in ``model`` by ``temperature`` from now on."""
    for m in model.modules():
        if isinstance(m, Router):
            m.temperature = float(temperature)


class RoutingState:
    """The routing weights in flight in one network (plain object, not a module: no parameters)."""

    __slots__ = ("weights",)

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None


class Routed(nn.Module):
    """Runs ``module`` with the network's current routing weights, first computing them if it owns
    a router.

    ``takes_routing``: the module is a CondConv layer, called as ``module(x, routing_weights)``;
    otherwise it is a block whose routed layers read the state themselves.
    """

    def __init__(
        self,
        module: nn.Module,
        state: RoutingState,
        router: Router | None = None,
        takes_routing: bool = True,
    ) -> None:
        super().__init__()
        self.module, self.router, self.takes_routing = module, router, takes_routing
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.router is not None:
            self.state.weights = self.router(x, self.state.weights)
        if not self.takes_routing:
            return self.module(x)
        if self.state.weights is None:
            raise RuntimeError(
                "a routed CondConv layer ran before any router: check the CondConv placement"
            )
        return self.module(x, self.state.weights)
