"""``fit()``: the one epoch loop behind ``train()``, the proxy and the dense start.

Every recipe key acts here the same for all three: ``train_subset`` picks the training images,
``bn_recalibrate`` re-estimates BatchNorm statistics before the final evaluation, and inside a
process group (``torchrun``, Ray Train's workers) each worker trains on its shard of the images
and scores its shard of the held-out ones, the figures summed over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from ..data import subset
from ..errors import UsageError
from .accelerator import Accelerator
from .bn_stats import average_bn_stats, recalibrate_bn
from .distributed import data_parallel, sum_over_workers, world
from .epoch import make_loader, train_epoch
from .evaluate import evaluate
from .optim import Training, setup_training
from .recipe import Recipe


@dataclass
class EpochEnd:
    """What ``Hooks.on_epoch`` hears after each epoch."""

    epoch: int  # epochs done, from 1
    epochs: int
    loss: float  # mean training loss of the epoch, over all workers
    seconds: float  # the epoch's training time
    metrics: dict[str, float] | None  # held-out top1, top5, loss, when evaluated after it
    training: Training  # the model, optimizer, scheduler and EMA (for a checkpoint)
    evaluated: nn.Module  # the network that is scored (the EMA's when there is one)


@dataclass(frozen=True)
class Hooks:
    """How a training reports to its caller: each is optional."""

    # a progress object for an epoch's steps (``update(1)``, ``set_postfix``, ``close()``)
    bar: Callable[[int, int, int], Any] | None = None  # (epoch, epochs, steps)
    on_epoch: Callable[[EpochEnd], None] | None = None
    # evaluate after every epoch (True), or only after the last one
    every_epoch: bool = False


def fit(
    model: nn.Module,
    recipe: Recipe,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    epochs: int,
    seed: int,
    batch: int,
    num_classes: int,
    acc: Accelerator,
    lr_scale: int = 1,
    workers: int = 0,
    val_batch: int = 256,
    restore: dict | None = None,
    hooks: Hooks = Hooks(),
) -> EpochEnd | None:
    """Train ``model`` (built and seeded by the caller) for ``epochs`` from ``restore``'s epoch
    (a checkpoint's ``model``, ``optimizer``, ``scheduler``, ``ema``, ``epoch``) or from zero;
    ``batch`` images per worker at ``lr_scale`` times the recipe's lr. Returns the last epoch's
    end, evaluated (None when ``restore`` has trained them all)."""
    size, rank = world()
    train_ds = subset(train_ds, recipe.train_subset, recipe.seed)
    sampler = None
    if size > 1:
        sampler = DistributedSampler(
            train_ds, num_replicas=size, rank=rank, seed=seed, drop_last=True
        )
        val_ds = Subset(val_ds, range(rank, len(val_ds), size))
    # mixup needs whole batches; otherwise keep every image (small folders have less than one)
    train_loader = make_loader(
        train_ds,
        batch,
        train=True,
        seed=seed,
        workers=workers,
        sampler=sampler,
        drop_last=recipe.mixup_alpha > 0 and len(train_ds) >= batch * size,
    )
    if len(train_loader) == 0:
        raise UsageError(f"{len(train_ds)} training images, fewer than one batch of {batch}")
    val_loader = make_loader(val_ds, val_batch, train=False, seed=0, workers=workers)
    model = model.to(acc.device)
    t = setup_training(
        model if size == 1 else data_parallel(model, acc),
        recipe,
        num_classes=num_classes,
        steps_per_epoch=len(train_loader),
        epochs=epochs,
        world_size=lr_scale,
    )
    start = 0 if restore is None else _restore(t, model, restore)
    evaluated = t.ema.module if t.ema is not None else model
    end = None
    for epoch in range(start, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = None if hooks.bar is None else hooks.bar(epoch + 1, epochs, len(train_loader))
        t0 = time.time()
        loss = train_epoch(t, train_loader, epoch, acc=acc, progress=bar)
        seconds = time.time() - t0
        if bar is not None:
            bar.close()
        if size > 1:
            loss = sum_over_workers(loss)[0] / size
        last = epoch + 1 == epochs
        metrics = None
        if last or hooks.every_epoch:
            if last and recipe.bn_recalibrate:
                recalibrate_bn(evaluated, train_loader, recipe.bn_recalibrate, device=acc.device)
            if size > 1:
                average_bn_stats(evaluated)
            metrics = evaluate(evaluated, val_loader, device=acc.device, shared=size > 1)
        end = EpochEnd(epoch + 1, epochs, loss, seconds, metrics, t, evaluated)
        if hooks.on_epoch is not None:
            hooks.on_epoch(end)
    return end


def _restore(t: Training, model: nn.Module, state: dict) -> int:
    """A checkpoint's weights and optimizer, scheduler and EMA states; the epochs it had done."""
    model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scheduler is not None and state.get("scheduler"):
        t.scheduler.load_state_dict(state["scheduler"])
    if t.ema is not None and state.get("ema"):
        t.ema.module.load_state_dict(state["ema"])
    return state["epoch"]
