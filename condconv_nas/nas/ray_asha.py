"""ASHA per MADD band, for the Ray searcher: a cheap candidate only competes with cheap ones, so it
is never stopped for being less accurate than candidates that cost twice as much; and how a stop
reaches a trial whose training runs on Ray Train's workers (`StopRequests`)."""

from __future__ import annotations

from collections import defaultdict

import ray
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.util.placement_group import PlacementGroup

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
