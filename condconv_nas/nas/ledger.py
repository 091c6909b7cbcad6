"""The run's ledger: every trial of a run, judged, recorded and counted the same way whichever
searcher proposed it. Every searcher (Optuna, Ray Tune, NNI) writes its trials through here, and
the run folder's rows are read from here; no searcher imports another.

The ledger is an Optuna study in Optuna storage (SQLite in the run folder by default), so a run
resumes and several workers can share it: two objectives (max top-1, min MADDs), the budgets as
constraints. ``--trials`` is the run's total: a trial counts once it is COMPLETE or FAIL (a real
failure); trials interrupted by Ctrl-C and surplus trials started by concurrent workers after the
total was reached do not count.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

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
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str | None) -> bool:
    """Whether ``worker`` was a process of this host that no longer exists (another host's:
    unknown, False)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    return False


def recover_killed(study: optuna.Study) -> int:
    """RUNNING trials of a killed process of this host are failed and their points evaluated again,
    at once (heartbeats only catch a dead worker after their grace period). Returns how many."""
    recovered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _gone(t.user_attrs.get("worker")):
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
        ("worker", worker_id()),
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
            and not _gone(t.user_attrs.get("worker"))
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


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    values=None,
    state: TrialState = TrialState.COMPLETE,
    *,
    on_trial: Callable | None = None,
) -> None:
    """Finish an asked trial (Ray and NNI drive the study by ask-and-tell) and report it like
    Optuna's callbacks."""
    frozen = study.tell(trial, None if values is None else list(values), state=state)
    if on_trial is not None:
        on_trial(study, frozen)


def abandon(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a trial that Ctrl-C cut short, marked interrupted: it does not count, and the next
    start evaluates its point again (``requeue_interrupted``)."""
    trial.set_user_attr("interrupted", True)
    study.tell(trial, state=TrialState.FAIL)


def make_objective(
    task: SearchTask, study: optuna.Study, total: int, on_epoch: Callable | None = None
) -> Callable:
    space = task.space

    def objective(trial: optuna.Trial):
        if counted(study, before=trial.number) >= total:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the run's total was reached by other workers")
        params = space.sample(lambda name, choices: trial.suggest_categorical(name, list(choices)))
        try:
            values = judge(task, study, trial, params)
            if values is not None:
                return values
            progress = (
                None
                if on_epoch is None
                else lambda epoch, epochs: on_epoch(trial.number, epoch, epochs)
            )
            return record(trial, task.evaluate(params, on_epoch=progress))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    return objective


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


def trial_rows(study: optuna.Study, decisions: list[str]) -> list[dict]:
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    for t in trials:
        if (
            t.state == TrialState.WAITING
            or t.user_attrs.get("interrupted")
            or t.number in retried
            or (t.state == TrialState.PRUNED and not t.user_attrs.get("stopped_early"))
        ):
            continue
        ua = t.user_attrs
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "status": trial_status(t),
                "feasible": ua.get("feasible"),
                "madds": ua.get("madds"),
                "latency_ms": ua.get("latency_ms"),
                "params": ua.get("params"),
                "top1": t.values[0]
                if t.state == TrialState.COMPLETE and ua.get("feasible")
                else None,
                "top5": ua.get("top5"),
                "untrained": ua.get("untrained"),
                "inherited": ua.get("inherited"),
                "reused_from": ua.get("reused_from"),
                "spec_id": ua.get("spec_id"),
                "preset": ua.get("preset"),
                "seconds": None if seconds is None else round(seconds, 1),
                "workers": ua.get("workers"),
                "spec": ua.get("spec"),
                **{d: t.params.get(d) for d in decisions},
            }
        )
    return rows


def run_waiting(
    task: SearchTask, study: optuna.Study, total: int, *, on_trial=None, on_epoch=None
) -> None:
    """Evaluate the enqueued trials (presets that fit, interrupted trials) before another engine
    (NNI) proposes points of its own."""
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    run_optuna(
        task, study, min(total, counted(study) + waiting), on_trial=on_trial, on_epoch=on_epoch
    )


def run_optuna(
    task: SearchTask, study: optuna.Study, total: int, *, on_trial=None, on_epoch=None
) -> None:
    """Run trials until the study holds ``total`` counted trials."""
    objective = make_objective(task, study, total, on_epoch)

    def stop_at_total(study, trial):
        if on_trial is not None:
            on_trial(study, trial)
        if finished(study) >= total:
            study.stop()

    while counted(study) < total:
        study.optimize(
            objective,
            n_trials=total - counted(study),
            catch=(Exception,),
            callbacks=[stop_at_total],
            gc_after_trial=True,
        )
