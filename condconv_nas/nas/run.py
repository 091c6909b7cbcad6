"""``search()``: check every input up front, then run a backend into the run folder."""

from __future__ import annotations

import contextlib
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from .. import __version__
from ..data import check_data, parse_source
from ..errors import UsageError
from ..extras import EXTRAS
from ..files import check_writable_folder, write_atomic
from ..latency import measure_latencies
from ..latency.predict import check_covers, device_table
from ..latency.table import LatencyTable, table_key
from ..models.sources import check_base, load_source
from ..plots import draw_run
from ..results import trained_rows, write_run
from ..spec import ArchSpec
from ..training.recipe import Recipe, load_recipe
from ..validation import read_json, short_repr
from .backend import check_backend, make_searcher
from .ledger import (
    Callbacks,
    Ledger,
    TrialRecord,
    enqueue_presets,
    finished,
    open_study,
    recover_killed,
    requeue_interrupted,
)
from .options import SearchConfig, same_run_settings
from .progress import BarReporter, Reporter, trial_line
from .space import load_space
from .supernet import SUPERNET, supernet_recipe, train_supernet
from .task import SearchTask
from .warm_start import DENSE, dense_start


def format_madds(n: int) -> str:
    """``400M``, ``1.5G``, ``413000123``: the shortest exact form (a run's default name)."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % (scale // 1000 if scale > 10**3 else scale) == 0:
            whole, frac = divmod(n, scale)
            return f"{whole}.{frac * 1000 // scale:03d}".rstrip("0").rstrip(".") + suffix
    return str(n)


def prepare(options: SearchConfig):
    """Everything checked, nothing written: (task, run_dir, config, total)."""
    check_backend(options)
    space = load_space(options.space)
    source = parse_source(options.data)
    recipe = load_recipe(options.trainer).for_data(source.kind)
    recipe.check_optimizer()
    _, scored_on = check_data(source, holdout=recipe.holdout, seed=recipe.seed)
    init = None if options.init is None else check_init(options.init, space.base)
    task = SearchTask(
        space=space,
        budget=options.budget,
        recipe=recipe,
        data=source,
        seed=options.seed,
        init=init,
        latency_budget=options.latency_budget,
        latency_batch=options.latency_batch,
        objective=options.objective,
        latency_device=_latency_device(options, space),
    )
    total = options.trials or recipe.trials
    run_dir = Path(options.results) / (options.run or f"{space.name}-{format_madds(task.budget)}")
    check_writable_folder(run_dir, "--results")
    config = {
        "budget": task.budget,
        "space": space.name,
        "decisions": {k: list(v) for k, v in space.decisions.items()},
        "base": space.base,
        "trainer": options.trainer,
        "recipe": recipe.__dict__,
        "data": str(source),
        "scored_on": scored_on,
        "threads": torch.get_num_threads(),
        "seed": options.seed,
        "trials": total,
        "strategy": options.strategy,
        **({"init": init} if init is not None else {}),
        "latency_budget": task.latency_budget,
        "latency_batch": task.latency_batch,
        "objective": task.objective,
        **({"latency_device": task.latency_device} if task.latency_device is not None else {}),
    }
    return task, run_dir, config, total


def _latency_device(options: SearchConfig, space) -> str | None:
    """The target machine's latency table file, checked to cover the whole space (it cannot be
    filled here)."""
    if options.latency_device is None:
        return None
    if options.latency_budget is None and options.objective != "latency":
        raise UsageError("--latency-device needs --latency-budget or --objective latency")

    table = device_table(options.latency_device, options.latency_batch)
    check_covers(table, space, options.latency_batch)
    return str(table.path)


def check_init(init: str, base: str) -> str:
    """The ``--init`` source, read and checked against the space's base; a file as an absolute
    path (workers elsewhere read it too)."""

    check_base(load_source(init), base)
    return init if init.startswith("timm:") else str(Path(init).resolve())


# What a resumed run must share with the run in its folder, and the value a config written before
# the key existed stands for (--seed may differ: it seeds each worker's sampler).
SAME_RUN = {**same_run_settings(), "decisions": None, "recipe": None}


def check_resume(run_dir: Path, config: dict) -> dict | None:
    """The config of the run being resumed (None for a new run); `UsageError` if it is another
    run's."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    old = read_json(path, str(path))
    if not isinstance(old, dict):
        raise UsageError(f"{path}: not a run's config.json (not a JSON object)")

    fields = Recipe().__dict__  # a recipe field added since the run began stands at its default
    for key, default in SAME_RUN.items():
        before, now = old.get(key, default), config.get(key, default)
        if key == "recipe" and isinstance(before, dict) and isinstance(now, dict):
            before, now = {**fields, **before}, {**fields, **now}
        if before != now:
            raise UsageError(
                f"run folder {run_dir} holds a run with a different {key} "
                f"({short_repr(old.get(key))}); pick another --run or --results"
            )
    return old


