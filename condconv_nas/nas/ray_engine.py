"""The Ray Tune engine: Ray schedules the trials (locally or on a cluster); the run's Optuna study
holds the sampler's state and every result, so the run folder is the same as Optuna's.

Our Ray searcher (``StudySearch``) asks the study for points; each point is judged on the
driver (counted: over budget or already trained -> no training) before Ray runs it. Early
stopping is ASHA on top-1, but per MADD band (see ``BandedASHA``): a cheap candidate only
competes with cheap ones, so it is never stopped for being less accurate than candidates that
cost twice as much.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import search as ray_search
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from .backend import Callbacks, Searcher, scratch_dir, stdout_to_stderr
from .optuna_engine import abandon, counted, finished, judge, record, tell
from .task import SearchTask

BANDS = 4  # MADD bands of equal width over [0, budget]; over-budget points get a band of their own


def band_of(madds: int, budget: int) -> int:
    """The MADD band of a point: 0 .. BANDS-1 within the budget, BANDS above it."""
    return BANDS if madds > budget else min(BANDS - 1, BANDS * madds // budget)


class BandedASHA(FIFOScheduler):
    """ASHA on top-1 run separately in each MADD band: a trial is stopped at a rung only when it
    is in the lower half of the trials of its own band that reached that rung."""

    def __init__(
        self, *, budget: int, max_t: int, grace_period: int = 1, reduction_factor: float = 2
    ) -> None:
        super().__init__()
        self.budget = budget
        self._asha = defaultdict(
            lambda: AsyncHyperBandScheduler(
                time_attr="epoch",
                metric="top1",
                mode="max",
                max_t=max_t,
                grace_period=grace_period,
                reduction_factor=reduction_factor,
            )
        )
        self._band: dict[str, int] = {}

    def _scheduler(self, trial):
        band = self._band.setdefault(trial.trial_id, band_of(trial.config["madds"], self.budget))
        return self._asha[band]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed: top-1, maximised

    def on_trial_add(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.config.get("values") is not None:  # judged, not trained: nothing to compare
            return self.CONTINUE
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"BandedASHA: {len(self._asha)} MADD bands"


class StudySearch(ray_search.Searcher):
    """Ray's search-algorithm interface over the run's study: the study's own sampler proposes each
    point (ask-and-tell, the same define-by-run space as the Optuna engine), and every point is
    judged on the driver before Ray runs it."""

    def __init__(
        self,
        task: SearchTask,
        study: optuna.Study,
        total: int,
        *,
        on_trial: Callable | None = None,
        on_epoch: Callable | None = None,
    ) -> None:
        super().__init__(metric="top1", mode="max")
        self.task, self.study, self.total, self.on_trial = task, study, total, on_trial
        self.on_epoch = on_epoch
        self.trials: dict[str, optuna.Trial] = {}  # Ray's trial id -> the study's trial
        self.done: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if counted(self.study) >= self.total:
            return ray_search.Searcher.FINISHED
        trial = self.trials[trial_id] = self.study.ask()
        point = self.task.space.sample(
            lambda name, choices: trial.suggest_categorical(name, list(choices))
        )
        values = judge(self.task, self.study, trial, point)
        return {"point": point, "madds": trial.user_attrs["madds"], "values": values}

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the study in Optuna storage is the state; Ray's experiment folder is thrown away

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate results go to the scheduler, not to the multi-objective study; progress
        # hears of the epochs a trial reports (those of its first training, which ASHA compares).
        if self.on_epoch is not None and trial_id in self.trials and not result.get("final"):
            recipe = self.task.recipe
            self.on_epoch(
                self.trials[trial_id].number, result["epoch"], recipe.epochs * recipe.repeats
            )

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self.done or trial_id not in self.trials:
            return
        self.done.add(trial_id)
        trial, study = self.trials[trial_id], self.study
        if error or not result:
            tell(study, trial, state=TrialState.FAIL, on_trial=self.on_trial)
        elif result.get("final"):
            tell(
                study, trial, result.get("values") or record(trial, result), on_trial=self.on_trial
            )
        else:  # stopped at a rung by BandedASHA
            trial.set_user_attr("stopped_early", True)
            trial.set_user_attr("top1_at_stop", result.get("top1"))
            trial.set_user_attr("epochs_at_stop", result.get("epoch"))
            tell(study, trial, state=TrialState.PRUNED, on_trial=self.on_trial)

    def abandon_unfinished(self) -> None:
        """Trials Ray did not finish (Ctrl-C) are marked interrupted: the next run evaluates them
        again."""
        for trial_id, trial in self.trials.items():
            if trial_id not in self.done:
                abandon(self.study, trial)
                self.done.add(trial_id)


def ray_trial(config: dict, task: SearchTask, threads: int) -> None:
    """One Ray trial: report the judged values, or train the proxy reporting top-1 every epoch."""
    import torch

    from ..allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does for its own process
    torch.set_num_threads(threads)
    epochs = task.recipe.epochs
    if config["values"] is not None:
        top1, madds = config["values"]
        tune.report(
            {
                "top1": top1,
                "madds": madds,
                "epoch": epochs,
                "final": True,
                "values": config["values"],
            }
        )
        return
    madds = config["madds"]

    def report(epoch: int, metrics: dict) -> None:
        tune.report(
            {
                "top1": metrics["top1"],
                "top5": metrics["top5"],
                "madds": madds,
                "epoch": epoch,
                "final": False,
            }
        )

    result = task.evaluate(config["point"], report=report)
    tune.report(
        {
            "top1": result["top1"],
            "top5": result["top5"],
            "untrained": result["untrained"],
            "madds": madds,
            "epoch": epochs,
            "final": True,
            **({"inherited": result["inherited"]} if result.get("inherited") is not None else {}),
        }
    )


class RaySearcher(Searcher):
    """Ray Tune schedules the trials, locally or on the cluster at ``options.address``."""

    def search(
        self, task: SearchTask, study: optuna.Study, total: int, callbacks: Callbacks
    ) -> None:
        run_ray(
            task,
            study,
            total,
            address=self.options.address,
            cpus_per_trial=self.options.cpus_per_trial,
            gpus_per_trial=self.options.gpus_per_trial,
            on_trial=callbacks.on_trial,
            on_epoch=callbacks.on_epoch,
        )


def run_ray(
    task: SearchTask,
    study: optuna.Study,
    total: int,
    *,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    on_trial=None,
    on_epoch=None,
) -> None:
    """Run trials on Ray until the study holds ``total`` counted trials; Ray is shut down after."""
    if counted(study) >= total:
        return
    ray.init(
        address=address or "local",
        num_cpus=None if address else os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    searcher = StudySearch(task, study, total, on_trial=on_trial, on_epoch=on_epoch)
    try:
        with scratch_dir("ray") as storage:
            trainable = tune.with_resources(
                tune.with_parameters(ray_trial, task=task, threads=max(1, int(cpus_per_trial))),
                {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=max(1, total - counted(study)),
                    scheduler=BandedASHA(budget=task.budget, max_t=task.recipe.epochs),
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=storage,
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            # Ray's legacy reporter honours verbose=0
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
            with stdout_to_stderr():
                tuner.fit()  # Ray handles Ctrl-C itself: it stops the trials and returns
        if finished(study) < total:
            raise KeyboardInterrupt
    finally:
        searcher.abandon_unfinished()
        ray.shutdown()
