"""Does the search's proxy rank architectures like longer training? Is it fair to CondConv?

For a set of specs (the paper's static/CondConv pairs and seeded random candidates of a search
space), trains each with the proxy recipe (with two seeds), with
the previous proxy (``benchmarks/proxy_v1.yaml``) and with a reference: the proxy recipe with
``--reference-scale`` times the epochs (so the steps) at ``--reference-resolution``. Prints
per spec top-1 and seconds, then for each proxy: Kendall's tau against the reference, the mean
error against the reference for static and for CondConv specs (and their gap), the repeat noise,
and the cost per candidate. Everything runs in this process, one spec after another. Run:
``python benchmarks/proxy_fidelity.py [--random 6] [--pairs mobilenet-v1,...] [--out FILE]``.

``--spread N`` draws N random candidates and keeps ``--random`` of them at evenly spaced MADD
ranks. ``--reference-seeds N`` trains the reference N times (seeds 0, 1, ...) and scores each
spec by their mean; with two or more it also prints the reference's own repeatability (Kendall's
tau between its first two seeds, and the tau a perfect proxy would expect against the mean): how
well any proxy can rank on this data. ``--reuse FILE [FILE ...]`` takes the figures of earlier
runs' ``--out`` files (the same specs and recipes; several are merged) and trains only what they
lack, such as more reference seeds; where the proxy's recipe changed since, it keeps only the
reference's figures. ``--reference-only`` trains nothing but the reference (no dense start
needed): the long part, filled across sittings. ``--proxy-only`` trains the proxies alone (in one
sitting, from one dense start), on another core beside it, into another ``--out`` file.
``--report`` trains nothing and summarises the specs whose figures are all there.

Beside each proxy's tau it prints the tau of three trivial rankers of the same specs (by width, by
MADDs, by parameters: what a proxy must beat), the proxy's tau over the pairs of specs of equal
width alone (how it orders the CondConv decisions), and both again for the mean of its two seeds.

``--inherit`` adds a fourth column, the proxy as a search runs it by default: started from a
dense model of the space's base trained on the search data (the search's dense start: the recipe's
``dense_epochs``, else the reference's epochs, on the same training split), every candidate
upcycled from it; it reports tau, error, noise and cost (the pretraining's seconds once, then per
candidate) like the others. The dense model is the base at 1.0x and skip 0, as the search's
dense start is for every 224 px space; for a space searching ``skip_downsample`` the search now
trains it on the largest maps its budget affords, which this benchmark (no budget) does not.
The ``proxy`` column stays from scratch (``dense_epochs`` unused).

``--oneshot`` adds the one-shot column (``search --strategy oneshot``): one supernet of
``--space`` trained on the search data as a search trains it (``nas.supernet``), and every spec
of the space scored with the weights it takes from it, untrained; the supernet's seconds are
kept in the ``--out`` file and reported once, as the dense start's are.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau

from condconv_nas import build_model, load_spec
from condconv_nas.allocator import keep_freed_memory
from condconv_nas.data import parse_source
from condconv_nas.files import write_atomic
from condconv_nas.madds import count_madds, count_params
from condconv_nas.nas.space import load_space
from condconv_nas.nas.supernet import score, train_supernet
from condconv_nas.nas.warm_start import dense_start
from condconv_nas.training.proxy import proxy_top1
from condconv_nas.training.recipe import load_recipe, recipe_from_dict

HERE = Path(__file__).parent
PAIRS = "mobilenet-v2,mnasnet-a1,efficientnet-b0"


@functools.cache
def size(spec) -> tuple[int, int]:
    """(MADDs, parameters) of a spec, its model built once."""
    model = build_model(spec)
    return count_madds(model), count_params(model)


def candidates(space_name: str, n: int, seed: int, spread: int = 0):
    """``n`` distinct seeded random points of the space (every searched decision uniform); with
    ``spread``, ``n`` of ``spread`` such points at evenly spaced MADD ranks, smallest first, so
    that the specs cover the space's range of sizes rather than its crowded middle."""
    space, rng, seen, want = load_space(space_name), random.Random(seed), {}, max(n, spread)
    for _ in range(100 * want):  # bounded: a small space may hold fewer distinct points
        spec = space.to_spec({k: rng.choice(v) for k, v in space.searched.items()})
        seen.setdefault(spec.id, spec)
        if len(seen) == want:
            break
    else:
        raise SystemExit(f"--space {space_name}: fewer than {want} distinct candidates found")
    specs = list(seen.values())
    if spread:
        specs = sorted(specs, key=lambda spec: size(spec)[0])
        specs = [specs[round(i * (len(specs) - 1) / max(n - 1, 1))] for i in range(n)]
    for i, spec in enumerate(specs[:n]):
        yield f"random-{i + 1}", spec


