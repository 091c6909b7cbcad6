"""The images a recipe trains and scores on, built the same way for every training: `train()`, the
dense start, the search's proxy and the one-shot supernet (so a recipe key such as ``autoaugment``
acts in all of them)."""

from __future__ import annotations

from ..data import DataSource, make_datasets
from .recipe import Recipe


def recipe_datasets(source: DataSource, recipe: Recipe, resolution: int, *, split: str = "search"):
    """(train, val, num_classes) of ``source`` at the recipe's resolution (else ``resolution``,
    the spec's), with the recipe's held-out share, seed and augmentation (`data.make_datasets`)."""
    return make_datasets(
        source,
        recipe.resolution or resolution,
        holdout=recipe.holdout,
        seed=recipe.seed,
        autoaugment=recipe.autoaugment,
        split=split,
    )
