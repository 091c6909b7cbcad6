"""The run folder's ``config.json``, generated from `SearchConfig`'s fields, and the checks that a
resumed run is the run in its folder: every setting marked ``same_run`` (and what the space and
recipe resolve to) must match; ``--seed`` may differ (it seeds each worker's sampler)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..training.recipe import Recipe
from ..validation import read_json, short_repr
from .options import SearchConfig

# Not settings but what they resolve to, compared as the same_run settings are (a config written
# before the key existed stands for None).
RESOLVED_SAME_RUN = {"decisions": None, "recipe": None}


def run_config(options: SearchConfig, **resolved: Any) -> dict[str, Any]:
    """Every field of ``options``' class, as the run resolved it (``resolved``: the budget in
    MADDs, the space's name, the run's total of trials...) or else as given."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)} | resolved


def same_run(settings: type[SearchConfig] = SearchConfig) -> dict[str, Any]:
    """What a resumed run must keep, with what a config written before each key stands for."""
    fields = dataclasses.fields(settings)
    return {f.name: f.default for f in fields if f.metadata["same_run"]} | RESOLVED_SAME_RUN


def check_resume(
    run_dir: Path, config: dict, settings: type[SearchConfig] = SearchConfig
) -> dict | None:
    """The config of the run being resumed (None for a new run); `UsageError` if it is another
    run's."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    old = read_json(path, str(path))
    if not isinstance(old, dict):
        raise UsageError(f"{path}: not a run's config.json (not a JSON object)")
    fields = Recipe().__dict__  # a recipe field added since the run began stands at its default
    for key, default in same_run(settings).items():
        before, now = old.get(key, default), config.get(key, default)
        if key == "recipe" and isinstance(before, dict) and isinstance(now, dict):
            before, now = {**fields, **before}, {**fields, **now}
        if before != now:
            raise UsageError(
                f"run folder {run_dir} holds a run with a different {key} "
                f"({short_repr(old.get(key))}); pick another --run or --results"
            )
    return old


def check_storage(run_dir: Path, old: dict | None, url: str) -> None:
    """`UsageError` if the run folder's results come from a study in another storage: a rerun
    with another --storage would replace them with another study's."""
    before = (old or {}).get("storage")
    # the run's own study.db, in a run folder that was moved since
    own = f"/{run_dir.name}/study.db"
    moved = before and url.endswith(own) and before.endswith(own)
    if before and before != url and not moved:
        raise UsageError(
            f"run folder {run_dir} holds the results of the study in {before}: pass --storage "
            f"{before} to go on with it, or pick another --run"
        )
