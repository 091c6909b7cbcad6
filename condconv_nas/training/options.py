"""Options of ``condconv-nas train`` (no heavy imports here)."""

from __future__ import annotations

import argparse

# every command that reads data takes the same sources (condconv_nas.data)
DATA_HELP = (
    "digits (embedded) | fashion-mnist (Debian's dataset-fashion-mnist) | fashion-mnist:PATH | "
    "mnist:PATH | imagefolder:PATH | cifar10:PATH | cifar100:PATH (default: digits)"
)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        help="a spec JSON file (e.g. RUN/specs/<trial>.json), a run folder (its most accurate "
        "front spec) or a preset name",
    )
    p.add_argument(
        "--trainer",
        default="cifar",
        help="recipe: proxy | cifar | fashion | imagenet, or a YAML file (default: cifar)",
    )
    p.add_argument(
        "--data",
        default="digits",
        help=DATA_HELP,
    )
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default: the recipe's)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of init and data order (default: the recipe's)"
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/<spec id>)")
    p.add_argument(
        "--init",
        default=None,
        metavar="SOURCE",
        help="start from other weights: a state dict file of the base's timm model, a model.pt, "
        "or timm:NAME (timm's pretrained weights); dense layers are upcycled into experts",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last finished epoch in --out (default: start afresh)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="per-process batch size (default: the recipe's)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="data loader workers (default: the recipe's)"
    )
