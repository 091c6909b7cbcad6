"""Does the default sampler find better models than random sampling with the same trials?

Runs ``condconv-nas search`` on ``--data`` under ``--budget`` once per ``--seeds`` with each
``--samplers`` (default ``tpe,random``: the default against random sampling; the paper's presets
that fit go first in both, so the samplers alone differ). Every run starts its candidates from
one shared dense start, trained once here as a search would, so the runs differ only in what
they sample. Prints, per sampler, the best feasible proxy top-1 after each trial (mean over
seeds) and the hypervolume of each run's front (proxy top-1 against MADDs / budget, above a
floor common to all runs: the lowest top-1 any run trained).

``--strategy oneshot`` scores candidates from one supernet instead (``search --strategy
oneshot``), trained once here and linked into every run folder, so that the runs differ only in
what they sample and six of them take about an hour, not a day.

Resumable: each run is an ordinary run folder under ``--results`` (``<sampler>-s<seed>``), and a
search resumes its folder, so a rerun trains only what is missing. Run:
``python benchmarks/search_vs_random.py [--data fashion-mnist] [--trials 20] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

from condconv_nas import search
from condconv_nas.data import parse_source
from condconv_nas.nas.options import parse_budget
from condconv_nas.nas.space import load_space
from condconv_nas.nas.supernet import train_supernet
from condconv_nas.nas.task import SearchTask
from condconv_nas.nas.warm_start import dense_start
from condconv_nas.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def trained(run_dir: Path) -> list[dict]:
    """The run's trials in order: (madds, top1) for trained feasible ones, None otherwise."""
    rows = sorted(csv.DictReader((run_dir / "trials.csv").open()), key=lambda r: int(r["trial"]))
    return [
        {"madds": int(r["madds"]), "top1": float(r["top1"])}
        if r["status"] == "trained" and r["feasible"] == "True" and r["top1"]
        else None
        for r in rows
    ]


def best_so_far(points: list[dict | None]) -> list[float | None]:
    out, best = [], None
    for p in points:
        if p is not None and (best is None or p["top1"] > best):
            best = p["top1"]
        out.append(best)
    return out


def hypervolume(points: list[dict], budget: int, floor: float) -> float:
    """Area dominated by the points in (MADDs / budget from 0 to 1 cheaper is better) x (top-1
    above ``floor``): the 2-D hypervolume against the point (budget, floor)."""
    front, best = [], floor
    for p in sorted(points, key=lambda p: (p["madds"], -p["top1"])):
        if p["top1"] > best:
            front.append(p)
            best = p["top1"]
    area, below = 0.0, floor
    for p in front:  # each point adds the band between the last top-1 and its own
        area += (1 - p["madds"] / budget) * (p["top1"] - below)
        below = p["top1"]
    return area


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--budget", default="400M")
    p.add_argument("--space", default="efficientnet_b0")
    p.add_argument("--trainer", default="proxy", help="the proxy recipe (default: proxy)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default="tpe,random")
    p.add_argument("--strategy", choices=("proxy", "oneshot"), default="proxy")
    p.add_argument("--results", type=Path, default=ROOT / "runs" / "search_vs_random")
    args = p.parse_args()
    budget = parse_budget(args.budget)
    source = parse_source(args.data)
    recipe = load_recipe(args.trainer).for_data(source.kind)
    shared = {}
    if args.strategy == "oneshot":
        supernet = train_supernet(
            args.results, space=load_space(args.space), recipe=recipe, data=source, note=print
        )
        print(f"supernet: {supernet}", flush=True)
    else:
        # the shape `search` trains its dense start at, shared by every run here
        task = SearchTask(space=load_space(args.space), budget=budget, recipe=recipe, data=source)
        shape = task.dense_shape()
        dense = dense_start(
            args.results, spec=shape.to_dict(), trainer=args.trainer, data=args.data,
            epochs=recipe.dense_epochs, progress=True, note=print,
        )  # fmt: skip
        shared["init"] = dense["init"]
    samplers, seeds = args.samplers.split(","), [int(s) for s in args.seeds.split(",")]
    runs = {}
    for seed in seeds:
        for sampler in samplers:
            name = f"{sampler}-s{seed}"
            if args.strategy == "oneshot":  # the run finds its supernet in place
                (args.results / name).mkdir(parents=True, exist_ok=True)
                for file in ("supernet.pt", "supernet.json"):
                    if not (args.results / name / file).exists():
                        os.link(args.results / file, args.results / name / file)
            result = search(
                budget=budget, space=args.space, trials=args.trials, data=args.data, seed=seed,
                run=name, results=args.results, sampler=sampler, trainer=args.trainer,
                strategy=args.strategy, progress=False, **shared,
            )  # fmt: skip
            runs[(sampler, seed)] = trained(result.run_dir)
            print(f"{name}: front of {len(result.front)}", flush=True)
    floor = min(q["top1"] for pts in runs.values() for q in pts if q is not None)
    print(f"\nbest feasible proxy top-1 after each trial (mean of {len(seeds)} seeds)")
    print("trial " + " ".join(f"{s:>8}" for s in samplers))
    curves = {s: [best_so_far(runs[(s, seed)]) for seed in seeds] for s in samplers}
    for t in range(args.trials):
        cells = []
        for s in samplers:
            vals = [c[t] for c in curves[s] if t < len(c) and c[t] is not None]
            cells.append(f"{statistics.mean(vals):8.4f}" if vals else f"{'-':>8}")
        print(f"{t:>5} " + " ".join(cells))
    print(f"\nhypervolume (top-1 above {floor:.4f} x MADDs saved / budget), per seed and mean")
    for s in samplers:
        hv = [hypervolume([q for q in runs[(s, seed)] if q], budget, floor) for seed in seeds]
        print(f"{s:>8}: " + " ".join(f"{h:.5f}" for h in hv) + f"   mean {statistics.mean(hv):.5f}")


if __name__ == "__main__":
    main()
