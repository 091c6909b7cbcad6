"""keep_freed_memory: large tensors come from the heap and their memory stays for reuse."""

import subprocess
import sys

import pytest

from condconv_nas.allocator import keep_freed_memory

PROBE = r"""
import ctypes, sys, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usmblks "
                "fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    from condconv_nas.allocator import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2()
t = torch.ones(64 << 18)  # 64 MiB
held = libc.mallinfo2()
del t
freed = libc.mallinfo2()
print((held.hblkhd - before.hblkhd) >> 20, (held.uordblks - before.uordblks) >> 20,
      freed.fordblks >> 20)
"""


def probe(mode):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout
    return [
        int(v) for v in out.split()
    ]  # MiB: more mapped while held, more heap in use while held, heap free after del


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_tensor_comes_from_the_heap_and_stays_free_for_reuse():
    mapped, in_heap, free_after = probe("default")
    assert mapped >= 64 and in_heap < 64  # glibc's default: its own mapping, unmapped when freed
    mapped, in_heap, free_after = probe("keep")
    assert mapped < 64 and in_heap >= 64 and free_after >= 64


def test_thresholds_are_checked():
    keep_freed_memory()  # applied once already (the CLI in this process): still checked
    with pytest.raises(ValueError, match="mmap_threshold must be in"):
        keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match="trim_threshold must be in"):
        keep_freed_memory(trim_threshold=2**31)
