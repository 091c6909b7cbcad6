"""Intra-op threads: chosen from the idle usable cores unless the user says, and bad counts
refused."""

import json

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
    idle = threads.idle_cores(0.05)
    assert idle is None or 0 <= idle <= (threads.os.cpu_count() or 1) + 1e-6


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
    try:
        assert main(["latency", "mobilenet-v1", "--threads", "1", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["threads"] == 1
    finally:
        torch.set_num_threads(before)
