"""The run's ledger: every trial of a run, judged, recorded and counted the same way whichever
searcher proposed it. Every searcher (Optuna, Ray Tune, NNI) receives a `Ledger` and writes its
trials through it; the run folder's rows are its trial records; no searcher imports another.

The ledger keeps its trials in an Optuna study in Optuna storage (SQLite in the run folder by
default), so a run resumes and several workers can share it: two objectives (max top-1, min
MADDs), the budgets as constraints. Only the Optuna searcher uses the study itself (its own loop);
the others ask the ledger for trials and tell it their results. ``--trials`` is the run's total:
a trial counts once it is COMPLETE or FAIL (a real failure); trials interrupted by Ctrl-C and
surplus trials started by concurrent workers after the total was reached do not count.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from .owner import Owner
from .task import SearchTask

DIRECTIONS = ["maximize", "minimize"]  # top-1, MADDs


def counting_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward ``--trials``: COMPLETE, RUNNING, PRUNED when stopped early by
    a scheduler (Ray's ASHA), and FAIL unless the failure was an interruption (Ctrl-C) or a dead
    worker's trial that was retried."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        or (
            t.state == TrialState.FAIL
            and not t.user_attrs.get("interrupted")
            and t.number not in retried
        )
        or (t.state == TrialState.PRUNED and t.user_attrs.get("stopped_early"))
    ]


def _retried(trials) -> set:
    """Numbers of the trials evaluated again by a later trial (Optuna's heartbeat retry, or
    ours)."""
    with warnings.catch_warnings():  # retried_trial_number is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat = {
            optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) for t in trials
        }
    return heartbeat | {t.user_attrs.get("retry_of") for t in trials}


def _retry(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Enqueue ``t``'s point again (keeping its preset name)."""
    study.enqueue_trial(
        t.params,
        user_attrs={
            "retry_of": t.number,
            **({"preset": t.user_attrs["preset"]} if "preset" in t.user_attrs else {}),
        },
    )


def counted(study: optuna.Study, before: int | None = None) -> int:
    return sum(1 for t in counting_trials(study) if before is None or t.number < before)


def finished(study: optuna.Study) -> int:
    return sum(1 for t in counting_trials(study) if t.state != TrialState.RUNNING)


def open_study(
    storage_url: str, name: str, seed: int, *, heartbeat: bool = True, sampler: str = "tpe"
) -> optuna.Study:
    """The run's study. With ``heartbeat`` (Optuna workers), a worker that died mid-trial has its
    trial failed and retried once; Ray and NNI drive the study by ask-and-tell, without
    heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beat = dict(
            heartbeat_interval=30,
            grace_period=90,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )
        storage = optuna.storages.RDBStorage(storage_url, **(beat if heartbeat else {}))
        # group=True: TPE models the conditional space (CondConv decisions only when CondConv is on)
        # per group
        sampler = (
            optuna.samplers.RandomSampler(seed=seed)
            if sampler == "random"
            else optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=8
            )
        )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        directions=DIRECTIONS,
        sampler=sampler,
        load_if_exists=True,
    )


def enqueue_presets(study: optuna.Study, presets: dict[str, dict]) -> None:
    """The paper's presets that fit the budget go first (once per run), so the front is never
    worse."""
    for name, params in presets.items():
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)


def worker_id() -> str:
    """This process, as recorded on the trials it runs: ``host:pid``."""
    return Owner.me().worker


def claim(trial: optuna.Trial) -> None:
    """Record this process as the trial's owner (`Owner`), first thing once the trial is asked
    for: should the process die, the next run on this host takes the trial back at once."""
    recorded = trial.user_attrs  # in memory: a retried trial holds its dead owner's
    for key, value in Owner.me().attrs().items():
        if recorded.get(key) != value:
            trial.set_user_attr(key, value)


def _gone(t: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's owner was a process of this host that no longer runs."""
    owner = Owner.of(t.user_attrs)
    return owner is not None and owner.gone()