def timed(spec, source, recipe, seed, init=None):
    t0 = time.perf_counter()
    top1 = proxy_top1(spec, source, recipe, seed=seed, init=init)["top1"]
    return top1, time.perf_counter() - t0


def pretrain_dense(
    base: str, data: str, recipe: str, epochs: int, folder: Path
) -> tuple[str, float]:
    """A dense model of ``base`` trained on the search data as a search's dense start is:
    (its file, seconds)."""
    t0 = time.perf_counter()
    dense = dense_start(folder, spec={"base": base}, trainer=recipe, data=data, epochs=epochs)
    print(f"dense {base} pretrained: top-1 {dense['top1']:.3f} after {epochs} epochs", flush=True)
    return dense["init"], time.perf_counter() - t0


def _f(r: dict, key: str, digits: int = 3) -> str:
    """A figure of the table, or a dash where it was not trained."""
    return "-".center(6) if r.get(key) is None else f"{r[key]:6.{digits}f}"


def summary(name, rows, key, ref="reference"):
    tau = kendalltau([r[key] for r in rows], [r[ref] for r in rows]).statistic
    err = {cc: [r[key] - r[ref] for r in rows if r["condconv"] == cc] for cc in (False, True)}
    static, cond = (statistics.mean(err[c]) if err[c] else float("nan") for c in (False, True))
    secs = statistics.median(r[key + "_s"] for r in rows)
    print(
        f"{name:<10} tau {tau:+.3f}  error vs reference: static {static:+.3f}, CondConv "
        f"{cond:+.3f} "
        f"(gap {cond - static:+.3f})  lowest top-1 {min(r[key] for r in rows):.3f}  "
        f"median {secs:.1f} s per candidate"
    )


def repeatability(rows, k: int) -> None:
    """How well the reference ranks itself, and so the best tau any proxy can expect against it.

    Between-spec and seed-to-seed variances (one-way ANOVA) give the reliability of a k-seed mean;
    a proxy that knew every spec's true score would correlate with it by sqrt(reliability), which
    for normal scores is Kendall's tau (2 / pi) asin(sqrt(reliability)).
    """
    seeds = [r["references"][:k] for r in rows]
    a, b = ([s[i] for s in seeds] for i in (0, 1))
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    within = statistics.mean(statistics.variance(s) for s in seeds)
    between = max(statistics.variance(statistics.mean(s) for s in seeds) - within / k, 0.0)
    reliability = between / (between + within / k) if between else 0.0
    print(
        f"reference repeatability, seed 0 against seed 1: tau {kendalltau(a, b).statistic:+.3f}, "
        f"|diff| max {max(diffs):.3f}, mean {statistics.mean(diffs):.3f}\n"
        f"reference spread: specs sd {between**0.5:.4f}, seeds sd {within**0.5:.4f}; the mean of "
        f"{k} seeds has reliability {reliability:.2f}: a proxy exact to every spec's true score "
        f"would expect tau {2 / math.pi * math.asin(reliability**0.5):+.2f} against it"
    )


def taus(rows, keys, ref="reference") -> dict[str, float]:
    """Kendall's tau against the reference of ranking by each key (scipy's tau-b, as summary's)."""
    return {k: kendalltau([r[k] for r in rows], [r[ref] for r in rows]).statistic for k in keys}


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def within_width(rows, key, ref="reference") -> tuple[int, int]:
    """Over the pairs of specs of equal width (the CondConv decisions): how many ``key`` orders as
    the reference does and how many the other way; pairs tied in either count in neither."""
    signs = [
        _sign(a[key] - b[key]) * _sign(a[ref] - b[ref])
        for a, b in itertools.combinations(rows, 2)
        if a["width"] == b["width"]
    ]
    return signs.count(1), signs.count(-1)


def pair_tau(right: int, wrong: int) -> float:
    return (right - wrong) / (right + wrong) if right + wrong else float("nan")


TRIVIAL = {"width": "width", "MADDs": "madds", "parameters": "params"}


