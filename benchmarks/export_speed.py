"""onnxruntime against PyTorch: inference latency of the exported CondConv-EfficientNet-B0 and B0.

Exports both presets with ``condconv_nas.export_onnx`` (freshly initialised weights: latency does
not depend on them), then times each model in PyTorch (eager, ``inference_mode``, forms picked by
timing as in training) and in onnxruntime (CPU, the same thread count) at batch 1 and 16. The four
runs of a batch size are interleaved round by round, so each round's ratios compare runs on the
same machine state; it prints median latencies, the median per-round ratio onnxruntime / PyTorch
with its interquartile range, and CondConv / static for each runtime. Run:
``python benchmarks/export_speed.py [--rounds 15] [--resolution 224] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from condconv_nas import build_model, export_onnx
from condconv_nas.allocator import keep_freed_memory

MODELS = ("condconv-efficientnet-b0", "efficientnet-b0")
BATCHES = (1, 16)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cell(values: list[float]) -> str:
    """Median and interquartile range of per-round ratios."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:.2f}x ({q1:.2f}-{q3:.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds: at least 2 (quartiles need two values)")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    res = args.resolution
    torch.manual_seed(0)
    runs = {}  # model -> (PyTorch callable on a batch, onnxruntime callable on a batch)
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = build_model(name).eval()
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", resolution=res).path
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runs[name] = (model, session)
    print(
        f"threads {args.threads}, rounds {args.rounds}, {res} px, onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}"
    )
    print(
        f"{'model':26s} {'batch':>5s} {'PyTorch ms':>11s} {'ORT ms':>8s} "
        f"{'ORT/PyTorch (IQR)':>20s} {'max rel. error':>15s}"
    )
    for batch in BATCHES:
        x = torch.randn(batch, 3, res, res)
        feed = {"images": x.numpy()}
        calls, errors = {}, {}
        for name, (model, session) in runs.items():

            def eager(m=model, x=x):
                with torch.inference_mode():
                    return m(x)

            def onnx(s=session, feed=feed):
                return s.run(None, feed)[0]

            for _ in range(2):  # warm-up; PyTorch's CondConv layers also pick their forms here
                ref, out = eager().numpy(), onnx()
            errors[name] = float(np.abs(out - ref).max() / np.abs(ref).max())
            calls[name] = (eager, onnx)
        times = {(name, rt): [] for name in MODELS for rt in ("torch", "ort")}
        for _ in range(args.rounds):  # interleaved: a round's four runs see one machine state
            for name, (eager, onnx) in calls.items():
                times[name, "torch"].append(timed(eager))
                times[name, "ort"].append(timed(onnx))
        for name in MODELS:
            t, o = times[name, "torch"], times[name, "ort"]
            print(
                f"{name:26s} {batch:5d} {statistics.median(t) * 1e3:11.1f} "
                f"{statistics.median(o) * 1e3:8.1f} "
                f"{cell([b / a for a, b in zip(t, o, strict=True)]):>20s} {errors[name]:15.1e}"
            )
        cond, static = MODELS
        per_rt = {
            rt: cell([c / s for c, s in zip(times[cond, rt], times[static, rt], strict=True)])
            for rt in ("torch", "ort")
        }
        print(
            f"{'CondConv / static':26s} {batch:5d}   PyTorch {per_rt['torch']}, ORT {per_rt['ort']}"
        )


if __name__ == "__main__":
    main()