def recover_killed(study: optuna.Study) -> int:
    """RUNNING trials of a dead process are failed and their points evaluated again: at once when
    it was a process of this host, after their heartbeat's grace period otherwise (another host's,
    or one killed before it recorded itself). Returns how many were this host's."""
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # retried by the heartbeat's callback
    recovered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _gone(t):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another worker starting at the same time recovered it first
        _retry(study, t)
        recovered += 1
    return recovered


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials cut short by Ctrl-C are evaluated again (their point, once)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    for t in trials:
        if (
            t.state == TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in retried
        ):
            _retry(study, t)


def judge(
    task: SearchTask, study: optuna.Study, trial: optuna.Trial, params: dict
) -> tuple[float, float] | None:
    """Count one point and record it on its trial (spec, MADDs, its predicted latency when the
    search uses latency, and the budgets as constraints).

    Returns the trial's final values when it needs no training: over a budget (recorded, never
    trained) or an architecture the study already trained (its result reused). Every backend
    judges its points here, on the process that asked for them (the driver, for Ray), so their
    studies and run folders look the same and the latency is that machine's.
    """
    spec, madds, n_params = task.measure(params)
    latency = round(task.latency(spec), 3) if task.uses_latency else None
    feasible = task.within_budgets(madds, latency)
    for key, value in (
        ("spec", spec.to_dict()),
        ("spec_id", spec.id),
        ("madds", madds),
        ("params", n_params),
        ("latency_ms", latency),
        ("feasible", feasible),
    ):
        if value is not None:
            trial.set_user_attr(key, value)
    trial.set_constraint("madds", madds - task.budget)
    if task.latency_budget is not None:
        trial.set_constraint("latency", latency - task.latency_budget)
    if not feasible:
        over = [
            n
            for n, v, b in (
                ("madds", madds, task.budget),
                ("latency", latency, task.latency_budget),
            )
            if b is not None and v > b
        ]
        trial.set_user_attr("over", over)
        return 0.0, float(madds)
    wait_for_twin(study, spec.id, trial.number)
    same = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("spec_id") == spec.id and t.user_attrs.get("feasible")
    ]
    if same:
        trial.set_user_attr("reused_from", same[0].number)
        for key in ("top1", "top5", "untrained"):
            trial.set_user_attr(key, same[0].user_attrs.get(key))
        return same[0].values[0], float(madds)
    return None


def wait_for_twin(study: optuna.Study, spec_id: str, number: int, poll: float = 2.0) -> None:
    """Wait while an earlier trial of another worker process trains the same architecture (its
    result is then reused): two workers never train one architecture at the same time. Ends when
    that trial ends, or when its worker is found dead (then this trial trains it). Trials of this
    process (Ray's concurrent trials, all asked by one driver) are not waited for: the driver would
    wait for itself."""
    me = worker_id()
    while True:
        twins = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number < number
            and t.user_attrs.get("spec_id") == spec_id
            and t.user_attrs.get("feasible")
            and t.user_attrs.get("worker") != me
            and not _gone(t)
        ]
        if not twins:
            return
        time.sleep(poll)
        # a dead worker elsewhere: after its heartbeat's grace period
        optuna.storages.fail_stale_trials(study)


def record(trial: optuna.Trial, result: dict) -> tuple[float, float]:
    """The values of a trained trial; its top-1/top-5 kept as attributes."""
    if result.get("top1") is None or not math.isfinite(result["top1"]):
        raise RuntimeError(f"no finite top-1 ({result.get('top1')})")
    trial.set_user_attr("top1", result["top1"])
    trial.set_user_attr("top5", result.get("top5"))
    trial.set_user_attr("untrained", bool(result.get("untrained")))
    trial.set_user_attr("workers", result.get("workers", 1))  # processes it trained on
    if result.get("inherited") is not None:  # the share of parameters taken from --init
        trial.set_user_attr("inherited", result["inherited"])
    return result["top1"], float(result["madds"])


