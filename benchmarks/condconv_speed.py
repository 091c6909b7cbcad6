"""CondConv-EfficientNet-B0 (8 experts) over EfficientNet-B0: ours and timm's, side by side.

Times the four figures of the speed goal, interleaving the CondConv and static model of each
implementation round by round, and prints the median (and interquartile range) over rounds of
the ratio CondConv time / static time of the same round, next to the MADD ratio. The process keeps
freed memory as the CLI's ``search`` and ``train`` do (``condconv_nas.allocator``; it applies to
timm's models too); ``--default-malloc`` leaves glibc's default. ``--channels-last`` converts all
four models and the inputs to channels-last, as ``condconv-nas train`` stores its models. Run:
``python benchmarks/condconv_speed.py [--rounds N] [--default-malloc] [--channels-last]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from condconv_nas import build_model, count_madds
from condconv_nas.allocator import keep_freed_memory

FIGURES = [  # name, resolution, batch, training?
    ("training step, 64 px, batch 32", 64, 32, True),
    ("training step, 224 px, batch 8", 224, 8, True),
    ("inference, 224 px, batch 1", 224, 1, False),
    ("inference, 224 px, batch 16", 224, 16, False),
]


def step(model, x, train: bool) -> float:
    t0 = time.perf_counter()
    if train:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    else:
        with torch.inference_mode():
            model(x)
    return time.perf_counter() - t0


def ratios(cond, static, res, batch, train, rounds, memory_format, warmup=2) -> list:
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=memory_format)
    for m in (cond, static):
        m.train(train)
        for _ in range(warmup):  # also lets our layers measure and cache their fastest form
            step(m, x, train)
    out = []
    for _ in range(rounds):  # interleaved: both models of a round see the same machine state
        t_cond = step(cond, x, train)
        out.append(t_cond / step(static, x, train))
    return out


def cell(values: list) -> str:
    """Median and interquartile range of the per-round ratios."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:.2f}x ({q1:.2f}-{q3:.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument(
        "--default-malloc", action="store_true", help="do not keep freed memory (glibc's default)"
    )
    p.add_argument("--channels-last", action="store_true", help="models and inputs channels-last")
    args = p.parse_args()
    kept = False if args.default_malloc else keep_freed_memory()
    torch.manual_seed(0)
    pairs = {
        "condconv_nas": (build_model("condconv-efficientnet-b0"), build_model("efficientnet-b0")),
        "timm": (timm.create_model("efficientnet_cc_b0_8e"), timm.create_model("efficientnet_b0")),
    }
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    for pair in pairs.values():
        for m in pair:
            m.to(memory_format=fmt)
    madd_ratio = count_madds("condconv-efficientnet-b0") / count_madds("efficientnet-b0")
    print(
        f"threads {torch.get_num_threads()}, rounds {args.rounds}, freed memory kept: {kept}, "
        f"channels-last: {args.channels_last}, "
        f"MADD ratio (224 px) {madd_ratio:.3f}"
    )
    print(f"{'figure':32s} {'condconv_nas (IQR)':>20s} {'timm (IQR)':>20s} {'ours/timm':>10s}")
    for name, res, batch, train in FIGURES:
        r = {k: ratios(c, s, res, batch, train, args.rounds, fmt) for k, (c, s) in pairs.items()}
        ours, theirs = r["condconv_nas"], r["timm"]
        rel = statistics.median(ours) / statistics.median(theirs)
        print(f"{name:32s} {cell(ours):>20s} {cell(theirs):>20s} {rel:10.2f}")


if __name__ == "__main__":
    main()
