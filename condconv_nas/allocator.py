"""Keep freed memory in the process for reuse instead of returning it to the OS (glibc only).

PyTorch allocates CPU tensors with malloc. glibc serves a block above its mmap threshold (at
most 32 MiB by default) with freshly mapped pages and unmaps it when freed, so such a tensor
pays a page fault per 4 KiB page every time it is made, several times the cost of filling a
kept block (benchmarks/README.md, "Measured figures behind the code"). CondConv's per-example
kernels and their gradients in training are such tensors (32 x 1152 x 320 floats for one layer
of CondConv-EfficientNet-B0 at batch 32).

`keep_freed_memory()` raises glibc's mmap and trim thresholds (``mallopt``), the same effect as
PyTorch's CPU tuning guide gets from preloading jemalloc or tcmalloc. The price is that the
process keeps its peak memory until it exits. The CLI applies it to ``search`` and ``train``
(and Ray trial workers); the Python API leaves the process as it is unless you call it.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_applied = False


def keep_freed_memory(*, mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and never trim it below
    ``trim_threshold`` bytes of free memory. Returns whether glibc took both settings
    (False on other C libraries and systems, where nothing changes)."""
    global _applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 < value < 2**31:  # mallopt takes a C int
            raise ValueError(f"{name} must be in [1, 2**31 - 1] bytes, got {value}")
    if _applied:  # checked first: a bad argument is refused however often it was called
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such symbol)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) & bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    return _applied