def trial_status(t: optuna.trial.FrozenTrial) -> str:
    """What happened to a trial, in a word: trained, untrained (not clearly above chance), reused
    (an earlier trial's result), over_budget (never trained), stopped_early, failed or running."""
    ua = t.user_attrs
    if t.state != TrialState.COMPLETE:
        return {TrialState.FAIL: "failed", TrialState.RUNNING: "running"}.get(
            t.state, "stopped_early" if ua.get("stopped_early") else t.state.name.lower()
        )
    if not ua.get("feasible"):
        return "over_budget"
    if ua.get("reused_from") is not None:
        return "reused"
    return "untrained" if ua.get("untrained") else "trained"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the run, as the run folder shows it: `row` is its line of trials.csv."""

    trial: int
    state: str  # Optuna's word: COMPLETE, FAIL, PRUNED (stopped early) or RUNNING
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


_NOT_IN_ROW = ("decisions", "over", "stopped_at")


def _shown(t: optuna.trial.FrozenTrial, retried: set) -> bool:
    """Whether a trial is one of the run's: not waiting, interrupted, retried or surplus."""
    return not (
        t.state == TrialState.WAITING
        or t.user_attrs.get("interrupted")
        or t.number in retried
        or (t.state == TrialState.PRUNED and not t.user_attrs.get("stopped_early"))
    )


def _record(t: optuna.trial.FrozenTrial, decisions: list[str]) -> TrialRecord:
    ua = t.user_attrs
    end = t.datetime_complete
    seconds = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
    done = t.state == TrialState.COMPLETE and ua.get("feasible")
    return TrialRecord(
        trial=t.number,
        state=t.state.name,
        status=trial_status(t),
        feasible=ua.get("feasible"),
        madds=ua.get("madds"),
        latency_ms=ua.get("latency_ms"),
        params=ua.get("params"),
        top1=t.values[0] if done else None,
        top5=ua.get("top5"),
        untrained=ua.get("untrained"),
        inherited=ua.get("inherited"),
        reused_from=ua.get("reused_from"),
        spec_id=ua.get("spec_id"),
        preset=ua.get("preset"),
        seconds=None if seconds is None else round(seconds, 1),
        workers=ua.get("workers"),
        spec=ua.get("spec"),
        decisions={d: t.params.get(d) for d in decisions},
        over=tuple(ua.get("over") or ()),
        stopped_at=(ua.get("epochs_at_stop"), ua.get("top1_at_stop"))
        if ua.get("stopped_early")
        else None,
    )


