"""The Optuna searcher: the study's own sampler (TPE over the conditional space, or random)
proposes every point after the presets, in a loop of this process. Several processes may search
one study (workers), each trial with its heartbeat (`Study`)."""

from __future__ import annotations

import gc
import signal
import threading

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
            collect_garbage()  # a trained model's memory back before the next
        return ledger.records()


def collect_garbage() -> None:
    """``gc.collect()`` with Ctrl-C held until it ends: Python swallows a KeyboardInterrupt raised
    inside a finalizer the collection runs ("Exception ignored in..."), and the search would go
    on as if Ctrl-C had not been pressed. Outside the main thread (no signal handlers there), a
    plain collection."""
    if threading.current_thread() is not threading.main_thread():
        gc.collect()
        return
    held = []
    before = signal.signal(signal.SIGINT, lambda *frame: held.append(frame))
    try:
        gc.collect()
    finally:
        signal.signal(signal.SIGINT, before)
    if held and callable(before):
        before(*held[0])  # Python's own handler raises KeyboardInterrupt here
