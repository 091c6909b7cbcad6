"""Scaling out: Ray Tune on a real local cluster, NNI, concurrent workers, PostgreSQL storage.

Every backend must write the same run folder as the Optuna engine; `--trials` is the run's total.
"""

import csv
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ctrl_c_default, run_here

# Every test that starts Ray, or checks that none runs, lives in this file: pytest-xdist runs a
# file's tests one after another (setup.cfg: --dist loadfile), so they never run beside each other.

RUN_FILES = {
    "trials.csv",
    "pareto.csv",
    "pareto.json",
    "pareto.png",
    "pareto.html",
    "config.json",
    "specs",
}


def search_cmd(files, run, *extra, budget="200M", trials=3, space="narrow.yaml"):
    """The search command line; by default on the space at width 0.25 alone, where every
    candidate is within budget: the test about over-budget candidates asks for ``space.yaml``."""
    return [
        sys.executable,
        "-m",
        "condconv_nas",
        "search",
        "--budget",
        budget,
        "--space",
        str(files / space),
        "--trainer",
        str(files / "tiny.yaml"),
        "--results",
        str(files / "results"),
        "--run",
        run,
        "--trials",
        str(trials),
        "--quiet",
        "--format",
        "json",
        *extra,
    ]


def rows_of(run_dir: Path):
    return list(csv.DictReader((run_dir / "trials.csv").open()))


def check_run_folder(run_dir: Path, total: int):
    """The run folder every backend writes: all files, exactly `total` trials, a front with
    specs."""
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}, sorted(
        p.name for p in run_dir.iterdir()
    )
    rows = rows_of(run_dir)
    assert len(rows) == total and len({r["trial"] for r in rows}) == total
    front = json.loads((run_dir / "pareto.json").read_text())
    assert front, rows
    for r in front:
        assert (run_dir / "specs" / f"{r['trial']}.json").is_file()
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- Ray


def test_banded_asha_compares_trials_only_within_their_madd_band():
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from condconv_nas.nas.ray_asha import BandedASHA, band_of

    assert [band_of(m, 100) for m in (0, 24, 25, 74, 99, 100, 101)] == [0, 0, 1, 2, 3, 3, 4]

    def trials():
        return [
            SimpleNamespace(trial_id=i, config={"madds": m, "values": None})
            for i, m in (("big", 90), ("big2", 95), ("cheap", 10))
        ]

    def decisions(scheduler):
        ts = trials()
        for t in ts:
            scheduler.on_trial_add(None, t)
        return [
            scheduler.on_trial_result(None, t, {"epoch": 1, "top1": a})
            for t, a in zip(ts, (0.9, 0.8, 0.2), strict=False)
        ]

    plain = AsyncHyperBandScheduler(
        time_attr="epoch", metric="top1", mode="max", max_t=2, grace_period=1, reduction_factor=2
    )
    # Plain ASHA stops the cheap candidate for being less accurate than costlier ones ...
    assert decisions(plain) == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.STOP]
    # ... banded ASHA compares it only with candidates of similar MADDs (none here), so it goes on.
    assert decisions(BandedASHA(budget=100, max_t=2)) == [
        TrialScheduler.CONTINUE,
        TrialScheduler.STOP,
        TrialScheduler.CONTINUE,
    ]
    # Trials trained by Ray Train workers are told to stop, and Tune lets them end by themselves.
    told = []
    stops = SimpleNamespace(add=SimpleNamespace(remote=told.append))
    assert decisions(BandedASHA(budget=100, max_t=2, stops=stops)) == [TrialScheduler.CONTINUE] * 3
    assert told == ["big2"]


def search_task(files, space: str, **options):
    """A SearchTask on ``files``' ``space`` and tiny recipe, scored on the digits (``options``:
    the budgets), for tests that drive Ray's searcher without starting Ray."""
    from condconv_nas.data import parse_source
    from condconv_nas.nas.space import load_space
    from condconv_nas.nas.task import SearchTask
    from condconv_nas.training.recipe import load_recipe

    return SearchTask(
        space=load_space(str(files / space)),
        recipe=load_recipe(str(files / "tiny.yaml")),
        data=parse_source("digits"),
        **options,
    )


