"""``skip_downsample``: run a network's first stride-2 steps at stride 1.

A step is every layer that halves the maps at one point of the network: the stem convolution,
ResNet's max pool, or one block (a bottleneck halves in its 3x3 convolution and in its shortcut
projection together). Setting those layers' stride to 1 gives the network timm would build with
stride 1 there: padding is ``k // 2`` either way, and no stride-2 block keeps its channels, so
none gains a residual connection.
"""

from __future__ import annotations

import torch.nn as nn

from .registry import Family


def _halves(m: nn.Module) -> bool:
    stride = getattr(m, "stride", None)
    if isinstance(m, nn.Conv2d):
        return tuple(stride) == (2, 2)
    return isinstance(m, nn.MaxPool2d) and stride in (2, (2, 2))


def stride_steps(net: nn.Module, family: Family) -> list[list[nn.Module]]:
    """The network's stride-2 steps in order, each the layers that halve the maps there."""
    block_of = {}
    for parent, name in family.blocks(net):
        block = getattr(parent, name)
        block_of.update({id(m): id(block) for m in block.modules()})
    steps: list[list[nn.Module]] = []
    last = None
    for m in net.modules():
        if _halves(m):
            key = block_of.get(id(m), id(m))
            if key == last:
                steps[-1].append(m)
            else:
                steps.append([m])
            last = key
    return steps


def skip_downsample(net: nn.Module, family: Family, k: int) -> nn.Module:
    """``net`` with its first ``k`` stride-2 steps at stride 1, in place."""
    for step in stride_steps(net, family)[:k]:
        for m in step:
            m.stride = (1, 1) if isinstance(m, nn.Conv2d) else 1
    return net
