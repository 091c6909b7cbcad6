"""A built network as the sequence of units its forward runs (stem, every block, head,
classifier), each with a signature: what decides its time, so that candidates sharing a unit
share its latency entry (nn-Meter's kernels, at block granularity).

A unit's signature is its structure (module types and their settings, recursively) and its input
shape. Routers are taken out of the units and signed on their own (their input features, hidden
layer, activation, previous routing weights, input shape): where routing is shared, or whether it
is hierarchical, changes only which routers run, not the convolutions, so every routing variant of
a CondConv block reuses one entry for the block's body. ``Routed`` wrappers are transparent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet

from ..layers import CondConv2d, CondLinear, Routed, Router


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of a built network's units, in the order its forward runs them: feeding
    each unit's output to the next gives the network's logits."""
    net = getattr(model, "net", model)
    if isinstance(net, EfficientNet):
        blocks = [block for stage in net.blocks for block in stage]
        stem = nn.Sequential(net.conv_stem, net.bn1)
        head = nn.Sequential(net.conv_head, net.bn2, net.global_pool)
        classifier = net.classifier
    elif isinstance(net, ResNet):
        blocks = [
            block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer
        ]
        stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        head, classifier = net.global_pool, net.fc
    else:
        raise TypeError(f"no latency units for a {type(net).__name__} network")
    return [
        ("stem", stem),
        *((f"block {i + 1}", block) for i, block in enumerate(blocks)),
        ("head", head),
        ("classifier", classifier),
    ]


def routers(module: nn.Module) -> list[Router]:
    """The routers a unit runs, in the order its forward runs them."""
    return [m for m in module.modules() if isinstance(m, Router)]


def describe(module: nn.Module) -> str:
    """The structure of a module without its routers: types and settings, recursively."""
    if isinstance(module, Router):
        return ""
    if isinstance(module, Routed):
        return describe(module.module)
    inner = [d for d in map(describe, module.children()) if d]
    text = f"{type(module).__name__}({module.extra_repr()})"
    return text + (f"[{', '.join(inner)}]" if inner else "")


def _digest(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Part:
    """One entry of the latency table a network needs: a unit's body or a router."""

    key: str  # hash of the signature: the table's key
    what: str  # readable, for people reading the table
    shape: tuple[int, ...]  # its input's shape


def unit_part(name: str, module: nn.Module, shape: tuple[int, ...]) -> Part:
    inner = module.module if isinstance(module, Routed) else module
    return Part(
        _digest(f"unit|{describe(module)}|{shape}"),
        f"{name} {type(inner).__name__} {list(shape)}",
        shape,
    )


def router_part(router: Router, shape: tuple[int, ...]) -> Part:
    signature = f"router|{describe(router.fc)}|{router.activation}|{router.prev_features}|{shape}"
    hidden = router.fc[0].out_features if isinstance(router.fc, nn.Sequential) else 0
    what = (
        f"router {router.in_features}+{router.prev_features}->{router.num_experts} "
        f"hidden {hidden} {router.activation} {list(shape)}"
    )
    return Part(_digest(signature), what, shape)


@dataclass(frozen=True)
class Plan:
    """What a network's predicted latency adds up: its units' bodies and its routers."""

    base: str  # the spec's base: the per-model overhead is calibrated per base
    units: tuple[Part, ...]  # in forward order
    routers: tuple[tuple[Part, ...], ...]  # per unit, the routers it runs

    def parts(self) -> Iterator[Part]:
        yield from self.units
        for rs in self.routers:
            yield from rs


def plan(model: nn.Module, batch: int, resolution: int) -> Plan:
    """The parts of a built network at ``batch``, from one forward pass that records every unit's
    and every router's input shape (on any device: the meta device costs nothing).

    CondConv layers run their per-example-kernel form for the pass, so that no layer times its
    forms on these inputs; their settings are restored afterwards."""
    us = units(model)
    cond = [m for m in model.modules() if isinstance(m, (CondConv2d, CondLinear))]
    saved = [m.strategy for m in cond]
    seen: dict[int, tuple[int, ...]] = {}

    def record(router, args):
        seen[id(router)] = tuple(args[0].shape)

    rs = [routers(module) for _, module in us]
    hooks = [r.register_forward_pre_hook(record) for group in rs for r in group]
    param = next(model.parameters())
    shapes = []
    state = getattr(model, "routing_state", None)
    try:
        for m in cond:
            m.strategy = "kernel"
        h = torch.zeros(batch, 3, resolution, resolution, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            for _, module in us:
                shapes.append(tuple(h.shape))
                h = module(h)
    finally:
        for m, s in zip(cond, saved, strict=True):
            m.strategy = s
        for hook in hooks:
            hook.remove()
        if state is not None:
            state.weights = None
    return Plan(  # signed now that the layers' settings are their own again
        base=model.spec.base,
        units=tuple(
            unit_part(name, module, shape) for (name, module), shape in zip(us, shapes, strict=True)
        ),
        routers=tuple(tuple(router_part(r, seen[id(r)]) for r in group) for group in rs),
    )
