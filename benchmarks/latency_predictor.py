"""The latency predictor against measurement, on this machine.

Fills this machine's latency table for a space (timed: how long building the table takes), then
predicts and measures the paper's presets the space contains and seeded random candidates of it
(static and CondConv), and prints each spec's predicted and measured forward latency, the error
distribution (median, 90th percentile and worst absolute error, the share within 15% and 25%),
for all specs and for static and CondConv apart, and Kendall's tau between predicted and measured.

Measurement is the interleaved median of ``condconv_nas.measure_latencies``: the specs are
measured in groups of ``--group``, every network of a group running once per round. Run:
``python benchmarks/latency_predictor.py [--space efficientnet_b0] [--random 17] [--batch 1]
[--seed 0] [--group 5] [--threads N] [--out FILE]`` (the table goes to this machine's cache, or
to ``$CONDCONV_NAS_CACHE``; delete the table file first to time building it from nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from scipy.stats import kendalltau

from condconv_nas import count_madds
from condconv_nas.allocator import keep_freed_memory
from condconv_nas.latency import build_table, measure_latencies, predict_latency, table_info
from condconv_nas.nas.space import load_space


def candidates(space, n: int, seed: int) -> dict:
    """The space's presets, then ``n`` distinct seeded random points (every decision uniform)."""
    specs = {name: space.to_spec(params) for name, params in space.presets().items()}
    rng = random.Random(seed)
    seen = {s.id for s in specs.values()}
    for _ in range(100 * n):  # bounded: a small space may hold fewer distinct points
        if len(specs) == len(space.presets()) + n:
            break
        point = {k: rng.choice(v) for k, v in space.decisions.items()}
        spec = space.to_spec(point)
        if spec.id not in seen:
            seen.add(spec.id)
            specs[f"random-{len(specs) - len(space.presets()) + 1}"] = spec
    if len(specs) < len(space.presets()) + n:
        raise SystemExit(f"{space.name}: fewer than {n} distinct random candidates found")
    return specs


# Narrow networks with every routing form (share, hidden layer, activation, hierarchy, classifier),
# the first two the shapes an earlier run predicted over 30% too slow.
FORMS = [
    dict(width_multiplier=0.5, depth_multiplier=1.1, num_experts=4, routing_share="pair",
         routing_hierarchical=True, classifier=True),
    dict(width_multiplier=0.75, num_experts=16, routing_share="single",
         routing_activation="softmax"),
    dict(width_multiplier=0.5, num_experts=8, routing_share="layer", routing_hidden="small"),
    dict(width_multiplier=0.5, num_experts=2, routing_share="block", routing_activation="softmax",
         routing_hierarchical=True),
    dict(width_multiplier=0.75, num_experts=8, routing_share="pair", routing_hidden="small",
         routing_activation="softmax"),
    dict(width_multiplier=0.5, num_experts=16, routing_share="single", routing_hierarchical=True,
         classifier=True),
]  # fmt: skip


def forms(space, begin_stage) -> dict:
    """`FORMS` in ``space`` with CondConv from ``begin_stage``, taking the space's
    ``skip_downsample`` choices in turn."""
    skips = space.decisions["skip_downsample"]
    return {
        f"form-{i + 1}": space.to_spec(
            {"begin_stage": begin_stage, "skip_downsample": skips[i % len(skips)], **form}
        )
        for i, form in enumerate(FORMS)
    }


def summary(errors: list[float]) -> str:
    """Median, 90th percentile and worst absolute error (%), and the share within 15% and 25%."""
    if not errors:
        return "(none)"
    a = sorted(abs(e) for e in errors)
    p90 = a[min(len(a) - 1, round(0.9 * (len(a) - 1)))]
    within = [sum(e <= t for e in a) / len(a) for t in (15, 25)]
    return (
        f"n {len(a):2d}  |error| median {statistics.median(a):5.1f}%  p90 {p90:5.1f}%  "
        f"max {a[-1]:5.1f}%  within 15% {within[0]:4.0%}  within 25% {within[1]:4.0%}  "
        f"signed median {statistics.median(errors):+5.1f}%"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--space", default="efficientnet_b0")
    p.add_argument("--random", type=int, default=17, help="random candidates (default: 17)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", type=int, default=5, help="networks measured together (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--forms", action="store_true", help="add narrow specs of every routing form")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args()
    keep_freed_memory()  # as the CLI's search runs
    if args.threads:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    specs = candidates(space, args.random, args.seed)
    if args.forms:
        specs.update(forms(space, begin_stage=5))

    t0 = time.perf_counter()
    build_table(args.space, batch=args.batch)
    built = time.perf_counter() - t0
    info = table_info(args.batch)
    print(
        f"space {space.name}, batch {args.batch}, threads {torch.get_num_threads()}; table "
        f"{info['table']}: {info['entries']} entries, filled in {built:.0f} s"
    )

    rows, seconds = [], []
    for name, spec in specs.items():
        t0 = time.perf_counter()
        predicted = predict_latency(spec, args.batch)
        seconds.append(time.perf_counter() - t0)
        rows.append(
            {
                "spec": name,
                "condconv": spec.condconv is not None,
                "madds_M": round(count_madds(spec) / 1e6, 1),
                "predicted_ms": predicted,
            }
        )
    names = list(specs)
    for i in range(0, len(names), args.group):
        group = names[i : i + args.group]
        times = measure_latencies([specs[n] for n in group], args.batch)
        for name, ms in zip(group, times, strict=True):
            rows[names.index(name)]["measured_ms"] = ms

    print(f"{'spec':22s} {'cc':>2s} {'madds_M':>8s} {'pred_ms':>8s} {'meas_ms':>8s} {'err':>7s}")
    for r in rows:
        r["error_pct"] = 100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        print(
            f"{r['spec']:22s} {'y' if r['condconv'] else 'n':>2s} {r['madds_M']:8.1f} "
            f"{r['predicted_ms']:8.2f} {r['measured_ms']:8.2f} {r['error_pct']:+6.1f}%"
        )
    print()
    for label, keep in (("all", None), ("static", False), ("CondConv", True)):
        errors = [r["error_pct"] for r in rows if keep is None or r["condconv"] == keep]
        print(f"{label:9s} {summary(errors)}")
    tau, pvalue = kendalltau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    madds_tau, _ = kendalltau([r["madds_M"] for r in rows], [r["measured_ms"] for r in rows])
    print(
        f"Kendall tau, predicted vs measured: {tau:.3f} (p {pvalue:.1e}); MADDs vs measured: "
        f"{madds_tau:.3f}"
    )
    added = table_info(args.batch)["entries"] - info["entries"]
    print(
        f"prediction time with the table filled: median {statistics.median(seconds):.2f} s, "
        f"max {max(seconds):.2f} s; entries the predictions had to add: {added}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"table": info, "fill_seconds": built, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
