"""Run folders: the Pareto front (computed) kept apart from its plots (drawn), atomic writes; the
front is read back through `front_file`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from . import front_file
from .errors import UsageError
from .files import write_atomic
from .spec import ArchSpec


def trained_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows of feasible trials that completed with a top-1 clearly above chance."""
    return [
        r
        for r in rows
        if r.get("feasible")
        and r.get("state") == "COMPLETE"
        and r.get("top1") is not None
        and not r.get("untrained")
    ]


COSTS = {"madds": "madds", "latency": "latency_ms"}  # objective -> the row's cost column


def pareto_front(rows: Sequence[dict], objective: str = "madds") -> list[dict]:
    """Non-dominated feasible rows (top1 up, cost down), sorted by cost; first of exact ties
    kept. The cost is MADDs, or the predicted latency for ``objective="latency"``."""
    cost = COSTS[objective]
    ok = [r for r in trained_rows(rows) if r.get(cost) is not None]
    ok.sort(key=lambda r: (r[cost], -r["top1"], r["trial"]))
    front, best = [], float("-inf")
    for r in ok:
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def write_run(
    run_dir: Path, rows: list[dict], decisions: list[str], *, objective: str = "madds"
) -> list[dict]:
    """trials.csv, pareto.csv, pareto.json and specs/<trial>.json (the plots: ``plots.draw_run``).
    Returns the front, by ``objective`` (``pareto_front``). When the run uses latency (its rows
    carry ``latency_ms``), the front's points carry their predicted ``latency_ms`` and their
    ``measured_ms`` (None until measured)."""

    columns = [
        "trial",
        "state",
        "status",
        "feasible",
        "madds",
        "latency_ms",
        "params",
        "top1",
        "top5",
        "untrained",
        "reused_from",
        "spec_id",
        "preset",
        "seconds",
        "workers",
    ]
    if any(r.get("inherited") is not None for r in rows):  # a run started from --init weights
        columns.insert(columns.index("untrained") + 1, "inherited")
    write_atomic(run_dir / "trials.csv", _csv(rows, columns + decisions))
    front = pareto_front(rows, objective)
    latency = objective == "latency" or any(r.get("latency_ms") is not None for r in rows)
    extra = ["latency_ms", "measured_ms"] if latency else []
    out = [
        {
            "trial": r["trial"],
            "madds": r["madds"],
            **{k: r.get(k) for k in extra},
            "params": r["params"],
            "top1": r["top1"],
            "spec": r["spec"],
        }
        for r in front
    ]
    write_atomic(
        run_dir / "pareto.csv",
        _csv(front, ["trial", "madds", *extra, "params", "top1", "spec_id"] + decisions),
    )
    write_atomic(run_dir / "pareto.json", json.dumps(out, indent=2) + "\n")
    for r in front:
        ArchSpec.from_dict(r["spec"]).save(run_dir / "specs" / f"{r['trial']}.json")
    on_front = {f"{r['trial']}.json" for r in front}
    for old in (run_dir / "specs").glob("*.json"):  # specs/ holds the current front, no more
        if old.name not in on_front:
            old.unlink()
    return out


def count_untrained(run_dir) -> int:
    """How many trials of a run folder trained to no better than chance (0 if it has no
    trials.csv)."""
    path = Path(run_dir) / "trials.csv"
    if not path.is_file():
        return 0
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return sum(1 for r in csv.DictReader(f) if r.get("untrained") == "True")
    except (csv.Error, UnicodeDecodeError) as e:  # a field over csv's limit, not text
        raise UsageError(f"{path}: not a run's trials.csv ({str(e).splitlines()[0]})") from None


def load_front(run_dir) -> list[dict]:
    """The Pareto front of a run folder (``pareto.json``); `UsageError` if it is not one."""
    return front_file.read_front(run_dir, ArchSpec)


def best_spec_path(run_dir) -> Path:
    """``RUN/specs/<trial>.json`` of the run's most accurate front point; `UsageError` for a
    folder that is no run, or a run with no trained trial yet."""
    return front_file.best_spec_path(run_dir, ArchSpec)
