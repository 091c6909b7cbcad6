"""A trial's record: what the ledger writes of a trial (``KEYS``) and reads back as a `TrialRecord`,
the row of the run folder's trials.csv."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .owner import STARTED, WORKER
from .study import State, Stored

# What the ledger records of a trial besides its point and values: nothing else is written.
KEYS = frozenset(
    {
        "spec", "spec_id", "madds", "params", "latency_ms", "feasible", "over",  # judged
        "top1", "top5", "untrained", "workers", "inherited",  # trained
        "reused_from",  # an earlier trial's result, reused
        "stopped_early", "top1_at_stop", "epochs_at_stop",  # stopped by Ray's ASHA
        "preset", "retry_of",  # queued: a preset, or a point evaluated again
        "interrupted", "surplus",  # not counted: Ctrl-C, or past the total
        WORKER, STARTED,  # its owner (`Owner`)
    }
)  # fmt: skip


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the run, as the run folder shows it: `row` is its line of trials.csv."""

    trial: int
    state: str  # COMPLETE, FAIL, PRUNED (stopped early) or RUNNING
    status: str  # what happened, in a word (`trial_status`)
    feasible: bool | None  # within every budget
    madds: int | None
    latency_ms: float | None  # predicted, when the search uses latency
    params: int | None
    top1: float | None  # of a finished trial within the budgets
    top5: float | None
    untrained: bool | None  # not clearly above chance: kept off the front
    inherited: float | None  # the share of parameters taken from the start weights
    reused_from: int | None  # the trial whose result it reused
    spec_id: str | None
    preset: str | None
    seconds: float | None
    workers: int | None  # processes it trained on
    spec: dict | None
    decisions: dict[str, Any] = field(default_factory=dict)  # the searched decisions' values
    over: tuple[str, ...] = ()  # the budgets it is over ("madds", "latency")
    stopped_at: tuple[int, float | None] | None = None  # (epoch, top-1) where ASHA stopped it

    def row(self) -> dict:
        """Its line of trials.csv: the fields above ``decisions``, then one column per decision."""
        row = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_ROW}
        return {**row, **self.decisions}

    @classmethod
    def of(cls, t: Stored, decisions: list[str]) -> TrialRecord:
        a = t.attrs
        return cls(
            trial=t.number,
            state=t.state.value,
            status=trial_status(t),
            feasible=a.get("feasible"),
            madds=a.get("madds"),
            latency_ms=a.get("latency_ms"),
            params=a.get("params"),
            top1=t.values[0] if t.state is State.COMPLETE and a.get("feasible") else None,
            top5=a.get("top5"),
            untrained=a.get("untrained"),
            inherited=a.get("inherited"),
            reused_from=a.get("reused_from"),
            spec_id=a.get("spec_id"),
            preset=a.get("preset"),
            seconds=t.seconds,
            workers=a.get("workers"),
            spec=a.get("spec"),
            decisions={d: t.params.get(d) for d in decisions},
            over=tuple(a.get("over") or ()),
            stopped_at=(a.get("epochs_at_stop"), a.get("top1_at_stop"))
            if a.get("stopped_early")
            else None,
        )


_NOT_IN_ROW = ("decisions", "over", "stopped_at")


def trial_status(t: Stored) -> str:
    """What happened to a trial, in a word: trained, untrained (not clearly above chance), reused
    (an earlier trial's result), over_budget (never trained), stopped_early, failed or running."""
    a = t.attrs
    if t.state is not State.COMPLETE:
        return {State.FAIL: "failed", State.RUNNING: "running"}.get(
            t.state, "stopped_early" if a.get("stopped_early") else t.state.value.lower()
        )
    if not a.get("feasible"):
        return "over_budget"
    if a.get("reused_from") is not None:
        return "reused"
    return "untrained" if a.get("untrained") else "trained"


def retried(trials: list[Stored]) -> set[int]:
    """Numbers of the trials whose point a later trial evaluates again."""
    return {t.retry_of for t in trials if t.retry_of is not None}


def shown(t: Stored, retried: set[int]) -> bool:
    """Whether a trial is one of the run's: not waiting, interrupted, retried or surplus."""
    return not (
        t.state is State.WAITING
        or t.attrs.get("interrupted")
        or t.number in retried
        or (t.state is State.PRUNED and not t.attrs.get("stopped_early"))
    )


def counts(t: Stored, retried: set[int]) -> bool:
    """Whether a trial counts toward the run's total: COMPLETE, RUNNING, PRUNED when stopped
    early by a scheduler (Ray's ASHA), and FAIL unless the failure was an interruption (Ctrl-C)
    or a dead worker's trial that was evaluated again."""
    return (
        t.state in (State.COMPLETE, State.RUNNING)
        or (t.state is State.FAIL and not t.attrs.get("interrupted") and t.number not in retried)
        or (t.state is State.PRUNED and bool(t.attrs.get("stopped_early")))
    )
