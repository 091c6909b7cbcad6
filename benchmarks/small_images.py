"""What small images cost: MADDs at 32 px and one training step's time, by skip_downsample.

For MobileNetV1 0.25x and EfficientNet-B0, static and with the paper's CondConv placement, at
``skip_downsample`` 0, 1 and 2: MADDs counted at 32 px (10 classes) and the median time of one
training step (forward, backward, AdamW) on a batch of ``--batch`` 32 px images on ``--threads``
threads, the specs timed in interleaved rounds so that a change in the machine's load hits them
all alike. Says what a user's day on Fashion-MNIST would cost per epoch (60,000 images).

Run: ``python benchmarks/small_images.py [--batch 64] [--rounds 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from condconv_nas import build_model, count_madds, load_spec

PAIRS = {
    "MobileNetV1 0.25x": ("mobilenet-v1", "condconv-mobilenet-v1", 0.25),
    "EfficientNet-B0": ("efficientnet-b0", "condconv-efficientnet-b0", 1.0),
}


def specs() -> dict:
    out = {}
    for label, (static, cc, width) in PAIRS.items():
        for skip in (0, 1, 2):
            for kind, name in (("static", static), ("CondConv", cc)):
                spec = load_spec(name).replace(
                    width_multiplier=width, resolution=32, num_classes=10, skip_downsample=skip
                )
                out[f"{label}, skip {skip}, {kind}"] = spec
    return out


def step_seconds(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    # channels-last weights, as training stores them (build_for_training)
    models = {
        name: build_model(spec).to(memory_format=torch.channels_last).train()
        for name, spec in specs().items()
    }
    opts = {n: torch.optim.AdamW(m.parameters(), 1e-3) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for n, m in models.items():  # warm-up: CondConv layers pick their execution form here
        for _ in range(2):
            step_seconds(m, opts[n], x, y)
    for _ in range(args.rounds):
        for n, m in models.items():
            times[n].append(step_seconds(m, opts[n], x, y))
    print(f"batch {args.batch}, threads {args.threads}, median of {args.rounds} interleaved rounds")
    print(f"{'spec':34s} {'MADDs@32px':>11s} {'step_s':>7s} {'epoch_min':>9s} {'vs static':>9s}")
    names = list(models)
    for i, n in enumerate(names):
        s = statistics.median(times[n])
        base = statistics.median(times[names[i - 1]]) if n.endswith("CondConv") else s
        epoch_min = s * 60000 / args.batch / 60
        print(
            f"{n:34s} {count_madds(models[n]) / 1e6:10.1f}M {s:7.3f} {epoch_min:9.1f} "
            f"{s / base:8.2f}x"
        )


if __name__ == "__main__":
    main()
