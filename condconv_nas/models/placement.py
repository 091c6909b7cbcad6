"""Where CondConv goes: one mechanism over a family's ordered layers (docs/method.md's numbering).

Units in network order: the stem (layer 1) if ``begin_layer == 1``; every block ``j`` (layer
``j + 1``) from ``begin_layer`` on; the classifier if ``condconv.classifier``. Inside a block,
every convolution that is a direct child of the block is on the main path and becomes
CondConv (expand/depthwise/project, dw + pw, a bottleneck's three); squeeze-excitation,
shortcut projections and the head 1x1 conv are not direct children or not units: they stay
static. Routing sharing decides which units own a router:

- ``layer``: every CondConv layer has its own router on its own input;
- ``block``: one router per unit, on the unit's input (the paper's default);
- ``pair``: one router for every two consecutive units;
- ``single``: one router where CondConv begins, reused by every later layer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import Conv2dSame

from ..layers import CondConv2d, CondLinear, Routed, Router, RoutingState
from .registry import Family


def to_condconv(static: nn.Module, num_experts: int, init_layer) -> nn.Module:
    """A CondConv layer shaped like ``static``, each expert initialised as ``init_layer`` would
    ``static``."""
    if isinstance(static, nn.Conv2d):
        cond = CondConv2d(
            static.in_channels,
            static.out_channels,
            static.kernel_size,
            static.stride,
            "same" if isinstance(static, Conv2dSame) else static.padding,
            static.dilation,
            static.groups,
            static.bias is not None,
            num_experts,
        )
    elif isinstance(static, nn.Linear):
        cond = CondLinear(
            static.in_features, static.out_features, static.bias is not None, num_experts
        )
    else:
        raise TypeError(f"cannot make a CondConv layer from {type(static).__name__}")
    with torch.no_grad():
        for i in range(num_experts):
            fresh = copy.deepcopy(static)
            init_layer(fresh)
            cond.weight[i].copy_(fresh.weight)
            if cond.bias is not None:
                cond.bias[i].copy_(fresh.bias)
    return cond


def main_path_convs(block: nn.Module) -> list[str]:
    return [name for name, child in block.named_children() if isinstance(child, nn.Conv2d)]


def _in_features(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features


def place_condconv(
    model: nn.Module, family: Family, cc, *, expert_dropout: float = 0.0
) -> RoutingState:
    """Turn ``model``'s layers into CondConv as ``cc`` (a CondConvSpec) says, in place."""
    state = RoutingState()
    r = cc.routing
    n_routers = 0

    def router(in_features: int) -> Router:
        nonlocal n_routers
        prev = cc.num_experts if (r.hierarchical and n_routers) else 0
        n_routers += 1
        return Router(
            in_features,
            cc.num_experts,
            hidden=r.hidden,
            activation=r.activation,
            prev_features=prev,
            expert_dropout=expert_dropout,
        )

    units: list[tuple[nn.Module, str, bool]] = []  # (parent, attribute, is_block)
    if cc.begin_layer == 1:
        units.append((model, family.stem, False))
    units += [
        (parent, name, True)
        for j, (parent, name) in enumerate(family.blocks(model), start=2)
        if j >= cc.begin_layer
    ]
    if cc.classifier:
        units.append((model, family.classifier, False))

    for k, (parent, name, is_block) in enumerate(units):
        owns = {"layer": True, "block": True, "pair": k % 2 == 0, "single": k == 0}[r.share]
        module = getattr(parent, name)
        if not is_block:
            cond = to_condconv(module, cc.num_experts, family.init_layer)
            setattr(
                parent, name, Routed(cond, state, router(_in_features(module)) if owns else None)
            )
            continue
        convs = main_path_convs(module)
        block_in = getattr(module, convs[0]).in_channels
        block_router = router(block_in) if owns and r.share != "layer" else None
        for c in convs:
            static = getattr(module, c)
            own = router(static.in_channels) if r.share == "layer" else None
            setattr(
                module,
                c,
                Routed(to_condconv(static, cc.num_experts, family.init_layer), state, own),
            )
        if block_router is not None:
            setattr(parent, name, Routed(module, state, block_router, takes_routing=False))
    return state
