"""Every setting of a search, in one validated class (`SearchConfig`): its default, type, range and
help. The CLI's options, ``search()``'s keywords, the backends' options and the resume check all
come from it. Kept light: no heavy imports here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..errors import UsageError
from ..training.options import DATA_HELP
from ..validation import MAX_MADDS, MAX_TRIALS, check_int, check_seed, short_repr

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
OBJECTIVES = ("madds", "latency")  # what the front trades top-1 against
BACKEND_NAMES = ("optuna", "ray", "nni")  # nas.backend.BACKENDS says where each one lives
NNI_STRATEGIES = ("evolution", "random", "tpe")
STRATEGIES = ("proxy", "oneshot")  # how a candidate is scored (nas/supernet.py for oneshot)
SAMPLERS = ("tpe", "random")  # the study's sampler, which the Optuna and Ray backends ask
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # a run folder's name
MAX_PER_TRIAL = 1024  # Ray: the most CPUs or GPUs one trial (or worker) may ask for


def parse_budget(text: str) -> int:
    """``400M``, ``0.4G``, ``413000000``, ``500k`` -> MADDs as an int; ValueError naming the text
    otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*", str(text), re.ASCII)
    if not m:
        if str(text).lstrip().startswith("-"):
            raise ValueError(f"budget {short_repr(text)} must be positive")
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


@dataclass(frozen=True)
class Range:
    """Where a numeric setting may lie: [low, high], or (low, high] with ``low_open``; ``whole``:
    an integer."""

    low: float
    high: float
    whole: bool = False
    low_open: bool = False

    def check(self, value: Any, flag: str) -> None:
        if self.whole:
            check_int(value, flag, int(self.low), int(self.high))
            return
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        above = number and (value > self.low if self.low_open else value >= self.low)
        if not (above and value <= self.high):  # nan fails every comparison
            bracket = "(" if self.low_open else "["
            raise UsageError(
                f"{flag} must be in {bracket}{self.low:g}, {self.high:g}], got {value!r}"
            )


_CPUS = Range(0, MAX_PER_TRIAL, low_open=True)
_GPUS = Range(0, MAX_PER_TRIAL)


