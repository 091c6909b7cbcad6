"""What a training steps with, as its recipe says (`setup_training` builds it, a `Training` holds
it): timm's optimizer and scheduler over `param_groups` (learning-rate scales for CondConv
experts and routers, the routers' weight decay), the loss, timm's mixup and EMA, and the routing
temperature's warm-up (`routing_temperature`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..layers import CondConv2d, CondLinear, Router
from .distributed import unwrap
from .recipe import Recipe


def param_groups(
    model: nn.Module,
    weight_decay: float,
    expert_lr: str = "same",
    router_lr: str = "same",
    router_weight_decay: float | None = None,
    router_lr_scale: float = 1.0,
) -> list[dict]:
    """timm's weight-decay groups; with ``expert_lr="rsqrt"`` CondConv experts get ``lr_scale =
    1/sqrt(n)``; routers' weights decay by ``router_weight_decay`` when it is given, and their lr
    is multiplied by ``router_lr_scale`` (and by ``1/sqrt(fan-in)`` with ``router_lr="rsqrt"``).

    Why: under an adaptive optimizer (AdamW, RMSProp) every expert steps by about ``lr`` along the
    shared gradient, so the mixed kernel moves ``n/2`` expert steps while its size, for
    independently initialised experts, is about ``sqrt(n)/2`` experts: relative to its size it
    moves ``sqrt(n)`` times faster than the static kernel it replaces. Scaling the experts' lr by
    ``1/sqrt(n)`` gives CondConv layers the static layers' relative step. timm's schedulers
    multiply each group's lr by its ``lr_scale``.
    """

    groups = param_groups_weight_decay(model, weight_decay)
    if router_weight_decay is not None:
        groups = _router_decay(model, groups, router_weight_decay)
    scale = {}
    if expert_lr == "rsqrt":
        scale.update(
            {
                id(p): 1 / math.sqrt(m.num_experts)
                for m in model.modules()
                if isinstance(m, (CondConv2d, CondLinear))
                for p in m.parameters(recurse=False)
            }
        )
    if router_lr == "rsqrt" or router_lr_scale != 1.0:
        scale.update(
            {
                id(p): router_lr_scale / (math.sqrt(fc.in_features) if router_lr == "rsqrt" else 1)
                for r in model.modules()
                if isinstance(r, Router)
                for fc in r.modules()
                if isinstance(fc, nn.Linear)
                for p in fc.parameters()
            }
        )
    if not scale:
        return groups
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in scale]
        by_scale: dict[float, list] = {}
        for p in g["params"]:
            if id(p) in scale:
                by_scale.setdefault(scale[id(p)], []).append(p)
        out += [{**g, "params": rest}] + [
            {**g, "params": ps, "lr_scale": s} for s, ps in by_scale.items()
        ]
    return [g for g in out if g["params"]]


def _router_decay(model: nn.Module, groups: list[dict], decay: float) -> list[dict]:
    """``groups`` with the routers' decayed weights moved to a group of their own."""
    ids = {id(p) for r in model.modules() if isinstance(r, Router) for p in r.parameters()}
    out = []
    for g in groups:
        if g["weight_decay"] == 0:  # biases and norms: timm never decays them
            out.append(g)
            continue
        out.append({**g, "params": [p for p in g["params"] if id(p) not in ids]})
        out.append({**g, "params": [p for p in g["params"] if id(p) in ids], "weight_decay": decay})
    return [g for g in out if g["params"]]


def routing_temperature(recipe: Recipe, epochs: int, progress: float) -> float:
    """The routing temperature after ``progress`` of ``epochs`` epochs: ``routing_temperature`` at
    0, linearly down to 1 at ``routing_warmup_epochs`` (or the last epoch, if sooner: the trained
    model is the one a checkpoint reloads, at temperature 1), 1 after."""
    warmup = min(recipe.routing_warmup_epochs, epochs)
    if warmup == 0:
        return 1.0
    left = max(0.0, 1.0 - progress / warmup)
    return 1.0 + (recipe.routing_temperature - 1.0) * left


@dataclass
class Training:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None  # a timm scheduler (step per update and per epoch) or None
    ema: nn.Module | None  # timm ModelEmaV3 or None
    loss_fn: nn.Module
    mixup: object | None  # timm Mixup or None
    steps_per_epoch: int
    # routing temperature after a fraction of epochs (None: always 1, no warm-up)
    temperature: object | None = None


def setup_training(
    model: nn.Module,
    recipe: Recipe,
    *,
    num_classes: int,
    steps_per_epoch: int,
    epochs: int,
    world_size: int = 1,
) -> Training:

    lr = recipe.lr * world_size
    kw = (
        {"momentum": recipe.momentum}
        if recipe.optimizer in ("sgd", "momentum", "rmsprop", "rmsproptf")
        else {}
    )
    groups = param_groups(
        model, recipe.weight_decay, recipe.expert_lr, recipe.router_lr, recipe.router_weight_decay,
        recipe.router_lr_scale,
    )  # fmt: skip
    # timm's schedulers apply lr_scale (from their first update); without one, here
    if recipe.schedule == "none":
        groups = [{**g, "lr": lr * g.pop("lr_scale")} if "lr_scale" in g else g for g in groups]
    if recipe.opt_eps is not None:
        kw["eps"] = recipe.opt_eps
    optimizer = create_optimizer_v2(
        groups, opt=recipe.optimizer, lr=lr, weight_decay=recipe.weight_decay, **kw
    )
    scheduler = None
    if recipe.schedule != "none":
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=recipe.schedule,
            num_epochs=epochs,
            warmup_epochs=recipe.warmup_epochs,
            warmup_lr=lr * 0.01,
            decay_epochs=recipe.decay_epochs,
            decay_rate=recipe.decay_rate,
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
        )
    mixup = None
    if recipe.mixup_alpha > 0:
        mixup = Mixup(
            mixup_alpha=recipe.mixup_alpha,
            label_smoothing=recipe.label_smoothing,
            num_classes=num_classes,
        )
        loss_fn: nn.Module = SoftTargetCrossEntropy()
    else:
        loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    ema = ModelEmaV3(unwrap(model), decay=recipe.ema_decay) if recipe.ema_decay > 0 else None
    temperature = (
        functools.partial(routing_temperature, recipe, epochs)
        if recipe.routing_warmup_epochs
        else None
    )
    return Training(model, optimizer, scheduler, ema, loss_fn, mixup, steps_per_epoch, temperature)
