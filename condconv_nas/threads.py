"""How many intra-op threads torch uses: chosen from the cores that are free now, not inherited.

PyTorch starts one OpenMP thread per core, and OpenMP threads spin while they wait for each
other: with another process holding one of two cores, a two-thread training step ran about nine
times slower than a one-thread step (benchmarks/README.md, "threads"). So the default counts the
cores this process may use that were idle over a short look at ``/proc/stat``.
"""

from __future__ import annotations

import os
import time

from .validation import check_int


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of them where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_jiffies() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            # guest and guest_nice (fields 9 and 10) are already counted in user and nice
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(look: float = 0.25) -> float | None:
    """How many of the machine's cores were idle over ``look`` seconds (None off Linux)."""
    first = _busy_jiffies()
    if first is None:
        return None
    time.sleep(look)
    second = _busy_jiffies()
    if second is None or second[1] == first[1]:
        return None
    busy = (second[0] - first[0]) / (second[1] - first[1])
    return (1.0 - busy) * (os.cpu_count() or 1)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` where the user set it; else the usable cores that are idle now (at
    least one)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def check_threads(threads) -> int:
    """``--threads``: a positive integer no larger than 1024; `UsageError` otherwise."""
    return check_int(threads, "--threads", 1, 1024)


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (checked), or to `default_threads`; returns
    the number set."""
    import torch  # the CLI parses options before loading torch

    n = default_threads() if threads is None else check_threads(threads)
    torch.set_num_threads(n)
    return n
