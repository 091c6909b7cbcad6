"""A search's run folder as the ledger's records make it: trials.csv, the front, its pictures, and
the `SearchResult` that ``search()`` returns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..plots import draw_run
from ..results import trained_rows, write_run
from .front_latency import read_measured
from .options import format_madds
from .records import TrialRecord
from .task import SearchTask


@dataclass
class SearchResult:
    """What a search left in its run folder."""

    run_dir: Path  # the run folder (trials.csv, pareto.*, specs/, config.json)
    front: list[dict]  # the Pareto front: trial, madds, params, top1, spec (pareto.json)
    trials: list[dict]  # every trial, as in trials.csv
    finished: int  # finished trials that count toward the total
    total: int  # the run's total (--trials)
    running: int = 0  # trials other workers were still training when this one stopped

    @property
    def best(self) -> float | None:
        """The best top-1 of a trained trial so far."""
        return max((r["top1"] for r in trained_rows(self.trials)), default=None)

    @property
    def untrained(self) -> int:
        """Trials that trained to no better than chance (kept off the front)."""
        return sum(1 for r in self.trials if r.get("untrained"))


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; the run folder holds every finished trial (``.result``)."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__(f"interrupted after {result.finished}/{result.total} trials")
        self.result = result


class RunFolder:
    """The run folder's tables and front, rewritten from the records after each trial; its
    pictures too, at most every ``picture_every`` seconds, and as the search ends or is interrupted.

    Drawing them takes about a second, as long as counting an over-budget candidate: redrawn
    after every trial, they doubled the time of a search through cheap trials."""

    picture_every = 30.0

    def __init__(self, task: SearchTask, run_dir: Path, presets: dict, total: int) -> None:
        self.task, self.run_dir, self.presets, self.total = task, run_dir, presets, total
        self.drawn: float | None = None  # when the pictures were last drawn (time.monotonic)
        self.decisions = list(task.space.searched)
        res = task.space.resolution
        self.budgets = f"budget {format_madds(task.budget)} MADDs at {res}x{res} px" + (
            f" and {task.latency_budget:g} ms" if task.latency_budget is not None else ""
        )

    def write(
        self, records: list[TrialRecord], *, finished: int, running: int, final: bool = True
    ) -> SearchResult:
        """Write the folder from ``records``; ``finished`` and ``running``: the run's counts.
        ``final``: the search stops here, so the pictures are drawn however recently they were."""
        task = self.task
        rows = [r.row() for r in records]
        if task.uses_latency:
            measured = read_measured(self.run_dir)["measured_ms"]
            for r in rows:
                r["measured_ms"] = measured.get(r["spec_id"])
        front = write_run(self.run_dir, rows, self.decisions, objective=task.objective)
        now = time.monotonic()
        if final or self.drawn is None or now - self.drawn >= self.picture_every:
            self._draw(rows, front)
            self.drawn = now
        return SearchResult(self.run_dir, front, rows, finished, self.total, running)

    def _draw(self, rows: list[dict], front: list[dict]) -> None:
        task, presets = self.task, self.presets
        draw_run(
            self.run_dir,
            rows,
            front,
            budget=task.budget,
            presets={n: p["madds"] for n, p in presets.items()},
            title=f"{self.run_dir.name}: {self.budgets}, data {task.data}",
            objective=task.objective,
            latency_budget=task.latency_budget,
            preset_latency={n: p["latency_ms"] for n, p in presets.items() if "latency_ms" in p},
            resolution=task.space.resolution,
        )
