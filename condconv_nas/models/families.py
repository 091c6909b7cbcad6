"""The paper's five base networks, built by timm (its EfficientNet builder and its ResNet)."""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.layers import get_act_layer, make_divisible
from timm.models.efficientnet import (
    EfficientNet,
    decode_arch_def,
    efficientnet_init_weights,
    round_channels,
)
from timm.models.resnet import Bottleneck, ResNet

from ..archs import EFFICIENTNET_ARCHS, stage_depths
from .registry import register_family


def _norm(spec, bn_momentum):
    """Batch norm with the spec's epsilon (timm's own tf_ models pass ``bn_eps`` the same way)."""
    kw = {} if bn_momentum is None else {"momentum": bn_momentum}
    if spec.bn_eps != 1e-5:
        kw["eps"] = spec.bn_eps
    return partial(nn.BatchNorm2d, **kw) if kw else nn.BatchNorm2d


def _effnet_blocks(model):
    return [(stage, str(i)) for stage in model.blocks for i in range(len(stage))]


@register_family(
    *EFFICIENTNET_ARCHS,
    stem="conv_stem",
    classifier="classifier",
    blocks=_effnet_blocks,
    init_layer=efficientnet_init_weights,  # Google's init, on the one layer given
)
def build_efficientnet_family(
    spec, *, drop_rate=0.0, drop_path_rate=0.0, bn_momentum=None
) -> nn.Module:
    """MobileNetV1/V2, MnasNet-A1, EfficientNet-B0: timm's ``decode_arch_def`` + ``EfficientNet``.

    ``padding: same`` is timm's ``pad_type='same'`` (its tf_ models): stride-2 convolutions become
    ``Conv2dSame``, padded as TensorFlow does for each input size."""
    cfg = EFFICIENTNET_ARCHS[spec.base]
    round_chs = partial(round_channels, multiplier=spec.width_multiplier)
    head = {"scaled": round_chs(1280), "min": max(1280, round_chs(1280)), "fixed": 1280, "none": 0}[
        cfg["head"]
    ]
    return EfficientNet(
        block_args=decode_arch_def(cfg["stages"], spec.depth_multiplier),
        num_classes=spec.num_classes,
        num_features=head,
        stem_size=32,
        round_chs_fn=round_chs,
        act_layer=get_act_layer(cfg["act"]),
        norm_layer=_norm(spec, bn_momentum),
        pad_type="same" if spec.padding == "same" else "",
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


def _resnet_blocks(model):
    return [
        (layer, str(i))
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
        for i in range(len(layer))
    ]


def _init_resnet_layer(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    else:
        m.reset_parameters()


@register_family(
    "resnet50", stem="conv1", classifier="fc", blocks=_resnet_blocks, init_layer=_init_resnet_layer
)
def build_resnet(spec, *, drop_rate=0.0, drop_path_rate=0.0, bn_momentum=None) -> nn.Module:
    """ResNet-50: timm's ``ResNet`` with ``Bottleneck`` blocks; width scales every stage and the
    stem."""
    w = spec.width_multiplier
    return ResNet(
        Bottleneck,
        stage_depths(spec.base, spec.depth_multiplier),
        channels=tuple(make_divisible(c * w, 8) for c in (64, 128, 256, 512)),
        stem_width=make_divisible(64 * w, 8),
        num_classes=spec.num_classes,
        norm_layer=_norm(spec, bn_momentum),
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
