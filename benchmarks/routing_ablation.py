"""Does a trained CondConv model use its per-example routing? For each checkpoint: test top-1 as
routed, with every router fixed at its mean over 10,000 training images (each CondConv layer then
one static kernel; BatchNorm statistics as trained, then both networks' re-estimated over those
images), the drop (routed less fixed, both re-estimated), and the model's spreads
(`condconv_diagnostics` on the test images).

Run: ``python benchmarks/routing_ablation.py runs/figure2/*-8e-*/model.pt [--data fashion-mnist]``.
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

from condconv_nas import condconv_diagnostics, routing_ablation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="checkpoints (model.pt) of CondConv trainings")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.models:
        a = routing_ablation(path, args.data)
        d = condconv_diagnostics(path, args.data, batch_size=256)
        rows.append(
            {
                "model": path,
                "top-1 routed": f"{a['top1']:.4f}",
                "mean routing": f"{a['top1_fixed']:.4f}",
                "routed, BN re-estimated": f"{a['top1_bn']:.4f}",
                "mean routing, BN re-estimated": f"{a['top1_fixed_bn']:.4f}",
                "drop": f"{a['drop']:+.4f}",
                "kernel spread": f"{d['kernel_spread']:.3f}",
                "example spread": f"{d['example_spread']:.3f}",
                "expert spread": f"{d['expert_spread']:.3f}",
            }
        )
        print(rows[-1], flush=True)
    print(tabulate(rows, "keys", "github"))


if __name__ == "__main__":
    main()
