"""The run's storage and sampler: an Optuna study (SQLite in the run folder, or the user's
database) behind the few operations the ledger needs. This is the one module that imports optuna:
the ledger, the searchers and the run folder see `Study`, `Trial` and `Stored` only, so another
storage or sampler would replace this file alone. The study stays a plain Optuna study, so
``optuna-dashboard`` and ``optuna.load_study`` read a run as they read any other."""

from __future__ import annotations

import contextlib
import enum
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UsageError
from ..extras import EXTRAS

DIRECTIONS = ("maximize", "minimize")  # top-1, MADDs
HEARTBEAT_S, GRACE_S = 30, 90  # a worker's trial is stale after GRACE_S without a heartbeat


class State(enum.Enum):
    WAITING = "WAITING"  # queued (a preset, a point to evaluate again)
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAIL = "FAIL"
    PRUNED = "PRUNED"  # stopped early by a scheduler, or a surplus trial


@dataclass(frozen=True)
class Stored:
    """A trial as the storage holds it."""

    number: int
    state: State
    params: dict[str, Any]  # its point
    attrs: dict[str, Any]  # what the ledger recorded of it
    values: tuple[float, ...] | None  # (top-1, MADDs) once COMPLETE
    started: datetime | None
    completed: datetime | None
    retry_of: int | None  # the trial whose point it evaluates again

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.completed is None:
            return None
        return round((self.completed - self.started).total_seconds(), 1)


