"""Every CondConv layer shape of CondConv-EfficientNet-B0, each execution form against the static
conv.

For one figure (resolution, batch, training step or inference) it lists each distinct CondConv
layer shape with: how many layers have it, the static convolution's time, each form's time
(forward, plus backward when training; best of interleaved rounds, as the layers measure
themselves), the form the layer picks, and the largest tensor each form makes (per-example
kernels, n-fold output or n-fold input), in MB. Run:
``python benchmarks/condconv_layers.py --res 64 --batch 32 --train``.
"""

from __future__ import annotations

import argparse
import time
from math import inf

import torch
import torch.nn.functional as F

from condconv_nas import build_model
from condconv_nas.allocator import keep_freed_memory
from condconv_nas.layers import CondConv2d
from condconv_nas.layers import strategy as S
from condconv_nas.layers.crop import crop


def largest_tensor(layer: CondConv2d, form: str, shape) -> int:
    """Elements of the largest intermediate that `form` makes for an input of `shape`."""
    B, C, H, W = shape
    n, Co, g = layer.num_experts, layer.out_channels, layer.groups
    (kh, kw), (sh, sw) = (
        crop(layer.weight, (H, W), layer.stride, layer.padding, layer.dilation)[0].shape[-2:],
        layer.stride,
    )
    Ho, Wo = (
        (H + 2 * layer.padding[0] - layer.kernel_size[0]) // sh + 1,
        (W + 2 * layer.padding[1] - layer.kernel_size[1]) // sw + 1,
    )
    return {
        "kernel": B * Co * C // g * kh * kw,
        "bmm": B * Co * C,
        "mixture": B * n * Co * Ho * Wo,
        "expand": B * n * C * H * W,
    }[form]


def static_time(
    layer: CondConv2d, x: torch.Tensor, train: bool, rounds: int, memory_format
) -> float:
    """The static convolution as the static model runs it (cropped to the taps the input
    reaches)."""
    w = layer.weight[0].detach().contiguous(memory_format=memory_format).requires_grad_(train)
    best = float("inf")
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        with torch.set_grad_enabled(train):
            wc, stride, padding = crop(w, x.shape[-2:], layer.stride, layer.padding, layer.dilation)
            out = F.conv2d(x, wc, None, stride, padding, layer.dilation, layer.groups)
            if train:
                out.backward(torch.ones_like(out))
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train", action="store_true", help="forward and backward (default: inference)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument(
        "--channels-last", action="store_true", help="inputs and static weights channels-last"
    )
    args = p.parse_args()
    keep_freed_memory()
    model = build_model("condconv-efficientnet-b0").train(args.train)
    calls = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: calls.append((m, tuple(a[0].shape))))
        for m in model.modules()
        if isinstance(m, CondConv2d)
    ]
    with torch.no_grad():
        model(torch.randn(args.batch, 3, args.res, args.res))
    for h in hooks:
        h.remove()
    shapes = {}
    for layer, shape in calls:
        shapes.setdefault((layer.shape_key(), layer.in_channels, shape), [layer, 0])[1] += 1
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"{'layer':28s} {'input':18s} {'x':>2s} {'static':>7s}  forms (ms; largest tensor MB)")
    total_static = total_best = 0.0
    for (_, _, shape), (layer, count) in shapes.items():
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_(args.train)
        r = torch.rand(shape[0], layer.num_experts, requires_grad=args.train)
        w = layer.weight.detach().clone().requires_grad_(args.train)
        # every form timed, even those the layers stop timing
        times = S.measure_forms(
            layer, layer.forms(x), (x, r, w, None), args.train, rounds=args.rounds, hopeless=inf
        )
        ts = static_time(layer, x.detach().requires_grad_(args.train), args.train, args.rounds, fmt)
        best = min(times, key=times.get)
        total_static, total_best = total_static + count * ts, total_best + count * times[best]
        k, s = layer.kernel_size[0], layer.stride[0]
        name = f"{layer.in_channels}->{layer.out_channels} k{k} s{s} g{layer.groups}"
        forms = "  ".join(
            f"{'*' if f == best else ''}{f} {t * 1e3:.2f} "
            f"({largest_tensor(layer, f, shape) * 4 / 1e6:.1f})"
            for f, t in times.items()
        )
        print(f"{name:28s} {str(shape):18s} {count:2d} {ts * 1e3:7.2f}  {forms}")
    print(
        f"all CondConv layers: static {total_static * 1e3:.1f} ms, picked forms "
        f"{total_best * 1e3:.1f} ms "
        f"({total_best / total_static:.2f}x); * marks the pick"
    )


if __name__ == "__main__":
    main()
