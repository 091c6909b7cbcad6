"""The Optuna searcher: the study's own sampler (TPE over the conditional space, or random)
proposes every point after the presets, in a loop of this process. Several processes may search
one study (workers), each trial with its heartbeat (`Study`)."""

from __future__ import annotations

import gc

from .backend import Searcher
from .ledger import Ledger
from .records import TrialRecord
from .task import SearchTask


class OptunaSearcher(Searcher):
    """Ask, judge, train, tell, until the run holds its total (across workers)."""

    def search(self, task: SearchTask, ledger: Ledger) -> list[TrialRecord]:
        while not ledger.full:
            ledger.study.fail_stale()  # another worker's trial, silent past its grace
            trial = ledger.ask()
            if ledger.surplus(trial):
                break
            ledger.evaluate(trial, ledger.point(trial))
            gc.collect()  # a trained model's memory back before the next
        return ledger.records()
