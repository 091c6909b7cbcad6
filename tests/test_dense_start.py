"""The search's dense start: shown while it trains, resumed after a kill, trained once however
many workers join the run."""

import os
import subprocess
import sys
import threading
import time

from helpers import TINY_RECIPE

from condconv_nas.nas import warm_start


def test_a_killed_dense_start_resumes_from_its_last_epoch(files):
    (files / "dense.yaml").write_text(
        TINY_RECIPE.replace("train_subset: 0.5", "train_subset: 1.0") + "dense_epochs: 3\n"
    )
    cmd = [
        sys.executable, "-m", "condconv_nas", "search", "--budget", "2G", "--space",
        str(files / "narrow.yaml"), "--trainer", str(files / "dense.yaml"), "--results",
        str(files / "results"), "--run", "d", "--trials", "1", "--quiet", "--threads", "1",
    ]  # fmt: skip
    work = files / "results" / "d" / ".dense"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "metrics.json").is_file():
        time.sleep(0.2)
    proc.kill()
    _, err = proc.communicate(timeout=60)
    assert "epoch 1/3" in err and "left)" in err  # each epoch shown, with the time left
    assert "it/s" not in err  # --quiet: lines, no bar
    assert (work / "last.pt").is_file() and not (work.parent / "dense.pt").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the dense start" in rerun.stderr
    assert "epoch 1/3 " not in rerun.stderr and "epoch 3/3" in rerun.stderr
    assert (work.parent / "dense.pt").is_file() and not work.exists()


def test_a_second_worker_waits_for_the_first_workers_dense_start(tmp_path, monkeypatch):
    """The lock names a live process (this one): the caller waits for dense.pt and trains
    nothing; a lock of a dead process is taken over."""
    monkeypatch.setattr(warm_start, "POLL_SECONDS", 0.05)
    trained = []
    monkeypatch.setattr(warm_start, "_train", lambda *a, **k: trained.append(a))
    work = tmp_path / ".dense"
    work.mkdir()
    (work / "lock").write_text(f"{warm_start.socket.gethostname()} {os.getpid()}\n")

    def finish():
        time.sleep(0.3)
        (tmp_path / "dense.json").write_text('{"top1": 0.5}')
        (tmp_path / "dense.pt").write_bytes(b"x")

    threading.Thread(target=finish).start()
    notes = []
    got = warm_start.dense_start(
        tmp_path,
        spec={"base": "mobilenet_v1"},
        trainer="proxy",
        data="digits",
        epochs=1,
        note=notes.append,
    )
    assert (
        not trained
        and got["top1"] == 0.5
        and notes == ["waiting for another worker's dense start (trained once per run)"]
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "dense.pt").unlink()
    (work / "lock").write_text(f"{warm_start.socket.gethostname()} {dead.pid}\n")
    monkeypatch.setattr(
        warm_start, "_train", lambda work, final, *a, **k: (trained.append(1), final.touch())
    )
    warm_start.dense_start(
        tmp_path, spec={"base": "mobilenet_v1"}, trainer="proxy", data="digits", epochs=1
    )
    assert trained == [1]


def test_a_dense_start_begun_at_another_shape_resumes_at_that_shape(tmp_path, monkeypatch):
    """A run killed during an earlier version's dense start (1.0x, skip 0, where the search now
    picks skip 1) resumes what it began, and dense.json records what was trained."""
    from condconv_nas import load_spec
    from condconv_nas.training import checkpoint
    from condconv_nas.training import run as training

    began = load_spec({"base": "mobilenet_v1", "num_classes": 10})
    work = tmp_path / ".dense"
    work.mkdir()
    checkpoint.save({"spec": began.to_dict(), "model": {}}, work / "last.pt")
    asked = []

    def train(spec, *, out, resume, **_):
        asked.append((spec, resume))
        checkpoint.save({"spec": spec, "model": {}}, out / "model.pt")
        return {"top1": 0.5}

    monkeypatch.setattr(training, "train", train)
    now = began.replace(skip_downsample=1, resolution=32).to_dict()
    got = warm_start.dense_start(tmp_path, spec=now, trainer="proxy", data="digits", epochs=1)
    assert asked == [(began.to_dict(), True)]
    assert got["spec"] == began.to_dict() and (tmp_path / "dense.pt").is_file()