def check_storage(run_dir: Path, old: dict | None, url: str) -> None:
    """`UsageError` if the run folder's results come from a study in another storage: a rerun
    with another --storage would replace them with another study's."""
    before = (old or {}).get("storage")
    # the run's own study.db, in a run folder that was moved since
    own = f"/{run_dir.name}/study.db"
    moved = before and url.endswith(own) and before.endswith(own)
    if before and before != url and not moved:
        raise UsageError(
            f"run folder {run_dir} holds the results of the study in {before}: pass --storage "
            f"{before} to go on with it, or pick another --run"
        )


def check_budget(task: SearchTask) -> None:
    cheapest = task.space.cheapest()
    madds, _ = task.count(cheapest)
    if madds > task.budget:
        raise UsageError(
            f"budget {format_madds(task.budget)} ({task.budget} MADDs) is impossible: the cheapest "
            f"candidate of space {task.space.name!r} already needs {madds} MADDs"
        )
    if task.latency_budget is not None:
        latency = task.latency(cheapest)
        if latency > task.latency_budget:
            where = "this machine" if task.latency_device is None else task.latency_device
            raise UsageError(
                f"latency budget {task.latency_budget:g} ms is impossible on {where}: the "
                f"cheapest candidate of space {task.space.name!r} is predicted at {latency:.1f} ms "
                f"(batch {task.latency_batch})"
            )


def measure_presets(task: SearchTask) -> dict[str, dict]:
    """The paper's presets the space contains: their decisions, MADDs and, when the search uses
    latency, their predicted latency."""
    presets = {}
    for name, params in task.space.presets().items():
        spec, madds, _ = task.measure(params)
        presets[name] = {"params": params, "madds": madds}
        if task.uses_latency:
            presets[name]["latency_ms"] = round(task.latency(spec), 3)
    return presets


def measure_front(task: SearchTask, run_dir: Path, front: list[dict]) -> dict[str, float]:
    """Measure the front's networks not measured yet on this machine (interleaved, once each) and
    keep the figures in the run folder's ``measured.json``: spec id -> milliseconds."""

    measured = read_measured(run_dir)
    key = table_key(task.latency_batch)
    if measured.get("machine") not in (None, key):  # another machine's figures: not ours to keep
        measured = {"measured_ms": {}}
    specs = {s.id: s for s in (ArchSpec.from_dict(r["spec"]) for r in front)}
    todo = [s for i, s in specs.items() if i not in measured["measured_ms"]]
    if todo:
        times = measure_latencies(todo, batch=task.latency_batch)
        measured["measured_ms"].update(
            {s.id: round(t, 3) for s, t in zip(todo, times, strict=True)}
        )
        measured.update(batch=task.latency_batch, machine=key)
        write_atomic(run_dir / "measured.json", json.dumps(measured, indent=2) + "\n")
    return measured["measured_ms"]


def read_measured(run_dir: Path) -> dict:
    """The run folder's measured latencies (``measured.json``), or an empty record."""
    try:
        data = json.loads((run_dir / "measured.json").read_text())
    except (OSError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("measured_ms"), dict):
        return {"measured_ms": {}}
    return data


def open_storage(url: str, name: str, seed: int, *, heartbeat: bool, sampler: str = "tpe"):
    """The run's study in ``url``; a URL that cannot be used is a usage error naming it."""
    import sqlalchemy.exc

    # workers started together race to create the tables: the loser tries again
    for attempt in range(3):
        try:
            return open_study(url, name, seed, heartbeat=heartbeat, sampler=sampler)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            if attempt == 2 or not re.search(r"UNIQUE|already exists|locked", str(e)):
                raise _storage_error(url, e) from None
            time.sleep(1.0 + attempt)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            raise _storage_error(url, e) from None


def _storage_error(url: str, e: Exception) -> UsageError:
    if isinstance(e, ImportError):
        return UsageError(
            f"--storage {url}: no database driver for it ({e}); for PostgreSQL: "
            f"pip install 'condconv-nas[{EXTRAS['psycopg']}]'"
        )
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    return UsageError(f"--storage {url}: cannot open it ({reason})")


@dataclass
class SearchResult:
    """What a search left in its run folder."""

    run_dir: Path  # the run folder (trials.csv, pareto.*, specs/, config.json)
    front: list[dict]  # the Pareto front: trial, madds, params, top1, spec (pareto.json)
    trials: list[dict]  # every trial, as in trials.csv
    finished: int  # finished trials that count toward the total
    total: int  # the run's total (--trials)
    running: int = 0  # trials other workers were still training when this one stopped

    @property
    def best(self) -> float | None:
        """The best top-1 of a trained trial so far."""
        return max((r["top1"] for r in trained_rows(self.trials)), default=None)

    @property
    def untrained(self) -> int:
        """Trials that trained to no better than chance (kept off the front)."""
        return sum(1 for r in self.trials if r.get("untrained"))


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; the run folder holds every finished trial (``.result``)."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__(f"interrupted after {result.finished}/{result.total} trials")
        self.result = result


