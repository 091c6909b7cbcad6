"""The NNI engine: NNI 3.0's ``NasExperiment`` and strategies over the same space, expressed as NNI
mutables; results go to the run's ledger, so the run folder is the same as Optuna's.

The budget is enforced inside NNI by a strategy middleware that counts every proposed model with
our own counter (``count_madds`` on the full-size spec), never NNI's FLOPs profiler. Over-budget
models are recorded and marked invalid (metric 0) without training. Trials run in this process
(NNI's sequential engine): no NNI manager, no web portal, nothing left running after the run.
"""

from __future__ import annotations

import logging
import sys
import warnings

with warnings.catch_warnings():  # NNI 3.0 warns about torch classes it does not know (harmless)
    warnings.simplefilter("ignore", RuntimeWarning)
    import nni
    from nni.mutable import ensure_frozen
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig
    from nni.nas.experiment.config import SequentialEngineConfig
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.strategy import TPE, Random, RegularizedEvolution
    from nni.nas.strategy.middleware import Chain, Filter
    from nni.runtime.log import silence_stdout

from .backend import Searcher, scratch_dir, stdout_to_stderr
from .ledger import Ledger
from .options import NNI_STRATEGIES
from .records import TrialRecord
from .study import Trial
from .task import SearchTask


class PointSpace(ModelSpace):
    """The search space as NNI mutables; a frozen instance carries its point in ``.point``."""

    def __init__(self, decisions: dict[str, tuple]) -> None:
        super().__init__()
        self.point = {}
        for name, choices in decisions.items():
            choice = nni.choice(name, list(choices))
            self.add_mutable(choice)
            self.point[name] = ensure_frozen(choice, strict=False)


def _key(sample: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in sample.items()))


class Judge:
    """The budget filter (a ``Filter`` middleware's function) and the evaluator, sharing the ledger.

    The filter asks the ledger for a trial of every model NNI proposes and has it judged: over
    budget -> recorded and refused (never trained); otherwise the evaluator trains it (or reuses
    the result of the same architecture) and reports top-1 to NNI.
    """

    def __init__(self, task: SearchTask, ledger: Ledger) -> None:
        self.task, self.ledger = task, ledger
        self.pending: dict[tuple, tuple[Trial, tuple[float, float] | None]] = {}

    def keep(self, model) -> bool:
        if self.ledger.full:
            return False
        # NNI samples every decision; record those that matter
        params = self.task.space.active(dict(model.sample))
        trial = self.ledger.ask(fixed=params)
        values = self.ledger.judge(trial, params)
        if values is not None and not self.ledger.feasible(trial):
            self.ledger.tell(trial, values)
            return False
        self.pending[_key(params)] = (trial, values)
        return True

    def evaluate(self, model: PointSpace) -> None:
        trial, values = self.pending.pop(_key(self.task.space.active(model.point)))
        try:
            if values is None:
                values = self.ledger.train(trial, model.point)
        except KeyboardInterrupt:
            self.ledger.abandon(trial)
            raise
        except Exception:
            self.ledger.tell(trial)  # failed
            raise
        self.ledger.tell(trial, values)
        nni.report_final_result(values[0])


class TotalFilter(Filter):
    """NNI's ``Filter`` that also stops the strategy once the study holds the run's total."""

    def __init__(self, judge_: Judge) -> None:
        super().__init__(judge_.keep, metric_for_invalid=0.0, patience=100)
        self.judge = judge_

    def budget_available(self) -> bool:
        return not self.judge.ledger.full and super().budget_available()


def make_strategy(name: str, seed: int, total: int):
    if name == "evolution":
        population = max(4, min(100, total // 2))
        return RegularizedEvolution(
            population_size=population, sample_size=max(2, population // 4), seed=seed
        )
    if name == "random":
        return Random(seed=seed)
    if name == "tpe":
        return TPE(seed=seed)
    raise ValueError(f"NNI strategy must be one of {NNI_STRATEGIES}, got {name!r}")


class NNISearcher(Searcher):
    """NNI 3.0's strategy ``options.nni_strategy`` (evolution, random or tpe), seeded by the
    worker's seed, in this process."""

    def search(self, task: SearchTask, ledger: Ledger) -> list[TrialRecord]:
        ledger.evaluate_queued()  # the presets that fit, and interrupted points, first
        if not ledger.full:
            run_nni(task, ledger, strategy=self.options.nni_strategy, seed=self.options.seed)
        return ledger.records()


def run_nni(task: SearchTask, ledger: Ledger, *, strategy: str = "evolution", seed: int = 0):
    """Run NNI's strategy until the ledger holds its total of counted trials."""
    silence_stdout()  # NNI's own log handlers write to stdout, which carries our table or JSON
    judge_ = Judge(task, ledger)
    space = PointSpace(task.space.searched)
    evaluator = FunctionalEvaluator(judge_.evaluate)
    chain = Chain(make_strategy(strategy, seed, ledger.total), TotalFilter(judge_))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    logging.getLogger("nni").addHandler(errors)
    with scratch_dir("nni") as workdir, stdout_to_stderr():
        config = NasExperimentConfig.default(space, evaluator, chain)
        config.execution_engine = SequentialEngineConfig(continue_on_failure=True)
        config.experiment_working_directory = workdir
        experiment = NasExperiment(space, evaluator, chain, config)
        try:
            experiment.start()  # the strategy runs in this thread until the total is reached
        finally:
            experiment.stop()
            logging.getLogger("nni").removeHandler(errors)