def against_trivial(name, rows, key, seed1):
    """The proxy's tau beside the trivial rankers', and within equal widths; then again for the
    mean of its two seeds (where every spec has both)."""
    both = all(seed1 in r for r in rows)
    mean = [dict(r, **{key: (r[key] + r[seed1]) / 2}) for r in rows] if both else []
    t = taus(rows, [key, *TRIVIAL.values()])
    print(
        f"{name:<10} tau {t[key]:+.3f}"
        + (f" (mean of 2 seeds {taus(mean, [key])[key]:+.3f})" if mean else "")
        + f"; trivial rankers of the same {len(rows)} specs: "
        + ", ".join(f"{label} {t[k]:+.3f}" for label, k in TRIVIAL.items())
    )
    for label, ranked in (("", rows), ("mean of 2 seeds: ", mean)):
        if ranked:
            right, wrong = within_width(ranked, key)
            print(
                f"{name:<10} {label}equal-width pairs: tau {pair_tau(right, wrong):+.3f} over "
                f"{right + wrong} pairs, {right} ordered right, {wrong} wrong"
            )


PROXY_COLUMNS = (
    "proxy",
    "proxy_s",
    "seed1",
    "old",
    "old_s",
    "inherit",
    "inherit_s",
    "inherit_seed1",
    "oneshot",
    "oneshot_s",
)


def reused_all(paths: list[Path], recipes: dict) -> dict:
    """The rows of earlier ``--out`` files, merged by spec id (a later file's figures win, but
    never with fewer reference seeds)."""
    merged: dict[str, dict] = {}
    for path in paths:
        for i, row in reused(path, recipes).items():
            had = merged.setdefault(i, {})
            if len(row.get("references", [])) < len(had.get("references", [])):
                row = {k: v for k, v in row.items() if k not in REFERENCE_COLUMNS}
            had.update(row)
    return merged


REFERENCE_COLUMNS = ("references", "reference", "reference_s")


def same_recipe(then: dict, now: dict) -> bool:
    """Whether an earlier file's recipe is this run's: a key that recipes gained since counts as
    its default (what the earlier run trained with)."""
    defaults = json.loads(json.dumps(recipe_from_dict({}).__dict__))
    return all(then.get(k, defaults.get(k)) == v for k, v in now.items())


def reused(path: Path, recipes: dict) -> dict:
    """The rows of an earlier ``--out`` file by spec id. A different reference recipe is refused;
    a different proxy recipe keeps only the reference's figures."""
    earlier = json.loads(path.read_text())
    if isinstance(earlier, list):  # written before the recipes were kept: trusted as they are
        earlier = {"rows": earlier}
    now = json.loads(json.dumps(recipes))
    then = earlier.get("recipes", now)
    if not same_recipe(then["reference"], now["reference"]):
        raise SystemExit(
            f"{path}: its reference recipe differs from this run's; rerun without --reuse"
        )
    rows = {r["spec_id"]: r for r in earlier["rows"]}
    if not same_recipe(then["proxy"], now["proxy"]):
        print(
            f"{path}: the proxy recipe changed: its reference figures are kept, proxies retrained"
        )
        rows = {i: {k: v for k, v in r.items() if k not in PROXY_COLUMNS} for i, r in rows.items()}
    return rows


