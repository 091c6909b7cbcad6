"""The Ray Tune engine: Ray schedules the trials (locally or on a cluster); the run's ledger holds
the sampler's state and every result, so the run folder is the same as Optuna's.

Our Ray searcher (``StudySearch``) asks the ledger for points; each point is judged on the
driver (counted: over budget or already trained -> no training) before Ray runs it. Early
stopping is ASHA on top-1 per MADD band (``ray_asha.py``); a trial may train data-parallel on
Ray Train's workers (``ray_train.py``).
"""

from __future__ import annotations

import logging
import os

import psutil
import ray
from ray import tune
from ray.tune import search as ray_search

from ..errors import UsageError
from .backend import Searcher, scratch_dir, stdout_to_stderr
from .ledger import Ledger
from .ray_asha import BandedASHA, StopRequests
from .ray_train import Workers, epoch_report, final_report
from .records import TrialRecord
from .study import Trial
from .task import SearchTask


class StudySearch(ray_search.Searcher):
    """Ray's search-algorithm interface over the run's ledger: the study's own sampler proposes each
    point (the same define-by-run space as the Optuna searcher), and every point is judged on the
    driver before Ray runs it."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(metric="top1", mode="max")
        self.ledger = ledger
        self.trials: dict[str, Trial] = {}  # Ray's trial id -> the ledger's trial
        self.done: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if self.ledger.full:
            return ray_search.Searcher.FINISHED
        trial = self.trials[trial_id] = self.ledger.ask()
        point = self.ledger.point(trial)
        values = self.ledger.judge(trial, point)
        return {"point": point, "madds": trial.attrs["madds"], "values": values}

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the ledger in Optuna storage is the state; Ray's experiment folder is thrown away

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate results go to the scheduler, not to the multi-objective ledger; progress
        # hears of the epochs a trial reports (those of its first training, which ASHA compares).
        on_epoch = self.ledger.callbacks.on_epoch
        if on_epoch is not None and trial_id in self.trials and not result.get("final"):
            recipe = self.ledger.task.recipe
            on_epoch(self.trials[trial_id].number, result["epoch"], recipe.epochs * recipe.repeats)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self.done or trial_id not in self.trials:
            return
        self.done.add(trial_id)
        trial, ledger = self.trials[trial_id], self.ledger
        if error or not result:
            ledger.tell(trial)  # failed
        elif result.get("final"):
            ledger.tell(trial, result.get("values") or ledger.record(trial, result))
        else:  # stopped at a rung by BandedASHA
            ledger.stopped_early(
                trial, result.get("epoch"), result.get("top1"), workers=result.get("workers")
            )

    def abandon_unfinished(self) -> None:
        """Trials Ray did not finish (Ctrl-C) are marked interrupted: the next run evaluates them
        again."""
        for trial_id, trial in self.trials.items():
            if trial_id not in self.done:
                self.ledger.abandon(trial)
                self.done.add(trial_id)


def ray_trial(
    config: dict, task: SearchTask, threads: int, workers: Workers | None, stops=None
) -> None:
    """One Ray trial: report the judged values, or train the proxy reporting top-1 every epoch
    (here, or data-parallel on ``workers`` that Ray Train places across the cluster)."""
    import torch

    from ..allocator import keep_freed_memory

    epochs, madds = task.recipe.epochs, config["madds"]
    if config["values"] is not None:
        top1, madds = config["values"]
        values = config["values"]
        tune.report(
            {"top1": top1, "madds": madds, "epoch": epochs, "final": True, "values": values}
        )
        return
    if workers is not None:
        workers.train(config, task, stops)
        return
    keep_freed_memory()  # as the CLI does for its own process
    torch.set_num_threads(threads)
    result = task.evaluate(
        config["point"],
        report=lambda epoch, m: tune.report(epoch_report(madds, epoch, m, workers=1)),
    )
    tune.report(final_report(result, madds, epochs, workers=1))


class RaySearcher(Searcher):
    """Ray Tune schedules the trials, locally or on the cluster at ``options.address``; with
    ``options.workers_per_trial`` > 1 each trained trial is a Ray Train data-parallel training."""

    @property
    def workers(self) -> Workers | None:
        o = self.options
        if o.workers_per_trial == 1:
            return None
        return Workers(o.workers_per_trial, o.cpus_per_worker, o.gpus_per_worker)

    def check(self, task: SearchTask) -> None:
        """The recipe's batch splits evenly over the workers, and the cluster holds one trial's
        workers (a local Ray: this machine's cores and GPUs; a cluster: joined to ask it)."""
        workers = self.workers
        if workers is None:
            return
        where = "this machine (a local Ray)" if self.options.address is None else "the cluster"
        workers.concurrent(self._cluster(), where=where)
        batch = task.recipe.for_base(task.space.base).batch_size
        if batch % workers.count:
            raise UsageError(
                f"--workers-per-trial {workers.count}: the recipe's batch of {batch} does not "
                f"split evenly over {workers.count} workers (the global batch stays the recipe's)"
            )

    def _cluster(self) -> dict[str, float]:
        if self.options.address is None:
            import torch

            return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
        _init(self.options.address)
        return ray.cluster_resources()

    def search(self, task: SearchTask, ledger: Ledger) -> list[TrialRecord]:
        if not ledger.full:
            _init(self.options.address)
            try:
                _tune(task, ledger, self.options, self.workers)
            finally:
                # a local Ray's servers are our children, its workers their children
                local = self.options.address is None
                ours = psutil.Process().children(recursive=True) if local else []
                ray.shutdown()
                _end(ours)
        return ledger.records()


def _init(address: str | None) -> None:
    """Start a local Ray (all of this machine's cores) or join the cluster at ``address``."""
    if ray.is_initialized():
        return
    ray.init(
        address=address or "local",
        num_cpus=None if address else os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )


def _end(processes: list[psutil.Process], seconds: float = 10) -> None:
    """Kill what a local Ray left running after ``ray.shutdown()``: a worker still starting when
    its raylet went (after Ctrl-C, say) can outlive it by minutes."""
    for p in psutil.wait_procs(processes, timeout=seconds)[1]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _tune(task, ledger: Ledger, options, workers: Workers | None) -> None:
    """Run trials on Ray until the ledger holds its total of counted trials."""
    searcher = StudySearch(ledger)
    stops = None
    if workers is None:
        threads, resources = (
            max(1, int(options.cpus_per_trial)),
            {
                "cpu": options.cpus_per_trial,
                "gpu": options.gpus_per_trial,
            },
        )
        at_once = 0  # as many as the trials' resources allow
    else:  # the trial only waits on its workers, who ask for the resources
        threads, resources = 0, {"cpu": 0, "memory": 2**20}  # Tune needs some request
        at_once = workers.concurrent(ray.cluster_resources())
        stops = StopRequests.remote()
    try:
        with scratch_dir("ray") as storage:
            trainable = tune.with_resources(
                tune.with_parameters(
                    ray_trial, task=task, threads=threads, workers=workers, stops=stops
                ),
                resources,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=max(1, ledger.total - ledger.counted()),
                    scheduler=BandedASHA(budget=task.budget, max_t=task.recipe.epochs, stops=stops),
                    max_concurrent_trials=at_once,
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
        if ledger.finished() < ledger.total:
            raise KeyboardInterrupt
    finally:
        searcher.abandon_unfinished()
