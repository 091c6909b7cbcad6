"""The training loop shared by the search's proxy and ``condconv-nas train`` (timm's optimizers,
schedulers, mixup and EMA; plain PyTorch otherwise)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.layers import convert_sync_batchnorm
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset

from ..data import make_datasets
from ..layers import CondConv2d, CondLinear, Router
from ..layers.routing import init_router_timm, set_routing_temperature
from ..models import build_model
from ..models.upcycle import inherit
from .recipe import Recipe

# every batch norm with running statistics (timm's BatchNormAct2d is a BatchNorm2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def own_random_state(fn):
    """Run ``fn`` on a fork of torch's random state: a training seeds its own stream and leaves the
    caller's as it was (the caller may be a search, a notebook or another training)."""

    @functools.wraps(fn)
    def forked(*args, **kwargs):
        # the CPU stream and this process's GPU (torchrun's LOCAL_RANK), not every GPU's context
        gpu = [int(os.environ.get("LOCAL_RANK", "0"))] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=gpu):
            return fn(*args, **kwargs)

    return forked


def zero_classifier(model: nn.Module) -> nn.Module:
    """Start every logit at zero (loss ln C), static or CondConv classifier alike.

    timm's EfficientNet init draws the classifier from +-1/sqrt(classes): for 10 classes the
    first logits have a std of 4 (static) to 8 (CondConv, a sum of experts), and a short run
    from scratch spends its first epochs undoing that (CondConv-MobileNetV2 on digits, 3
    epochs: top-1 0.26 with timm's init, 0.73 zero-initialised).
    """
    head = model.net.get_classifier()
    head = getattr(head, "module", head)  # a CondConv classifier runs inside `Routed`
    for p in (head.weight, head.bias):
        if p is not None:
            nn.init.zeros_(p)
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
    return zero_classifier(model).to(memory_format=torch.channels_last)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    expert_lr: str = "same",
    router_lr: str = "same",
    router_weight_decay: float | None = None,
) -> list[dict]:
    """timm's weight-decay groups; with ``expert_lr="rsqrt"`` CondConv experts get ``lr_scale =
    1/sqrt(n)``; routers' weights decay by ``router_weight_decay`` when it is given.

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
    if router_lr == "rsqrt":
        scale.update(
            {
                id(p): 1 / math.sqrt(fc.in_features)
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


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (EMA averages the weights, not it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


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


def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    workers: int = 0,
    sampler=None,
    drop_last: bool = False,
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=g,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
    )


@dataclass(frozen=True)
class Accelerator:
    """Where a training runs and in what precision: float32 on CPU; on a GPU, autocast to bfloat16
    where the card has it, else float16 with a gradient scaler."""

    device: torch.device
    dtype: torch.dtype | None = None  # autocast's dtype; None: float32 throughout
    scaler: object | None = None  # torch.amp.GradScaler for float16, else None

    @classmethod
    def pick(cls, local_rank: int = 0) -> Accelerator:
        """This process's GPU (``local_rank``: its index among the visible ones) if there is one,
        else the CPU."""
        if not torch.cuda.is_available():
            return cls(torch.device("cpu"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if torch.cuda.is_bf16_supported():
            return cls(device, torch.bfloat16)
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))


CPU = Accelerator(torch.device("cpu"))


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
        model, recipe.weight_decay, recipe.expert_lr, recipe.router_lr, recipe.router_weight_decay
    )
    # timm's schedulers apply lr_scale (from their first update); without one, here
    if recipe.schedule == "none":
        groups = [{**g, "lr": lr * g.pop("lr_scale")} if "lr_scale" in g else g for g in groups]
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


def train_epoch(
    t: Training, loader: DataLoader, epoch: int, *, acc: Accelerator = CPU, progress=None
) -> float:
    """One epoch; returns the mean loss. Raises `Diverged` on a NaN/inf loss."""
    t.model.train()
    total, count = 0.0, 0
    scaler = acc.scaler
    for step, (x, y) in enumerate(loader):
        x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
        if t.temperature is not None:
            set_routing_temperature(t.model, t.temperature(epoch + step / t.steps_per_epoch))
        if t.mixup is not None:
            x, y = t.mixup(x, y)
        with torch.autocast(acc.device.type, dtype=acc.dtype, enabled=acc.dtype is not None):
            loss = t.loss_fn(t.model(x), y)
        if not torch.isfinite(loss):
            raise Diverged(f"loss is {loss.item()} at epoch {epoch}, step {step}")
        t.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(t.optimizer)
            scaler.update()
        else:
            loss.backward()
            t.optimizer.step()
        if t.ema is not None:
            t.ema.update(unwrap(t.model))
        if t.scheduler is not None:
            t.scheduler.step_update(epoch * t.steps_per_epoch + step + 1)
        total += loss.item() * x.shape[0]
        count += x.shape[0]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{total / count:.3f}")
    if t.scheduler is not None:
        t.scheduler.step(epoch + 1)
    if t.temperature is not None:  # what evaluation and the next epoch see
        set_routing_temperature(t.model, t.temperature(epoch + 1))
    return total / max(count, 1)


def world() -> tuple[int, int]:
    """(world size, rank) of the process group this process trains in; (1, 0) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def sum_over_workers(*values: float) -> list[float]:
    """Each value summed over the process group's workers (every worker calls this)."""
    total = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, *, device="cpu", shared: bool = False
) -> dict[str, float]:
    """top-1 and top-5 accuracy (fractions) and the mean loss. ``shared``: every worker of the
    process group scores its own shard of the images, and the figures are over all of them."""
    model.eval()
    correct1 = correct5 = n = 0
    loss = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
    if shared:
        correct1, correct5, loss, n = sum_over_workers(correct1, correct5, loss, n)
    return {"top1": correct1 / max(n, 1), "top5": correct5 / max(n, 1), "loss": loss / max(n, 1)}


