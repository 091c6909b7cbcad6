"""The ``condconv-nas`` command line: one small class per command, a shared ``--format``.

Exit status: 0 success; 2 bad usage or bad input (one line on stderr, no traceback);
1 any other failure.
"""

from __future__ import annotations

import abc
import argparse
import errno
import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from .allocator import keep_freed_memory
from .errors import NasWarning, UsageError
from .training.options import DATA_HELP


def format_rows(rows: list[dict], fmt: str) -> str:
    """Rows of dicts as an aligned text table or as JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return "(none)"
    from tabulate import tabulate  # fvcore's own table printer

    # text stays text (a spec id such as "1e5a..." is no float); numbers align on the right
    text = [i for i, c in enumerate(rows[0]) if any(isinstance(r.get(c), str) for r in rows)]
    return tabulate(rows, headers="keys", missingval="", disable_numparse=text)


def latency_columns(point: dict) -> dict:
    """A front point's predicted and measured latency, for runs that use latency."""
    if "latency_ms" not in point:
        return {}
    return {
        k: None if point.get(k) is None else round(point[k], 2)
        for k in ("latency_ms", "measured_ms")
    }


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the commands that run a trained model over data."""
    p.add_argument(
        "checkpoint",
        help="a checkpoint (.pt) written by `condconv-nas train`, or an exported model",
    )
    p.add_argument(
        "--data",
        default="digits",
        help=DATA_HELP,
    )
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: 64)")


class Command(abc.ABC):
    """A subcommand: ``add_arguments`` declares its options, ``take_action`` runs it."""

    name: str = ""
    help: str = ""
    formats = ("table", "json")
    threads = False  # whether the command computes, and so takes --threads

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027  (optional)
        """Declare the command's options (none by default)."""

    @abc.abstractmethod
    def take_action(self, args: argparse.Namespace) -> int:
        """Run the command; returns the exit status."""

    def out(self, args, rows, fmt_obj=None) -> None:
        print(
            format_rows(rows, args.format)
            if fmt_obj is None or args.format == "table"
            else json.dumps(fmt_obj, indent=2)
        )


class Madds(Command):
    name, help = "madds", "count a spec's multiply-adds (MADDs) and parameters"

    def add_arguments(self, p):
        p.add_argument("spec", help="a spec JSON file or a preset name")
        p.add_argument(
            "--resolution", type=int, default=None, help="input size (default: the spec's)"
        )

    def take_action(self, args):
        from .spec import load_spec  # validate before the heavy imports
        from .validation import check_int

        if args.resolution is not None:  # argparse makes `--resolution=--` an empty list
            check_int(args.resolution, "--resolution", 8, 4096)
        spec = load_spec(args.spec)
        if args.resolution is not None:  # a size the spec will run at: its stride plan must fit
            spec.check_resolution(args.resolution, "--resolution")
        from .madds import count_madds, count_params
        from .models import build_model

        model = build_model(spec)
        res = args.resolution or spec.resolution
        obj = {
            "spec": args.spec,
            "id": spec.id,
            "base": spec.base,
            "resolution": res,
            "madds": count_madds(model, res),
            "params": count_params(model),
        }
        self.out(
            args,
            [
                {
                    **obj,
                    "madds_M": round(obj["madds"] / 1e6, 2),
                    "params_M": round(obj["params"] / 1e6, 2),
                }
            ],
            obj,
        )
        return 0


class Table1(Command):
    name, help = "table1", "the paper's Table 1 MADDs side by side with ours"

    def take_action(self, args):
        from .table1 import table1

        self.out(args, table1())
        return 0


class Presets(Command):
    name, help = "presets", "list the named preset specs"

    def take_action(self, args):
        from .spec import PRESETS, load_spec

        rows = []
        for name in PRESETS:
            s = load_spec(name)
            cc = s.condconv
            rows.append(
                {
                    "preset": name,
                    "base": s.base,
                    "depth": s.depth_multiplier,
                    "resolution": s.resolution,
                    "begin_layer": cc.begin_layer if cc else None,
                    "experts": cc.num_experts if cc else None,
                    "classifier": cc.classifier if cc else None,
                }
            )
        self.out(args, rows)
        return 0


