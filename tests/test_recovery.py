"""A search killed mid-trial: the next run reclaims the killed trial at once when its process was of
this host (gone, a zombie, or its pid taken by another process), after the heartbeat's grace period
when it was another host's; a process that lives keeps its trial."""

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from test_scale import postgres  # noqa: F401  (the fixture: a real PostgreSQL server)

from condconv_nas.nas.ledger import Ledger
from condconv_nas.nas.owner import Owner
from condconv_nas.nas.study import State, Study


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def storage(request):
    """Where the run's study lives: its own SQLite file (None), or a PostgreSQL server."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres")


def test_sigkill_mid_training_then_immediate_rerun_reaches_exactly_the_total(files, storage):
    """SIGKILL a search while a trial trains (an epoch of it reported on stderr), and rerun the
    same command at once, before the killed process is even reaped (a zombie until its parent
    waits for it): the rerun takes the killed trial back instead of waiting for it, and the run
    ends with exactly --trials trials done, none RUNNING."""
    run = files / "results" / "killed"
    cmd = [sys.executable, "-m", "condconv_nas", "search", "--budget", "2G", "--trials", "3"]
    cmd += ["--space", str(files / "narrow.yaml"), "--trainer", str(files / "tiny.yaml")]
    cmd += ["--results", str(files / "results"), "--run", "killed"]
    cmd += ["--storage", storage] if storage else []
    url = storage or f"sqlite:///{run / 'study.db'}"
    # without --quiet: the progress bar says each epoch of the trial in training (tiny: 3 epochs)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    for chunk in iter(proc.stderr.read1, b""):
        err += chunk
        if re.search(rb"trial \d+: epoch [12]/3", err):
            proc.kill()  # mid-training; not waited for (that would reap it) before the rerun
            break
    try:
        assert re.search(rb"trial \d+: epoch [12]/3", err), err.decode()[-2000:]
        study = optuna.load_study(study_name="killed", storage=url)
        assert [t.state for t in study.trials].count(TrialState.RUNNING) == 1
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        proc.wait(timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "still training in other workers" not in res.stderr, res.stderr[-3000:]
    assert "3/3 trials" in res.stderr, res.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=url)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states, states
    ledger = ledger_of(Study(study))
    assert ledger.finished() == ledger.counted() == 3, states
    rows = (run / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(",COMPLETE," in r for r in rows), rows


# --------------------------------------------- a trial's owner, judged without a search


@pytest.fixture
def study(tmp_path):
    return Study.open(f"sqlite:///{tmp_path / 'study.db'}", "s", 0, heartbeat=False)


def ledger_of(study, total=3) -> Ledger:
    space = SimpleNamespace(searched={}, sample=lambda suggest: {})
    return Ledger(study, SimpleNamespace(space=space), total=total)


def running_trial(study, owner):
    """A trial in training, as ``owner`` records it."""
    trial = study.ask()
    for key, value in owner.attrs().items():
        trial.set(key, value)
    return trial


def state_of(study, trial) -> State:
    return study.trials()[trial.number].state


def test_a_killed_process_of_this_host_gives_its_trial_back_at_once_reaped_or_not(study):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ledger = ledger_of(study)
    try:
        trial = running_trial(study, Owner.process(child.pid))
        assert ledger.recover() == 0  # it lives: the trial stays its own
        child.kill()
        deadline = time.time() + 60  # dead, and not reaped: a zombie, its pid still answers
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        assert ledger.recover() == 1
    finally:
        child.kill()
        child.wait(timeout=60)
    assert state_of(study, trial) == State.FAIL
    retry = study.trials(State.WAITING)
    assert [t.attrs["retry_of"] for t in retry] == [trial.number]
    assert ledger.counted() == 0  # the killed trial is not one of the run's: its retry will be
    again = ledger.ask()  # its point, claimed by this process as it is taken from the queue
    assert again.attrs["retry_of"] == trial.number
    assert again.attrs["worker"] == Owner.me().worker


def test_a_pid_that_another_process_took_since_does_not_keep_the_trial(study):
    me = Owner.process(os.getpid())
    mine = running_trial(study, me)
    before = running_trial(study, dataclasses.replace(me, started="0"))  # same pid, not us
    assert ledger_of(study).recover() == 1
    assert state_of(study, mine) == State.RUNNING
    assert state_of(study, before) == State.FAIL


def test_another_host_s_trial_is_taken_back_only_after_its_heartbeat_s_grace(tmp_path):
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'study.db'}",
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1
        ),
    )
    # the study beats once as the trial is asked, then not again for 30 s: a silent worker
    study = Study(optuna.create_study(storage=storage, directions=["maximize", "minimize"]),
                  heartbeat=storage)  # fmt: skip
    trial = running_trial(study, Owner("elsewhere", os.getpid(), "0"))
    ledger = ledger_of(study)
    assert ledger.recover() == 0 and state_of(study, trial) == State.RUNNING
    time.sleep(3)  # past its grace
    ledger.recover()
    assert state_of(study, trial) == State.FAIL
    assert len(study.trials(State.WAITING)) == 1  # its retry
    assert ledger.counted() == 0


def test_a_trial_is_its_process_s_from_the_moment_it_is_asked_for(study):
    """Every searcher asks the ledger, which records the owner before anything is sampled,
    measured or trained; a point that names its decisions (NNI's) too."""
    me = Owner.process(os.getpid()).attrs()
    ledger = ledger_of(study)
    ledger.ask()
    ledger.ask(fixed={"x": 1})
    trials = study.trials()
    assert len(trials) == 2 and all(t.attrs.items() >= me.items() for t in trials), trials


def waiting(ledger, spec_id, trial, ended):
    """A thread running ``ledger.wait_for_twin`` for ``trial``, appending when it ended."""
    import threading

    def wait():
        ledger.wait_for_twin(spec_id, trial.number, trial.started, poll=0.05)
        ended.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def judged(trial, spec_id):
    for key, value in (("spec_id", spec_id), ("feasible", True)):  # as `judge` writes them
        trial.set(key, value)


def test_a_later_trial_waits_for_an_earlier_worker_that_has_not_judged_its_point_yet(tmp_path):
    """Two workers ask trials 0 and 1 of one architecture; worker 0 is slower to record its spec.
    Trial 1 must not start training until trial 0 has recorded it, then must wait for trial 0's
    result (the race that trained one architecture twice on CI)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    other = Study.open(url, "s", 0, heartbeat=False)  # another worker's view of the run
    earlier = running_trial(other, Owner("elsewhere", os.getpid(), "0"))
    mine = Study.open(url, "s", 0, heartbeat=False)
    later, ended = mine.ask(), []
    waiter = waiting(ledger_of(mine), "abc", later, ended)
    time.sleep(0.5)
    assert not ended  # the earlier trial has no spec yet: it may be the same architecture
    judged(earlier, "abc")
    time.sleep(0.5)
    assert not ended  # a twin, in training
    done = time.monotonic()
    other.tell(earlier, [0.5, 1.0], State.COMPLETE)
    waiter.join(timeout=30)
    assert ended and ended[0] >= done


def test_an_earlier_trial_of_another_architecture_or_never_judged_does_not_hold_a_later_one(
    tmp_path, monkeypatch
):
    import condconv_nas.nas.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "JUDGE_S", 1.0)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    other = Study.open(url, "s", 0, heartbeat=False)
    elsewhere = Owner("elsewhere", os.getpid(), "0")
    judged(running_trial(other, elsewhere), "xyz")  # judged: another architecture
    stuck = running_trial(other, elsewhere)  # its worker died before judging: never judged
    mine = Study.open(url, "s", 0, heartbeat=False)
    later, ended = mine.ask(), []
    t0 = time.monotonic()
    waiting(ledger_of(mine), "abc", later, ended).join(timeout=30)
    assert ended and 1.0 <= ended[0] - t0 < 10  # held by the unjudged one for JUDGE_S only
    assert state_of(mine, stuck) == State.RUNNING


def test_a_queued_trial_taken_after_a_fresh_one_began_waits_for_it_despite_its_lower_number(
    tmp_path,
):
    """A queued trial's number dates from its queueing, not from when it began: trial 0, queued,
    taken after another worker's fresh trial 1 began training the same architecture, waits."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    other = Study.open(url, "s", 0, heartbeat=False)
    other.enqueue({}, {})  # trial 0, waiting
    storage = optuna.storages.RDBStorage(url)  # another worker creates a fresh trial 1
    fresh = storage.create_new_trial(storage.get_study_id_from_name("s"))
    for key, value in {**Owner("elsewhere", os.getpid(), "0").attrs(), "spec_id": "abc",
                       "feasible": True}.items():  # fmt: skip
        storage.set_trial_user_attr(fresh, key, value)
    time.sleep(0.05)
    mine = Study.open(url, "s", 0, heartbeat=False)
    queued, ended = mine.ask(), []
    assert queued.number == 0 and queued.started > storage.get_trial(fresh).datetime_start
    waiter = waiting(ledger_of(mine), "abc", queued, ended)
    time.sleep(0.5)
    assert not ended
    storage.set_trial_state_values(fresh, optuna.trial.TrialState.COMPLETE, [0.5, 1.0])
    waiter.join(timeout=30)
    assert ended