def setting(
    default: Any,
    help: str,
    *,
    cli: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    same_run: bool = False,
    required: bool = False,
    shown: str | None = None,
    within: Range | None = None,
) -> Any:
    """A `SearchConfig` field: ``cli`` parses the option's text, ``same_run`` says that a resumed
    run must keep it (a config written before the setting existed stands for ``default``);
    ``shown``: the default in words, where the value (None) does not say it; ``within``: the
    range a number must lie in (checked when a config is made; None passes where it is the
    default)."""
    meta = dict(
        help=help,
        cli=cli,
        choices=choices,
        metavar=metavar,
        same_run=same_run,
        required=required,
        shown=shown,
        within=within,
    )
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Every setting of a search, checked when made (`UsageError` naming the option)."""

    budget: int = setting(
        0, "hard MADD budget: 400M, 0.4G or 413000000", cli=_budget, same_run=True, required=True
    )
    latency_budget: float | None = setting(
        None,
        "hard budget of predicted forward latency on this machine: 20ms, 0.02s or 20 (ms)",
        cli=_latency,
        same_run=True,
    )
    latency_batch: int = setting(
        1,
        "batch size the latency is predicted and measured at",
        cli=positive_int,
        within=Range(1, 4096, whole=True),
        same_run=True,
    )
    latency_device: str | None = setting(
        None,
        "predict latency with the target machine's table file (written there by `condconv-nas "
        "latency --space NAME`) instead of this machine's",
        shown="this machine, the driver's on Ray",
        metavar="TABLE",
        same_run=True,
    )
    objective: str = setting(
        "madds",
        "the cost of the Pareto front and the plots' x axis: madds or latency (predicted on "
        "this machine)",
        choices=OBJECTIVES,
        same_run=True,
    )
    space: str = setting(
        "efficientnet_b0",
        "search space: a shipped name or a YAML file",
        same_run=True,
    )
    trials: int | None = setting(
        None,
        "total trials of the run, across restarts and workers",
        shown="the trainer's",
        cli=positive_int,
        within=Range(1, MAX_TRIALS, whole=True),
    )
    data: str = setting("digits", DATA_HELP.removesuffix(" (default: digits)"), same_run=True)
    trainer: str = setting("proxy", "training recipe for candidates: a shipped name or a YAML file")
    backend: str = setting(
        "optuna",
        "optuna (this machine), ray (Ray Tune, local or a cluster) or nni",
        choices=BACKEND_NAMES,
    )
    run: str | None = setting(None, "run name; the same name resumes", shown="<space>-<budget>")
    results: str = setting("results", "folder of run folders")
    storage: str | None = setting(None, "Optuna storage URL", shown="SQLite in the run folder")
    address: str | None = setting(
        None, "Ray cluster address to join (with --backend ray)", shown="a local Ray"
    )
    cpus_per_trial: float = setting(1.0, "Ray: CPUs per trial", cli=float, within=_CPUS)
    gpus_per_trial: float = setting(0.0, "Ray: GPUs per trial", cli=float, within=_GPUS)
    workers_per_trial: int = setting(
        1,
        "Ray: train each candidate data-parallel on N workers that Ray Train places on the "
        "cluster; the recipe's batch is split among them",
        shown="1, in the trial's process",
        cli=positive_int,
        within=Range(1, MAX_PER_TRIAL, whole=True),
    )
    cpus_per_worker: float = setting(
        1.0, "Ray: CPUs per training worker, with --workers-per-trial", cli=float, within=_CPUS
    )
    gpus_per_worker: float = setting(
        0.0, "Ray: GPUs per training worker, with --workers-per-trial", cli=float, within=_GPUS
    )
    sampler: str = setting(
        "tpe",
        "how the Optuna and Ray backends propose candidates after the presets: tpe (Optuna's "
        "multi-objective TPE, random for its first 8 trials) or random",
        choices=SAMPLERS,
    )
    nni_strategy: str = setting(
        "evolution",
        "NNI: the search strategy",
        shown="evolution, NNI's regularized evolution",
        choices=NNI_STRATEGIES,
    )
    strategy: str = setting(
        "proxy",
        "how a candidate is scored: proxy (trained briefly, from the run's dense start) or "
        "oneshot (one supernet trained once per run over the whole space; each candidate "
        "scored with the weights it takes from it, untrained)",
        choices=STRATEGIES,
        same_run=True,
    )
    init: str | None = setting(
        None,
        "start every candidate from these weights, taking what matches: a state dict file of "
        "the base's timm model, a model.pt, or timm:NAME (timm's pretrained weights)",
        metavar="SOURCE",
        same_run=True,
    )
    seed: int = setting(
        0,
        "seed of this worker's sampler; a new run's seed also seeds every proxy training",
        cli=int,
    )

    def __post_init__(self) -> None:
        self._set("budget", _madds(self.budget))
        if self.latency_budget is not None:
            self._set("latency_budget", _checked(parse_latency, self.latency_budget))
        if self.latency_device is not None:
            self._set("latency_device", str(self.latency_device))
        if self.run is not None and not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", str(self.run)
        ):
            raise UsageError(
                f"--run {short_repr(self.run)}: use letters, digits, '.', '_' and '-' only, at "
                "most 128"
            )
        self._set("results", str(self.results))
        check_seed(self.seed)
        for f in dataclasses.fields(self):
            choices, within = f.metadata["choices"], f.metadata["within"]
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UsageError(f"{flag(f.name)} {value!r}: expected one of {', '.join(choices)}")
            if within is not None and not (value is None and f.default is None):
                within.check(value, flag(f.name))
        self._check_ray()
        if self.strategy == "oneshot":
            for name in ("init", "workers_per_trial"):
                if getattr(self, name) != default(name):
                    raise UsageError(
                        f"{flag(name)} and --strategy oneshot: one-shot candidates are scored, "
                        "not trained; the supernet trains from scratch, once per run"
                    )

    def _check_ray(self) -> None:
        n = self.workers_per_trial
        # one process per trial asks for --cpus/--gpus-per-trial; N workers ask per worker
        asks = (
            ("cpus_per_worker", "gpus_per_worker")
            if n == 1
            else ("cpus_per_trial", "gpus_per_trial")
        )
        for name in asks:
            if getattr(self, name) == default(name):
                continue
            if n == 1:
                raise UsageError(f"{flag(name)} needs --workers-per-trial N with N > 1")
            raise UsageError(
                f"{flag(name)}: a trial of {n} workers asks for its workers' resources; use "
                f"{flag(name.replace('trial', 'worker'))}"
            )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen config as it is made

    @classmethod
    def of(cls, settings: dict[str, Any]) -> SearchConfig:
        """The config of ``search()``'s keywords; an unknown one is a `UsageError` naming it."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown search setting(s) {', '.join(unknown)}")
        if "budget" not in settings:
            raise UsageError("a search needs a budget (MADDs, e.g. 400M)")
        return cls(**settings)

    def changed(self, names) -> list[str]:
        """Which of ``names`` differ from their defaults."""
        return [n for n in names if getattr(self, n) != default(n)]


def help_text(f: dataclasses.Field) -> str:
    """A setting's help, its default said from the field (``shown`` where None does not say it)."""
    meta = f.metadata
    if meta["required"] or (f.default is None and meta["shown"] is None):
        return meta["help"]
    value = f"{f.default:g}" if isinstance(f.default, float) else f.default
    return f"{meta['help']} (default: {meta['shown'] or value})"


def format_madds(n: int) -> str:
    """``400M``, ``1.5G``, ``413000123``: the shortest exact form (a run's default name), the
    inverse of `parse_budget`."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % (scale // 1000 if scale > 10**3 else scale) == 0:
            whole, frac = divmod(n, scale)
            return f"{whole}.{frac * 1000 // scale:03d}".rstrip("0").rstrip(".") + suffix
    return str(n)


def default(name: str) -> Any:
    return SearchConfig.__dataclass_fields__[name].default


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _madds(budget: Any) -> int:
    """``search()``'s budget: the CLI's forms (``"400M"``) or a positive int."""
    if isinstance(budget, str):
        return _checked(parse_budget, budget)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= MAX_MADDS:
        raise UsageError(
            f"budget must be a positive number of MADDs, at most {MAX_MADDS}, got "
            f"{short_repr(budget)}"
        )
    return budget


def _checked(parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except ValueError as e:
        raise UsageError(str(e)) from None


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """``condconv-nas search``'s options, one per `SearchConfig` setting, and ``--quiet``."""
    for f in dataclasses.fields(SearchConfig):
        meta = f.metadata
        p.add_argument(
            flag(f.name),
            type=meta["cli"],
            choices=meta["choices"],
            metavar=meta["metavar"],
            help=help_text(f),
            **({"required": True} if meta["required"] else {"default": f.default}),
        )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="a line per trial instead of a progress bar (default: the bar)",
    )