@pytest.mark.slow
def test_a_trial_ray_stops_early_is_recorded_counted_and_reported(files):
    import optuna

    from condconv_nas.nas.ledger import Callbacks, Ledger
    from condconv_nas.nas.progress import trial_line
    from condconv_nas.nas.ray_engine import StudySearch
    from condconv_nas.nas.study import DIRECTIONS, Study

    task = search_task(files, "space.yaml", budget=10**10)
    study = optuna.create_study(study_name="s", directions=list(DIRECTIONS))
    reported, epochs = [], []
    callbacks = Callbacks(
        on_trial=reported.append, on_epoch=lambda *progress: epochs.append(progress)
    )
    ledger = Ledger(Study(study), task, 3, callbacks)
    search = StudySearch(ledger)
    a, b = search.suggest("a"), search.suggest("b")
    assert a["values"] is None and a["madds"] == study.trials[0].user_attrs["madds"]
    search.on_trial_result("b", {"top1": 0.3, "epoch": 1, "final": False, "madds": b["madds"]})
    assert epochs == [(1, 1, task.recipe.epochs * task.recipe.repeats)]  # trial 1, epoch 1
    search.on_trial_complete(
        "a", {"top1": 0.25, "epoch": 1, "final": False, "madds": a["madds"], "workers": 2}
    )  # ASHA stop, after an epoch on two processes
    search.on_trial_complete(
        "b", {"top1": 0.5, "top5": 0.9, "epoch": 2, "final": True, "madds": b["madds"]}
    )
    first, second = study.trials
    assert first.state.name == "PRUNED" and first.user_attrs["stopped_early"]
    assert first.user_attrs["workers"] == 2  # what it trained on, kept though it stopped
    assert second.state.name == "COMPLETE" and second.values == [0.5, float(b["madds"])]
    assert ledger.finished() == 2  # a stopped trial counts toward --trials
    rows = [r.row() for r in ledger.records()]
    assert [(r["state"], r["top1"]) for r in rows] == [("PRUNED", None), ("COMPLETE", 0.5)]
    assert "STOPPED" in trial_line(reported[0]) and "after epoch 1" in trial_line(reported[0])
    assert "COMPLETE" in trial_line(reported[1])


@pytest.fixture
def ray_head():
    """A real one-node Ray cluster in its own processes, on this machine, with token
    authentication."""
    temp = tempfile.mkdtemp(
        prefix="ray", dir="/tmp"
    )  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    start = subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        import psutil  # a Ray dependency

        ours = [
            p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])
        ]
        ours += [
            c for p in ours for c in p.children(recursive=True) if c not in ours
        ]  # ray:: workers too
        for p in ours:
            p.terminate()
        _, alive = psutil.wait_procs(ours, timeout=5)
        for p in alive:
            p.kill()
        # and whatever of this cluster outlived its parents: Ray tests run one at a time
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def finish(proc: subprocess.Popen, timeout: float, *, read: bool = True):
    """``proc.communicate()``, or ``proc.wait()`` where another thread reads its output; past
    ``timeout`` the search and every process it started (a local Ray's) are killed first, so
    that one hung run fails alone, not every Ray test after it."""
    import psutil  # a Ray dependency

    from condconv_nas.nas.ray_engine import _end

    try:
        return proc.communicate(timeout=timeout) if read else proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = psutil.Process(proc.pid)
        _end([tree, *tree.children(recursive=True)], seconds=0)
        proc.wait()
        pytest.fail(f"the search did not end in {timeout} s")


def no_ray_left(seconds: float = 30) -> bool:
    """Whether no Ray process is left on this machine, waiting up to ``seconds`` for the last
    one's processes to exit (a driver's ray.shutdown returns before they do)."""
    deadline = time.time() + seconds
    while ray_processes():
        if time.time() > deadline:
            return False
        time.sleep(1)
    return True


def ray_processes():
    import psutil  # a Ray dependency

    # a worker names itself ray::... only once started; before that it is Ray's own script
    names = ("raylet", "gcs_server", "ray::", f"{os.sep}ray{os.sep}")
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(n in " ".join(p.info["cmdline"] or []) for n in names)
    ]


def test_what_a_local_ray_leaves_running_after_shutdown_is_killed():
    import psutil

    from condconv_nas.nas.ray_engine import _end

    # a process that ignores SIGTERM, as a worker busy importing would outlive its raylet
    stray = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
        ]
    )
    t0 = time.time()
    _end([psutil.Process(stray.pid)], seconds=1)
    assert stray.wait(timeout=10) == -signal.SIGKILL and time.time() - t0 < 10


@pytest.mark.slow
def test_a_worker_placement_group_ray_train_left_is_freed_and_freeing_twice_is_harmless():
    import psutil
    import ray
    from ray.util.placement_group import placement_group

    from condconv_nas.nas.ray_engine import _end
    from condconv_nas.nas.ray_train import free_group

    assert no_ray_left(), "a Ray is already running on this machine"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        group = placement_group([{"CPU": 1}] * 2)  # as Train places a trial's two workers
        ray.get(group.ready(), timeout=60)
        assert ray.available_resources().get("CPU", 0) == 0
        free_group(group)
        deadline = time.time() + 30
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2  # the next trial's workers fit
        free_group(group)  # Train removed it itself: nothing to do
        free_group(None)  # no worker ever started
    finally:
        ours = psutil.Process().children(recursive=True)
        ray.shutdown()
        _end(ours)
    assert no_ray_left()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "nni"])
