"""Do upcycled experts come apart? Alike experts under constant routers are a fixed point: every
expert gets the same gradient and every router output the same signal, and only the zero-sum
perturbation `inherit` adds (``upcycle_noise``, relative to each kernel's std) breaks the tie.

From one trained static MobileNetV1 (``--dense``, default Figure 2's width 0.25 at skip 2, seed
0), trains for ``--epochs`` with the fashion recipe: the static network itself (the bar: the same
extra training), and the paper's CondConv placement with ``--experts`` upcycled from it at each
``--noise``, for each routing ``--activation`` and each ``--routers`` start (``upcycle_routers``:
constant, or drawn: the routers keep their random draw, so routing differs per example at once).
Prints each arm's test top-1, the experts' spread, the kernel spread and the routing ablation
(`routing_ablation`: top-1 lost when every router is fixed at its mean). Writes ``--out`` after
every arm; a rerun trains only what it lacks (``runs/upcycle-noise/<arm>/`` resumes per epoch).

Run: ``python benchmarks/upcycle_noise.py [--noise 0.01,0.3] [--epochs 2]``; the routers' start:
``--noise 0.01 --activation sigmoid,softmax --routers constant,drawn --out
benchmarks/results/upcycle-routers.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch
from figure2 import spec_for
from tabulate import tabulate

from condconv_nas import condconv_diagnostics, routing_ablation, train
from condconv_nas.files import write_atomic
from condconv_nas.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def run_arm(arm: tuple | None, args) -> dict:
    """One arm: the static network (``arm`` None) or CondConv upcycled as ``arm`` says:
    (noise, routing activation, upcycle_routers)."""
    noise, activation, routers = arm or (0.0, "sigmoid", "constant")
    experts = 1 if arm is None else args.experts
    spec = spec_for(args.width, experts, args.skip)
    if arm is not None and activation != "sigmoid":
        cc = spec.to_dict()["condconv"]
        spec = spec.replace(condconv={**cc, "routing": {**cc["routing"], "activation": activation}})
    recipe = dataclasses.replace(
        load_recipe("fashion"), upcycle_noise=noise, upcycle_routers=routers
    )
    name = f"{experts}e-noise{noise}"  # the first arms' names: sigmoid, constant routers
    if (activation, routers) != ("sigmoid", "constant"):
        name = f"{experts}e-{activation}-{routers}-noise{noise}"
    out = args.runs / ("static" if arm is None else name)
    done = out / "metrics.json"
    m = json.loads(done.read_text()) if done.is_file() else {}
    if m.get("epoch") != args.epochs:
        m = train(
            spec, trainer=recipe, data=args.data, epochs=args.epochs, out=out, init=str(args.dense),
            resume=(out / "last.pt").is_file(), seed=args.seed, progress=False,
        )  # fmt: skip
    row = {"arm": out.name, "top1": m["top1"], "train_losses": m["train_losses"]}
    if arm is not None:
        a = routing_ablation(out / "model.pt", args.data)
        d = condconv_diagnostics(out / "model.pt", args.data, batch_size=256)
        row.update(
            drop=a["drop"],
            top1_fixed_bn=a["top1_fixed_bn"],
            **{k: d[k] for k in ("expert_spread", "kernel_spread", "example_spread")},
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "runs" / "figure2" / "0.25-1e-s0-skip2" / "model.pt"
    p.add_argument("--dense", type=Path, default=default, help="the static model upcycled")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--skip", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--noise", default="0.01,0.3")
    p.add_argument("--activation", default="sigmoid", help="routing activations, comma-separated")
    p.add_argument("--routers", default="constant", help="upcycle_routers starts, comma-separated")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "upcycle-noise")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/upcycle-noise.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    arms = itertools.product(
        [float(x) for x in args.noise.split(",")],
        args.activation.split(","),
        args.routers.split(","),
    )
    for arm in [None, *arms]:
        rows.append(run_arm(arm, args))
        setting = {k: str(v) for k, v in vars(args).items() if k not in ("out", "runs", "threads")}
        write_atomic(args.out, json.dumps({"setting": setting, "arms": rows}, indent=2) + "\n")
        print(rows[-1], flush=True)
    table = [
        {
            k: (f"{v:.4f}" if isinstance(v, float) else v)
            for k, v in r.items()
            if k != "train_losses"
        }
        for r in rows
    ]
    print(tabulate(table, "keys", "github"))


if __name__ == "__main__":
    main()
