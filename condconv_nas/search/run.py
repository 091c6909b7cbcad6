"""``condconv-nas search``: check every input up front, then run a backend into the run folder."""
from __future__ import annotations

import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from .. import __version__
from ..data import parse_source
from ..errors import UsageError
from ..train.recipe import load_recipe
from .space import load_space
from .task import SearchTask


def format_madds(n: int) -> str:
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % (scale // 1000 or 1) == 0:
            return f"{n / scale:g}{suffix}"
    return str(n)


def prepare(args):
    """Everything checked, nothing written: (task, run_dir, config, total)."""
    space = load_space(args.space)
    recipe = load_recipe(args.trainer)
    data = parse_source(args.data)
    task = SearchTask(space=space, budget=args.budget, recipe=recipe, data=data, seed=args.seed)
    total = args.trials or recipe.trials
    run = args.run or f"{space.name}-{format_madds(args.budget)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run):
        raise UsageError(f"--run {run!r}: use letters, digits, '.', '_' and '-' only")
    madds, _ = task.count(space.cheapest())
    if madds > args.budget:
        raise UsageError(f"budget {format_madds(args.budget)} ({args.budget} MADDs) is impossible: the cheapest "
                         f"candidate of space {space.name!r} already needs {madds} MADDs")
    check_backend(args)
    config = {"budget": args.budget, "space": space.name, "decisions": {k: list(v) for k, v in space.decisions.items()},
              "base": space.base, "trainer": args.trainer, "recipe": recipe.__dict__, "data": str(data),
              "seed": args.seed, "trials": total}
    return task, Path(args.results) / run, config, total


def check_backend(args) -> None:
    """The backend's options make sense and its extra is installed."""
    import importlib.util  # noqa: PLC0415
    if args.address is not None and args.backend != "ray":
        raise UsageError(f"--address {args.address!r} joins a Ray cluster: it needs --backend ray")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise UsageError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got "
                         f"{args.cpus_per_trial} and {args.gpus_per_trial}")
    module = {"ray": "ray.tune", "nni": "nni"}.get(args.backend)
    if module is not None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise UsageError(f"--backend {args.backend} needs the {args.backend} extra: "
                             f"pip install 'condconv-nas[{args.backend}]'")


def check_resume(run_dir: Path, config: Dict) -> None:
    path = run_dir / "config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for key in ("budget", "space", "decisions", "data", "seed", "recipe"):
        if old.get(key) != config.get(key):
            raise UsageError(f"run folder {run_dir} holds a run with a different {key} "
                             f"({old.get(key)!r}); pick another --run or --results")


def open_storage(url: str, name: str, seed: int, *, heartbeat: bool):
    """The run's study in ``url``; a URL that cannot be used is a usage error naming it."""
    from .optuna_engine import open_study  # noqa: PLC0415
    import sqlalchemy.exc  # noqa: PLC0415
    try:
        return open_study(url, name, seed, heartbeat=heartbeat)
    except ImportError as e:
        raise UsageError(f"--storage {url}: no database driver for it ({e}); for PostgreSQL: "
                         "pip install 'condconv-nas[postgres]'") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UsageError(f"--storage {url}: cannot open it ({reason})") from None


def trial_line(trial) -> Optional[str]:
    """The progress line of a finished trial; None for trials that do not count (surplus, Ctrl-C)."""
    ua = trial.user_attrs
    if ua.get("surplus") or ua.get("interrupted"):
        return None
    madds = f"{ua['madds'] / 1e6:.1f}M" if "madds" in ua else "?"
    if trial.state.name == "FAIL":
        return f"trial {trial.number:>3}  FAIL      {madds:>9}  (failed; the search goes on)"
    if not ua.get("feasible"):
        return f"trial {trial.number:>3}  over budget {madds:>7}  not trained"
    if ua.get("stopped_early"):
        return (f"trial {trial.number:>3}  STOPPED   {madds:>9}  top-1 {ua.get('top1_at_stop') or 0:.4f} after epoch "
                f"{ua.get('epochs_at_stop')} (ASHA within its MADD band)")
    return f"trial {trial.number:>3}  COMPLETE  {madds:>9}  top-1 {trial.values[0]:.4f}" + (
        f"  ({ua['preset']})" if ua.get("preset") else "")


def run_search(args) -> int:
    task, run_dir, config, total = prepare(args)
    check_resume(run_dir, config)
    from ..results import write_atomic, write_run  # noqa: PLC0415
    from . import optuna_engine as eng  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if args.storage is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    study = open_storage(storage, run_dir.name, args.seed, heartbeat=args.backend == "optuna")
    run_dir.mkdir(parents=True, exist_ok=True)  # a user's --storage was reached before anything was written
    config.update(run=run_dir.name, backend=args.backend, storage=storage, versions={
        "condconv_nas": __version__, "python": platform.python_version()}, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_atomic(run_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")

    space = task.space
    in_budget, preset_madds = {}, {}
    for name, params in space.presets().items():
        _, madds, _ = task.measure(params)
        preset_madds[name] = madds
        if madds <= task.budget:
            in_budget[name] = params

    eng.enqueue_presets(study, in_budget)
    eng.requeue_interrupted(study)
    decisions = list(space.searched)
    done = eng.finished(study)
    print(f"search {run_dir.name}: space {space.name}, budget {format_madds(task.budget)}, "
          f"{done}/{total} trials done, backend {args.backend}, data {task.data}", file=sys.stderr)
    progress = None if args.quiet else _progress(total, done)

    def on_trial(study, trial):
        line = trial_line(trial)
        if line is None:
            return
        if progress is not None:
            progress.update(1)
            best = max((t.values[0] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                        if t.user_attrs.get("feasible")), default=None)
            if best is not None:
                progress.set_postfix(best_top1=f"{best:.4f}")
            progress.write(line)
        else:
            print(line, file=sys.stderr)

    interrupted = False
    try:
        if args.backend == "ray":
            from .ray_engine import run_ray  # noqa: PLC0415
            run_ray(task, study, total, address=args.address, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, on_trial=on_trial)
        elif args.backend == "nni":
            from .nni_engine import run_nni  # noqa: PLC0415
            run_nni(task, study, total, strategy=args.nni_strategy, seed=args.seed, on_trial=on_trial)
        else:
            eng.run_optuna(task, study, total, on_trial=on_trial)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
    front = write_run(run_dir, eng.trial_rows(study, decisions), decisions, budget=task.budget, presets=preset_madds)
    if interrupted:
        print(f"interrupted after {eng.finished(study)}/{total} trials; run the same command again to resume",
              file=sys.stderr)
        return 130
    if eng.finished(study) < total:
        print(f"the {args.backend} strategy stopped after {eng.finished(study)}/{total} trials "
              "(it found no new point to try)", file=sys.stderr)
    print(f"{eng.finished(study)}/{total} trials; Pareto front of {len(front)} in {run_dir}", file=sys.stderr)
    from ..cli import format_rows  # noqa: PLC0415
    print(format_rows([{"trial": r["trial"], "madds_M": round(r["madds"] / 1e6, 1), "top1": round(r["top1"], 4),
                        "spec": str(run_dir / "specs" / f"{r['trial']}.json")} for r in front], args.format))
    return 0


def _progress(total: int, done: int):
    from tqdm.auto import tqdm  # noqa: PLC0415
    return tqdm(total=total, initial=done, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
