"""The paper's released CondConv-EfficientNets, as timm keeps them, read into our models.

timm's ``efficientnet_cc_b0_4e``, ``efficientnet_cc_b0_8e``, ``efficientnet_cc_b1_8e`` and their
``tf_`` variants (the TensorFlow weights: 'SAME' padding, batch-norm eps 1e-3) are EfficientNet-B0
networks (B1: depth 1.1) whose last three stages are CondConv blocks, each routed by one
sigmoid FC on its pooled input: our routing shared per block. Their parameters are ours under
other names (``models.sources``), timm's experts flattened.
"""

from __future__ import annotations

import torch.nn as nn

from ..archs import stage_depths
from ..errors import UsageError
from ..spec import ArchSpec
from .upcycle import inherit

TIMM_CONDCONV = (
    "efficientnet_cc_b0_4e",
    "efficientnet_cc_b0_8e",
    "efficientnet_cc_b1_8e",
    "tf_efficientnet_cc_b0_4e",
    "tf_efficientnet_cc_b0_8e",
    "tf_efficientnet_cc_b1_8e",
)
_DEPTHS = (1.0, 1.1)  # B0 and B1


def _not_ours(model: nn.Module, why: str) -> UsageError:
    return UsageError(
        f"from_timm takes timm's {', '.join(TIMM_CONDCONV)}; this {type(model).__name__} {why}"
    )


def timm_spec(model: nn.Module) -> ArchSpec:
    """The spec of a timm CondConv-EfficientNet, read from the model itself."""
    from timm.layers import CondConv2d as TimmCondConv2d
    from timm.models.efficientnet import EfficientNet

    from .sources import padding_of

    if not isinstance(model, EfficientNet):
        raise _not_ours(model, "is not timm's EfficientNet")
    blocks = [block for stage in model.blocks for block in stage]
    experts = [
        [m.num_experts for m in block.modules() if isinstance(m, TimmCondConv2d)]
        for block in blocks
    ]
    first = next((j for j, n in enumerate(experts, start=1) if n), None)
    if first is None:
        raise _not_ours(model, "has no CondConv layer")
    num_experts = experts[first - 1][0]
    if any(not n or set(n) != {num_experts} for n in experts[first - 1 :]):
        raise _not_ours(model, "is not CondConv from one block to the last with one expert count")
    depths = [len(stage) for stage in model.blocks]
    depth = next((d for d in _DEPTHS if stage_depths("efficientnet_b0", d) == depths), None)
    if depth is None:
        raise _not_ours(model, f"has {depths} blocks per stage (B0 or B1 expected)")
    if model.num_classes < 1:
        raise _not_ours(model, "has no classifier (num_classes=0)")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    resolution = input_size[-1] if input_size else 224
    return ArchSpec.from_dict(
        {
            "base": "efficientnet_b0",
            "depth_multiplier": depth,
            "resolution": resolution,
            "num_classes": model.num_classes,
            "padding": padding_of(model),
            "bn_eps": bns[0].eps,
            "condconv": {
                "begin_layer": first + 1,  # block j is layer j + 1 (docs/method.md)
                "num_experts": num_experts,
                "classifier": False,
                "routing": {"share": "block", "hidden": "none", "activation": "sigmoid"},
            },
        }
    )


def from_timm(model: nn.Module) -> tuple[ArchSpec, nn.Module]:
    """``(spec, our model)`` for one of timm's CondConv-EfficientNets (`TIMM_CONDCONV`): the spec
    that describes it and our `CondConvNet` with its weights, computing the same logits (eval mode).

    ``spec.save(path)`` then makes it trainable from the command line:
    ``condconv-nas train PATH --init timm:NAME``.
    """
    from . import build_model

    spec = timm_spec(model)
    ours = build_model(spec)
    inherit(ours, model, strict=True, noise=0.0)
    return spec, ours.eval()
