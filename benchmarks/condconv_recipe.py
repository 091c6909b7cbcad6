"""Which of the recipe's choices handicap CondConv? One key at a time, side by side.

Trains CondConv-MobileNetV1 (the paper's placement: the 6th separable block on and the
classifier, one router per block) at ``--width`` with ``--experts`` on ``--data`` with the
``fashion`` recipe, as it is (``baseline``) and with one key changed per arm, each on the same
``--seeds``; the static network with the same recipe is the bar. Every training scores on the
test images and keeps its curve of training losses. Writes ``--out``
(``benchmarks/results/condconv-recipe.json``) after every training: a rerun trains only what it
lacks (``runs/condconv-recipe/<arm>-s<seed>/`` resumes per epoch), so a stop loses nothing.

``--report`` prints the table: per arm the mean test top-1, its standard error over seeds, the
difference from ``baseline`` and from static, the final training loss, and (when the trained
models are on this machine) each arm's expert and routing spread (`condconv_diagnostics`).

Run: ``python benchmarks/condconv_recipe.py [--arms a,b] [--seeds 0,1] [--epochs 5]``; with
``--skip 2`` (4x4 maps at 32 px, where CondConv pays) give it its own ``--out`` and ``--runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

import torch
from figure2 import run_one as train_figure2
from figure2 import spec_for, standard_error

from condconv_nas.files import write_atomic
from condconv_nas.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent

# The fashion recipe as it was when these arms were first trained: each arm changes it by one key,
# so the file stays reproducible after the recipe took the winners (trainers/fashion.yaml).
BASELINE = {
    "expert_lr": "rsqrt",
    "router_init": "torch",
    "router_weight_decay": None,
    "routing_temperature": 1.0,
    "routing_warmup_epochs": 0,
    "router_lr_scale": 1.0,
    "classifier_init": "zero",
}
# arm -> the recipe keys it changes (static: the network without CondConv, same recipe)
CHANGES: dict[str, dict] = {
    "static": {},
    "baseline": {},
    "expert_lr_same": {"expert_lr": "same"},
    "router_init_timm": {"router_init": "timm"},
    "router_wd_0": {"router_weight_decay": 0.0},
    "routing_warmup": {"routing_temperature": 30.0, "routing_warmup_epochs": 1},
    "all": {
        "expert_lr": "same",
        "router_init": "timm",
        "router_weight_decay": 0.0,
        "routing_temperature": 30.0,
        "routing_warmup_epochs": 1,
    },
    # the recipe since (trainers/fashion.yaml), and routers that learn faster and are not pulled
    # toward constant routing: does routing then vary across examples?
    "current": {"expert_lr": "same", "router_init": "timm"},
    "router_lr_x10_wd_0": {
        "expert_lr": "same",
        "router_init": "timm",
        "router_lr_scale": 10.0,
        "router_weight_decay": 0.0,
    },
    # the CondConv classifier's experts drawn and centred instead of all zero (cause 5: a zero
    # classifier gives its router no gradient until the experts move, and they move alike)
    "classifier_zero_sum": {
        "expert_lr": "same",
        "router_init": "timm",
        "classifier_init": "zero_sum",
    },
    # the paper's regularisation for its larger models, mixup 0.2, on the static network and on
    # the current recipe: CondConv fits the training images better but, trained longer, no longer
    # scores better on the test images (docs/figure2.md)
    "static_mixup": {"mixup_alpha": 0.2},
    "current_mixup": {"expert_lr": "same", "router_init": "timm", "mixup_alpha": 0.2},
}
ARMS = {arm: {**BASELINE, **changes} for arm, changes in CHANGES.items()}


def is_static(arm: str) -> bool:
    return arm.startswith("static")


def mixes(arm: str) -> bool:
    """Whether the arm's recipe trains on mixup's blended images and labels."""
    return ARMS[arm].get("mixup_alpha", 0) > 0


def static_bar(arm: str) -> str:
    return "static_mixup" if mixes(arm) else "static"


def run_one(arm: str, seed: int, args) -> dict:
    """One arm's training, as figure2.py trains (the same spec, the arm's recipe)."""
    recipe = dataclasses.replace(load_recipe(args.trainer), **ARMS[arm])
    spec = spec_for(args.width, 1 if is_static(arm) else args.experts, args.skip)
    how = argparse.Namespace(trainer=recipe, data=args.data, epochs=args.epochs, only_table=False)
    m = train_figure2(spec, args.runs / f"{arm}-s{seed}", how, seed)
    return {k: m[k] for k in ("top1", "train_losses", "epoch_seconds")}


def setting(args) -> dict:
    skip = {"skip": args.skip} if args.skip else {}  # files of the paper's maps have no key
    return {
        "width": args.width,
        "experts": args.experts,
        **skip,
        "epochs": args.epochs,
        "trainer": args.trainer,
        "data": args.data,
    }


def diagnose(arm: str, seeds: list[int], args) -> dict | None:
    """Mean expert and routing spread over the arm's trained models on this machine."""
    from condconv_nas.routing_analysis import condconv_diagnostics

    rows = []
    for seed in seeds:
        path = args.runs / f"{arm}-s{seed}" / "model.pt"
        if is_static(arm) or not path.is_file():
            return None
        rows.append(condconv_diagnostics(str(path), args.data))
    keys = ("expert_spread", "example_spread", "class_spread")
    return {k: statistics.mean(r[k] for r in rows) for k in keys}


