"""The run's ledger: every trial of a run, judged, recorded and counted the same way whichever
searcher proposed it. Every searcher (Optuna's sampler, Ray Tune, NNI) receives a `Ledger` and
runs its trials through it; the run folder's rows are the ledger's `TrialRecord`s.

The ledger keeps its trials in a `Study` (``nas/study.py``: an Optuna study, SQLite in the run
folder by default), so a run resumes and several workers can share it: two objectives (max top-1,
min MADDs), the budgets as constraints. ``--trials`` is the run's total: a trial counts once it is
COMPLETE or FAIL (a real failure); trials interrupted by Ctrl-C and surplus trials started by
concurrent workers after the total was reached do not count (`records.counts`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .owner import WORKER, Owner
from .records import KEYS, TrialRecord, counts, retried, shown
from .study import State, Stored, Study, Trial
from .task import SearchTask

JUDGE_S = 120.0  # `wait_for_twin` waits this long at most for another worker to judge a point


@dataclass(frozen=True)
class Callbacks:
    """What a search reports while it runs (Archai's per-iteration callbacks)."""

    on_trial: Callable[[TrialRecord], None] | None = None  # a trial of the run finished
    # a trial in training finished an epoch: (trial number, epoch, epochs)
    on_epoch: Callable[[int, int, int], None] | None = None


@dataclass(frozen=True)
class Tally:
    """The run's trials at one moment."""

    records: list[TrialRecord]  # every trial shown (`records.shown`), in the order they began
    finished: int  # counted trials no longer running
    running: int  # counted trials still running (here or in other workers)


class Ledger:
    """The run's trials, for a searcher: ask for a trial, have its point judged, train it through
    the task, tell its result; count them against the run's ``total``. Every finished trial of the
    run reaches ``callbacks.on_trial`` as a `TrialRecord`. What is recorded of a trial is the
    ledger's to write (`records.KEYS`) and to read (`records`)."""

    def __init__(
        self, study: Study, task: SearchTask, total: int, callbacks: Callbacks = Callbacks()
    ) -> None:
        self.study, self.task, self.total, self.callbacks = study, task, total, callbacks
        self.decisions = list(task.space.searched)
        self._unjudged_since: dict[int, float] = {}  # `wait_for_twin`: first seen unjudged

    # ------------------------------------------------------------------ counting

    @staticmethod
    def _counting(trials: list[Stored]) -> list[Stored]:
        again = retried(trials)
        return [t for t in trials if counts(t, again)]

    def counted(self, before: int | None = None) -> int:
        """Trials that count toward the total (before trial number ``before``)."""
        counting = self._counting(self.study.trials())
        return sum(1 for t in counting if before is None or t.number < before)

    def finished(self) -> int:
        """Counted trials that are no longer running."""
        return self.tally().finished

    @property
    def full(self) -> bool:
        """Whether the run holds its total of counted trials."""
        return self.counted() >= self.total

    def records(self) -> list[TrialRecord]:
        """Every trial of the run so far, in the order they began (`records.shown`)."""
        return self.tally().records

    def tally(self) -> Tally:
        """The records and the counts from one read of the study (a run folder's write)."""
        trials = self.study.trials()
        again = retried(trials)
        counting = self._counting(trials)
        finished = sum(1 for t in counting if t.state is not State.RUNNING)
        records = [TrialRecord.of(t, self.decisions) for t in trials if shown(t, again)]
        return Tally(records, finished, len(counting) - finished)

    # ------------------------------------------------------------------ a trial's life

    def ask(self, fixed: dict | None = None) -> Trial:
        """A new trial of this process (a queued one first: presets, points to evaluate again),
        claimed for it at once (`Owner`: should the process die, the next run on this host takes
        the trial back); ``fixed``: its point, chosen by the searcher instead of the sampler."""
        trial = self.study.ask(fixed, self.task.space.searched)
        recorded = trial.attrs  # a point evaluated again holds its dead owner's
        for key, value in Owner.me().attrs().items():
            if recorded.get(key) != value:
                self._set(trial, key, value)
        return trial

    def surplus(self, trial: Trial) -> bool:
        """Whether the run's total was reached by other workers before this trial began: it is
        then ended, off the count and the run folder."""
        if self.counted(before=trial.number) < self.total:
            return False
        self._set(trial, "surplus", True)
        self.study.tell(trial, None, State.PRUNED)
        return True

    def point(self, trial: Trial) -> dict:
        """The trial's point of the space, from the study's sampler (or the queue)."""
        return self.task.space.sample(trial.suggest)

    def judge(self, trial: Trial, params: dict) -> tuple[float, float] | None:
        """Count one point and record it on its trial (spec, MADDs, its predicted latency when the
        search uses latency, and the budgets as constraints).

        Returns the trial's final values when it needs no training: over a budget (recorded, never
        trained) or an architecture the study already trained (its result reused). Every searcher
        judges its points here, on the process that asked for them (the driver, for Ray), so their
        studies and run folders look the same and the latency is that machine's.
        """
        task = self.task
        spec, madds, n_params = task.measure(params)
        latency = round(task.latency(spec), 3) if task.uses_latency else None
        feasible = task.within_budgets(madds, latency)
        judged = dict(spec=spec.to_dict(), spec_id=spec.id, madds=madds, params=n_params)
        self._record(trial, **judged, latency_ms=latency, feasible=feasible)
        trial.constrain("madds", madds - task.budget)
        if task.latency_budget is not None:
            trial.constrain("latency", latency - task.latency_budget)
        if not feasible:
            budgets = (("madds", madds, task.budget), ("latency", latency, task.latency_budget))
            self._set(trial, "over", [n for n, v, b in budgets if b is not None and v > b])
            return 0.0, float(madds)
        self.wait_for_twin(spec.id, trial.number, trial.started)
        same = [
            t
            for t in self.study.trials(State.COMPLETE)
            if t.attrs.get("spec_id") == spec.id and t.attrs.get("feasible")
        ]
        if same:
            a = same[0].attrs
            reused = {k: a.get(k) for k in ("top1", "top5", "untrained")}
            self._record(trial, reused_from=same[0].number, **reused)
            return same[0].values[0], float(madds)
        return None

    def feasible(self, trial: Trial) -> bool:
        """Whether a judged trial is within every budget."""
        return bool(trial.attrs.get("feasible"))

    def wait_for_twin(
        self, spec_id: str, number: int, started: datetime | None = None, poll: float = 2.0
    ) -> None:
        """Wait while a trial of another worker process that began before this one trains the same
        architecture (its result is then reused): two workers never train one architecture at the
        same time. Trials are ordered by when they began to run, then by number (a queued trial's
        number is older than its start). The first of an architecture trains it; so this trial
        first waits until every trial of another worker that began before it has judged its point
        (a worker that began first may record last), for at most `JUDGE_S` each (one killed
        before judging would block every later trial). Ends when no earlier twin runs, or when its
        worker is found dead (then this trial trains it). Trials of this process (Ray's concurrent
        trials, all asked by one driver) are not waited for: the driver would wait for itself.
        Across machines the order is as good as their clocks agree."""
        me = Owner.me().worker
        mine = (started, number)
        while True:
            earlier = [
                t
                for t in self.study.trials(State.RUNNING)
                if t.number != number
                and _began_before((t.started, t.number), mine)
                and t.attrs.get(WORKER) != me
                and not _gone(t)
            ]
            now = time.monotonic()
            unjudged = [
                t
                for t in earlier
                if "feasible" not in t.attrs  # recorded last
                and now - self._unjudged_since.setdefault(t.number, now) < JUDGE_S
            ]
            twins = [
                t for t in earlier if t.attrs.get("spec_id") == spec_id and t.attrs.get("feasible")
            ]
            if not (twins or unjudged):
                return
            # a point is judged in seconds; a twin trains for minutes
            time.sleep(poll if twins else min(poll, 0.2))
            self.study.fail_stale()  # a dead worker elsewhere: after its heartbeat's grace period

    def train(self, trial: Trial, params: dict) -> tuple[float, float]:
        """Train a judged point through the task (its epochs reported) and record the result."""
        on_epoch = self.callbacks.on_epoch
        progress = None if on_epoch is None else lambda e, n: on_epoch(trial.number, e, n)
        return self.record(trial, self.task.evaluate(params, on_epoch=progress))

    def record(self, trial: Trial, result: dict) -> tuple[float, float]:
        """The values of a trained trial (its top-1, top-5 and workers kept)."""
        if result.get("top1") is None or not math.isfinite(result["top1"]):
            raise RuntimeError(f"no finite top-1 ({result.get('top1')})")
        self._record(
            trial,
            top1=result["top1"],
            top5=result.get("top5"),
            untrained=bool(result.get("untrained")),
            workers=result.get("workers", 1),  # processes it trained on
            inherited=result.get("inherited"),  # the share of parameters taken from --init
        )
        return result["top1"], float(result["madds"])

    def tell(self, trial: Trial, values=None) -> None:
        """A trial finished with ``values``; without them, it failed."""
        state = State.FAIL if values is None else State.COMPLETE
        self.report(self.study.tell(trial, values, state))

    def stopped_early(
        self, trial: Trial, epoch: int, top1: float | None, *, workers: int | None = None
    ) -> None:
        """A scheduler (Ray's ASHA) stopped the trial after ``epoch`` (trained on ``workers``
        processes): it counts, but is off the front."""
        self._record(
            trial, stopped_early=True, top1_at_stop=top1, epochs_at_stop=epoch, workers=workers
        )
        self.report(self.study.tell(trial, None, State.PRUNED))

    def abandon(self, trial: Trial) -> None:
        """Fail a trial that Ctrl-C cut short, marked interrupted: it does not count, and the next
        start evaluates its point again (`recover`)."""
        self._set(trial, "interrupted", True)
        self.study.tell(trial, None, State.FAIL)

    def evaluate(self, trial: Trial, params: dict) -> tuple[float, float] | None:
        """Judge, train where needed and tell one trial; its values (None if it failed)."""
        try:
            values = self.judge(trial, params)
            values = values if values is not None else self.train(trial, params)
        except KeyboardInterrupt:
            self.abandon(trial)
            raise
        except Exception as e:  # as Optuna's loop does: the search goes on
            logging.getLogger(__name__).warning("trial %d failed: %r", trial.number, e)
            self.tell(trial)
            return None
        self.tell(trial, values)
        return values

    def evaluate_queued(self) -> None:
        """Evaluate the queued trials (presets that fit, interrupted points) before a searcher
        proposes points of its own."""
        while not self.full and self.study.trials(State.WAITING):
            trial = self.ask()
            self.evaluate(trial, self.point(trial))

    def report(self, t: Stored) -> None:
        """Tell ``callbacks.on_trial`` of a finished trial, if it is one of the run's."""
        if self.callbacks.on_trial is not None and shown(t, set()):
            self.callbacks.on_trial(TrialRecord.of(t, self.decisions))

    def _record(self, trial: Trial, **values) -> None:
        """Record what is known (not None) of a trial."""
        for key, value in values.items():
            if value is not None:
                self._set(trial, key, value)

    @staticmethod
    def _set(trial: Trial, key: str, value) -> None:
        if key not in KEYS:
            raise KeyError(f"{key!r} is not part of a trial's record (records.KEYS)")
        trial.set(key, value)

    # ------------------------------------------------------------------ a run's start

    def enqueue_presets(self, presets: dict[str, dict]) -> None:
        """The paper's presets that fit the budget go first (once per run), so the front is never
        worse."""
        for name, params in presets.items():
            self.study.enqueue(params, {"preset": name}, once=True)

    def recover(self) -> int:
        """Take back what earlier processes left: RUNNING trials of a dead process are failed and
        their points queued again (at once when it was a process of this host, after their
        heartbeat's grace period otherwise: another host's, or one killed before it recorded
        itself), and the points Ctrl-C cut short are queued again. Returns how many trials were a
        dead process of this host's."""
        self.study.fail_stale()  # queued again by the heartbeat's callback
        recovered = 0
        for t in self.study.trials(State.RUNNING):
            if not _gone(t):
                continue
            try:
                self.study.tell(t.number, None, State.FAIL)
            except ValueError:
                continue  # another worker starting at the same time recovered it first
            self._again(t)
            recovered += 1
        trials = self.study.trials()
        again = retried(trials)
        for t in trials:
            if t.state is State.FAIL and t.attrs.get("interrupted") and t.number not in again:
                self._again(t)
        return recovered

    def _again(self, t: Stored) -> None:
        """Queue ``t``'s point again (keeping its preset name)."""
        preset = {"preset": t.attrs["preset"]} if "preset" in t.attrs else {}
        self.study.enqueue(t.params, {"retry_of": t.number, **preset})


def _began_before(a: tuple[datetime | None, int], b: tuple[datetime | None, int]) -> bool:
    """Whether the trial keyed ``a`` (start, number) began before the one keyed ``b``."""
    if a[0] is None or b[0] is None or a[0] == b[0]:
        return a[1] < b[1]
    return a[0] < b[0]


def _gone(t: Stored) -> bool:
    """Whether the trial's owner was a process of this host that no longer runs."""
    owner = Owner.of(t.attrs)
    return owner is not None and owner.gone()
