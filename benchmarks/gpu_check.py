"""The GPU path in figures (run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA device).

1. CondConv2d on the GPU against the expert mixture computed by hand, every form it may pick.
2. CondConv-EfficientNet-B0 against EfficientNet-B0: a training step at 224 px, batch 64, with
   the autocast the training uses (bfloat16 where the card has it); inference at batch 1 and 16,
   float32. Interleaved rounds, median milliseconds, the device synchronised around each.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from condconv_nas import build_model, load_spec
from condconv_nas.layers import CondConv2d
from condconv_nas.layers.strategy import fixed_forms
from condconv_nas.training.accelerator import Accelerator


def check_layer(device) -> None:
    torch.manual_seed(0)
    layer = CondConv2d(16, 24, 3, num_experts=4, padding=1, bias=True).to(device)
    x = torch.randn(8, 16, 20, 20, device=device)
    r = torch.softmax(torch.randn(8, 4, device=device), dim=1)
    kernels = torch.einsum("be,eoihw->boihw", r, layer.weight)
    biases = r @ layer.bias
    want = torch.cat([F.conv2d(x[i : i + 1], kernels[i], biases[i], padding=1) for i in range(8)])
    for form in layer.forms(x):
        with torch.no_grad(), fixed_forms(form):
            got = layer(x, r)
        err = (got - want).abs().max().item() / want.abs().max().item()
        print(f"CondConv2d on {device}, form {form:8s}: max relative error {err:.2e}")
        assert err < 1e-4, form


def timed(fn, device, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    acc = Accelerator.pick()
    assert acc.device.type == "cuda", "no CUDA device"
    print(torch.cuda.get_device_name(acc.device), "autocast", acc.dtype)
    check_layer(acc.device)
    models = {
        n: build_model(load_spec(n)).to(acc.device, memory_format=torch.channels_last)
        for n in ("efficientnet-b0", "condconv-efficientnet-b0")
    }
    x64 = torch.randn(64, 3, 224, 224, device=acc.device).to(memory_format=torch.channels_last)
    y64 = torch.randint(0, 1000, (64,), device=acc.device)

    def step(model):
        def run():
            model.train()
            with torch.autocast("cuda", dtype=acc.dtype):
                loss = F.cross_entropy(model(x64), y64)
            loss.backward()
            model.zero_grad(set_to_none=True)

        return run

    def infer(model, batch):
        x = x64[:batch].contiguous(memory_format=torch.channels_last)

        def run():
            model.eval()
            with torch.inference_mode():
                model(x)

        return run

    cases = {
        "train step, batch 64": step,
        "inference, batch 1": lambda m: infer(m, 1),
        "inference, batch 16": lambda m: infer(m, 16),
    }
    for case, make in cases.items():
        times = {n: [] for n in models}
        for m in models.values():
            timed(make(m), acc.device, 5)  # warm-up: cuDNN's choices, CondConv's forms
        for _ in range(5):  # interleaved
            for n, m in models.items():
                times[n] += timed(make(m), acc.device, 4)
        base = statistics.median(times["efficientnet-b0"])
        for n, t in times.items():
            med = statistics.median(t)
            print(f"{case:22s} {n:26s} {med:8.2f} ms  ({med / base:.2f}x B0)")


if __name__ == "__main__":
    main()
