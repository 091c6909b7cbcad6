"""BatchNorm running statistics: the modules that keep them (`BATCH_NORMS`), re-estimated on a
model's final weights (`recalibrate_bn`) and averaged over a process group's workers
(`average_bn_stats`)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

# every batch norm with running statistics (timm's BatchNormAct2d is a BatchNorm2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
