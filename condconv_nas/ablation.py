"""Does a CondConv model use its per-example routing? `routing_ablation` scores it as it is, and
with every router's output fixed at its mean over training images, which makes each CondConv
layer one static kernel (``sum_i mean(r_i) W_i``): once with the BatchNorm statistics it trained
with, and once with them re-estimated for the fixed kernels (a fixed kernel shifts the
activations each BatchNorm was calibrated on). The drop, routed less fixed with both networks'
statistics re-estimated on the same images (so re-estimation alone, which helps a briefly
trained model, does not count), is what the per-example kernels carry; a drop near zero means
the model is a static network with extra parameters. It measures how much the trained model
relies on its routing, not what routing is worth against a static network trained as one (that
takes a training of each).

Spreads of the routing weights (`routing_analysis`) cannot say this: a small spread of the
weights moves the kernel far when the experts differ, and it is the accuracy that decides.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from .data import parse_source
from .errors import UsageError
from .layers import Router
from .routing_analysis import load_model, source_datasets
from .training.bn_stats import recalibrate_bn
from .training.evaluate import evaluate
from .validation import check_batch_size

MEAN_IMAGES = 10_000  # training images the mean routing is taken over (a seeded sample)


@contextlib.contextmanager
def fixed_routing(model: nn.Module, means: dict[str, torch.Tensor]):
    """Within the block, every router named in ``means`` returns its mean (one weight per
    expert) for every example, whatever its input."""
    routers = dict(model.named_modules())
    handles = [
        routers[name].register_forward_hook(lambda m, args, out, w=w: w.to(out).expand_as(out))
        for name, w in means.items()
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def mean_routing(model: nn.Module, loader: DataLoader) -> dict[str, torch.Tensor]:
    """Every router's mean output over ``loader``'s images (evaluation mode)."""
    sums: dict[str, list] = {}

    def hook(name):
        def add(module, args, out):
            s = sums.setdefault(name, [0.0, 0])
            s[0], s[1] = s[0] + out.detach().double().sum(0), s[1] + out.shape[0]

        return add

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, Router)
    ]
    try:
        _top1(model, loader)
    finally:
        for h in handles:
            h.remove()
    return {n: (s / c).float() for n, (s, c) in sums.items()}


def _top1(
    model: nn.Module,
    loader: DataLoader,
    *,
    means: dict[str, torch.Tensor] | None = None,
    fitting: DataLoader | None = None,
) -> float:
    """`training.evaluate`'s top-1, the model's mode kept; no images is a `UsageError`.
    ``means``: every router fixed at them (`fixed_routing`); ``fitting``: scored as a copy whose
    BatchNorm statistics are re-estimated over those images (the caller's model keeps its own)."""
    if not len(loader.dataset):
        raise UsageError("data: no examples")
    device = next(model.parameters()).device
    net = model if fitting is None else copy.deepcopy(model)
    was_training = net.training
    try:
        with fixed_routing(net, means or {}):
            if fitting is not None:
                recalibrate_bn(net, fitting, len(fitting), device=device)
            with torch.no_grad():
                return evaluate(net, loader, device=device)["top1"]
    finally:
        net.train(was_training)


def routing_ablation(
    model: nn.Module | str | os.PathLike,
    data: str | Dataset | DataLoader,
    *,
    mean_data: Dataset | DataLoader | None = None,
    mean_images: int = MEAN_IMAGES,
    batch_size: int = 256,
    seed: int = 0,
) -> dict:
    """Top-1 of ``model`` with its routing and with every router fixed at its mean.

    ``data``: a source (as ``--data``: its scored split, the test images where it has them, is
    scored; the mean routing is taken over ``mean_images`` of its training images, a sample
    seeded by ``seed``, so the test images choose nothing), or a ``Dataset`` / ``DataLoader``
    scored as given, with ``mean_data`` the images the means are taken over. ``model``: a built
    model or a checkpoint path (a model is left as it was). Returns ``top1`` (as routed),
    ``top1_fixed`` (every router at its mean, BatchNorm statistics as trained),
    ``top1_bn`` and ``top1_fixed_bn`` (as routed and fixed, each with its statistics
    re-estimated over the mean images), ``drop`` (``top1_bn - top1_fixed_bn``: both networks
    with statistics estimated alike), ``images`` scored and ``mean_images`` used.
    """
    check_batch_size(batch_size)
    if mean_images < 1:
        raise UsageError(f"mean_images: must be at least 1, got {mean_images}")
    model, path, recipe = load_model(model)
    if not any(isinstance(m, Router) for m in model.modules()):
        where = f"{path}: " if path else ""
        raise UsageError(f"{where}a static model (no CondConv layers): no routing to fix")
    spec = getattr(model, "spec", None)
    if isinstance(data, str):
        source = parse_source(data)
        pool, val_ds, _, _ = source_datasets(
            source, spec, recipe, resolution=None, holdout=None, seed=None
        )
        scored = DataLoader(val_ds, batch_size=batch_size, shuffle=False)
    elif isinstance(data, (Dataset, DataLoader)) and mean_data is not None:
        scored, pool = _as_loader(data, batch_size), _as_dataset(mean_data)
    else:
        raise UsageError(
            "data: a source string, or a Dataset / DataLoader with mean_data (the images the "
            "mean routing is taken over)"
        )
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=g)[:mean_images].tolist()
    fitting = DataLoader(Subset(pool, pick), batch_size=batch_size)
    means = mean_routing(model, fitting)
    top1, top1_fixed = _top1(model, scored), _top1(model, scored, means=means)
    top1_bn = _top1(model, scored, fitting=fitting)
    top1_fixed_bn = _top1(model, scored, means=means, fitting=fitting)
    return {
        "top1": top1,
        "top1_fixed": top1_fixed,
        "top1_bn": top1_bn,
        "top1_fixed_bn": top1_fixed_bn,
        "drop": top1_bn - top1_fixed_bn,
        "images": len(scored.dataset),
        "mean_images": len(pick),
    }


def _as_loader(data, batch_size: int) -> DataLoader:
    return data if isinstance(data, DataLoader) else DataLoader(data, batch_size, shuffle=False)


def _as_dataset(data) -> Dataset:
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, Dataset):
        return data
    raise UsageError(f"mean_data: expected a Dataset or DataLoader, got {type(data).__name__}")
