"""``build_model(spec)``: a family's timm network with CondConv placed as the spec says."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import RoutingState
from ..layers.crop import use_cropping_convs
from ..spec import ArchSpec, load_spec
from . import families  # noqa: F401  (registers the families)
from .placement import place_condconv
from .registry import FAMILIES, Family, register_family
from .strides import skip_downsample

__all__ = ["build_model", "CondConvNet", "FAMILIES", "Family", "register_family"]


class CondConvNet(nn.Module):
    """A built network: ``forward(images) -> logits``; keeps its spec (``.spec``)."""

    def __init__(self, net: nn.Module, spec: ArchSpec, routing_state: RoutingState) -> None:
        super().__init__()
        self.net, self.spec, self.routing_state = net, spec, routing_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(x)
        finally:
            self.routing_state.weights = None  # drop the last routing tensor (and its graph)


def build_model(
    spec,
    *,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    bn_momentum: float | None = None,
    expert_dropout: float = 0.0,
) -> CondConvNet:
    """Build the network a spec (an ArchSpec, a dict, a file path or a preset name) describes.

    The training options (dropout before the classifier, stochastic depth, batch-norm momentum,
    expert dropout) do not change the architecture, its MADDs or its parameters.
    """
    spec = load_spec(spec)
    family = FAMILIES[spec.base]
    net = family.build(
        spec, drop_rate=drop_rate, drop_path_rate=drop_path_rate, bn_momentum=bn_momentum
    )
    skip_downsample(net, family, spec.skip_downsample)
    state = (
        place_condconv(net, family, spec.condconv, expert_dropout=expert_dropout)
        if spec.condconv is not None
        else RoutingState()
    )
    return CondConvNet(use_cropping_convs(net), spec, state)