class Trial:
    """A trial this process runs: its number, what is recorded of it, its point as asked."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial

    @property
    def number(self) -> int:
        return self._trial.number

    @property
    def started(self) -> datetime | None:
        """When it began to run (a queued trial: when it was taken from the queue)."""
        return self._trial.datetime_start

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._trial.user_attrs)

    def set(self, key: str, value: Any) -> None:
        self._trial.set_user_attr(key, value)

    def suggest(self, name: str, choices: Sequence) -> Any:
        """One decision's value, from the study's sampler (or the queued point)."""
        return self._trial.suggest_categorical(name, list(choices))

    def constrain(self, name: str, value: float) -> None:
        """A constraint the sampler models: the trial is feasible when every value is <= 0."""
        self._trial.set_constraint(name, value)


class Study:
    """The run's trials in storage, and the sampler that proposes their points. With
    ``heartbeat`` (several processes searching one study), each running trial of this process
    beats every ``HEARTBEAT_S`` seconds, and ``fail_stale`` fails another's after ``GRACE_S``
    without one (and queues its point once again)."""

    def __init__(self, study: optuna.Study, *, heartbeat: optuna.storages.RDBStorage | None = None):
        self._study, self._storage = study, heartbeat  # the storage to beat in, if any
        self._beats: dict[int, threading.Event] = {}

    @classmethod
    def open(
        cls, url: str | None, name: str, seed: int, *, heartbeat: bool = True, sampler: str = "tpe"
    ) -> Study:
        """The study ``name`` in ``url`` (created if new; None: in memory), sampled by TPE or
        at ``"random"``. A URL that cannot be used is a `UsageError` naming it."""
        import sqlalchemy.exc

        # workers started together race to create the tables: the loser tries again
        for attempt in range(3):
            try:
                return cls._open(url, name, seed, heartbeat=heartbeat, sampler=sampler)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
                if attempt == 2 or not re.search(r"UNIQUE|already exists|locked", str(e)):
                    raise _storage_error(url, e) from None
                time.sleep(1.0 + attempt)
            except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
                raise _storage_error(url, e) from None
        raise AssertionError("unreachable")

    @classmethod
    def _open(cls, url: str | None, name: str, seed: int, *, heartbeat: bool, sampler: str):
        storage = None
        if url is not None:
            with _experimental_ok():
                beat = dict(
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=1
                    ),
                )
                storage = optuna.storages.RDBStorage(url, **(beat if heartbeat else {}))
        with _experimental_ok():
            # group=True: TPE models the conditional space (CondConv decisions only when CondConv
            # is on) per group
            chosen = (
                optuna.samplers.RandomSampler(seed=seed)
                if sampler == "random"
                else optuna.samplers.TPESampler(
                    seed=seed, multivariate=True, group=True, n_startup_trials=8
                )
            )
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=list(DIRECTIONS),
            sampler=chosen,
            load_if_exists=True,
        )
        return cls(study, heartbeat=storage if heartbeat else None)

    def trials(self, *states: State) -> list[Stored]:
        """The study's trials in the order they began (only those in ``states``, if given)."""
        wanted = tuple(TrialState[s.value] for s in states) or None
        trials = self._study.get_trials(deepcopy=False, states=wanted)
        with _experimental_ok():
            retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
            return [_stored(t, retried(t)) for t in trials]

    def ask(self, fixed: Mapping[str, Any] | None = None, choices: Mapping | None = None) -> Trial:
        """A new trial (a queued point first). ``fixed``: its point, chosen by a searcher instead
        of the sampler (``choices``: each fixed decision's choices)."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize":
            warnings.filterwarnings("ignore", "Heartbeat")  # this loop beats as optimize does
            trial = self._ask(fixed, choices)
        if self._storage is not None:
            self._beat(trial.number)
        return Trial(trial)

    def _ask(self, fixed: Mapping[str, Any] | None, choices: Mapping | None) -> optuna.Trial:
        if fixed:
            base = self._study.sampler
            distributions = {
                n: optuna.distributions.CategoricalDistribution(list(c))
                for n, c in (choices or {}).items()
                if n in fixed
            }
            with warnings.catch_warnings():  # PartialFixedSampler is "experimental"
                warnings.simplefilter("ignore")
                self._study.sampler = optuna.samplers.PartialFixedSampler(dict(fixed), base)
                try:
                    return self._study.ask(distributions)
                finally:
                    self._study.sampler = base
        return self._study.ask()

    def tell(self, trial: Trial | int, values: Sequence[float] | None, state: State) -> Stored:
        """End a trial (ours, or a dead worker's by number). `ValueError` if it ended already."""
        number = trial if isinstance(trial, int) else trial.number
        stop = self._beats.pop(number, None)
        if stop is not None:
            stop.set()
        try:
            frozen = self._study.tell(
                number, None if values is None else list(values), state=TrialState[state.value]
            )
        except RuntimeError as e:  # Optuna's word for a trial that is finished already
            raise ValueError(str(e)) from None
        return _stored(frozen, None)

    def enqueue(
        self, params: Mapping[str, Any], attrs: Mapping[str, Any], *, once: bool = False
    ) -> None:
        """Queue a point, to be asked before the sampler proposes (``once``: unless the study
        holds it already)."""
        self._study.enqueue_trial(dict(params), user_attrs=dict(attrs), skip_if_exists=once)

    def fail_stale(self) -> None:
        """Fail the trials of workers whose heartbeat stopped ``GRACE_S`` ago; each failed point
        is queued once more."""
        with _experimental_ok():
            optuna.storages.fail_stale_trials(self._study)

    def _beat(self, number: int) -> None:
        """Record trial ``number``'s heartbeat now and every ``HEARTBEAT_S`` seconds until it is
        told (as Optuna's own loop does)."""
        storage = self._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self._study.study_name), number
        )
        storage.record_heartbeat(trial_id)
        stop = self._beats[number] = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                storage.record_heartbeat(trial_id)

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{number}").start()


def _stored(t: optuna.trial.FrozenTrial, heartbeat_retry: int | None) -> Stored:
    retry = t.user_attrs.get("retry_of")
    return Stored(
        number=t.number,
        state=State(t.state.name),
        params=dict(t.params),
        attrs=dict(t.user_attrs),
        values=None if t.values is None else tuple(t.values),
        started=t.datetime_start,
        completed=t.datetime_complete,
        retry_of=heartbeat_retry if heartbeat_retry is not None else retry,
    )


@contextlib.contextmanager
def _experimental_ok():
    """Optuna marks the heartbeat's helpers experimental; they are what a shared study needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def optuna_quiet():
    """Optuna's INFO line per trial would interleave with the search's own; the caller's level
    comes back afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _storage_error(url: str | None, e: Exception) -> UsageError:
    if isinstance(e, ImportError):
        return UsageError(
            f"--storage {url}: no database driver for it ({e}); for PostgreSQL: "
            f"pip install 'condconv-nas[{EXTRAS['psycopg']}]'"
        )
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    return UsageError(f"--storage {url}: cannot open it ({reason})")
