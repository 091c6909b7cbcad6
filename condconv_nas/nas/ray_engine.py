"""The Ray Tune engine: Ray schedules the trials (locally or on a cluster); the run's ledger holds
the sampler's state and every result, so the run folder is the same as Optuna's.

Our Ray searcher (``StudySearch``) asks the ledger for points; each point is judged on the
driver (counted: over budget or already trained -> no training) before Ray runs it. Early
stopping is ASHA on top-1, but per MADD band (see ``BandedASHA``): a cheap candidate only
competes with cheap ones, so it is never stopped for being less accurate than candidates that
cost twice as much.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import psutil
import ray
from ray import tune
from ray.tune import search as ray_search
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group_table,
    remove_placement_group,
)

from ..errors import UsageError
from .backend import Searcher, scratch_dir, stdout_to_stderr
from .ledger import Ledger
from .records import TrialRecord
from .study import Trial
from .task import SearchTask

BANDS = 4  # MADD bands of equal width over [0, budget]; over-budget points get a band of their own


def band_of(madds: int, budget: int) -> int:
    """The MADD band of a point: 0 .. BANDS-1 within the budget, BANDS above it."""
    return BANDS if madds > budget else min(BANDS - 1, BANDS * madds // budget)


class BandedASHA(FIFOScheduler):
    """ASHA on top-1 run separately in each MADD band: a trial is stopped at a rung only when it
    is in the lower half of the trials of its own band that reached that rung."""

    def __init__(
        self,
        *,
        budget: int,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2,
        stops: StopRequests | None = None,
    ) -> None:
        super().__init__()
        self.budget, self.stops, self._stopping = budget, stops, set()
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
        if trial.config.get("values") is not None or result.get("final"):
            return self.CONTINUE  # judged, not trained, or done: nothing to compare or stop
        if trial.trial_id in self._stopping:
            return self.CONTINUE  # told to stop, and stopping
        decision = self._scheduler(trial).on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and self.stops is not None:
            # Ray Train's workers are told to stop and end their training themselves: stopped by
            # Tune, they would leave their resources held (Ray Train frees them through the
            # dashboard's state API, which a cluster may not run)
            self._stopping.add(trial.trial_id)
            self.stops.add.remote(trial.trial_id)
            return self.CONTINUE
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"BandedASHA: {len(self._asha)} MADD bands"


@ray.remote(num_cpus=0)
class StopRequests:
    """The trials ASHA stopped whose training runs on Ray Train workers (they ask each epoch),
    and the placement group each such trial's workers run in (freed by the trial when it ends)."""

    def __init__(self) -> None:
        self.trials: set[str] = set()
        self.groups: dict[str, PlacementGroup] = {}

    def add(self, trial_id: str) -> None:
        self.trials.add(trial_id)

    def has(self, trial_id: str) -> bool:
        return trial_id in self.trials

    def placed(self, trial_id: str, group: PlacementGroup) -> None:
        self.groups[trial_id] = group

    def group(self, trial_id: str) -> PlacementGroup | None:
        return self.groups.pop(trial_id, None)


class Stopped(Exception):
    """ASHA stopped this trial: its workers end their training."""


def told_to_stop(stops, trial_id: str) -> bool:
    """Whether ASHA stopped the trial, as rank 0 heard it: the same answer on every worker (they
    must stop after the same epoch)."""
    import torch

    from ..training.distributed import world

    asked = world()[1] == 0 and ray.get(stops.has.remote(trial_id))
    flag = torch.tensor([1.0 if asked else 0.0])
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


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
            ledger.stopped_early(trial, result.get("epoch"), result.get("top1"))

    def abandon_unfinished(self) -> None:
        """Trials Ray did not finish (Ctrl-C) are marked interrupted: the next run evaluates them
        again."""
        for trial_id, trial in self.trials.items():
            if trial_id not in self.done:
                self.ledger.abandon(trial)
                self.done.add(trial_id)


