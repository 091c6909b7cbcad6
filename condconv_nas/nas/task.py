"""What every backend does with one point of the space: count first, train only if under budget."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..data import DataSource
from ..latency import predict_latency
from ..madds import count_madds, count_params
from ..models import build_model
from ..training.proxy import proxy_top1
from ..training.recipe import Recipe
from .space import SearchSpace
from .supernet import score


@dataclass
class SearchTask:
    """Everything a worker needs to evaluate points (plain data: it pickles for Ray and NNI)."""

    space: SearchSpace  # the declarative space
    budget: int  # hard MADD budget of the full-size spec
    recipe: Recipe  # the proxy training recipe
    data: DataSource  # where the proxy trains and evaluates
    seed: int = 0  # seeds the proxy training
    init: str | None = None  # weights every candidate starts from (a file or timm:NAME), or none
    supernet: str | None = None  # --strategy oneshot: the supernet file that scores every candidate
    latency_budget: float | None = None  # hard budget of predicted latency, ms (None: none)
    latency_batch: int = 1  # the batch the latency is predicted at
    objective: str = "madds"  # the front's cost: madds or latency
    latency_device: str | None = None  # another machine's latency table file (None: this one's)
    _counts: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    _latencies: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def uses_latency(self) -> bool:
        """Whether candidates' latency is predicted (a latency budget, or the latency objective)."""
        return self.latency_budget is not None or self.objective == "latency"

    def latency(self, spec) -> float:
        """Predicted forward latency of a full-size spec in ms, on this machine or the device whose
        table the search names, cached by spec id (see ``condconv_nas.latency``)."""
        if spec.id not in self._latencies:
            self._latencies[spec.id] = predict_latency(
                spec, batch=self.latency_batch, table=self.latency_device
            )
        return self._latencies[spec.id]

    def within_budgets(self, madds: int, latency_ms: float | None) -> bool:
        """Whether a candidate fits the MADD budget and the latency budget (if any)."""
        return madds <= self.budget and (
            self.latency_budget is None
            or (latency_ms is not None and latency_ms <= self.latency_budget)
        )

    def count(self, spec) -> tuple[int, int]:
        """(MADDs, parameters) of a full-size spec, cached by spec id."""
        if spec.id not in self._counts:
            model = build_model(spec)
            self._counts[spec.id] = (count_madds(model), count_params(model))
        return self._counts[spec.id]

    def dense_shape(self):
        """The static network the search's dense start trains (`SearchSpace.dense_start`), judged
        against this task's MADD budget by the same cached count the candidates get."""
        return self.space.dense_start(lambda s: self.count(s)[0] <= self.budget)

    def measure(self, params: dict[str, Any]):
        """(spec, MADDs, parameters) of a point, counted on the full-size spec."""
        spec = self.space.to_spec(params)
        return (spec, *self.count(spec))

    def evaluate(self, params: dict[str, Any], *, report=None, on_epoch=None) -> dict[str, Any]:
        """Count; over budget -> infeasible, never trained; otherwise the proxy's top-1 (with a
        ``supernet``, the top-1 it scores with the supernet's weights, untrained), and whether it
        is ``untrained`` (not clearly above chance, see ``chance_threshold``: kept off the front).

        ``report(epoch, metrics)`` receives intermediate held-out metrics (see ``proxy_top1``)."""
        t0 = time.time()
        spec, madds, n_params = self.measure(params)
        result = {
            "spec": spec.to_dict(),
            "spec_id": spec.id,
            "madds": madds,
            "params": n_params,
            "feasible": madds <= self.budget,
            "top1": None,
            "top5": None,
            "untrained": False,
        }
        if result["feasible"]:
            metrics = (
                score(spec, self.data, self.recipe, self.supernet)
                if self.supernet is not None
                else proxy_top1(
                    spec,
                    self.data,
                    self.recipe,
                    seed=self.seed,
                    report=report,
                    on_epoch=on_epoch,
                    init=self.init,
                )
            )
            result.update(
                top1=metrics["top1"],
                top5=metrics["top5"],
                untrained=metrics["top1"] < metrics["chance_threshold"],
                inherited=metrics.get("inherited"),
            )
        result["seconds"] = round(time.time() - t0, 2)
        return result