def _supernet_seconds(paths: list[Path]) -> float | None:
    """The one-shot supernet's training seconds, from the first earlier file that has them."""
    for path in paths:
        seconds = json.loads(path.read_text()).get("supernet_s")
        if seconds:
            return seconds
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="efficientnet_b0")
    p.add_argument(
        "--random", type=int, default=5, help="seeded random candidates of the space (default 5)"
    )
    p.add_argument(
        "--pairs", default=PAIRS, help=f"static presets whose CondConv preset joins them ({PAIRS})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random candidates (default 0)")
    p.add_argument(
        "--spread",
        type=int,
        default=0,
        help="draw this many random candidates and keep --random of them spread over their MADDs",
    )
    p.add_argument("--data", default="digits")
    p.add_argument(
        "--recipe",
        default="proxy",
        help="the proxy recipe: a shipped name or a YAML file (default: proxy)",
    )
    p.add_argument(
        "--reference-scale",
        type=int,
        default=5,
        help="epochs of the reference / proxy's (default 5)",
    )
    p.add_argument(
        "--reference-epochs",
        type=int,
        default=0,
        help="the reference's epochs, instead of --reference-scale times the proxy's",
    )
    p.add_argument("--reference-resolution", type=int, default=40, help="default 40")
    p.add_argument(
        "--inherited-only",
        action="store_true",
        help="with --inherit: train only the inherited proxy and the reference (the search's "
        "proxy; no from-scratch or old-proxy columns)",
    )
    p.add_argument(
        "--reference-only",
        action="store_true",
        help="train only the reference (the long part), to be filled across sittings with --reuse",
    )
    p.add_argument("--out", type=Path, help="also write the per-spec figures as JSON")
    p.add_argument(
        "--reference-seeds",
        type=int,
        default=1,
        help="trainings of the reference per spec, scored by their mean (default 1)",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        help="earlier runs' --out files (merged): train only what they lack",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="train nothing: the figures of --reuse's files, over the specs that have them all",
    )
    p.add_argument(
        "--proxy-only",
        action="store_true",
        help="train only the proxies (no reference), to be merged with a reference's --out file",
    )
    p.add_argument(
        "--dense", help="with --inherit: the dense model.pt to start from (default: pretrain one)"
    )
    p.add_argument(
        "--oneshot",
        action="store_true",
        help="also score every spec of --space from one supernet trained on the data",
    )
    p.add_argument(
        "--supernet-dir",
        type=Path,
        help="with --oneshot: the folder the supernet trains in and is kept (resumed per epoch; "
        "default: a temporary one)",
    )
    p.add_argument(
        "--inherit",
        action="store_true",
        help="also train every candidate upcycled from a dense model pretrained on the data",
    )
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(torch.get_num_threads())
    source = parse_source(args.data)
    proxy = load_recipe(args.recipe).for_data(source.kind)  # as a search on this data runs it
    old = dataclasses.replace(
        load_recipe(str(HERE / "proxy_v1.yaml")).for_data(source.kind), holdout=proxy.holdout
    )  # the same split
    reference = dataclasses.replace(  # one long training on every image, whatever the proxy's
        proxy,
        epochs=args.reference_epochs or proxy.epochs * args.reference_scale,
        resolution=args.reference_resolution,
        repeats=1,
        train_subset=1.0,
    )
    specs = [
        (name, load_spec(name))
        for base in args.pairs.split(",")
        if base
        for name in (base, f"condconv-{base}")
    ]
    specs += (
        list(candidates(args.space, args.random, args.seed, args.spread)) if args.random else []
    )
    base = load_space(args.space).base
    dense = {"init": args.dense, "seconds": 0.0}

    def init() -> str:  # the dense start, pretrained on first need
        if dense["init"] is None:
            tmp = Path(tempfile.mkdtemp(prefix="proxy-fidelity-"))
            epochs = proxy.dense_epochs or reference.epochs
            dense["init"], dense["seconds"] = pretrain_dense(
                base, args.data, args.recipe, epochs, tmp
            )
        return dense["init"]

    supernet = {"file": None, "seconds": _supernet_seconds(args.reuse or [])}

    def supernet_file() -> str:  # the one-shot supernet, trained on first need
        if supernet["file"] is None:
            folder = args.supernet_dir or Path(tempfile.mkdtemp(prefix="proxy-fidelity-"))
            folder.mkdir(parents=True, exist_ok=True)
            record = train_supernet(
                folder, space=load_space(args.space), recipe=proxy, data=source, note=print
            )
            supernet.update(file=record["init"], seconds=record["seconds"])
            print(f"supernet of {args.space} trained: {record}", flush=True)
        return supernet["file"]

    print(
        f"{len(specs)} specs on {args.data}; proxy {proxy.epochs} epochs at {proxy.resolution} "
        f"px, reference "
        f"{reference.epochs} epochs at {reference.resolution} px; torch threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"{'spec':<26} {'cc':>2} {'proxy':>6} {'seed+1':>6} {'old':>6} {'ref':>6}   seconds "
        f"(proxy/old/ref)"
    )
    recipes = {"proxy": proxy.__dict__, "reference": reference.__dict__}
    known = reused_all(args.reuse, recipes) if args.reuse else {}
    rows = []
    for name, spec in specs:
        r = known.get(spec.id, {})
        r.update(spec=name, spec_id=spec.id, condconv=spec.condconv is not None)
        if "proxy" not in r and not (args.inherited_only or args.reference_only or args.report):
            r["proxy"], r["proxy_s"] = timed(spec, source, proxy, 0)
            r["seed1"], _ = timed(spec, source, proxy, 1)
            r["old"], r["old_s"] = timed(spec, source, old, 0)
        refs = r.setdefault("references", [r["reference"]] if "reference" in r else [])
        while len(refs) < args.reference_seeds and not (args.proxy_only or args.report):
            top1, seconds = timed(spec, source, reference, len(refs))
            refs.append(top1)
            r.setdefault("reference_s", seconds)
        r["reference"] = statistics.mean(refs[: args.reference_seeds]) if refs else None
        if args.inherit and spec.base == base and not (args.reference_only or args.report):
            if "inherit" not in r:
                r["inherit"], r["inherit_s"] = timed(spec, source, proxy, 0, init())
            if "inherit_seed1" not in r:
                r["inherit_seed1"], _ = timed(spec, source, proxy, 1, init())
        if args.oneshot and spec.base == base and "oneshot" not in r:
            if not (args.reference_only or args.report):
                file = supernet_file()
                t0 = time.perf_counter()
                r["oneshot"] = score(spec, source, proxy, file)["top1"]
                r["oneshot_s"] = time.perf_counter() - t0
        rows.append(r)
        print(
            f"{name:<26} {'y' if r['condconv'] else 'n':>2} {_f(r, 'proxy')} {_f(r, 'seed1')} "
            f"{_f(r, 'old')} {_f(r, 'reference')}   "
            f"{_f(r, 'proxy_s', 1)}/{_f(r, 'old_s', 1)}/{_f(r, 'reference_s', 1)}"
            + (f"  inherited {r['inherit']:.3f} ({r['inherit_s']:.1f} s)" if "inherit" in r else "")
            + (f"  oneshot {r['oneshot']:.3f} ({r['oneshot_s']:.1f} s)" if "oneshot" in r else ""),
            flush=True,
        )
        if args.out and not args.report:  # after every spec: resumable with --reuse
            rest = [r for i, r in known.items() if i not in {x["spec_id"] for x in rows}]
            out = {"recipes": recipes, "rows": rows + rest, "supernet_s": supernet["seconds"]}
            text = json.dumps(out, indent=2, default=str)
            write_atomic(args.out, text + "\n")  # rows of specs not in this run are kept too
    print()
    if args.report:  # the specs with every figure so far
        done = [r for r in rows if len(r["references"]) >= args.reference_seeds]
        done = [r for r in done if not args.inherit or "inherit" in r or not args.inherited_only]
        print(f"figures so far: {len(done)} of {len(rows)} specs have every column\n")
        rows = done
    if args.reference_seeds > 1:
        repeatability(rows, args.reference_seeds)
    if args.reference_only or args.proxy_only:
        return
    pretrain_s = dense["seconds"]
    if not args.inherited_only:
        summary("proxy", rows, "proxy")
        summary("old proxy", rows, "old")
    inherited = [r for r in rows if "inherit" in r]
    if inherited:
        summary("inherited", inherited, "inherit")
        if not args.inherited_only:
            summary("scratch", inherited, "proxy")  # the same specs, from scratch
        print(
            f"  (inherited: plus {pretrain_s:.0f} s once, pretraining the dense model)"
            if pretrain_s
            else "  (inherited: plus the pretraining of the dense model, in the run reused)"
        )
    oneshot = [r for r in rows if "oneshot" in r]
    if oneshot:
        summary("oneshot", oneshot, "oneshot")
        print(f"  (oneshot: plus {supernet['seconds'] or 0:.0f} s once, training the supernet)")
    for name, a, b in (("proxy", "proxy", "seed1"), ("inherited", "inherit", "inherit_seed1")):
        seed = [abs(r[a] - r[b]) for r in rows if b in r]
        if seed:
            print(
                f"{name} noise, the same spec with another seed: |diff| max {max(seed):.3f}, "
                f"mean {statistics.mean(seed):.3f}"
            )
    spec_of = {spec.id: spec for _, spec in specs}
    for r in rows:  # the trivial rankers' figures
        r["width"] = spec_of[r["spec_id"]].width_multiplier
        r["madds"], r["params"] = size(spec_of[r["spec_id"]])
    for name, a, b in (("proxy", "proxy", "seed1"), ("inherited", "inherit", "inherit_seed1")):
        ranked = [r for r in rows if r.get(a) is not None]
        if ranked:
            against_trivial(name, ranked, a, b)
    # the paper's pairs: does each proxy order static and CondConv as the reference does?
    for r in rows:
        c = next((x for x in rows if x["spec"] == f"condconv-{r['spec']}"), None)
        if c is not None:
            gaps = ", ".join(
                f"{key} {c[key] - r[key]:+.3f}"
                for key in ("proxy", "old", "inherit", "oneshot", "reference")
                if c.get(key) is not None and r.get(key) is not None
            )
            print(f"pair {r['spec']:<16} CondConv - static: {gaps}")


if __name__ == "__main__":
    main()
