"""The paper's Figure 2 in miniature: does CondConv-MobileNetV1 gain accuracy with more experts?

Trains MobileNetV1 at each ``--widths`` with each ``--experts`` (1 expert is the static network;
n > 1 is the paper's CondConv-MobileNetV1: CondConv from the 6th separable block on and in the
classifier, one router per block) with one recipe (``--trainer``, default ``fashion``) and each
``--seeds`` on ``--data`` (default Fashion-MNIST): all training images, scored on the test
images. Prints a table of test top-1 (mean over seeds, and each seed) against MADDs at 224 px,
writes it with a plot to ``--out`` (``docs/figure2.md``, ``docs/figure2.png``).

Resumable: every training writes under ``--runs`` (``runs/figure2/<w>-<n>e-s<seed>/``) after each
epoch; a rerun takes the finished ones as they are and resumes the unfinished. The table in
``--out`` (kept in git) holds every finished training by seed, with its epochs, recipe and data:
a rerun on another machine, or with other ``--widths``, trains only what it lacks and keeps the
rest, so the figure can be filled across sittings (``--only-table`` draws what is finished,
trains nothing). Run:
``python benchmarks/figure2.py [--widths 0.25,0.5] [--experts 1,2,4,8] [--seeds 0,1]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from condconv_nas import count_madds, load_spec, train
from condconv_nas.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent


def spec_for(width: float, experts: int):
    """MobileNetV1 at ``width``; with ``experts`` > 1 the paper's CondConv placement."""
    name = "mobilenet-v1" if experts == 1 else "condconv-mobilenet-v1"
    spec = load_spec(name).replace(width_multiplier=width)
    if experts > 1:
        spec = spec.replace(condconv={**spec.to_dict()["condconv"], "num_experts": experts})
    return spec


def run_one(spec, out: Path, args, seed: int) -> dict | None:
    """The metrics of one finished training (trained or resumed here unless ``only_table``)."""
    done = out / "metrics.json"
    if done.is_file():
        metrics = json.loads(done.read_text())
        if metrics.get("epoch") == args.epochs:
            return metrics
    if args.only_table:
        return None
    t0 = time.perf_counter()
    metrics = train(
        spec,
        trainer=args.trainer,
        data=args.data,
        epochs=args.epochs,
        out=out,
        resume=(out / "last.pt").is_file(),
        seed=seed,
        progress=False,
    )
    print(f"  {out.name}: top-1 {metrics['top1']:.4f} ({time.perf_counter() - t0:.0f} s)")
    return metrics


def draw(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for width in sorted({r["width"] for r in rows}):
        pts = sorted((r for r in rows if r["width"] == width), key=lambda r: r["madds_M"])
        ax.plot([r["madds_M"] for r in pts], [r["top1"] for r in pts], "-o", label=f"{width}x")
        for r in pts:
            ax.annotate(
                f"{r['experts']}",
                (r["madds_M"], r["top1"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
            for s in r["seeds"]:
                ax.plot(r["madds_M"], s, ".", color="grey", alpha=0.5)
    ax.set_xlabel("MADDs at 224 px (millions)")
    ax.set_ylabel("test top-1")
    ax.set_title(title, fontsize=10)
    ax.legend(title="width (labels: experts)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finished(path: Path, args) -> dict[tuple[float, int, int], float]:
    """Test top-1 by (width, experts, seed) of the trainings in an earlier table of the same
    epochs, recipe and data."""
    if not path.is_file():
        return {}
    same = {"epochs": args.epochs, "trainer": args.trainer, "data": args.data}
    return {
        (r["width"], r["experts"], int(seed)): top1
        for r in json.loads(path.read_text())
        if all(r.get(k) == v for k, v in same.items())
        for seed, top1 in r["by_seed"].items()
    }


def table(done: dict[tuple[float, int, int], float], args) -> list[dict]:
    rows = []
    for width, experts in sorted({(w, e) for w, e, _ in done}):
        by_seed = {s: t for (w, e, s), t in sorted(done.items()) if (w, e) == (width, experts)}
        rows.append(
            {
                "width": width,
                "experts": experts,
                "madds_M": round(count_madds(spec_for(width, experts)) / 1e6, 1),
                "top1": round(statistics.mean(by_seed.values()), 4),
                "seeds": [round(t, 4) for t in by_seed.values()],
                "by_seed": {str(s): round(t, 4) for s, t in by_seed.items()},
                "epochs": args.epochs,
                "trainer": args.trainer,
                "data": args.data,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="0.25,0.5")
    p.add_argument("--experts", default="1,2,4,8")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--trainer", default="fashion")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "figure2")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figure2")
    p.add_argument("--only-table", action="store_true", help="draw what is finished; train nothing")
    args = p.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    experts_ = [int(e) for e in args.experts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    done = finished(args.out.with_suffix(".json"), args)
    for seed in seeds:  # seed-major: a whole curve per seed first, so a partial fill draws one
        for width in widths:
            for experts in experts_:
                out = args.runs / f"{width}-{experts}e-s{seed}"
                if (width, experts, seed) in done and not (out / "metrics.json").is_file():
                    continue
                m = run_one(spec_for(width, experts), out, args, seed)
                if m is not None:
                    done[width, experts, seed] = m["top1"]
                    rows = table(done, args)  # after every training: a stop loses nothing
                    write_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    rows = table(done, args)
    from tabulate import tabulate

    print(
        tabulate([{k: v for k, v in r.items() if k != "by_seed"} for r in rows], "keys", "github")
    )
    if rows:
        title = f"MobileNetV1 on {args.data}, {args.trainer} recipe, {args.epochs} epochs"
        draw(rows, args.out.with_suffix(".png"), title)
        write_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
