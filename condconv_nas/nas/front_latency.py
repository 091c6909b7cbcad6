"""The front's networks measured on this machine once a latency search ends, kept in the run
folder's ``measured.json`` (spec id -> milliseconds) beside what the search predicted."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic
from ..latency import measure_latencies
from ..latency.table import table_key
from ..spec import ArchSpec
from .task import SearchTask


def measure_front(task: SearchTask, run_dir: Path, front: list[dict]) -> dict[str, float]:
    """Measure the front's networks not measured yet on this machine (interleaved, once each) and
    keep the figures in the run folder's ``measured.json``: spec id -> milliseconds."""
    measured = read_measured(run_dir)
    key = table_key(task.latency_batch)
    if measured.get("machine") not in (None, key):  # another machine's figures: not ours to keep
        measured = {"measured_ms": {}}
    specs = {s.id: s for s in (ArchSpec.from_dict(r["spec"]) for r in front)}
    todo = [s for i, s in specs.items() if i not in measured["measured_ms"]]
    if todo:
        times = measure_latencies(todo, batch=task.latency_batch)
        measured["measured_ms"].update(
            {s.id: round(t, 3) for s, t in zip(todo, times, strict=True)}
        )
        measured.update(batch=task.latency_batch, machine=key)
        write_atomic(run_dir / "measured.json", json.dumps(measured, indent=2) + "\n")
    return measured["measured_ms"]


def read_measured(run_dir: Path) -> dict:
    """The run folder's measured latencies (``measured.json``), or an empty record."""
    try:
        data = json.loads((run_dir / "measured.json").read_text())
    except (OSError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("measured_ms"), dict):
        return {"measured_ms": {}}
    return data
