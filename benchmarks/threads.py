"""Does the project's thread choice hold up on a shared machine?

Times an EfficientNet-B0 training step (batch 64, 32 px, 10 classes) with 1 thread, with 2
threads and with the project's default (`condconv_nas.threads.default_threads`, decided in the
timed process as a command would), first on the machine as it is, then with one core held by a
spinning process. Each setting runs in a fresh process; settings are interleaved over
``--rounds`` and the median step of each is printed with its ratio to the best. Run on an
otherwise idle machine: ``python benchmarks/threads.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import time

STEP = """
import time, torch
from condconv_nas.threads import use_threads
from condconv_nas import build_model, load_spec
n = use_threads({threads})
m = build_model(load_spec("efficientnet-b0").replace(num_classes=10))
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
times = []
for i in range(8):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(n, sorted(times[2:])[3])
"""


def spin(stop) -> None:
    while not stop.is_set():
        pass


def step(threads: str) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-c", STEP.format(threads=threads)],
        capture_output=True, text=True, check=True, env={"PATH": "", "HOME": "/tmp"},
    )  # fmt: skip
    n, seconds = out.stdout.split()
    return int(n), float(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    settings = {"1 thread": "1", "2 threads": "2", "default": "None"}
    for busy in (False, True):
        stop = mp.Event()
        spinner = mp.Process(target=spin, args=(stop,)) if busy else None
        if spinner:
            spinner.start()
            time.sleep(1)
        times, chosen = {k: [] for k in settings}, {}
        for _ in range(args.rounds):
            for name, threads in settings.items():
                n, seconds = step(threads)
                times[name].append(seconds)
                chosen[name] = n
        if spinner:
            stop.set()
            spinner.join()
        medians = {k: statistics.median(v) for k, v in times.items()}
        best = min(medians.values())
        print("one core busy" if busy else "as it is")
        for name, m in medians.items():
            print(
                f"  {name:<10} {chosen[name]} thread(s)  {m:.3f} s/step  {m / best:.2f}x the best"
            )


if __name__ == "__main__":
    main()