def _final(result: dict, madds: int, epochs: int, workers: int) -> dict:
    """The last report of a trained trial: what the study records of it."""
    inherited = result.get("inherited")
    return {
        "top1": result["top1"],
        "top5": result["top5"],
        "untrained": result["untrained"],
        "madds": madds,
        "epoch": epochs,
        "final": True,
        "workers": workers,
        **({"inherited": inherited} if inherited is not None else {}),
    }


def _epoch(madds: int, epoch: int, metrics: dict) -> dict:
    """An intermediate report: the held-out metrics after ``epoch`` (what ASHA compares)."""
    return {
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "madds": madds,
        "epoch": epoch,
        "final": False,
    }


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
        config["point"], report=lambda epoch, m: tune.report(_epoch(madds, epoch, m))
    )
    tune.report(_final(result, madds, epochs, workers=1))


def train_worker(config: dict) -> None:
    """One Ray Train worker of a trial's data-parallel proxy training: Ray has joined it to the
    trial's process group, and every worker reports each epoch (Ray passes rank 0's on to Tune)."""
    import torch
    from ray import train

    from ..allocator import keep_freed_memory
    from ..training.distributed import world

    keep_freed_memory()
    torch.set_num_threads(config["threads"])
    task, madds = config["task"], config["madds"]
    if world()[1] == 0:
        config["stops"].placed.remote(config["trial_id"], get_current_placement_group())

    def report(epoch: int, metrics: dict) -> None:
        train.report(_epoch(madds, epoch, metrics))
        if told_to_stop(config["stops"], config["trial_id"]):
            raise Stopped

    try:
        result = task.evaluate(config["point"], report=report)
    except Stopped:
        return  # the last report stands: Tune records the trial stopped early
    train.report(_final(result, madds, task.recipe.epochs, workers=world()[0]))


@dataclass(frozen=True)
class Workers:
    """A trained trial's data-parallel workers: how many, and what each asks of the cluster."""

    count: int
    cpus: float
    gpus: float

    @property
    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    def train(self, config: dict, task: SearchTask, stops) -> None:
        """Train the proxy on these workers with Ray Train (its TorchTrainer: one process group,
        gloo on CPU, NCCL on GPU); the workers' reports reach Tune as the trial's."""
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "task": task,
                "point": config["point"],
                "madds": config["madds"],
                "threads": max(1, int(self.cpus)),
                "stops": stops,
                "trial_id": trial_id,
            },
            scaling_config=ScalingConfig(
                num_workers=self.count, use_gpu=self.gpus > 0, resources_per_worker=self.resources
            ),
            run_config=RunConfig(
                name="train",
                storage_path=tune.get_context().get_trial_dir(),
                callbacks=[TuneReportCallback()],
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()
        finally:
            free_group(ray.get(stops.group.remote(trial_id)))

    def concurrent(self, cluster: dict, where: str = "the cluster") -> int:
        """How many trials' workers the cluster's resources hold at once; `UsageError` if not
        even one trial's."""
        fits = [cluster.get(k, 0) / (self.count * v) for k, v in self.resources.items() if v]
        if min(fits) < 1:
            have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in self.resources)
            raise UsageError(
                f"--workers-per-trial {self.count}: {self.count} workers of "
                f"{self._asks()} each need {self._asks(self.count)}; {where} has {have}"
            )
        return int(min(fits))

    def _asks(self, times: int = 1) -> str:
        return " and ".join(f"{v * times:g} {k}" for k, v in self.resources.items())


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


def free_group(group: PlacementGroup | None) -> None:
    """Remove a finished trial's worker placement group if Ray Train left it: when a worker dies,
    Train's controller can be gone before it frees the group, and its own cleaner needs the
    dashboard's state API; a leaked group holds the next trial's CPUs forever."""
    if group is not None and placement_group_table(group).get("state", "REMOVED") != "REMOVED":
        remove_placement_group(group)


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
