"""One interface for every search backend, and the registry that names them.

A backend is a `Searcher`: ``search(task, ledger)`` proposes points of the task's space, asks the
run's `Ledger` for a trial per point and has it judged (counted; over budget or already trained
means no training), trains the rest through the ledger, and tells it their results, until the
ledger holds the run's total of counted trials; it returns the run's trials. The ledger's
callbacks hear of every finished trial and of training epochs. Every backend writes the same
ledger, so the run folder does not depend on the backend.

``BACKENDS`` names each backend's class as ``module:Class`` and is read without importing them:
Ray and NNI load only when asked for.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..extras import require
from .options import SearchConfig, flag

if TYPE_CHECKING:
    from .ledger import Ledger
    from .records import TrialRecord
    from .task import SearchTask


class Searcher(abc.ABC):
    """A search algorithm over the run's ledger. ``options``: the search's checked settings (each
    backend reads its own); ``options.seed``: this worker's seed, for an algorithm with random
    state of its own (the study's sampler has its seed already)."""

    def __init__(self, options: SearchConfig) -> None:
        self.options = options

    def check(self, task: SearchTask) -> None:
        """`UsageError` if the task cannot run here (for example: more than the cluster holds);
        called before anything is written. Every input is fine by default."""
        return None

    @abc.abstractmethod
    def search(self, task: SearchTask, ledger: Ledger) -> list[TrialRecord]:
        """Run trials until ``ledger`` holds its total of counted trials; return the run's trials.
        Ctrl-C raises KeyboardInterrupt after marking unfinished trials interrupted."""


@dataclass(frozen=True)
class Backend:
    name: str
    searcher: str  # "module:Class", imported on first use
    extra: str | None = None  # a module the backend's pip extra installs
    options: tuple[str, ...] = ()  # the SearchConfig settings only it reads


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


def check_backend(options: SearchConfig) -> Backend:
    """The backend ``options.backend``, after checking that no other backend's option was set and
    that its extra is installed."""
    backend = BACKENDS[options.backend]
    for other in BACKENDS.values():
        changed = [] if other is backend else options.changed(other.options)
        if changed:
            raise UsageError(
                f"{flag(changed[0])} {getattr(options, changed[0])!r} is an option of the "
                f"{other.name} backend: it needs --backend {other.name}"
            )
    if backend.extra is not None:
        require(backend.extra, needed_for=f"--backend {backend.name}")
    return backend


def make_searcher(options: SearchConfig) -> Searcher:
    """The checked backend's `Searcher` (imports its module)."""
    module, _, cls = check_backend(options).searcher.partition(":")
    return getattr(importlib.import_module(module), cls)(options)


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