class Search(Command):
    name, help = (
        "search",
        "search CondConv architectures under a MADD budget (Pareto front of top-1 vs MADDs)",
    )
    threads = True

    def add_arguments(self, p):
        from .nas.options import add_search_arguments

        add_search_arguments(p)

    def take_action(self, args):
        from .nas.options import SearchConfig
        from .nas.run import SearchInterrupted, search
        from .progress import BarReporter, LineReporter

        keep_freed_memory()
        try:
            result = search(
                SearchConfig(**{f.name: getattr(args, f.name) for f in fields(SearchConfig)}),
                progress=LineReporter() if args.quiet else BarReporter(),
            )
        except SearchInterrupted as e:
            print(
                f"interrupted after {e.result.finished}/{e.result.total} trials; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 130
        if result.running:
            print(
                f"{result.running} trial(s) still training in other workers; `condconv-nas show "
                f"{result.run_dir}` once they finish",
                file=sys.stderr,
            )
        elif result.finished < result.total:
            print(
                f"the {args.backend} strategy stopped after {result.finished}/{result.total} "
                "trials (it found no new point to try)",
                file=sys.stderr,
            )
        print(
            f"{result.finished}/{result.total} trials; Pareto front of {len(result.front)} in "
            f"{result.run_dir}"
            + (
                f"; {result.untrained} untrained (not clearly above chance), kept off the front"
                if result.untrained
                else ""
            ),
            file=sys.stderr,
        )
        self.out(
            args,
            [
                {
                    "trial": r["trial"],
                    "madds_M": round(r["madds"] / 1e6, 1),
                    **latency_columns(r),
                    "top1": round(r["top1"], 4),
                    "spec": str(result.run_dir / "specs" / f"{r['trial']}.json"),
                }
                for r in result.front
            ],
        )
        return 0


class Show(Command):
    name, help = "show", "show a run's Pareto front"

    def add_arguments(self, p):
        p.add_argument("run_dir", help="a run folder written by `condconv-nas search`")
        p.add_argument(
            "--best",
            action="store_true",
            help="print only the path of the most accurate front spec (to pass to `train`)",
        )

    def take_action(self, args):
        from .results import best_spec_path, count_untrained, load_front

        if args.best:
            print(best_spec_path(args.run_dir))
            return 0
        front = load_front(args.run_dir)
        untrained = count_untrained(args.run_dir)
        if untrained:
            print(
                f"{untrained} trial(s) trained to no better than chance: kept off the front "
                "(trials.csv, status untrained)",
                file=sys.stderr,
            )
        rows = [
            {
                "trial": r["trial"],
                "madds_M": round(r["madds"] / 1e6, 1),
                **latency_columns(r),
                "params_M": round(r["params"] / 1e6, 2),
                "top1": round(r["top1"], 4),
                "spec": str(Path(args.run_dir) / "specs" / f"{r['trial']}.json"),
            }
            for r in front
        ]
        self.out(args, rows, front)
        return 0


class Latency(Command):
    name, help = (
        "latency",
        "a spec's predicted and measured forward latency on this machine (or, with --space, fill "
        "this machine's latency table for every candidate of a space)",
    )
    threads = True

    def add_arguments(self, p):
        from .nas.options import positive_int

        p.add_argument("spec", nargs="?", help="a spec JSON file or a preset name")
        p.add_argument(
            "--batch", type=positive_int, default=1, help="images per forward (default: 1)"
        )
        p.add_argument(
            "--space",
            default=None,
            help="instead of a spec: measure every part of this space's candidates into the "
            "table (a shipped name or a YAML file; a few minutes for the default space)",
        )

    def take_action(self, args):
        from .latency import check_batch

        if (args.spec is None) == (args.space is None):
            raise UsageError("give a SPEC, or --space to fill the table for a space (not both)")
        check_batch(args.batch)
        if args.space is not None:
            return self.fill(args)
        from .spec import load_spec

        spec = load_spec(args.spec)
        import torch

        from .latency import measure_latency, predict_latency, table_info

        keep_freed_memory()  # as `search` runs
        predicted = predict_latency(spec, batch=args.batch)
        measured = measure_latency(spec, batch=args.batch)
        obj = {
            "spec": args.spec,
            "id": spec.id,
            "predicted_ms": round(predicted, 3),
            "measured_ms": round(measured, 3),
            "error_pct": round(100 * (predicted - measured) / measured, 1),
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "table": table_info(args.batch)["table"],
        }
        self.out(args, [obj], obj)
        return 0

    def fill(self, args) -> int:
        import time

        from tqdm.auto import tqdm

        from .latency import build_table, table_info
        from .nas.space import load_space

        load_space(args.space)  # a bad space is refused before any measuring
        keep_freed_memory()
        t0 = time.perf_counter()
        with tqdm(desc="networks", unit="net", file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            build_table(args.space, batch=args.batch, progress=progress)
        info = table_info(args.batch)
        obj = {"space": args.space, **info, "seconds": round(time.perf_counter() - t0, 1)}
        shown = ("space", "table", "entries", "key_threads", "key_batch", "seconds")
        self.out(args, [{k.removeprefix("key_"): obj[k] for k in shown}], obj)
        return 0


class Train(Command):
    name, help = "train", "train a spec (a file from a run's specs/, or a preset) with a recipe"
    threads = True

    def add_arguments(self, p):
        from .training.options import add_train_arguments

        add_train_arguments(p)

    def take_action(self, args):
        from .training.run import default_out, train

        keep_freed_memory()
        metrics = train(
            args.spec,
            trainer=args.trainer,
            data=args.data,
            epochs=args.epochs,
            out=args.out,
            resume=args.resume,
            init=args.init,
            batch_size=args.batch_size,
            workers=args.workers,
            seed=args.seed,
        )
        if metrics:  # rank 0 (the others return nothing under torchrun)
            out = args.out or default_out(metrics["spec_id"])
            print(
                json.dumps(metrics, indent=2)
                if args.format == "json"
                else f"top-1 {metrics.get('top1', float('nan')):.4f} after "
                f"{metrics.get('epoch')} epochs; checkpoints, metrics.json and model.pt in {out}"
            )
        return 0


class Evaluate(Command):
    name, help = "evaluate", "evaluate a checkpoint or an exported model on a data set"
    threads = True

    def add_arguments(self, p):
        add_evaluation_arguments(p)

    def take_action(self, args):
        from .training.run import evaluate_checkpoint

        m = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size)
        print(
            json.dumps(m, indent=2)
            if args.format == "json"
            else f"top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}"
        )
        return 0


class Analyze(Command):
    name, help = (
        "analyze",
        "what a trained CondConv model's routers learned: routing.json and pictures",
    )

    def add_arguments(self, p):
        add_evaluation_arguments(p)
        p.add_argument(
            "--out", default=None, help="output folder (default: routing/ beside the checkpoint)"
        )
        p.add_argument(
            "--split",
            choices=("val", "train"),
            default="val",
            help="val: the held-out split training scored on (default); train",
        )
        p.add_argument(
            "--ablate",
            action="store_true",
            help="also score the model with every router fixed at its mean over training images "
            "(routing.json's ablation): how much accuracy the per-example routing carries",
        )

    def take_action(self, args):
        from .routing_analysis import (
            analyze_routing,
            diagnostics_of,
            routing_folder,
            write_routing,
        )

        out = routing_folder(args.checkpoint, args.out)
        info = analyze_routing(
            args.checkpoint, args.data, split=args.split, batch_size=args.batch_size
        )
        if args.ablate:
            from .ablation import routing_ablation

            info["ablation"] = routing_ablation(
                args.checkpoint, args.data, batch_size=args.batch_size
            )
        paths = write_routing(info, out)
        print(
            f"{len(info['layers'])} routers over {info['num_examples']} examples; "
            + ", ".join(p.name for p in paths)
            + f" in {out}",
            file=sys.stderr,
        )
        diag = diagnostics_of(info)

        def rounded(x):
            return None if x is None else round(x, 3)

        print(
            f"spreads: expert {rounded(diag['expert_spread'])}, kernel "
            f"{rounded(diag['kernel_spread'])} (means over {len(diag['layers'])} CondConv "
            f"layers), example {rounded(diag['example_spread'])}, "
            f"class {rounded(diag['class_spread'])} (means over {len(diag['routers'])} routers)",
            file=sys.stderr,
        )
        if args.ablate:
            a = info["ablation"]
            print(
                f"routing ablation: top-1 {a['top1_bn']:.4f} as routed, {a['top1_fixed_bn']:.4f} "
                f"with every router at its mean over {a['mean_images']} training images, "
                f"BatchNorm re-estimated there for both ({a['top1']:.4f} and "
                f"{a['top1_fixed']:.4f} as trained): drop {a['drop']:+.4f}",
                file=sys.stderr,
            )
        from .routing_plots import label

        def used(lay, pick):  # the expert with the highest (lowest) mean weight, and that mean
            e = pick(range(lay["num_experts"]), key=lay["mean"].__getitem__)
            return f"{e} ({lay['mean'][e]:.2f})"

        by_name = {lay["name"]: lay for lay in diag["layers"]}

        def served(lay, key):  # the mean spread ``key`` of the layers the router feeds
            xs = [by_name[s][key] for s in lay["serves"] if by_name.get(s, {}).get(key) is not None]
            return round(sum(xs) / len(xs), 3) if xs else None

        rows = [
            {
                "router": label(lay),
                "experts": lay["num_experts"],
                "specificity": round(lay["class_specificity"], 3),
                "class_spread": round(lay["class_spread"], 3),
                "example_spread": round(lay["example_spread"], 3),
                "expert_spread": served(lay, "expert_spread"),
                "kernel_spread": served(lay, "kernel_spread"),
                "most_used": used(lay, max),
                "least_used": used(lay, min),
            }
            for lay in info["layers"]
        ]
        self.out(args, rows, info)
        return 0


class Export(Command):
    name, help = "export", "export a checkpoint or a spec for deployment (ONNX, any batch size)"
    formats = ()  # --format names the file format here, not the output's

    def add_arguments(self, p):
        p.add_argument(
            "source",
            metavar="CHECKPOINT|SPEC",
            help="a checkpoint or model.pt written by `condconv-nas train`, or a spec JSON file "
            "or preset name (exported with freshly initialised weights)",
        )
        p.add_argument("--format", default="onnx", help="file format: onnx (default: onnx)")
        p.add_argument(
            "--out",
            default=None,
            help="output file (default: <checkpoint stem>.onnx next to a checkpoint, "
            "<spec id>.onnx here for a spec)",
        )
        p.add_argument(
            "--resolution",
            type=int,
            default=None,
            help="image size (default: the checkpoint's training resolution, else the spec's)",
        )
        p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")

    def take_action(self, args):
        from .export import FORMATS, export_onnx
        from .validation import check_int

        if args.format not in FORMATS:
            raise UsageError(f"--format: {args.format!r} is not one of {', '.join(FORMATS)}")
        if args.resolution is not None:  # named as the flag, not as the library's keyword
            check_int(args.resolution, "--resolution", 8, 4096)
        try:
            r = export_onnx(args.source, args.out, resolution=args.resolution, opset=args.opset)
        except UsageError as e:  # the library names its keywords; here they are flags
            raise UsageError(re.sub(r"^(resolution|opset):", r"--\1:", str(e))) from None
        print(
            f"{r.path}: ONNX opset {r.opset}, images (batch, 3, {r.resolution}, {r.resolution}) "
            f"-> logits (batch, {r.num_classes})"
        )
        return 0


COMMANDS: Sequence[type[Command]] = (
    Search,
    Show,
    Train,
    Evaluate,
    Analyze,
    Latency,
    Export,
    Madds,
    Table1,
    Presets,
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming ``--help``), like every other exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(
        prog="condconv-nas",
        description="Neural architecture search for CondConv under a hard MADD budget.",
        epilog="Start with: condconv-nas search --budget 400M",
    )
    parser.add_argument("--version", action="version", version=f"condconv-nas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cls in COMMANDS:
        cmd = cls()
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        if cmd.formats:
            p.add_argument(
                "--format",
                choices=cmd.formats,
                default="table",
                help="output format (default: table)",
            )
        if cmd.threads:
            p.add_argument(
                "--threads",
                type=int,
                default=None,
                help="intra-op threads (default: the cores this process may use that are idle "
                "now, or OMP_NUM_THREADS)",
            )
        p.set_defaults(handler=cmd)
    return parser


def _warning_line(message, category, *args, _python=warnings.formatwarning, **kwargs) -> str:
    """The project's own warnings in one line, as its errors are; others as Python prints them."""
    if issubclass(category, NasWarning):
        return f"condconv-nas: warning: {message}\n"
    return _python(message, category, *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _warning_line
    warnings.filterwarnings(
        "ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        if args.handler.threads:
            from .threads import use_threads

            use_threads(args.threads)
        return args.handler.take_action(args)
    except UsageError as e:
        message = " ".join(str(e).split())  # one line, whatever the message carried
        print(f"condconv-nas {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # a name no file system takes: bad input too, wherever it was looked up
        if e.errno != errno.ENAMETOOLONG:
            raise
        from .validation import short_repr

        print(
            f"condconv-nas {args.command}: error: file name too long: {short_repr(e.filename)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"condconv-nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
