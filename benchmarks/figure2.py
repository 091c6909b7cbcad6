"""The paper's Figure 2 in miniature: does CondConv-MobileNetV1 gain accuracy with more experts?

Trains MobileNetV1 at each ``--widths`` with each ``--experts`` (1 expert is the static network;
n > 1 is the paper's CondConv-MobileNetV1: CondConv from the 6th separable block on and in the
classifier, one router per block) with one recipe (``--trainer``, default ``fashion``) and each
``--seeds`` on ``--data`` (default Fashion-MNIST): all training images, scored on the test
images. Prints a table of test top-1 (mean over seeds, and each seed) against MADDs at 224 px,
writes it with a plot to ``--out`` (``docs/figure2.md``, ``docs/figure2.png``).

Resumable: every training writes under ``--runs``
(``runs/figure2/<w>-<n>e-s<seed>[-skip<k>]-<e>ep/``) after each epoch; a rerun takes the finished
ones as they are and resumes the unfinished. The table in ``--out`` (kept in git) holds every
finished training by seed, with its epochs, recipe and data: a rerun on another machine, or with
other ``--widths``, trains only what it lacks and keeps the rest, so the figure can be filled
across sittings (``--only-table`` draws what is finished, trains nothing). Run:
``python benchmarks/figure2.py [--widths 0.25,0.5] [--experts 1,2,4,8] [--seeds 0,1]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path

from condconv_nas import count_madds, load_spec, train
from condconv_nas.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent


def spec_for(width: float, experts: int, skip: int = 0):
    """MobileNetV1 at ``width`` with ``skip`` stride-2 steps at stride 1; with ``experts`` > 1 the
    paper's CondConv placement."""
    name = "mobilenet-v1" if experts == 1 else "condconv-mobilenet-v1"
    spec = load_spec(name).replace(width_multiplier=width, skip_downsample=skip)
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
    for width, skip in sorted({(r["width"], r.get("skip", 0)) for r in rows}):
        pts = [r for r in rows if (r["width"], r.get("skip", 0)) == (width, skip)]
        pts.sort(key=lambda r: r["madds_M"])
        label = f"{width}x" + (f", skip {skip}" if skip else "")
        ax.plot([r["madds_M"] for r in pts], [r["top1"] for r in pts], "-o", label=label)
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
    ax.set_xlabel(f"MADDs at {rows[0].get('madds_px', 224)} px (millions)")
    ax.set_ylabel("test top-1")
    ax.set_title(title, fontsize=10)
    ax.legend(title="width (labels: experts)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


Key = tuple[float, int, int, int]  # width, experts, skip_downsample, seed


def draw_curves(rows: list[dict], path: Path, title: str) -> None:
    """Training loss per epoch, one line per (width, experts, skip) averaged over seeds: has
    the static network's loss stopped falling?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    # a colour per width, so two static networks (dashed) are told apart
    colour = {w: f"C{i}" for i, w in enumerate(sorted({r["width"] for r in rows}))}
    for r in rows:
        curves = [c for c in r["curves"].values() if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        label = f"{r['width']}x, {r['experts']}e" + (f", skip {r['skip']}" if r["skip"] else "")
        style = "-" if r["experts"] > 1 else "--"
        ax.plot(range(1, n + 1), mean, style, color=colour[r["width"]], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def same_run_rows(path: Path, args) -> list[dict]:
    """The rows of a table (JSON) trained with the same epochs, recipe and data as ``args``; a
    row without ``skip`` has 0."""
    if not path.is_file():
        return []
    same = {"epochs": args.epochs, "trainer": args.trainer, "data": args.data}
    rows = json.loads(path.read_text())
    return [{"skip": 0, **r} for r in rows if all(r.get(k) == v for k, v in same.items())]


def finished(path: Path, args) -> dict[Key, dict]:
    """Test top-1 and training losses by (width, experts, skip, seed) of the trainings in an
    earlier table of the same epochs, recipe and data."""
    return {
        (r["width"], r["experts"], r["skip"], int(seed)): {
            "top1": top1,
            "train_losses": r.get("curves", {}).get(seed),
        }
        for r in same_run_rows(path, args)
        for seed, top1 in r["by_seed"].items()
    }


def table(done: dict[Key, dict], args) -> list[dict]:
    rows = []
    for width, experts, skip in sorted({k[:3] for k in done}):
        mine = {k[3]: v for k, v in sorted(done.items()) if k[:3] == (width, experts, skip)}
        by_seed = {s: v["top1"] for s, v in mine.items()}
        madds_at = args.resolution or 224
        spec = spec_for(width, experts, skip).replace(resolution=madds_at)
        rows.append(
            {
                "width": width,
                "experts": experts,
                "skip": skip,
                "madds_M": round(count_madds(spec) / 1e6, 1),
                "madds_px": madds_at,
                "top1": round(statistics.mean(by_seed.values()), 4),
                "seeds": [round(t, 4) for t in by_seed.values()],
                "se": round(standard_error([*by_seed.values()]), 4) if len(by_seed) > 1 else None,
                "by_seed": {str(s): round(t, 4) for s, t in by_seed.items()},
                "curves": {str(s): v["train_losses"] for s, v in mine.items() if v["train_losses"]},
                "epochs": args.epochs,
                "trainer": args.trainer,
                "data": args.data,
            }
        )
    return rows


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of ``values`` (two or more)."""
    return statistics.stdev(values) / len(values) ** 0.5


def _seeds(row: dict) -> str:
    return f"{len(row['seeds'])} seed" + "s" * (len(row["seeds"]) > 1)


def gains(rows: list[dict], controls: list[dict]) -> list[dict]:
    """Each CondConv row against the static row of its width and skip, and against every static
    row of its skip in ``controls`` (other tables: an equal-MADD network): the difference of
    means in standard errors, and the paired t over the seeds both have."""
    out = []
    for r in (r for r in rows if r["experts"] > 1):
        mine = [c for c in rows if c["experts"] == 1 and c["width"] == r["width"]]
        for c in mine + [c for c in controls if c["experts"] == 1]:
            if c["skip"] != r["skip"]:
                continue
            both = len(r["seeds"]) > 1 < len(c["seeds"])
            se = math.hypot(*map(standard_error, (r["seeds"], c["seeds"]))) if both else None
            pairs = [r["by_seed"][s] - c["by_seed"][s] for s in r["by_seed"] if s in c["by_seed"]]
            sd = statistics.stdev(pairs) if len(pairs) > 1 else 0.0
            gain = r["top1"] - c["top1"]
            out.append(
                {
                    "condconv": f"{r['width']} x{r['experts']} ({_seeds(r)})",
                    "static": f"{c['width']} ({_seeds(c)})",
                    "gain": round(gain, 4),
                    "s.e.": se and round(se, 4),
                    "gain / s.e.": se and round(gain / se, 1),
                    "paired gains": " ".join(f"{d:+.4f}" for d in pairs),
                    "paired t": round(statistics.mean(pairs) / sd * len(pairs) ** 0.5, 1)
                    if sd
                    else None,
                    "df": len(pairs) - 1,
                }
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="0.25,0.5")
    p.add_argument("--experts", default="1,2,4,8")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--skips", default="0", help="skip_downsample values (0: the paper's maps)")
    p.add_argument("--resolution", type=int, default=None, help="count MADDs here (224)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--trainer", default="fashion")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "figure2")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figure2")
    p.add_argument("--only-table", action="store_true", help="draw what is finished; train nothing")
    p.add_argument(
        "--control",
        type=Path,
        action="append",
        default=[],
        help="another table (JSON) whose static rows each CondConv row is also compared against",
    )
    args = p.parse_args()
    for path in args.control:
        if not path.is_file():
            p.error(f"--control {path}: no such table")
    widths = [float(w) for w in args.widths.split(",")]
    experts_ = [int(e) for e in args.experts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    skips = [int(s) for s in args.skips.split(",")]
    done = finished(args.out.with_suffix(".json"), args)
    # seed-major: a whole curve per seed first, so a partial fill draws one
    for seed, skip, width, experts in itertools.product(seeds, skips, widths, experts_):
        # the epochs in the name: a finished 8-epoch training resumed as a 16-epoch one would
        # restart its cosine schedule halfway instead of training 16 epochs
        name = f"{width}-{experts}e-s{seed}" + (f"-skip{skip}" if skip else "")
        out = args.runs / f"{name}-{args.epochs}ep"
        key = (width, experts, skip, seed)
        if key in done and not (out / "metrics.json").is_file():
            continue
        m = run_one(spec_for(width, experts, skip), out, args, seed)
        if m is not None:
            done[key] = {"top1": m["top1"], "train_losses": m.get("train_losses")}
            # after every training, so a stop loses nothing; what another process running the
            # same table wrote since is read back first, so parallel runs keep each other's rows
            done = {**finished(args.out.with_suffix(".json"), args), **done}
            rows = table(done, args)
            write_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    done = {**finished(args.out.with_suffix(".json"), args), **done}
    rows = table(done, args)
    from tabulate import tabulate

    print(
        tabulate(
            [{k: v for k, v in r.items() if k not in ("by_seed", "curves")} for r in rows],
            "keys",
            "github",
        )
    )
    controls = [c for path in args.control for c in same_run_rows(path, args)]
    if compared := gains(rows, controls):
        print("\nCondConv against static (test top-1; paired over the seeds both have):")
        print(tabulate(compared, "keys", "github", disable_numparse=True))
    if rows:
        title = f"MobileNetV1 on {args.data}, {args.trainer} recipe, {args.epochs} epochs"
        draw(rows, args.out.with_suffix(".png"), title)
        if any(r["curves"] for r in rows):
            draw_curves(rows, args.out.parent / f"{args.out.name}_loss.png", title)
        write_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
