"""A run folder's ``pareto.json``, as read back: its points' schema (`FrontPoint`), the front read
and checked (`read_front`), its most accurate point (`best_point`) and that point's spec file
(`best_spec_path`).

It imports neither ``spec`` nor ``results``: ``spec.load_spec`` reads a run folder through it and
``results`` writes the file. The spec type (``spec.ArchSpec``), which checks the points' specs and
saves the best one, is the caller's argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from .errors import UsageError
from .validation import FORBID_EXTRA, MAX_MADDS, Float, StrictInt, parse, read_json


def read_front(run_dir, spec_type) -> list[dict]:
    """The Pareto front of a run folder (``pareto.json``), every spec on it checked by
    ``spec_type.from_dict``; `UsageError` if it is not one."""
    path = Path(run_dir) / "pareto.json"
    if not path.is_file():
        raise UsageError(
            f"{run_dir}: not a run folder (no pareto.json); run `condconv-nas search` first"
        )
    data = read_json(path, str(path))
    front = parse(list[FrontPoint], data, str(path))
    for point in front:  # every spec on the front must still be one
        try:
            spec_type.from_dict(point.spec)
        except UsageError as e:
            raise UsageError(f"{path}: trial {point.trial}: spec: {e}") from None
    return data


def best_point(front: Sequence[dict]) -> dict:
    """The most accurate point of a front (the cheaper of equals)."""
    return max(front, key=lambda r: (r["top1"], -r["madds"], -r["trial"]))


def best_spec_path(run_dir, spec_type) -> Path:
    """``RUN/specs/<trial>.json`` of the run's most accurate front point; `UsageError` for a
    folder that is no run, or a run with no trained trial yet."""
    front = read_front(run_dir, spec_type)
    if not front:
        raise UsageError(f"{run_dir}: no trained trial on the front yet")
    best = best_point(front)
    path = Path(run_dir) / "specs" / f"{best['trial']}.json"
    if not path.is_file():  # specs/ is rewritten with the front: a lost file is rewritten here
        spec_type.from_dict(best["spec"]).save(path)
    return path


# a count no larger than any budget's MADDs (numbers beyond would not even convert to floats)
_Count = Annotated[StrictInt, Field(ge=0, le=MAX_MADDS)]


@dataclass(frozen=True)
class FrontPoint:
    """One point of ``pareto.json``, as ``results.write_run`` writes it."""

    __pydantic_config__ = FORBID_EXTRA

    trial: _Count
    madds: _Count
    params: _Count
    top1: Annotated[Float, Field(ge=0, le=1)]
    spec: dict[str, Any]
    latency_ms: Annotated[Float, Field(gt=0)] | None = None  # predicted, runs that use latency
    measured_ms: Annotated[Float, Field(gt=0)] | None = None  # measured once the search ended