def report(results: dict, args) -> None:
    from tabulate import tabulate

    def top1s(arm):
        return [r["top1"] for r in results.get(arm, {}).values()]

    def mean(xs):
        return statistics.mean(xs) if xs else float("nan")

    base = mean(top1s("baseline"))
    rows = []
    for arm in ARMS:
        xs = top1s(arm)
        if not xs:
            continue
        se = standard_error(xs) if len(xs) > 1 else float("nan")
        bar = top1s(static_bar(arm))
        # no gap for a static arm (its own bar) or a bar of one seed
        measurable = len(bar) > 1 and not is_static(arm)
        gap_se = math.hypot(se, standard_error(bar)) if measurable else float("nan")
        loss = mean([r["train_losses"][-1] for r in results[arm].values()])
        row = {
            "arm": arm,
            "seeds": len(xs),
            "top1": f"{mean(xs):.4f}",
            "se": f"{se:.4f}",
            "vs baseline": f"{mean(xs) - base:+.4f}",
            # against the static network trained alike (a mixup arm: the static mixup arm)
            "vs static": f"{mean(xs) - mean(bar):+.4f}",
            "in s.e.": "" if math.isnan(gap_se) else f"{(mean(xs) - mean(bar)) / gap_se:+.1f}",
            # a mixup arm's loss is on blended images and labels: comparable among mixup arms only
            "final train loss": f"{loss:.3f}" + (" (mixup)" if mixes(arm) else ""),
        }
        if "baseline" not in results:  # a file of other arms (the --skip 2 one): no such bar
            del row["vs baseline"]
        if args.diagnose:
            d = diagnose(arm, [int(s) for s in results[arm]], args)
            row.update({k: f"{v:.3f}" for k, v in (d or {}).items()})
        rows.append(row)
    print(tabulate(rows, "keys", "github"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--skip", type=int, default=0, help="skip_downsample (2: 4x4 maps at 32 px)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--trainer", default="fashion")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "condconv-recipe")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/condconv-recipe.json")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each training")
    p.add_argument("--report", action="store_true", help="print the table; train nothing")
    p.add_argument("--diagnose", action="store_true", help="with --report: spreads of the models")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if saved and saved.get("setting") != setting(args):
        raise SystemExit(f"{args.out} holds another setting: {saved['setting']}")
    results = saved.get("arms", {})
    if not args.report:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in args.arms.split(","):
                if str(seed) in results.get(arm, {}):
                    continue
                r = run_one(arm, seed, args)
                # reread: another process may have written its arms meanwhile
                now = json.loads(args.out.read_text()) if args.out.is_file() else {}
                results = now.get("arms", {})
                results.setdefault(arm, {})[str(seed)] = r
                doc = {"setting": setting(args), "arms": results}
                write_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    report(results, args)


if __name__ == "__main__":
    main()