@torch.no_grad()
def average_bn_stats(model: nn.Module) -> None:
    """Every BatchNorm's running statistics averaged over the process group's workers: each
    estimated them on its own shard, and the mean is the estimate over all of the images."""
    size = torch.distributed.get_world_size()
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and m.track_running_stats:
            for stat in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(stat)
                stat /= size


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DataLoader, batches: int, *, device="cpu") -> None:
    """Re-estimate every BatchNorm's running statistics as the exact mean over ``batches`` training
    batches.

    Running statistics are a moving average over weights that kept changing; after a short run
    they lag the final weights, and evaluation mode uses them. Re-estimating them on the final
    weights is the usual remedy in architecture search (single-path one-shot, Once-for-All).
    """
    bns = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(device))
    finally:
        for m, momentum in zip(bns, momenta, strict=False):
            m.momentum = momentum
        model.train(was_training)


def chance_threshold(num_classes: int, n: int, z: float = 3.1) -> float:
    """The top-1 a model must reach on ``n`` held-out examples to be clearly above chance.

    A model that guesses scores ``p = 1 / num_classes`` give or take ``sqrt(p (1 - p) / n)``; a
    score ``z = 3.1`` of those above ``p`` happens by chance with probability below 0.001
    (one-sided). On the 1,258 digits the proxy holds out that is 0.126.
    """
    p = 1.0 / num_classes
    return p + z * math.sqrt(p * (1 - p) / max(n, 1))


def proxy_top1(
    spec, source, recipe: Recipe, *, seed: int = 0, report=None, on_epoch=None, init=None
) -> dict[str, float]:
    """Train ``spec`` briefly as the proxy recipe says and return its held-out accuracy.

    ``report(epoch, metrics)``, if given, receives the held-out metrics after every epoch but the
    last (a scheduler such as Ray's ASHA may stop the trial there); ``on_epoch(epoch, epochs)``
    is told when each epoch ends (progress, nothing evaluated).

    The candidate is the full spec (its MADDs are counted at full size elsewhere) trained at the
    recipe's resolution with the data set's number of classes; seeds fix init, order and split.
    With ``recipe.repeats`` > 1 it is trained that many times from different seeds (the same
    split) and scored by the mean: short training varies with the seed, and the mean varies less.
    ``init``: a weight source (``models.sources.load_source``) the candidate starts from, taking
    what matches (``models.upcycle.inherit``); the metrics then say which share it ``inherited``.
    """

    recipe = recipe.for_base(spec.base)
    res = recipe.resolution or spec.resolution
    train_ds, val_ds, num_classes = make_datasets(
        source, res, holdout=recipe.holdout, seed=recipe.seed
    )
    total = recipe.epochs * recipe.repeats
    runs = []
    for r in range(recipe.repeats):
        progress = (
            None if on_epoch is None else (lambda e, _, r=r: on_epoch(e + r * recipe.epochs, total))
        )
        runs.append(
            _train_once(
                spec.replace(num_classes=num_classes),
                train_ds,
                val_ds,
                recipe,
                seed=seed + recipe.seed + 1000 * r,
                report=report if r == 0 else None,
                on_epoch=progress,
                init=init,
            )
        )
    metrics = {k: sum(m[k] for m in runs) / len(runs) for k in runs[0]}
    return {
        **metrics,
        "top1_repeats": [m["top1"] for m in runs],
        "num_classes": num_classes,
        "val_size": len(val_ds),
        "chance_threshold": chance_threshold(num_classes, len(val_ds)),
    }


@own_random_state
def _train_once(
    spec, train_ds, val_ds, recipe: Recipe, *, seed: int, report, on_epoch, init
) -> dict:
    """One proxy training from ``seed``: held-out metrics and the last epoch's training loss.

    Inside a process group (Ray Train's workers) it trains data-parallel: the recipe's batch is
    the global one, split evenly, so the score does not depend on the number of workers."""
    from .fit import Hooks, fit  # fit() builds on this module's parts

    size, _ = world()
    acc = Accelerator.pick(int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(seed)
    model = build_for_training(spec, recipe)
    inherited = {}
    if init is not None:
        inherited["inherited"] = round(inherit(model, init).fraction, 4)

    def told(end) -> None:
        if on_epoch is not None:
            on_epoch(end.epoch, end.epochs)
        if report is not None and end.epoch < end.epochs:
            report(end.epoch, end.metrics)

    end = fit(
        model,
        recipe,
        train_ds,
        val_ds,
        epochs=recipe.epochs,
        seed=seed,
        batch=recipe.batch_size // size,
        num_classes=spec.num_classes,
        acc=acc,
        workers=recipe.workers,
        hooks=Hooks(on_epoch=told, every_epoch=report is not None),
    )
    return {**end.metrics, "train_loss": end.loss, **inherited}


def data_parallel(model: nn.Module, acc: Accelerator) -> nn.Module:
    """``model`` wrapped for DDP, which averages the workers' gradients: the global batch's
    gradient, at the recipe's learning rate. On GPUs BatchNorm normalises over the global batch
    (timm's SyncBatchNorm, which keeps its activations); PyTorch's needs a GPU, so on CPU each
    worker normalises over its own part of the batch."""
    if acc.device.type == "cpu":
        return nn.parallel.DistributedDataParallel(model)

    model = convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[acc.device])
