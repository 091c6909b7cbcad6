"""The search's proxy: `proxy_top1` trains a candidate briefly with `fit`, as the proxy recipe
says (once per repeat, each from a seed of its own), and scores it on held-out images."""

from __future__ import annotations

import os

import torch

from ..models.upcycle import inherit
from .accelerator import Accelerator
from .datasets import recipe_datasets
from .distributed import world
from .evaluate import chance_threshold
from .fit import Hooks, fit
from .init import build_for_training
from .random_state import own_random_state
from .recipe import Recipe


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
    train_ds, val_ds, num_classes = recipe_datasets(source, recipe, spec.resolution)
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
    size, _ = world()
    acc = Accelerator.pick(int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(seed)
    model = build_for_training(spec, recipe)
    inherited = {}
    if init is not None:
        got = inherit(model, init, noise=recipe.upcycle_noise, routers=recipe.upcycle_routers)
        inherited["inherited"] = round(got.fraction, 4)

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
