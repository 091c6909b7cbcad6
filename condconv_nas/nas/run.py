"""``search()``: check every input up front, then run a backend into the run folder."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data import check_data, parse_source
from ..errors import UsageError
from ..files import check_writable_folder, write_atomic
from ..latency.predict import check_covers, device_table
from ..latency.table import LatencyTable, table_key
from ..models.sources import check_base, load_source
from ..progress import BarReporter, Epoch, Reporter
from ..training.recipe import load_recipe
from .backend import check_backend, make_searcher
from .front_latency import measure_front
from .ledger import Callbacks, Ledger
from .options import SearchConfig, format_madds
from .progress import trial_line
from .records import TrialRecord
from .run_config import check_resume, check_storage, run_config
from .run_folder import RunFolder, SearchInterrupted, SearchResult
from .space import load_space
from .study import Study, optuna_quiet
from .supernet import SUPERNET, supernet_recipe, train_supernet
from .task import SearchTask
from .warm_start import DENSE, dense_start

__all__ = ["SearchInterrupted", "SearchResult", "prepare", "search"]


def prepare(options: SearchConfig):
    """Everything checked, nothing written: (task, run_dir, config, total)."""
    check_backend(options)
    space = load_space(options.space)
    source = parse_source(options.data)
    recipe = load_recipe(options.trainer).for_data(source.kind)
    recipe.check_optimizer()
    if recipe.resolution:  # the candidates train at the recipe's size, not the space's
        space.check_trains_at(recipe.resolution, "--trainer resolution")
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
    own = f"sqlite:///{(run_dir / 'study.db').resolve()}"  # the run's own study, by default
    config = run_config(
        options,
        budget=task.budget,
        space=space.name,
        data=str(source),
        trials=total,
        run=run_dir.name,
        storage=options.storage or own,
        init=init,
        latency_budget=task.latency_budget,
        latency_device=task.latency_device,
        decisions={k: list(v) for k, v in space.decisions.items()},
        base=space.base,
        recipe=recipe.__dict__,
        scored_on=scored_on,
        threads=torch.get_num_threads(),
    )
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


@optuna_quiet()
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
    ``dense_epochs`` first trains a static network of the space's base once per run (its widest,
    on the largest maps the budget affords: `SearchSpace.dense_start`; ``dense.pt`` in the run
    folder, see ``warm_start``) and every candidate starts from it; ``strategy="oneshot"``
    scores them, untrained, from a supernet of the space trained once per run instead
    (``nas.supernet``).
    """
    if options is None:
        options = SearchConfig.of(settings)
    elif settings:
        raise UsageError("pass a SearchConfig or keyword settings, not both")
    task, run_dir, config, total = prepare(options)
    searcher = make_searcher(options)
    searcher.check(task)
    old = check_resume(run_dir, config, type(options))
    check_storage(run_dir, old, config["storage"])
    if old is None:  # a resumed run was checked when it started
        check_budget(task)
    else:  # the run's seed trains every candidate; this worker's --seed seeds its sampler only
        task.seed = config["seed"] = old.get("seed", options.seed)
    presets = old["presets"] if old and "presets" in old else measure_presets(task)
    reporter = (
        progress if isinstance(progress, Reporter) else BarReporter() if progress else Reporter()
    )

    study = _open_run(options, task, run_dir, config, presets, reporter)
    folder = RunFolder(task, run_dir, presets, total)
    ledger, write = _ledger(study, task, folder, reporter)
    done = ledger.finished()
    reporter.start(
        f"search {run_dir.name}: space {task.space.name}, {folder.budgets}, {done}/{total} trials "
        f"done, backend {options.backend}, data {task.data}",
        total,
        done,
    )
    try:
        try:
            if not ledger.full:
                searcher.search(task, ledger)  # its records are the ledger's, read again below
        finally:
            reporter.close()
        result = write()
        # the front's networks, measured on this machine (once each) when it is the device
        if task.uses_latency and task.latency_device is None:
            measure_front(task, run_dir, result.front)
            result = write()
    except KeyboardInterrupt:
        raise SearchInterrupted(write()) from None
    return result


def _ledger(
    study: Study, task: SearchTask, folder: RunFolder, reporter: Reporter
) -> tuple[Ledger, Callable[..., SearchResult]]:
    """The run's ledger (the presets that fit queued, what killed processes left taken back),
    and the run folder's writer, which it calls after every trial: a stop loses nothing."""

    def write(final: bool = True) -> SearchResult:
        """The folder from the ledger's records and counts, read at once."""
        now = ledger.tally()
        return folder.write(now.records, finished=now.finished, running=now.running, final=final)

    def on_trial(record: TrialRecord) -> None:
        reporter.trial(trial_line(record), write(final=False).best)

    def on_epoch(trial: int, epoch: int, epochs: int) -> None:
        reporter.epoch(Epoch(epoch, epochs, trial=trial))

    ledger = Ledger(study, task, folder.total, Callbacks(on_trial=on_trial, on_epoch=on_epoch))
    ledger.enqueue_presets(
        {
            name: p["params"]
            for name, p in folder.presets.items()
            if task.within_budgets(p["madds"], p.get("latency_ms"))
        }
    )
    ledger.recover()
    return ledger, write


def _open_run(options, task, run_dir, config, presets, reporter) -> Study:
    """The run's study, its folder's ``config.json``, and its dense start or supernet."""
    if options.storage is None:  # the run's own SQLite file: its folder first
        run_dir.mkdir(parents=True, exist_ok=True)
    study = Study.open(
        config["storage"],
        run_dir.name,
        options.seed,
        heartbeat=options.backend == "optuna",
        sampler=options.sampler,
    )
    # a user's --storage was reached before anything was written
    run_dir.mkdir(parents=True, exist_ok=True)
    config.update(
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
    return study


def _write_config(run_dir: Path, config: dict) -> None:
    write_atomic(run_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def _dense_start(options, task, run_dir: Path, reporter) -> dict:
    spec = task.dense_shape()
    if not (run_dir / DENSE).is_file():
        reporter.note(
            f"training the dense start first: {spec.base} {spec.width_multiplier}x, "
            f"skip_downsample {spec.skip_downsample} ({task.count(spec)[0] / 1e6:.1f}M MADDs "
            f"counted at {spec.resolution} px), {task.recipe.dense_epochs} epochs on {task.data} "
            "(once per run)"
        )
    return dense_start(
        run_dir,
        spec=spec.to_dict(),
        trainer=options.trainer,
        data=str(task.data),
        epochs=task.recipe.dense_epochs,
        progress=reporter,  # the search's own: --quiet gives epoch lines, no bar
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
