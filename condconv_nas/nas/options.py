"""Options of ``condconv-nas search`` and the budget syntax (kept apart: no heavy imports here)."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal

from ..training.options import DATA_HELP
from ..validation import MAX_MADDS, short_repr
from .backend import BACKENDS, NNI_STRATEGIES, SAMPLERS

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
OBJECTIVES = ("madds", "latency")  # what the front trades top-1 against


def parse_budget(text: str) -> int:
    """``400M``, ``0.4G``, ``413000000``, ``500k`` -> MADDs as an int; ValueError naming the text
    otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise ValueError(
            f"budget {short_repr(text)} is not a number with an optional K/M/G suffix (e.g. 400M, "
            f"0.4G, 413000000)"
        )
    value = Decimal(m.group(1)) * _SUFFIX[m.group(2).upper()]  # exact, as a float is not
    if value > MAX_MADDS:
        raise ValueError(
            f"budget {short_repr(text)} must be at most 1000000000G ({MAX_MADDS} MADDs)"
        )
    if round(value) <= 0:
        raise ValueError(f"budget {short_repr(text)} must be positive")
    return round(value)


def parse_latency(value) -> float:
    """``20ms``, ``0.02s``, ``20`` (milliseconds), or a number of milliseconds -> milliseconds as a
    float; ValueError naming the value otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ValueError(
                f"latency budget {short_repr(value)} is not a time: a number of milliseconds, or "
                f"with a unit (e.g. 20ms, 0.02s)"
            )
        ms = float(m.group(1)) * (1000.0 if (m.group(2) or "").lower() == "s" else 1.0)
    if not 0 < ms <= 3.6e6:
        raise ValueError(f"latency budget {short_repr(value)} must be positive and at most an hour")
    return ms


def _latency(text: str) -> float:
    try:
        return parse_latency(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _budget(text: str) -> int:
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{short_repr(text)} is not a positive integer")
    return v


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget", type=_budget, required=True, help="hard MADD budget: 400M, 0.4G or 413000000"
    )
    p.add_argument(
        "--latency-budget",
        type=_latency,
        default=None,
        help="hard budget of predicted forward latency on this machine: 20ms, 0.02s or 20 (ms)",
    )
    p.add_argument(
        "--latency-batch",
        type=positive_int,
        default=1,
        help="batch size the latency is predicted and measured at (default: 1)",
    )
    p.add_argument(
        "--latency-device",
        default=None,
        metavar="TABLE",
        help="predict latency with the target machine's table file (written there by "
        "`condconv-nas latency --space NAME`) instead of this machine's (default: this machine, "
        "the driver's on Ray)",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="madds",
        help="the cost of the Pareto front and the plots' x axis: madds or latency (predicted on "
        "this machine) (default: madds)",
    )
    p.add_argument(
        "--space",
        default="efficientnet_b0",
        help="search space: a shipped name or a YAML file (default: efficientnet_b0)",
    )
    p.add_argument(
        "--trials",
        type=positive_int,
        default=None,
        help="total trials of the run, across restarts and workers (default: the trainer's)",
    )
    p.add_argument(
        "--data",
        default="digits",
        help=DATA_HELP,
    )
    p.add_argument(
        "--trainer",
        default="proxy",
        help="training recipe for candidates: a shipped name or a YAML file (default: proxy)",
    )
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="optuna",
        help="optuna (this machine), ray (Ray Tune, local or a cluster) or nni (default: optuna)",
    )
    p.add_argument(
        "--run", default=None, help="run name (default: <space>-<budget>); the same name resumes"
    )
    p.add_argument("--results", default="results", help="folder of run folders (default: results)")
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: SQLite in the run folder)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address to join (with --backend ray; default: a local Ray)",
    )
    p.add_argument(
        "--cpus-per-trial", type=float, default=1.0, help="Ray: CPUs per trial (default: 1)"
    )
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="Ray: GPUs per trial (default: 0)"
    )
    p.add_argument(
        "--workers-per-trial",
        type=positive_int,
        default=1,
        help="Ray: train each candidate data-parallel on N workers that Ray Train places on the "
        "cluster; the recipe's batch is split among them (default: 1, in the trial's process)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="Ray: CPUs per training worker, with --workers-per-trial (default: 1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="Ray: GPUs per training worker, with --workers-per-trial (default: 0)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="how the Optuna and Ray backends propose candidates after the presets: tpe "
        "(Optuna's multi-objective TPE, random for its first 8 trials) or random (default: tpe)",
    )
    p.add_argument(
        "--nni-strategy",
        choices=NNI_STRATEGIES,
        default="evolution",
        help="NNI: the search strategy (default: evolution, NNI's regularized evolution)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="SOURCE",
        help="start every candidate from these weights, taking what matches: a state dict file "
        "of the base's timm model, a model.pt, or timm:NAME (timm's pretrained weights)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of this worker's sampler; a new run's seed also seeds every proxy training "
        "(default: 0)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="a line per trial instead of a progress bar (default: the bar)",
    )
