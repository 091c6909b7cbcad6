"""One interface for every search backend, and the registry that names them.

A backend is a `Searcher`: ``search(task, study, total, callbacks)`` proposes points of the task's
space, has each one judged (``optuna_engine.judge``: counted, over budget or already trained means
no training), trains the rest through the task, and tells the run's Optuna study, until the study
holds ``total`` counted trials. ``callbacks`` hear of every finished trial and of training epochs.
Every backend writes the same study, so the run folder does not depend on the backend.

``BACKENDS`` names each backend's class as ``module:Class`` and is read without importing them:
Ray and NNI load only when asked for.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..extras import require

if TYPE_CHECKING:
    import optuna

    from .task import SearchTask

NNI_STRATEGIES = ("evolution", "random", "tpe")
SAMPLERS = ("tpe", "random")  # the study's sampler, which the Optuna and Ray backends ask
MAX_PER_TRIAL = 1024  # Ray: the most CPUs or GPUs one trial may ask for


@dataclass(frozen=True)
class BackendOptions:
    """Options of the backends; each backend reads its own (``Backend.options``), the others must
    stay at their defaults."""

    address: str | None = None  # Ray: the cluster to join
    cpus_per_trial: float = 1.0  # Ray: CPUs per trial
    gpus_per_trial: float = 0.0  # Ray: GPUs per trial
    workers_per_trial: int = 1  # Ray: data-parallel training workers per trained trial
    cpus_per_worker: float = 1.0  # Ray: CPUs per training worker (with workers_per_trial > 1)
    gpus_per_worker: float = 0.0  # Ray: GPUs per training worker (with workers_per_trial > 1)
    nni_strategy: str = "evolution"  # NNI: evolution, random or tpe

    def __post_init__(self) -> None:
        _check_range(self.cpus_per_trial, "--cpus-per-trial", low_open=True)
        _check_range(self.gpus_per_trial, "--gpus-per-trial")
        _check_range(self.cpus_per_worker, "--cpus-per-worker", low_open=True)
        _check_range(self.gpus_per_worker, "--gpus-per-worker")
        n = self.workers_per_trial
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PER_TRIAL:
            raise UsageError(
                f"--workers-per-trial must be a whole number in [1, {MAX_PER_TRIAL}], got {n!r}"
            )
        # one process per trial asks for --cpus/--gpus-per-trial; N workers ask per worker
        for name in (
            ("cpus_per_worker", "gpus_per_worker")
            if n == 1
            else ("cpus_per_trial", "gpus_per_trial")
        ):
            if getattr(self, name) == BackendOptions.__dataclass_fields__[name].default:
                continue
            if n == 1:
                raise UsageError(f"{_flag(name)} needs --workers-per-trial N with N > 1")
            raise UsageError(
                f"{_flag(name)}: a trial of {n} workers asks for its workers' resources; use "
                f"{_flag(name.replace('trial', 'worker'))}"
            )
        if self.nni_strategy not in NNI_STRATEGIES:
            raise UsageError(
                f"--nni-strategy {self.nni_strategy!r}: expected one of {', '.join(NNI_STRATEGIES)}"
            )

    @classmethod
    def of(cls, options: dict) -> BackendOptions:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown backend option(s) {', '.join(unknown)}")
        return cls(**options)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _check_range(value, flag: str, *, low_open: bool = False) -> None:
    """A number of CPUs or GPUs in (0, MAX_PER_TRIAL] (``low_open``) or [0, MAX_PER_TRIAL]."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)  # nan, inf fail below
    low = 0 < value if low_open and number else number and 0 <= value
    if not (number and low and value <= MAX_PER_TRIAL):
        bracket = "(" if low_open else "["
        raise UsageError(f"{flag} must be in {bracket}0, {MAX_PER_TRIAL}], got {value!r}")


@dataclass(frozen=True)
class Callbacks:
    """What a searcher reports while it runs (Archai's per-iteration callbacks)."""

    # a trial finished (COMPLETE, FAIL or PRUNED), as Optuna's study callbacks are called
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
    # a trial in training finished an epoch: (trial number, epoch, epochs)
    on_epoch: Callable[[int, int, int], None] | None = None


class Searcher(abc.ABC):
    """A search algorithm over the run's study. ``options``: the checked `BackendOptions`;
    ``seed``: this worker's seed, for an algorithm with random state of its own (the study's
    sampler has its seed already)."""

    def __init__(self, options: BackendOptions, seed: int = 0) -> None:
        self.options, self.seed = options, seed

    def check(self, task: SearchTask) -> None:
        """`UsageError` if the task cannot run here (for example: more than the cluster holds);
        called before anything is written. Every input is fine by default."""
        return None

    @abc.abstractmethod
    def search(
        self, task: SearchTask, study: optuna.Study, total: int, callbacks: Callbacks
    ) -> None:
        """Run trials until ``study`` holds ``total`` counted trials; Ctrl-C raises
        KeyboardInterrupt after marking unfinished trials interrupted."""


@dataclass(frozen=True)
class Backend:
    name: str
    searcher: str  # "module:Class", imported on first use
    extra: str | None = None  # a module the backend's pip extra installs
    options: tuple[str, ...] = ()  # the BackendOptions fields it reads


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("optuna", "condconv_nas.nas.optuna_engine:OptunaSearcher"),
        Backend(
            "ray",
            "condconv_nas.nas.ray_engine:RaySearcher",
            extra="ray.tune",
            options=(
                "address",
                "cpus_per_trial",
                "gpus_per_trial",
                "workers_per_trial",
                "cpus_per_worker",
                "gpus_per_worker",
            ),
        ),
        Backend(
            "nni", "condconv_nas.nas.nni_engine:NNISearcher", extra="nni", options=("nni_strategy",)
        ),
    )
}


def check_backend(name: str, options: BackendOptions) -> Backend:
    """The backend called ``name``, after checking that it exists, that no other backend's option
    was set, and that its extra is installed."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise UsageError(f"--backend {name!r}: expected one of {', '.join(BACKENDS)}")
    default = BackendOptions()
    for field in dataclasses.fields(BackendOptions):
        if field.name in backend.options or getattr(options, field.name) == getattr(
            default, field.name
        ):
            continue
        owner = next(b.name for b in BACKENDS.values() if field.name in b.options)
        flag = _flag(field.name)
        raise UsageError(
            f"{flag} {getattr(options, field.name)!r} is an option of the {owner} backend: "
            f"it needs --backend {owner}"
        )
    if backend.extra is not None:
        require(backend.extra, needed_for=f"--backend {name}")
    return backend


def make_searcher(name: str, options: BackendOptions, seed: int = 0) -> Searcher:
    """The checked backend's `Searcher` (imports its module)."""
    module, _, cls = check_backend(name, options).searcher.partition(":")
    return getattr(importlib.import_module(module), cls)(options, seed)


# -- helpers the backends share ---------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A temporary folder for a backend's own files, removed afterwards (the study is the state)."""
    path = tempfile.mkdtemp(prefix=f"condconv-nas-{prefix}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for our table or JSON: what a backend prints goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
