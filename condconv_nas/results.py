"""Run folders: the Pareto front (computed) kept apart from its plots (drawn), atomic writes."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import UsageError


def write_atomic(path: Path, data) -> None:
    """Write text or bytes to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves no partial temporary file behind
        tmp.unlink(missing_ok=True)
        raise


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


def pareto_front(rows: Sequence[dict]) -> list[dict]:
    """Non-dominated feasible rows (top1 up, MADDs down), sorted by MADDs; first of exact ties kept."""
    ok = trained_rows(rows)
    ok.sort(key=lambda r: (r["madds"], -r["top1"], r["trial"]))
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


def write_run(run_dir: Path, rows: list[dict], decisions: list[str]) -> list[dict]:
    """trials.csv, pareto.csv, pareto.json and specs/<trial>.json (the plots: ``plots.draw_run``).
    Returns the front."""
    from .spec import ArchSpec  # noqa: PLC0415

    columns = [
        "trial",
        "state",
        "status",
        "feasible",
        "madds",
        "params",
        "top1",
        "top5",
        "untrained",
        "reused_from",
        "spec_id",
        "preset",
        "seconds",
    ]
    write_atomic(run_dir / "trials.csv", _csv(rows, columns + decisions))
    front = pareto_front(rows)
    out = [
        {
            "trial": r["trial"],
            "madds": r["madds"],
            "params": r["params"],
            "top1": r["top1"],
            "spec": r["spec"],
        }
        for r in front
    ]
    write_atomic(
        run_dir / "pareto.csv",
        _csv(front, ["trial", "madds", "params", "top1", "spec_id"] + decisions),
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
    """How many trials of a run folder trained to no better than chance (0 if it has no trials.csv)."""
    path = Path(run_dir) / "trials.csv"
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        return sum(1 for r in csv.DictReader(f) if r.get("untrained") == "True")


def load_front(run_dir) -> list[dict]:
    """The Pareto front of a run folder (``pareto.json``); `UsageError` if it is not one."""
    path = Path(run_dir) / "pareto.json"
    if not path.is_file():
        raise UsageError(
            f"{run_dir}: not a run folder (no pareto.json); run `condconv-nas search` first"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
