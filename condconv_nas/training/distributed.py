"""Training in a process group (``torchrun``, Ray Train's workers): this process's place in it
(`world`), figures summed over its workers (`sum_over_workers`), and the DDP wrapper that
averages their gradients (`data_parallel`; `unwrap` takes the network out of it)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import convert_sync_batchnorm

from .accelerator import Accelerator


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


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (EMA averages the weights, not it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def data_parallel(model: nn.Module, acc: Accelerator) -> nn.Module:
    """``model`` wrapped for DDP, which averages the workers' gradients: the global batch's
    gradient, at the recipe's learning rate. On GPUs BatchNorm normalises over the global batch
    (timm's SyncBatchNorm, which keeps its activations); PyTorch's needs a GPU, so on CPU each
    worker normalises over its own part of the batch."""
    if acc.device.type == "cpu":
        return nn.parallel.DistributedDataParallel(model)

    model = convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[acc.device])
