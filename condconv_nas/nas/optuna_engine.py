"""The Optuna searcher: Optuna's own loop (``study.optimize``) in this process, its sampler (TPE
over the conditional space, or random) proposing every point after the presets."""

from __future__ import annotations

import optuna

from .backend import Callbacks, Searcher
from .ledger import run_optuna
from .task import SearchTask


class OptunaSearcher(Searcher):
    """Optuna's own loop in this process: TPE over the conditional space (``open_study``), with
    MADDs as a constraint. Several processes may search one study (workers)."""

    def search(
        self, task: SearchTask, study: optuna.Study, total: int, callbacks: Callbacks
    ) -> None:
        run_optuna(task, study, total, on_trial=callbacks.on_trial, on_epoch=callbacks.on_epoch)