def test_interrupted_run_leaves_nothing_running_and_resumes_to_the_exact_total(files, backend):
    assert no_ray_left(), "a Ray is already running on this machine"
    cmd = search_cmd(files, "rayint", "--backend", backend, trials=3)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default
    )
    deadline, lines = time.time() + 300, []
    while time.time() < deadline:  # the first finished trial, then Ctrl-C
        lines.append(proc.stderr.readline())
        if lines[-1].startswith("trial "):
            break
    proc.send_signal(signal.SIGINT)
    err = finish(proc, 300)[1]
    assert proc.returncode == 130, "".join(lines) + err[-2000:]
    assert no_ray_left()  # the local Ray the run started is gone (NNI starts no process)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    check_run_folder(files / "results" / "rayint", 3)
    assert no_ray_left()


@pytest.mark.slow
def test_a_real_cluster_trains_each_trial_on_two_workers_and_one_killed_fails_only_its_trial(
    files, ray_head
):
    """Ray Tune on a real one-node cluster (``--address``, token authentication), each trial a
    two-process Ray Train training; one training worker is killed mid-trial: that trial fails,
    the other trains on its two workers, and the search still reaches its total. (That a local
    Ray the search starts itself is gone after it: the interrupted-run test.)"""
    import psutil  # a Ray dependency

    address, env = ray_head
    # Killed once the trial's progress says its first epoch is done, of six: mid-training on any
    # machine, fast or starved (Ray's workers run niced, behind other tests' training).
    tiny = files / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("epochs: 3", "epochs: 6"))
    extra = ["--backend", "ray", "--address", address, "--workers-per-trial", "2"]
    cmd = search_cmd(files, "kill", *extra, trials=2)
    cmd.remove("--quiet")  # the progress bar, on stderr, says each trial's epoch
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()

    def read() -> None:
        for chunk in iter(proc.stderr.read1, b""):
            err.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    killed, deadline = None, time.time() + 600
    while killed is None and time.time() < deadline and proc.poll() is None:
        workers = [p for p in ray_processes() if "RayTrainWorker" in " ".join(p.cmdline())]
        if len(workers) == 2 and re.search(rb"trial \d+: epoch [1-4]/6", err):
            killed = workers[0]
            killed.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    finish(proc, 600, read=False)
    reader.join()
    out, err = proc.stdout.read().decode(), err.decode()
    assert killed is not None and proc.returncode == 0, err[-3000:]
    run = files / "results" / "kill"
    assert RUN_FILES - {"specs"} <= {p.name for p in run.iterdir()}  # specs/: the front's
    rows = rows_of(run)
    assert len(rows) == 2 and len({r["trial"] for r in rows}) == 2  # the total, none twice
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert failed["state"] == "FAIL", rows
    # the other trial trained, or ASHA stopped it against the killed trial's first epoch: on
    # two workers either way
    (other,) = [r for r in rows if r is not failed]
    assert (other["state"], other["status"]) in {
        ("COMPLETE", "trained"),
        ("COMPLETE", "untrained"),
        ("PRUNED", "stopped_early"),
    }, rows
    assert other["workers"] == "2", rows
    front = [p["trial"] for p in json.loads(out)]  # stdout: the front as JSON, nothing of Ray's
    assert front == ([int(other["trial"])] if other["status"] == "trained" else []), rows
    assert all((run / "specs" / f"{t}.json").is_file() for t in front)
    config = json.loads((run / "config.json").read_text())
    assert config["backend"] == "ray" and config["storage"].startswith("sqlite:///")
    assert not psutil.pid_exists(killed.pid)
    # The driver left nothing behind: no Ray experiment folder.
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "condconv-nas-ray-*"))


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--workers-per-trial", "0"], "not a positive integer"),
        (["--workers-per-trial", "two"], "not a positive integer"),
        (["--workers-per-trial", "2"], "needs --backend ray"),
        (["--backend", "ray", "--cpus-per-worker", "2"], "needs --workers-per-trial"),
        (["--backend", "ray", "--workers-per-trial", "2", "--cpus-per-trial", "2"], "per-worker"),
        (["--backend", "ray", "--workers-per-trial", "2", "--gpus-per-worker", "1"], "0 GPU"),
        (["--backend", "ray", "--workers-per-trial", "CORES"], "CPU"),
        # 3 workers of half a CPU fit; the tiny recipe's batch of 32 does not split in 3
        (["--backend", "ray", "--workers-per-trial", "3", "--cpus-per-worker", "0.5"], "evenly"),
    ],
)
def test_workers_per_trial_refused_with_one_line_before_anything_is_written(files, extra, says):
    cores = str((os.cpu_count() or 1) + 1)  # one worker more than a local Ray has CPUs
    extra = [cores if e == "CORES" else e for e in extra]
    res = run_here(*search_cmd(files, "w", *extra)[3:])  # in this process: no Ray may start
    assert res.returncode == 2 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2
    assert not (files / "results").exists()
    assert no_ray_left()  # refused before a local Ray was started


