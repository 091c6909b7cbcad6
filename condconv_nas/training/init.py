"""How a model starts training: `build_for_training` (``build_model`` with the recipe's
regularisers and initialisation) and the initialisations it applies (`zero_classifier`,
`zero_init_residual`, `experts_alike`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import CondConv2d, CondLinear, Router
from ..layers.routing import init_router_timm
from ..models import build_model
from .recipe import Recipe


def zero_classifier(model: nn.Module, experts: str = "zero") -> nn.Module:
    """Start every logit at zero (loss ln C), static or CondConv classifier alike.

    timm's EfficientNet init draws the classifier from +-1/sqrt(classes): for 10 classes the
    first logits have a std of 4 (static) to 8 (CondConv, a sum of experts), and a short run
    from scratch spends its first epochs undoing that (benchmarks/README.md, "Zero classifier").

    ``experts="zero_sum"``: a CondConv classifier's experts keep their draw less its mean over the
    experts, so the logits start near zero but the router's gradient (each expert's own output)
    does not vanish at the first step, as it does with every expert at zero.
    """
    head = model.net.get_classifier()
    head = getattr(head, "module", head)  # a CondConv classifier runs inside `Routed`
    with torch.no_grad():
        if experts == "zero_sum" and isinstance(head, CondLinear):
            head.weight.sub_(head.weight.mean(0, keepdim=True))
        else:
            head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
    return model


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Zero the last BatchNorm scale of every residual branch, so each block starts as the identity.

    A deep network then trains like a shallow one for its first steps (Goyal et al., 2017;
    torchvision's ``zero_init_residual``, timm's ResNet ``zero_init_last``). timm does this for
    its ResNet but not for the EfficientNet family's blocks, whose branches end in ``bn3``
    (inverted residual) or ``bn2`` (depthwise separable).
    """
    for m in model.modules():
        if hasattr(m, "zero_init_last"):
            m.zero_init_last()
        elif getattr(m, "has_skip", False):
            bn = getattr(m, "bn3", None) if hasattr(m, "conv_pwl") else getattr(m, "bn2", None)
            if isinstance(bn, nn.BatchNorm2d):
                nn.init.zeros_(bn.weight)
    return model


def experts_alike(model: nn.Module) -> nn.Module:
    """Start every CondConv layer's experts as one kernel (its first expert's draw).

    Under softmax routing the mixture of n independently drawn experts is about sqrt(n) times
    smaller than their spread, so each layer's output swings with its routing more than with its
    input, and from scratch the gradients explode: a 16-expert spec with a router per layer stays
    at chance (benchmarks/README.md, "Proxy fidelity"). Alike experts give the routing nothing to
    amplify until training sets them apart, as an upcycled start does.
    """
    for m in model.modules():
        if isinstance(m, (CondConv2d, CondLinear)):
            with torch.no_grad():
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(p[:1].expand_as(p))
    return model


def build_for_training(spec, recipe: Recipe, *, softmax_experts_alike: bool = True) -> nn.Module:
    """``build_model`` with the recipe's regularisers and initialisation, weights stored
    channels-last; a softmax-routed spec's experts start alike (`experts_alike`) unless
    ``softmax_experts_alike`` is False."""

    model = build_model(
        spec,
        drop_rate=recipe.dropout,
        drop_path_rate=recipe.drop_path,
        bn_momentum=recipe.bn_momentum,
        expert_dropout=recipe.expert_dropout,
    )
    if recipe.zero_init_residual:
        zero_init_residual(model)
    if recipe.router_init == "timm":
        for m in model.modules():
            if isinstance(m, Router):
                init_router_timm(m)
    if softmax_experts_alike and spec.condconv and spec.condconv.routing.activation == "softmax":
        experts_alike(model)
    return zero_classifier(model, recipe.classifier_init).to(memory_format=torch.channels_last)
