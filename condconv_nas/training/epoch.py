"""One training epoch: the seeded loader it runs over (`make_loader`) and its steps
(`train_epoch`: mixed precision, mixup, EMA, the scheduler and the routing temperature), which
raise `Diverged` on a NaN or infinite loss."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..layers.routing import set_routing_temperature
from .accelerator import CPU, Accelerator
from .distributed import unwrap
from .optim import Training


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


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
