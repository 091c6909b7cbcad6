"""Model families: how to build a base network with timm and where its parts are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class Family:
    """What the general CondConv placement needs to know about one family of networks."""

    build: Callable[..., nn.Module]  # (spec, **build options) -> static timm model
    stem: str  # attribute of the stem convolution (layer 1)
    classifier: str  # attribute of the final FC (layer B+2)
    blocks: Callable[
        [nn.Module], list[tuple[nn.Module, str]]
    ]  # (parent, name) of every block, network order
    init_layer: Callable[[nn.Module], None]  # initialises a static conv/linear as the family does


FAMILIES: dict[str, Family] = {}


def register_family(*bases: str, **parts):
    """Decorator: ``@register_family("resnet50", stem=..., classifier=..., blocks=...,
    init_layer=...)`` on a builder."""

    def wrap(build):
        for base in bases:
            FAMILIES[base] = Family(build=build, **parts)
        return build

    return wrap
