"""Scoring a model on held-out images: its top-1, top-5 and loss (`evaluate`), and the top-1 that
is clearly above chance (`chance_threshold`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .distributed import sum_over_workers


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


def chance_threshold(num_classes: int, n: int, z: float = 3.1) -> float:
    """The top-1 a model must reach on ``n`` held-out examples to be clearly above chance.

    A model that guesses scores ``p = 1 / num_classes`` give or take ``sqrt(p (1 - p) / n)``; a
    score ``z = 3.1`` of those above ``p`` happens by chance with probability below 0.001
    (one-sided). On the 1,258 digits the proxy holds out that is 0.126.
    """
    p = 1.0 / num_classes
    return p + z * math.sqrt(p * (1 - p) / max(n, 1))
