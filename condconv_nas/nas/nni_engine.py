"""The NNI engine: NNI 3.0's ``NasExperiment`` and strategies over the same space, expressed as NNI
mutables; results go to the run's Optuna study, so the run folder is the same as Optuna's.

The budget is enforced inside NNI by a strategy middleware that counts every proposed model with
our own counter (``count_madds`` on the full-size spec), never NNI's FLOPs profiler. Over-budget
models are recorded and marked invalid (metric 0) without training. Trials run in this process
(NNI's sequential engine): no NNI manager, no web portal, nothing left running after the run.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable

import optuna

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
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from .backend import Callbacks, Searcher, scratch_dir, stdout_to_stderr
from .ledger import abandon, counted, judge, record, run_waiting, tell
from .options import NNI_STRATEGIES
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
    """The budget filter (a ``Filter`` middleware's function) and the evaluator, sharing the study.

    The filter opens a study trial for every model NNI proposes and judges it: over budget ->
    recorded and refused (never trained); otherwise the evaluator trains it (or reuses the result
    of the same architecture) and reports top-1 to NNI.
    """

    def __init__(
        self,
        task: SearchTask,
        study: optuna.Study,
        total: int,
        on_trial: Callable | None,
        on_epoch: Callable | None = None,
    ) -> None:
        self.task, self.study, self.total, self.on_trial = task, study, total, on_trial
        self.on_epoch = on_epoch
        self.distributions = {
            n: CategoricalDistribution(list(c)) for n, c in task.space.searched.items()
        }
        self.pending: dict[tuple, tuple[optuna.Trial, tuple[float, float] | None]] = {}

    def _ask(self, params: dict) -> optuna.Trial:
        base = self.study.sampler
        # PartialFixedSampler is "experimental"; no heartbeat outside optimize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.sampler = optuna.samplers.PartialFixedSampler(params, base)
            try:
                return self.study.ask({n: d for n, d in self.distributions.items() if n in params})
            finally:
                self.study.sampler = base

    def _tell(self, trial: optuna.Trial, values=None, state=TrialState.COMPLETE) -> None:
        tell(self.study, trial, values, state, on_trial=self.on_trial)

    def keep(self, model) -> bool:
        if counted(self.study) >= self.total:
            return False
        # NNI samples every decision; record those that matter
        params = self.task.space.active(dict(model.sample))
        trial = self._ask(params)
        values = judge(self.task, self.study, trial, params)
        if values is not None and not trial.user_attrs["feasible"]:
            self._tell(trial, values)
            return False
        self.pending[_key(params)] = (trial, values)
        return True

    def evaluate(self, model: PointSpace) -> None:
        trial, values = self.pending.pop(_key(self.task.space.active(model.point)))
        try:
            if values is None:
                on_epoch = self.on_epoch
                progress = None if on_epoch is None else lambda e, n: on_epoch(trial.number, e, n)
                values = record(trial, self.task.evaluate(model.point, on_epoch=progress))
        except KeyboardInterrupt:
            abandon(self.study, trial)
            raise
        except Exception:
            self._tell(trial, state=TrialState.FAIL)
            raise
        self._tell(trial, values)
        nni.report_final_result(values[0])


class TotalFilter(Filter):
    """NNI's ``Filter`` that also stops the strategy once the study holds the run's total."""

    def __init__(self, judge_: Judge) -> None:
        super().__init__(judge_.keep, metric_for_invalid=0.0, patience=100)
        self.judge = judge_

    def budget_available(self) -> bool:
        return counted(self.judge.study) < self.judge.total and super().budget_available()


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

    def search(
        self, task: SearchTask, study: optuna.Study, total: int, callbacks: Callbacks
    ) -> None:
        run_nni(
            task,
            study,
            total,
            strategy=self.options.nni_strategy,
            seed=self.options.seed,
            on_trial=callbacks.on_trial,
            on_epoch=callbacks.on_epoch,
        )


def run_nni(
    task: SearchTask,
    study: optuna.Study,
    total: int,
    *,
    strategy: str = "evolution",
    seed: int = 0,
    on_trial: Callable | None = None,
    on_epoch: Callable | None = None,
) -> None:
    """Evaluate the enqueued presets, then run NNI's strategy until the study holds ``total``
    counted trials."""
    run_waiting(task, study, total, on_trial=on_trial, on_epoch=on_epoch)
    if counted(study) >= total:
        return
    silence_stdout()  # NNI's own log handlers write to stdout, which carries our table or JSON
    judge_ = Judge(task, study, total, on_trial, on_epoch)
    space = PointSpace(task.space.searched)
    evaluator = FunctionalEvaluator(judge_.evaluate)
    chain = Chain(make_strategy(strategy, seed, total), TotalFilter(judge_))
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
