"""The Optuna searcher: Optuna's own loop (``study.optimize``) in this process, its sampler (TPE
over the conditional space, or random) proposing every point after the presets."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from .backend import Searcher
from .ledger import Ledger, TrialRecord
from .task import SearchTask


class OptunaSearcher(Searcher):
    """Optuna's own loop in this process over the ledger's study: TPE over the conditional space
    (``open_study``), with MADDs as a constraint. Several processes may search one study
    (workers), each with Optuna's heartbeat."""

    def search(self, task: SearchTask, ledger: Ledger) -> list[TrialRecord]:
        objective = _objective(ledger)

        def stop_at_total(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            ledger.report(frozen)
            if ledger.finished() >= ledger.total:
                study.stop()

        while not ledger.full:
            ledger.study.optimize(
                objective,
                n_trials=ledger.total - ledger.counted(),
                catch=(Exception,),
                callbacks=[stop_at_total],
                gc_after_trial=True,
            )
        return ledger.records()


def _objective(ledger: Ledger) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if ledger.counted(before=trial.number) >= ledger.total:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the run's total was reached by other workers")
        params = ledger.point(trial)
        try:
            values = ledger.judge(trial, params)
            return values if values is not None else ledger.train(trial, params)
        except KeyboardInterrupt:  # Optuna fails the trial; marked, it does not count
            trial.set_user_attr("interrupted", True)
            raise

    return objective