def records(study: optuna.Study, decisions: list[str]) -> list[TrialRecord]:
    """The run's trials in the order they began (`_shown`)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return [_record(t, decisions) for t in trials if _shown(t, retried)]


def trial_rows(study: optuna.Study, decisions: list[str]) -> list[dict]:
    """The run's trials as trials.csv's rows."""
    return [r.row() for r in records(study, decisions)]


@dataclass(frozen=True)
class Callbacks:
    """What a search reports while it runs (Archai's per-iteration callbacks)."""

    on_trial: Callable[[TrialRecord], None] | None = None  # a trial of the run finished
    # a trial in training finished an epoch: (trial number, epoch, epochs)
    on_epoch: Callable[[int, int, int], None] | None = None


class Ledger:
    """The run's trials, for a searcher: ask for a trial, have its point judged, train it through
    the task, tell its result; count them against the run's ``total``. Every finished trial of the
    run reaches ``callbacks.on_trial`` as a `TrialRecord`.

    The study is the ledger's storage; only the Optuna searcher drives it directly (``study``).
    A trial handle (``ask``'s) is opaque to the others.
    """

    def __init__(
        self, study: optuna.Study, task: SearchTask, total: int, callbacks: Callbacks = Callbacks()
    ) -> None:
        self.study, self.task, self.total, self.callbacks = study, task, total, callbacks
        self.decisions = list(task.space.searched)

    def counted(self, before: int | None = None) -> int:
        """Trials that count toward the total (before trial number ``before``)."""
        return counted(self.study, before)

    def finished(self) -> int:
        """Counted trials that are no longer running."""
        return finished(self.study)

    @property
    def full(self) -> bool:
        """Whether the run holds its total of counted trials."""
        return self.counted() >= self.total

    def ask(self, fixed: dict | None = None) -> optuna.Trial:
        """A new trial of this process (a queued one first: presets, interrupted points);
        ``fixed``: its point, chosen by the searcher instead of the study's sampler."""
        trial = self._ask(fixed)
        claim(trial)
        return trial

    def _ask(self, fixed: dict | None) -> optuna.Trial:
        if not fixed:
            return self.study.ask()
        base = self.study.sampler
        distributions = {
            n: optuna.distributions.CategoricalDistribution(list(c))
            for n, c in self.task.space.searched.items()
            if n in fixed
        }
        with warnings.catch_warnings():  # PartialFixedSampler is "experimental"
            warnings.simplefilter("ignore")
            self.study.sampler = optuna.samplers.PartialFixedSampler(fixed, base)
            try:
                return self.study.ask(distributions)
            finally:
                self.study.sampler = base

    def point(self, trial: optuna.Trial) -> dict:
        """The trial's point of the space, from the study's sampler (or the queue); the trial is
        claimed for this process first (`claim`: the Optuna searcher's loop asks for its own)."""
        claim(trial)
        return self.task.space.sample(
            lambda name, choices: trial.suggest_categorical(name, list(choices))
        )

    def judge(self, trial: optuna.Trial, params: dict) -> tuple[float, float] | None:
        """The trial's values if it needs no training (over a budget, or trained before);
        see `judge`."""
        return judge(self.task, self.study, trial, params)

    def feasible(self, trial: optuna.Trial) -> bool:
        """Whether a judged trial is within every budget."""
        return bool(trial.user_attrs.get("feasible"))

    def train(self, trial: optuna.Trial, params: dict) -> tuple[float, float]:
        """Train a judged point through the task (its epochs reported) and record the result."""
        on_epoch = self.callbacks.on_epoch
        progress = None if on_epoch is None else lambda e, n: on_epoch(trial.number, e, n)
        return self.record(trial, self.task.evaluate(params, on_epoch=progress))

    def record(self, trial: optuna.Trial, result: dict) -> tuple[float, float]:
        """The values of a trained trial (its top-1, top-5 and workers kept)."""
        return record(trial, result)

    def tell(self, trial: optuna.Trial, values=None) -> None:
        """A trial finished with ``values``; without them, it failed."""
        state = TrialState.FAIL if values is None else TrialState.COMPLETE
        self.report(self.study.tell(trial, None if values is None else list(values), state=state))

    def stopped_early(self, trial: optuna.Trial, epoch: int, top1: float | None) -> None:
        """A scheduler (Ray's ASHA) stopped the trial after ``epoch``: it counts, but is off the
        front."""
        trial.set_user_attr("stopped_early", True)
        trial.set_user_attr("top1_at_stop", top1)
        trial.set_user_attr("epochs_at_stop", epoch)
        self.report(self.study.tell(trial, state=TrialState.PRUNED))

    def abandon(self, trial: optuna.Trial) -> None:
        """Fail a trial that Ctrl-C cut short, marked interrupted: it does not count, and the next
        start evaluates its point again (``requeue_interrupted``)."""
        trial.set_user_attr("interrupted", True)
        self.study.tell(trial, state=TrialState.FAIL)

    def evaluate(self, trial: optuna.Trial, params: dict) -> tuple[float, float] | None:
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
        while not self.full and self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = self.ask()
            self.evaluate(trial, self.point(trial))

    def report(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Tell ``callbacks.on_trial`` of a finished trial of the study, if it is one of the run's
        (the Optuna searcher's loop tells the study itself)."""
        if self.callbacks.on_trial is not None and _shown(frozen, set()):
            self.callbacks.on_trial(_record(frozen, self.decisions))

    def records(self) -> list[TrialRecord]:
        """Every trial of the run so far."""
        return records(self.study, self.decisions)
