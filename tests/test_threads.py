"""Intra-op threads: chosen from the idle usable cores unless the user says, and bad counts
refused."""

import io
import json
from pathlib import Path

import pytest
import torch

from condconv_nas import threads
from condconv_nas.cli import main


def test_default_counts_idle_cores_and_honours_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.9)  # another process holds a core
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: 1.96)
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "idle_cores", lambda: 7.5)  # idle cores we may not use
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "idle_cores", lambda: None)  # no /proc/stat
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


def test_idle_cores_reads_this_machine():
    """On Linux (where /proc/stat is) a look at this machine gives a count, never None."""
    idle = threads.idle_cores(0.05)
    if not Path("/proc/stat").exists():
        assert idle is None
        return
    assert idle is not None and 0 <= idle <= (threads.os.cpu_count() or 1) + 1e-6


def test_idle_cores_from_two_readings_and_the_choice_they_make(monkeypatch):
    """Between two readings (busy, total jiffies, of all cores together) of a 4-core machine
    100 of 400 jiffies were busy: a quarter of 4 cores, so 3 idle; the default then takes 3
    threads of 4 usable cores, 2 of 2. With 300 of 400 busy: 1 idle core, 1 thread."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)

    def readings(*pairs):
        it = iter(pairs)
        monkeypatch.setattr(threads, "_busy_jiffies", lambda: next(it))

    readings((5_000, 20_000), (5_100, 20_400))
    assert threads.idle_cores(0) == pytest.approx(3.0)
    for usable, chosen in ((4, 3), (2, 2)):
        monkeypatch.setattr(threads, "usable_cores", lambda usable=usable: usable)
        readings((5_000, 20_000), (5_100, 20_400))
        assert threads.default_threads() == chosen
    readings((5_000, 20_000), (5_300, 20_400))
    assert threads.idle_cores(0) == pytest.approx(1.0)
    readings((5_000, 20_000), (5_300, 20_400))
    assert threads.default_threads() == 1
    # all 4 cores busy: still one thread
    readings((5_000, 20_000), (5_400, 20_400))
    assert threads.idle_cores(0) == pytest.approx(0.0)
    readings((5_000, 20_000), (5_400, 20_400))
    assert threads.default_threads() == 1
    # no time passed between the readings, or no second reading: nothing to tell
    readings((5_000, 20_000), (5_000, 20_000))
    assert threads.idle_cores(0) is None
    readings((5_000, 20_000), None)
    assert threads.idle_cores(0) is None


def test_busy_jiffies_reads_the_first_line_of_proc_stat(monkeypatch):
    """/proc/stat's first line sums every core: user nice system idle iowait irq softirq steal
    guest guest_nice (proc(5)). Idle time is idle + iowait; guest time is already counted in
    user (and guest_nice in nice), so it is not busy time twice."""
    stat = "cpu  100 20 30 400 50 6 7 8 9 10\ncpu0 50 10 15 200 25 3 3 4 4 5\n"
    monkeypatch.setattr(threads, "open", lambda *a, **k: io.StringIO(stat), raising=False)
    busy = 100 + 20 + 30 + 6 + 7 + 8  # user nice system irq softirq steal
    assert threads._busy_jiffies() == (busy, busy + 400 + 50)
    monkeypatch.setattr(threads, "open", lambda *a, **k: io.StringIO("cpu  x y\n"), raising=False)
    assert threads._busy_jiffies() is None


@pytest.mark.parametrize("bad", ["0", "-1", "x", "100000"])
def test_bad_thread_counts_exit_2(capsys, bad):
    try:
        code = main(["latency", "mobilenet-v1", "--threads", bad])
    except SystemExit as e:  # argparse refuses what is no integer
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and len(err.strip().splitlines()) == 1


def test_threads_option_sets_torchs_threads(capsys):
    before = torch.get_num_threads()
    n = 2 if before == 1 else 1  # a count the option must change (the suite's workers run at 1)
    try:
        assert main(["latency", "mobilenet-v1", "--threads", str(n), "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["threads"] == n
        assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