@contextlib.contextmanager
def _optuna_warnings_only():
    """Optuna's INFO line per trial would interleave with the search's own; the caller's level
    comes back afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@_optuna_warnings_only()
def search(
    options: SearchConfig | None = None, /, *, progress: bool | Reporter = True, **settings: Any
) -> SearchResult:
    """Search a space for the Pareto front of proxy top-1 against MADDs under a hard MADD budget.

    Writes (or resumes) the run folder ``results/run`` as ``condconv-nas search`` does and returns
    what it holds. The settings are `SearchConfig`'s (the CLI's options, with ``_`` for ``-``),
    given as keywords or as a config: ``budget`` (required: an int or the CLI's forms, ``"400M"``,
    ``"0.4G"``), ``space="efficientnet_b0"``, ``trials`` (the run's total across restarts and
    workers; default: the recipe's), ``data="digits"``, ``trainer="proxy"``, ``backend="optuna"``,
    ``run``, ``results="results"``, ``storage``, ``seed=0``, ``init``, ``latency_budget``,
    ``latency_batch=1``, ``objective="madds"``, ``latency_device``, ``sampler="tpe"``,
    ``strategy="proxy"``, the backends' own (Ray: ``address``, ``cpus_per_trial``,
    ``gpus_per_trial``, ``workers_per_trial``, ``cpus_per_worker``, ``gpus_per_worker``, see
    docs/scaling.md; NNI: ``nni_strategy``). ``progress``: True for a bar on stderr, False for
    silence, or a `Reporter`. Bad input raises `UsageError` before anything is written; Ctrl-C
    raises `SearchInterrupted` after the run folder is written.

    ``init``: weights every candidate starts from (a state dict file of the base's timm model, a
    ``model.pt``, or ``timm:NAME``), taking what matches; trials.csv's ``inherited`` is the share
    of each candidate's parameters taken. ``latency_budget``: a hard budget of forward latency
    predicted on this machine (``"20ms"``, ``"0.02s"`` or a number of milliseconds) at
    ``latency_batch`` images; a candidate over it is recorded and never trained. ``objective``:
    ``"madds"`` or ``"latency"``, what the front trades top-1 against. With either, every
    candidate's latency is predicted (``latency_ms``) and the front's networks are measured once
    the search ends (``measured_ms``): see docs/latency.md. ``latency_device``: the latency table
    file of the target machine (``condconv-nas latency --space`` writes it there): every worker
    predicts from it, and the front is not measured here. Without ``init``, a recipe with
    ``dense_epochs`` first trains the space's base once per run (``dense.pt`` in the run folder,
    see ``warm_start``) and every candidate starts from it; ``strategy="oneshot"`` scores them,
    untrained, from a supernet of the space trained once per run instead (``nas.supernet``).
    """
    if options is None:
        options = SearchConfig.of(settings)
    elif settings:
        raise UsageError("pass a SearchConfig or keyword settings, not both")
    task, run_dir, config, total = prepare(options)
    searcher = make_searcher(options)
    searcher.check(task)
    old = check_resume(run_dir, config)
    own = f"sqlite:///{(run_dir / 'study.db').resolve()}"  # the run's own study, by default
    storage = options.storage or own
    check_storage(run_dir, old, storage)
    if old is None:  # a resumed run was checked when it started
        check_budget(task)
    else:  # the run's seed trains every candidate; this worker's --seed seeds its sampler only
        task.seed = config["seed"] = old.get("seed", options.seed)
    presets = old["presets"] if old and "presets" in old else measure_presets(task)
    reporter = (
        progress if isinstance(progress, Reporter) else BarReporter() if progress else Reporter()
    )

    study = _open_run(options, task, run_dir, config, storage, presets, reporter)
    folder = _RunFolder(task, run_dir, presets, total)
    done = finished(study)
    reporter.start(
        f"search {run_dir.name}: space {task.space.name}, {folder.budgets}, {done}/{total} trials "
        f"done, backend {options.backend}, data {task.data}",
        total,
        done,
    )

    def on_trial(record: TrialRecord) -> None:
        # the run folder holds every finished trial, whatever happens next
        reporter.trial(trial_line(record), folder.write(ledger).best)

    ledger = Ledger(study, task, total, Callbacks(on_trial=on_trial, on_epoch=reporter.epoch))
    try:
        try:
            if not ledger.full:
                searcher.search(task, ledger)
        finally:
            reporter.close()
        # the front's networks, measured on this machine (once each) when it is the device
        if task.uses_latency and task.latency_device is None:
            measure_front(task, run_dir, folder.write(ledger).front)
    except KeyboardInterrupt:
        raise SearchInterrupted(folder.write(ledger)) from None
    return folder.write(ledger)


def _open_run(options, task, run_dir, config, storage, presets, reporter) -> optuna.Study:
    """The run's study, its folder's ``config.json`` and dense start, and the presets queued."""
    if options.storage is None:  # the run's own SQLite file: its folder first
        run_dir.mkdir(parents=True, exist_ok=True)
    study = open_storage(
        storage,
        run_dir.name,
        options.seed,
        heartbeat=options.backend == "optuna",
        sampler=options.sampler,
    )
    # a user's --storage was reached before anything was written
    run_dir.mkdir(parents=True, exist_ok=True)
    config.update(
        run=run_dir.name,
        backend=options.backend,
        sampler=options.sampler,
        storage=storage,
        presets=presets,
        versions={"condconv_nas": __version__, "python": platform.python_version()},
        updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    if task.uses_latency:  # the machine (and software, threads, batch) the latencies are of
        config["latency_table"] = (
            table_key(task.latency_batch)
            if task.latency_device is None
            else LatencyTable.from_file(task.latency_device).key
        )
    if options.strategy == "oneshot":
        _write_config(run_dir, config)  # claimed before the training, as for the dense start
        config["supernet"] = _supernet(task, run_dir, reporter)
        task.supernet = config["supernet"]["init"]
    elif task.init is None and task.recipe.dense_epochs:
        # the run is claimed before the minutes of training: a rerun with other settings is refused
        _write_config(run_dir, config)
        config["dense_start"] = _dense_start(options, task, run_dir, reporter)
        task.init = config["dense_start"]["init"]
    _write_config(run_dir, config)
    enqueue_presets(
        study,
        {
            name: p["params"]
            for name, p in presets.items()
            if task.within_budgets(p["madds"], p.get("latency_ms"))
        },
    )
    recover_killed(study)
    requeue_interrupted(study)
    return study


def _write_config(run_dir: Path, config: dict) -> None:
    write_atomic(run_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def _dense_start(options, task, run_dir: Path, reporter) -> dict:
    if not (run_dir / DENSE).is_file():
        reporter.note(
            f"training the dense start first: {task.space.base}, "
            f"{task.recipe.dense_epochs} epochs on {task.data} (once per run)"
        )
    return dense_start(
        run_dir,
        base=task.space.base,
        trainer=options.trainer,
        data=str(task.data),
        epochs=task.recipe.dense_epochs,
        progress=reporter.shows,
        note=reporter.note,
    )


def _supernet(task, run_dir: Path, reporter) -> dict:
    if not (run_dir / SUPERNET).is_file():
        recipe = supernet_recipe(task.recipe, task.space.base)
        reporter.note(
            f"training the supernet first: every point of {task.space.name}, {recipe.epochs} "
            f"epochs on {task.data} (once per run)"
        )
    return train_supernet(
        run_dir, space=task.space, recipe=task.recipe, data=task.data, seed=task.seed,
        note=reporter.note,
    )  # fmt: skip


class _RunFolder:
    """The run folder's tables, front and pictures, rewritten from the study after each trial."""

    def __init__(self, task, run_dir: Path, presets: dict, total: int) -> None:
        self.task, self.run_dir, self.presets, self.total = task, run_dir, presets, total
        self.decisions = list(task.space.searched)
        res = task.space.resolution
        self.budgets = f"budget {format_madds(task.budget)} MADDs at {res}x{res} px" + (
            f" and {task.latency_budget:g} ms" if task.latency_budget is not None else ""
        )

    def write(self, ledger: Ledger) -> SearchResult:
        task, presets = self.task, self.presets
        rows = [r.row() for r in ledger.records()]
        if task.uses_latency:
            measured = read_measured(self.run_dir)["measured_ms"]
            for r in rows:
                r["measured_ms"] = measured.get(r["spec_id"])
        front = write_run(self.run_dir, rows, self.decisions, objective=task.objective)
        draw_run(
            self.run_dir,
            rows,
            front,
            budget=task.budget,
            presets={n: p["madds"] for n, p in presets.items()},
            title=f"{self.run_dir.name}: {self.budgets}, data {task.data}",
            objective=task.objective,
            latency_budget=task.latency_budget,
            preset_latency={n: p["latency_ms"] for n, p in presets.items() if "latency_ms" in p},
        )
        done = ledger.finished()
        running = ledger.counted() - done
        return SearchResult(self.run_dir, front, rows, done, self.total, running)