def test_address_needs_the_ray_backend(files):
    res = run_here(*search_cmd(files, "x", "--address", "127.0.0.1:1")[3:])
    assert res.returncode == 2 and "--backend ray" in res.stderr and "Traceback" not in res.stderr
    assert not (files / "results").exists()


# ---------------------------------------------------------------- NNI


@pytest.mark.slow
def test_nni_backend_end_to_end_and_over_budget_never_trained(files):
    # 60M leaves only the narrowest candidates in budget: NNI's evolution proposes over-budget ones.
    t0 = time.time()
    extra = ["--backend", "nni", "--seed", "3"]
    res = subprocess.run(
        search_cmd(files, "nni", *extra, budget="60M", trials=3, space="space.yaml"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"nni backend, 3 trials: {time.time() - t0:.1f} s")
    run_dir = files / "results" / "nni"
    rows = rows_of(run_dir)
    assert len(rows) == 3 and {p.name for p in run_dir.iterdir()} >= RUN_FILES - {"specs"}
    over = [r for r in rows if int(r["madds"]) > 60_000_000]
    assert over, rows
    assert all(r["feasible"] == "False" and r["top1"] == "" for r in over)
    assert res.stderr.count("not trained") == len(over)
    assert all(float(r["seconds"]) < 10 for r in over)
    assert json.loads((run_dir / "config.json").read_text())["backend"] == "nni"
    # NNI ran in this process: no NNI manager or web portal was left behind.
    assert not subprocess.run(
        ["pgrep", "-f", "nni_manager|nni/main.js"], capture_output=True
    ).stdout


# ------------------------------------ PostgreSQL (two workers on one SQLite run: test_search.py)


def _postgres_bin():
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture
def postgres():
    """A real PostgreSQL server in a temporary cluster, on loopback, stopped afterwards."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binary (initdb) on this machine: install Debian's postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="pg"))
    data, port = root / "data", free_port()
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "nas", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        as_user
        + [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nas", "studies"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://nas@127.0.0.1:{port}/studies"
    finally:
        subprocess.run(
            as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_storage_with_two_workers(files, postgres):
    cmd = search_cmd(files, "pg", "--storage", postgres, trials=4)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    check_run_folder(files / "results" / "pg", 4)
    assert json.loads((files / "results" / "pg" / "config.json").read_text())["storage"] == postgres
    assert not (files / "results" / "pg" / "study.db").exists()
    import optuna  # the study really lives in PostgreSQL

    study = optuna.load_study(study_name="pg", storage=postgres)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4


def test_the_ray_searcher_judges_the_latency_budget_in_the_driver(files, monkeypatch):
    """Ray's searcher judges each point where it asks for it, in the driver, through the ledger
    the Optuna engine uses (tested end to end in test_latency.py): a point over the latency
    budget comes back with its values, and its Ray trial reports them without training, so it is
    recorded over budget with no top-1; one within it comes back to be trained. Both keep their
    predicted latency. No Ray is started."""
    import optuna
    import test_latency
    import torch

    from condconv_nas.nas import ray_engine
    from condconv_nas.nas.ledger import Callbacks, Ledger
    from condconv_nas.nas.study import DIRECTIONS, Study

    _, limit = test_latency._split_budget(files, monkeypatch)
    task = search_task(files, "split.yaml", budget=2 * 10**9, latency_budget=limit)
    study = Study(optuna.create_study(directions=list(DIRECTIONS)))
    for width in (1.0, 0.25):
        study.enqueue({"width_multiplier": width, "begin_stage": "none"}, {})
    search = ray_engine.StudySearch(Ledger(study, task, 2, Callbacks()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count the budget was predicted at (tables are by it)
    try:
        wide, narrow = search.suggest("wide"), search.suggest("narrow")
    finally:
        torch.set_num_threads(threads)
    assert wide["values"] == (0.0, float(wide["madds"])) and narrow["values"] is None
    # the wide point's Ray trial reports the judged values; training it would fail the test
    reports = []
    monkeypatch.setattr(ray_engine, "tune", SimpleNamespace(report=reports.append))
    monkeypatch.setattr(task, "evaluate", None)
    ray_engine.ray_trial(wide, task, threads=1, workers=None)
    search.on_trial_complete("wide", reports[-1])
    over, under = study.trials()
    assert over.state.name == "COMPLETE" and "top1" not in over.attrs
    assert over.attrs["latency_ms"] > limit >= under.attrs["latency_ms"] > 0
    assert (over.attrs["feasible"], over.attrs["over"], under.attrs["feasible"]) == (
        False,
        ["latency"],
        True,
    )
