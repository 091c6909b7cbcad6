"""A trained trial's data-parallel proxy training on Ray Train's workers (``--workers-per-trial``):
what the workers run, what they report to Tune, and the placement groups they leave."""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray import tune
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group_table,
    remove_placement_group,
)

from ..errors import UsageError
from .ray_asha import Stopped, told_to_stop
from .task import SearchTask


def final_report(result: dict, madds: int, epochs: int, workers: int) -> dict:
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


def epoch_report(madds: int, epoch: int, metrics: dict, workers: int) -> dict:
    """An intermediate report: the held-out metrics after ``epoch`` (what ASHA compares), and
    the processes training (recorded if ASHA stops the trial here)."""
    return {
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "madds": madds,
        "epoch": epoch,
        "final": False,
        "workers": workers,
    }


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
        train.report(epoch_report(madds, epoch, metrics, workers=world()[0]))
        if told_to_stop(config["stops"], config["trial_id"]):
            raise Stopped

    try:
        result = task.evaluate(config["point"], report=report)
    except Stopped:
        return  # the last report stands: Tune records the trial stopped early
    train.report(final_report(result, madds, task.recipe.epochs, workers=world()[0]))


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


def free_group(group: PlacementGroup | None) -> None:
    """Remove a finished trial's worker placement group if Ray Train left it: when a worker dies,
    Train's controller can be gone before it frees the group, and its own cleaner needs the
    dashboard's state API; a leaked group holds the next trial's CPUs forever."""
    if group is not None and placement_group_table(group).get("state", "REMOVED") != "REMOVED":
        remove_placement_group(group)
