"""End-to-end search through the CLI, on the embedded digits data with a tiny proxy recipe."""

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from helpers import NARROW_SPACE, ctrl_c_default, run_cli, run_here

import condconv_nas
from condconv_nas import count_madds, load_spec
from condconv_nas.errors import UsageError
from condconv_nas.nas.options import parse_budget
from condconv_nas.nas.space import load_space
from condconv_nas.results import pareto_front


def search(files, *extra, run="r", budget="200M", space="space.yaml", **kw):
    return run_cli(
        "search",
        "--budget",
        budget,
        "--space",
        files / space,
        "--trainer",
        files / "tiny.yaml",
        "--results",
        files / "results",
        "--run",
        run,
        "--quiet",
        *extra,
        **kw,
    )


def test_budget_parsing():
    assert parse_budget("400M") == 400_000_000
    assert parse_budget("0.4G") == 400_000_000
    assert parse_budget("413000000") == 413_000_000
    assert parse_budget("500k") == 500_000
    for bad in ("", "abc", "-5M", "0", "4T", "1e9"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)


def test_default_space_contains_the_paper_presets_exactly():
    space = load_space("efficientnet_b0")
    # the paper's decisions, written here: CondConv from stage 5 (layer 10 on), 8 experts, one
    # sigmoid router per block, a static classifier; the depth-scaled one at depth 1.1
    paper = {"width_multiplier": 1.0, "begin_stage": 5, "num_experts": 8, "classifier": False,
             "routing_share": "block", "routing_hidden": "none", "routing_activation": "sigmoid",
             "routing_hierarchical": False}  # fmt: skip
    for name, depth in (("condconv-efficientnet-b0", 1.0), ("condconv-efficientnet-b0-depth", 1.1)):
        params = space.params_for(load_spec(name))
        assert params == {**paper, "depth_multiplier": depth}, name
        assert space.to_spec(params) == load_spec(name)
    for name in ("mobilenet_v1", "mobilenet_v2", "mnasnet_a1", "resnet50"):
        s = load_space(name)
        presets = s.presets()
        assert f"condconv-{name.replace('_', '-')}" in presets, (name, presets)


def test_end_to_end_search_writes_every_file(files):
    res = search(files, "--trials", "4", "--seed", "1")
    assert res.returncode == 0, res.stderr
    run = files / "results" / "r"
    for name in (
        "trials.csv",
        "pareto.csv",
        "pareto.json",
        "pareto.png",
        "pareto.html",
        "config.json",
        "study.db",
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == 4
    assert {"trial", "state", "madds", "params", "top1", "width_multiplier", "begin_stage"} <= set(
        rows[0]
    )
    assert all(r["state"] in ("COMPLETE", "FAIL") for r in rows)
    # the preset that fits (mobilenet-v1, 569M) does not fit 200M: nothing is enqueued; all are
    # sampled
    front = json.loads((run / "pareto.json").read_text())
    assert front and all({"trial", "madds", "params", "top1", "spec"} <= set(p) for p in front)
    # non-dominated, and holds the most accurate feasible trial
    feas = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"] == "True"]
    assert max(float(r["top1"]) for r in feas) == max(p["top1"] for p in front)
    for p in front:
        assert not any(
            q["top1"] >= p["top1"] and q["madds"] <= p["madds"] and q != p for q in front
        )
        assert p["madds"] <= 200_000_000
        spec_file = run / "specs" / f"{p['trial']}.json"
        assert count_madds(load_spec(spec_file)) == p["madds"]  # reloads and recounts the same
    shown = subprocess.run(
        [sys.executable, "-m", "condconv_nas", "show", run, "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and json.loads(shown.stdout) == front
    # the best spec, named: a path that works from here, and the run folder itself as a spec
    best = max(front, key=lambda p: p["top1"])
    named = run_here("show", run, "--best")
    assert named.returncode == 0 and named.stdout.strip() == str(
        run / "specs" / f"{best['trial']}.json"
    )
    assert load_spec(named.stdout.strip()) == load_spec(run) == load_spec(best["spec"])
    table = run_here("show", run).stdout
    assert str(run / "specs" / f"{best['trial']}.json") in table


# Two static MobileNetV1 widths, far apart in MADDs: a budget between them splits the space.
TWO_WIDTHS = """
base: mobilenet_v1
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.25, 1.0]
"""


def test_over_budget_candidates_are_never_trained(files):
    """With a budget between the space's two points, the wide one is over it wherever it is
    proposed (8 seeded random trials: both points come up, as asserted): its rows say over budget
    and carry nothing a training leaves (top-1, top-5, the chance verdict, the processes it
    trained on), and no epoch of theirs was ever reported, while the narrow point's training
    shows all of those."""
    (files / "two.yaml").write_text(TWO_WIDTHS)
    space = load_space(files / "two.yaml")
    narrow, wide = (count_madds(space.to_spec({"width_multiplier": w})) for w in (0.25, 1.0))
    budget = (narrow + wide) // 2

    class Seen(condconv_nas.Reporter):
        def __init__(self):
            self.epochs, self.lines = [], {}

        def epoch(self, e):
            self.epochs.append(e.trial)

        def trial(self, line, best_top1):
            self.lines[int(line.split()[1])] = line

    seen = Seen()
    condconv_nas.search(
        budget=budget,
        space=str(files / "two.yaml"),
        trainer=str(files / "tiny.yaml"),
        results=files / "results",
        run="tight",
        trials=8,
        sampler="random",
        progress=seen,
    )
    rows = list(csv.DictReader((files / "results" / "tight" / "trials.csv").open()))
    assert len(rows) == 8
    over = [r for r in rows if int(r["madds"]) > budget]
    under = [r for r in rows if int(r["madds"]) <= budget]
    assert over and under, rows
    assert {int(r["madds"]) for r in over} == {wide}, over
    assert {int(r["madds"]) for r in under} == {narrow}, under
    # the narrow point trained once (its later trials reuse that result): what a training leaves
    (trained,) = [r for r in under if r["status"] in ("trained", "untrained")]
    assert trained["top1"] and trained["top5"] and trained["untrained"] and trained["workers"]
    assert seen.epochs.count(int(trained["trial"])) == 3  # tiny.yaml's epochs
    for r in over:
        assert r["status"] == "over_budget" and r["feasible"] == "False", r
        assert r["top1"] == r["top5"] == r["untrained"] == r["workers"] == "", r
        assert r["reused_from"] == "" and int(r["trial"]) not in seen.epochs, r
        assert "not trained" in seen.lines[int(r["trial"])]


def test_resume_after_interrupt_keeps_finished_trials_and_exact_total(files):
    cmd = [
        sys.executable,
        "-m",
        "condconv_nas",
        "search",
        "--budget",
        "200M",
        "--space",
        str(files / "narrow.yaml"),
        "--trainer",
        str(files / "tiny.yaml"),
        "--results",
        str(files / "results"),
        "--run",
        "res",
        "--trials",
        "3",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default
    )
    seen = 0
    deadline = time.time() + 300
    lines = []
    while time.time() < deadline:  # wait for a finished trial, then Ctrl-C
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("trial "):
            seen += 1
            if seen == 1:
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(lines) + err
    first = list(csv.DictReader((files / "results" / "res" / "trials.csv").open()))
    assert 1 <= len(first) < 3
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((files / "results" / "res" / "trials.csv").open()))
    assert len(rows) == 3
    before = {r["trial"]: r for r in first}
    for r in rows:  # finished trials are kept as they were, not redone
        if r["trial"] in before:
            assert (
                r["top1"] == before[r["trial"]]["top1"]
                and r["seconds"] == before[r["trial"]]["seconds"]
            )
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600
    )  # a finished run stays finished
    assert (
        res.returncode == 0
        and len(list(csv.DictReader((files / "results" / "res" / "trials.csv").open()))) == 3
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--budget", "lots"], "budget"),
        (["--budget", "-3M"], "budget"),
        (["--budget", "1M"], "impossible"),
        (["--budget", "400M", "--space", "no_such_space"], "no_such_space"),
        (["--budget", "400M", "--data", "imagefolder:/no/such/folder"], "/no/such/folder"),
        (["--budget", "400M", "--data", "cifar10:/tmp"], "cifar-10-batches-py"),
        (["--budget", "400M", "--trainer", "nope"], "nope"),
        (
            ["--budget", "400M", "--storage", "postgresql://nobody@127.0.0.1:1/studies"],
            "cannot open",
        ),
        (["--budget", "400M", "--backend", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--budget", "400M", "--strategy", "twoshot"], "--strategy: invalid choice: 'twoshot'"),
        (["--budget", "400M", "--strategy", "oneshot", "--init", "w.pt"], "--init and --strategy"),
        (
            ["--budget", "400M", "--strategy", "oneshot", "--backend", "ray"]
            + ["--workers-per-trial", "2"],
            "--workers-per-trial and --strategy",
        ),
    ],
)
def test_refused_cases_exit_2_and_write_nothing(tmp_path, args, message):
    res = run_here("search", *args, "--results", tmp_path / "results")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "results").exists()


def test_pareto_front_rule():
    rows = [
        dict(trial=i, state="COMPLETE", feasible=True, madds=m, top1=a)
        for i, (m, a) in enumerate(
            [(100, 0.5), (200, 0.4), (150, 0.7), (300, 0.9), (300, 0.8), (50, 0.1)]
        )
    ]
    rows.append(dict(trial=9, state="COMPLETE", feasible=False, madds=10, top1=0.99))
    assert [r["trial"] for r in pareto_front(rows)] == [5, 0, 2, 3]


def test_trial_count_rule():
    import optuna
    from optuna.trial import TrialState, create_trial

    from condconv_nas.nas.ledger import Ledger
    from condconv_nas.nas.study import Study

    study = optuna.create_study(directions=["maximize", "minimize"])
    fail = dict(state=TrialState.FAIL, params={}, distributions={})
    study.add_trial(create_trial(values=[0.5, 1.0], params={}, distributions={}))  # 0: counts
    study.add_trial(create_trial(**fail))  # 1: dead worker, retried by 2
    study.add_trial(
        create_trial(**fail, system_attrs={"failed_trial": 1})
    )  # 2: the retry failed: counts
    study.add_trial(
        create_trial(**fail, user_attrs={"interrupted": True})
    )  # 3: Ctrl-C: does not count
    study.add_trial(
        create_trial(state=TrialState.PRUNED, params={}, distributions={})
    )  # 4: surplus: does not count
    space = SimpleNamespace(searched={})
    ledger = Ledger(Study(study), SimpleNamespace(space=space), total=5)
    assert ledger.finished() == 2 and ledger.counted() == 2 and ledger.counted(before=2) == 1
    assert [r.trial for r in ledger.records()] == [0, 2]  # the retried and the uncounted hidden


def test_chance_level_trials_are_recorded_and_kept_off_the_front(files):
    """A recipe that cannot learn (lr 0: every logit stays 0) gives chance-level trials: recorded as
    untrained in trials.csv, never on the front, counted by the search's summary and by `show`."""
    (files / "frozen.yaml").write_text(
        (files / "tiny.yaml").read_text().replace("lr: 0.002", "lr: 0.0")
    )
    res = search(files, "--trials", "2", "--trainer", files / "frozen.yaml", budget="2G",
                 run="frozen", space="narrow.yaml")  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = files / "results" / "frozen"
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == 2
    assert all(r["untrained"] == "True" and float(r["top1"]) < 0.15 for r in rows), rows
    assert rows[0]["status"] == "untrained" and rows[1]["status"] in (
        "untrained",
        "reused",
    )  # the same point twice
    assert json.loads((run / "pareto.json").read_text()) == [] and not (run / "specs").exists()
    assert "2 untrained (not clearly above chance), kept off the front" in res.stderr
    shown = run_here("show", run)
    assert shown.returncode == 0 and "2 trial(s) trained to no better than chance" in shown.stderr


def test_sigkill_while_writing_the_run_folder_then_rerun_loses_nothing(files):
    """SIGKILL the moment the first trial's results start to land (trials.csv written, the front
    and the plots still being written), rerun at once: every file of the run folder is whole,
    and the run ends with exactly --trials trials, none RUNNING."""
    import optuna

    cmd = [sys.executable, "-m", "condconv_nas", "search", "--budget", "2G"]
    cmd += ["--space", str(files / "narrow.yaml"), "--trainer", str(files / "tiny.yaml")]
    cmd += ["--results", str(files / "results"), "--run", "cut", "--trials", "3", "--quiet"]
    run = files / "results" / "cut"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "trials.csv").exists():
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=60)
    assert (run / "trials.csv").exists(), "no trial finished in 300 s"
    for name in ("trials.csv", "pareto.csv", "pareto.json", "config.json"):
        if (run / name).exists():  # whatever was written is whole
            text = (run / name).read_text()
            if name.endswith(".json"):
                json.loads(text)
                continue
            # csv reads a row cut short without complaint, its missing fields as None
            assert text.endswith("\n"), f"{name} ends mid-line"
            assert all(None not in r.values() for r in csv.DictReader(text.splitlines())), name
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows), rows
    front = json.loads((run / "pareto.json").read_text())
    # a kill inside write_atomic can leave its hidden temporary file (".0.json.*.tmp"), never a
    # visible half-written one; it is swept by no one, as another worker may be writing it
    specs = [p.name for p in (run / "specs").iterdir() if not p.name.endswith(".tmp")]
    assert sorted(specs) == sorted(f"{p['trial']}.json" for p in front)
    for p in front:
        assert json.loads((run / "specs" / f"{p['trial']}.json").read_text())["base"]
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{run / 'study.db'}")
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]


def test_plot_data_tells_the_truth():
    """Presets sit at their own trial's top-1 (or are marked not evaluated), untrained and
    over-budget trials are kept off the accuracy axis, and every point carries a rounded hover."""
    from condconv_nas.plots import front_plot_info

    rows = [
        dict(
            trial=0,
            state="COMPLETE",
            feasible=True,
            madds=385_800_000,
            top1=0.9532,
            preset="efficientnet-b0",
        ),
        dict(trial=1, state="COMPLETE", feasible=True, madds=200_000_000, top1=0.9123456),
        dict(
            trial=2, state="COMPLETE", feasible=True, madds=150_000_000, top1=0.11, untrained=True
        ),
        dict(trial=3, state="COMPLETE", feasible=False, madds=500_000_000, top1=None),
    ]
    front = pareto_front(rows)
    info = front_plot_info(
        rows,
        front,
        budget=400_000_000,
        title="r: budget 400M",
        presets={"efficientnet-b0": 385_800_000, "condconv-efficientnet-b0": 407_213_024},
    )
    evaluated, missing = info.presets
    assert (evaluated.madds_m, evaluated.top1) == (385.8, 0.9532) and "trial 0" in evaluated.label
    assert missing.top1 is None and "not evaluated" in missing.label
    assert [p.top1 for p in info.front] == [0.9123456, 0.9532] and not info.trials
    assert [p.top1 for p in info.untrained] == [0.11] and [p.top1 for p in info.over_budget] == [
        None
    ]
    assert (
        "top-1 0.9123," in info.front[0].label + "," and "not trained" in info.over_budget[0].label
    )
    assert info.title == "r: budget 400M\n(2 trained, 1 at chance level, 1 over budget)"


def test_pictures_draw_the_front_over_the_presets_and_list_only_what_they_draw():
    """A preset on the front (the usual case: EfficientNet-B0 is the best) shows the front's dot
    inside its star in both pictures, and no legend names a kind of point that is not drawn."""
    from condconv_nas.plots import front_figure, front_html_figure, front_plot_info

    rows = [
        dict(trial=0, state="COMPLETE", feasible=True, madds=385_800_000, top1=0.95,
             preset="efficientnet-b0"),
        dict(trial=1, state="COMPLETE", feasible=True, madds=200_000_000, top1=0.91),
    ]  # fmt: skip
    info = front_plot_info(
        rows, pareto_front(rows), budget=400_000_000, presets={"efficientnet-b0": 385_800_000}
    )
    assert not info.trials and len(info.front) == 2
    fig = front_figure(info)
    ax = fig.axes[0]
    drawn = {c.get_label(): c for c in ax.collections}
    front, star = drawn["Pareto front"], drawn["paper preset (evaluated)"]
    assert (385.8, 0.95) in [tuple(o) for o in front.get_offsets().tolist()]
    assert front.get_zorder() > star.get_zorder()
    assert star.get_sizes()[0] > front.get_sizes()[0]  # the star rims the dot
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "trials" not in legend and "Pareto front" in legend
    traces = {t.name: t for t in front_html_figure(info).data}  # in drawing order
    names = list(traces)
    assert "trials" not in names
    assert names.index("Pareto front") > names.index("paper preset (evaluated)")
    assert traces["paper preset (evaluated)"].marker.size > (
        traces["Pareto front"].marker.size or 6
    )


def test_labels_cover_no_point_and_the_budget_line_runs_under_the_points():
    """A quickstart's run: a trial at 398.5M sits on the 400M budget line right of
    EfficientNet-B0's star, where the star's label used to be printed over it. The label moves to
    where it covers no point and no budget line; trials are drawn over the line; the title's
    counts stand on a line of their own; the strip's labels lie over the budget line on a ground
    of their own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from condconv_nas.plots import front_figure, front_plot_info

    rows = [
        dict(trial=0, state="COMPLETE", feasible=True, madds=385_814_752, top1=0.9547,
             preset="efficientnet-b0"),
        dict(trial=5, state="COMPLETE", feasible=True, madds=270_824_176, top1=0.9563),
        dict(trial=9, state="COMPLETE", feasible=True, madds=398_521_968, top1=0.9531),
        dict(trial=1, state="COMPLETE", feasible=True, madds=271_359_760, top1=0.9515),
        dict(trial=4, state="COMPLETE", feasible=False, madds=415_618_544, top1=None),
    ]  # fmt: skip
    presets = {"efficientnet-b0": 385_814_752, "condconv-efficientnet-b0": 407_213_024}
    info = front_plot_info(
        rows, pareto_front(rows), budget=400_000_000, title="run: budget 400M", presets=presets
    )
    fig = front_figure(info)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax, strip = fig.axes[:2]
    (label,) = ax.texts
    box = label.get_window_extent(renderer)
    for c in ax.collections:
        for x, y in ax.transData.transform(c.get_offsets()):
            assert not (box.x0 - 3 <= x <= box.x1 + 3 and box.y0 - 3 <= y <= box.y1 + 3), c
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    x400 = ax.transData.transform((400, 0))[0]
    assert not box.x0 <= x400 <= box.x1
    trials = next(c for c in ax.collections if c.get_label() == "trials")
    assert trials.get_zorder() > line.get_zorder()
    assert ax.get_title().splitlines()[-1] == "(4 trained, 0 at chance level, 1 over budget)"
    (named,) = strip.texts
    (strip_line,) = [ln for ln in strip.get_lines() if ln.get_linestyle() == "--"]
    ground = named.get_bbox_patch()
    assert named.get_zorder() > strip_line.get_zorder() and ground.get_facecolor()[:3] == (1, 1, 1)


def test_drawing_a_run_writes_a_png_and_leaves_matplotlibs_backend_alone(tmp_path):
    """A library that draws must not switch the user's backend (a notebook's inline one)."""
    import matplotlib

    from condconv_nas.plots import draw_run

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for whatever the user chose
    try:
        rows = [dict(trial=0, state="COMPLETE", feasible=True, madds=200_000_000, top1=0.9)]
        draw_run(tmp_path, rows, pareto_front(rows), budget=400_000_000, presets={})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_workers_started_together_with_different_seeds_share_the_run(files):
    """Two workers on one new run, started at the same instant with different --seed: both succeed
    and both take trials, the run holds exactly --trials trials, and no architecture was trained
    twice. The space has
    two points, so six trials must repeat one: the rule is exercised, not merely unbroken."""
    two = NARROW_SPACE.replace("[4, 5, none]", "[5, none]").replace("[2, 4]", "[2]")
    two = two.replace("[false, true]", "[false]").replace("[block, single]", "[block]")
    (files / "two.yaml").write_text(two)
    cmd = [
        sys.executable,
        "-m",
        "condconv_nas",
        "search",
        "--budget",
        "2G",
        "--space",
        str(files / "two.yaml"),
        "--trainer",
        str(files / "tiny.yaml"),
        "--results",
        str(files / "results"),
        "--run",
        "pair",
        "--trials",
        "6",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(
            cmd + ["--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for seed in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    rows = list(csv.DictReader((files / "results" / "pair" / "trials.csv").open()))
    assert len(rows) == 6
    trained = [r["spec_id"] for r in rows if r["status"] in ("trained", "untrained")]
    assert len(trained) == len(set(trained)) <= 2, rows
    others = [r for r in rows if r["status"] not in ("trained", "untrained")]
    assert len(others) >= 4 and all(
        r["status"] == "reused" and r["reused_from"] and r["spec_id"] in trained for r in others
    ), rows
    # both workers took trials of the run (each prints a line per trial it finished)
    worked = [sum(line.startswith("trial ") for line in err.splitlines()) for _, err in outs]
    assert all(n >= 1 for n in worked) and sum(worked) == 6, worked


def test_library_search_returns_the_run_and_prints_nothing(files, capsys, monkeypatch):
    import condconv_nas
    from condconv_nas.errors import UsageError
    from condconv_nas.nas import run_folder

    # the pictures: drawn after the first trial, then not for a long while, then as the search
    # ends (whatever the time): twice for two trials
    monkeypatch.setattr(run_folder.RunFolder, "picture_every", 1e9)
    drawn, draw = [], run_folder.draw_run
    monkeypatch.setattr(
        run_folder, "draw_run", lambda *a, **k: drawn.append(len(a[1])) or draw(*a, **k)
    )
    result = condconv_nas.search(
        budget="2G",
        space=str(files / "narrow.yaml"),
        trainer=str(files / "tiny.yaml"),
        results=files / "results",
        run="lib",
        trials=2,
        progress=False,
    )
    assert result.run_dir == files / "results" / "lib" and result.finished == result.total == 2
    assert result.front == json.loads((result.run_dir / "pareto.json").read_text())
    assert [r["trial"] for r in result.trials] == [
        int(r["trial"]) for r in csv.DictReader((result.run_dir / "trials.csv").open())
    ]
    assert capsys.readouterr() == ("", "")
    assert drawn == [1, 2]  # the rows drawn: after the first trial, and both at the end
    for kwargs, message in (
        ({"budget": "lots"}, "budget"),
        ({"budget": 0}, "budget"),
        ({"budget": "400M", "workers": 3}, "workers"),
        ({"budget": "400M", "backend": "dask"}, "dask"),
    ):
        with pytest.raises(UsageError, match=message):
            condconv_nas.search(results=files / "refused", progress=False, **kwargs)
    assert not (files / "refused").exists()


def test_one_search_config_serves_the_cli_the_library_and_every_backend(files):
    """The CLI's options are SearchConfig's settings, with their defaults; a config resumes the
    run its keywords started; every registered backend is a choice of --backend."""
    import argparse

    from condconv_nas.nas.backend import BACKENDS
    from condconv_nas.nas.options import SearchConfig, add_search_arguments

    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    args = vars(parser.parse_args(["--budget", "0.2G"]))
    assert set(args) - {"quiet"} == {f.name for f in dataclasses.fields(SearchConfig)}
    assert SearchConfig(**{k: v for k, v in args.items() if k != "quiet"}) == SearchConfig(
        budget="200M"
    )
    assert tuple(BACKENDS) == SearchConfig.__dataclass_fields__["backend"].metadata["choices"]

    settings = dict(
        space=str(files / "narrow.yaml"), trainer=str(files / "tiny.yaml"), run="cfg", trials=1
    )
    first = condconv_nas.search(budget="2G", results=files / "r", progress=False, **settings)
    config = SearchConfig(budget=2 * 10**9, results=str(files / "r"), **{**settings, "trials": 2})
    again = condconv_nas.search(config, progress=False)
    assert again.run_dir == first.run_dir and again.finished == 2
    with pytest.raises(UsageError, match="not both"):
        condconv_nas.search(config, budget="1G")
    with pytest.raises(UsageError, match="a different latency_batch"):
        condconv_nas.search(dataclasses.replace(config, latency_batch=2), progress=False)


def test_condconv_decisions_are_sampled_only_when_condconv_is_on():
    """The space is conditional: a static point (no CondConv block, static classifier) carries no
    experts or routing decisions, in the sampler and in trials.csv's rows."""
    import optuna

    from condconv_nas.nas.ledger import Ledger
    from condconv_nas.nas.space import CONDCONV_DECISIONS
    from condconv_nas.nas.study import Study

    space = load_space("efficientnet_b0")
    asked = []
    static = space.sample(
        lambda name, choices: (
            asked.append(name) or ("none" if name == "begin_stage" else choices[0])
        )
    )
    assert static == {
        "width_multiplier": 0.5,
        "depth_multiplier": 1.0,
        "begin_stage": "none",
        "classifier": False,
    }
    assert not set(asked) & set(CONDCONV_DECISIONS)
    on = space.sample(lambda name, choices: choices[-1])
    assert set(CONDCONV_DECISIONS) - {"begin_offset"} <= set(on)
    assert space.to_spec(static).condconv is None and space.to_spec(on).condconv is not None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: len(space.sample(lambda n, c: t.suggest_categorical(n, list(c)))), n_trials=80
    )
    ledger = Ledger(Study(study), SimpleNamespace(space=space), total=80)
    rows = [r.row() for r in ledger.records()]
    for r in rows:
        cc = r["begin_stage"] != "none" or r["classifier"]
        assert all((r[d] is not None) == cc for d in CONDCONV_DECISIONS if d in space.searched), r
    assert any(r["begin_stage"] == "none" and not r["classifier"] for r in rows)


def test_optuna_dashboard_serves_the_runs_study_on_loopback(files):
    """`optuna-dashboard sqlite:///RUN/study.db` (the [dashboard] extra, in [all]) lists the run's
    study."""
    import importlib.util
    import socket
    import urllib.request
    from pathlib import Path

    if importlib.util.find_spec("optuna_dashboard") is None:
        pytest.skip("optuna-dashboard is not installed (the [dashboard] extra)")
    # beside this interpreter, not on PATH: pytest run from an unactivated venv still finds it
    exe = Path(sys.executable).with_name("optuna-dashboard")
    res = search(files, "--trials", "1", budget="2G", run="dash", space="narrow.yaml")
    assert res.returncode == 0, res.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = files / "results" / "dash" / "study.db"
    server = subprocess.Popen(
        [exe, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(60):  # bounded: up to 30 s for the server to come up
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer on loopback")
        assert [s["study_name"] for s in studies] == ["dash"]
    finally:
        server.terminate()
        server.wait(timeout=30)


SMALL_SPACE = """
base: mobilenet_v1
resolution: 32
num_classes: 10
decisions:
  width_multiplier: [0.25, 0.5]
  skip_downsample: [0, 2]
  begin_stage: [4, none]
  num_experts: [2]
"""


def test_a_small_image_space_searches_skip_downsample_and_counts_at_its_resolution(files):
    (files / "small.yaml").write_text(SMALL_SPACE)
    res = search(files, "--trials", "4", "--space", files / "small.yaml", budget="20M", run="s")
    assert res.returncode == 0, res.stderr
    assert "budget 20M MADDs at 32x32 px" in res.stderr
    # the plots' axis says where MADDs are counted
    assert "MADDs at 32x32 px (millions)" in (files / "results/s/pareto.html").read_text()
    rows = list(csv.DictReader((files / "results" / "s" / "trials.csv").open()))
    assert len(rows) == 4 and "skip_downsample" in rows[0]
    space = load_space(files / "small.yaml")
    for r in rows:
        params = {
            "width_multiplier": float(r["width_multiplier"]),
            "skip_downsample": int(r["skip_downsample"]),
            "begin_stage": r["begin_stage"]
            if r["begin_stage"] == "none"
            else int(r["begin_stage"]),
        }
        spec = space.to_spec(params)
        assert spec.resolution == 32 and spec.skip_downsample == params["skip_downsample"]
        assert int(r["madds"]) == count_madds(spec)  # counted at 32 px, not 224
        assert (r["feasible"] == "True") == (int(r["madds"]) <= 20_000_000)


def test_shipped_small_image_spaces():
    for name in ("efficientnet_b0_32", "mobilenet_v1_32"):
        space = load_space(name)
        assert (space.resolution, space.num_classes) == (32, 10)
        assert space.searched["skip_downsample"] == (0, 1, 2)
        cheap = space.cheapest()
        assert cheap.skip_downsample == 0 and cheap.resolution == 32
        # each skipped step makes the maps, and so the convolutions' MADDs, larger
        madds = [count_madds(space.to_spec({"skip_downsample": k})) for k in (0, 1, 2)]
        assert madds[0] < madds[1] < madds[2]


def test_the_dense_start_is_the_widest_static_network_on_the_largest_maps_the_budget_affords(
    files,
):
    space = load_space("mobilenet_v1_32")
    static = {"width_multiplier": 1.0, "begin_stage": "none", "classifier": False}
    madds = [count_madds(space.to_spec({**static, "skip_downsample": k})) for k in (0, 1, 2)]
    picks = {
        madds[0] - 1: 0,  # nothing fits: the smallest maps, the cheapest start
        madds[1] - 1: 0,
        madds[1]: 1,
        madds[2] - 1: 1,
        madds[2]: 2,
    }
    from condconv_nas.data import parse_source
    from condconv_nas.nas.task import SearchTask
    from condconv_nas.training.recipe import load_recipe

    proxy, digits = load_recipe("proxy"), parse_source("digits")
    for budget, skip in picks.items():
        # the search's rule, as run.py and the benchmarks ask it: the task's own count and budget
        got = SearchTask(space=space, budget=budget, recipe=proxy, data=digits).dense_shape()
        assert (got.width_multiplier, got.depth_multiplier) == (1.0, 1.0)
        assert (got.skip_downsample, got.condconv, got.resolution) == (skip, None, 32)
    narrow = load_space(files / "narrow.yaml").dense_start(lambda s: True)
    assert narrow.width_multiplier == 0.25 and narrow.base == "mobilenet_v1"
    # the widest, wherever the file lists it; deeper candidates' extra blocks start fresh
    (files / "unsorted.yaml").write_text(
        SMALL_SPACE.replace("[0.25, 0.5]", "[0.75, 0.25]") + "  depth_multiplier: [1.1, 1.0]\n"
    )
    got = load_space(files / "unsorted.yaml").dense_start(lambda s: True)
    assert (got.width_multiplier, got.depth_multiplier) == (0.75, 1.0)


def test_a_space_whose_stride_plan_leaves_no_map_is_refused(tmp_path):
    bad = SMALL_SPACE.replace("resolution: 32", "resolution: 12")
    (tmp_path / "bad.yaml").write_text(bad)
    res = run_here(
        "search", "--budget", "1G", "--space", tmp_path / "bad.yaml", "--results", tmp_path / "r"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "decisions.skip_downsample" in res.stderr and "resolution 12" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_ctrl_c_during_the_searchers_garbage_collection_is_not_lost():
    """A SIGINT that arrives while the Optuna searcher collects garbage between trials raises
    KeyboardInterrupt once the collection ends (Python would swallow it inside a finalizer)."""
    import gc
    import os
    import threading

    from condconv_nas.nas.optuna_engine import collect_garbage

    fired = []

    def interrupt(phase, info):
        # once, in the main thread, while collect_garbage holds Ctrl-C: a collection another
        # test's leftover thread runs, or Python starts on its own, is not the one under test
        holding = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        main = threading.current_thread() is threading.main_thread()
        if phase == "start" and holding and main and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, as a search process has it (an earlier test in this worker
    # may have left another one installed)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.callbacks.append(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(100):  # gc.collect() does nothing while another thread collects
                collect_garbage()
                if fired:
                    break
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        gc.callbacks.remove(interrupt)
        signal.signal(signal.SIGINT, previous)
    assert fired


def test_the_run_folder_draws_its_pictures_at_most_every_half_minute_and_when_the_search_stops(
    tmp_path, monkeypatch
):
    """trials.csv and the front follow every trial; pareto.png and pareto.html are drawn after
    the first trial, then no more often than every 30 s, and always as the search ends."""
    from condconv_nas.nas import run_folder

    clock, drawn = [100.0], []
    monkeypatch.setattr(run_folder.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(run_folder, "draw_run", lambda *a, **k: drawn.append(clock[0]))
    task = SimpleNamespace(
        space=SimpleNamespace(searched={}, resolution=32),
        budget=10**8,
        latency_budget=None,
        uses_latency=False,
        objective="madds",
        data="digits",
    )
    folder = run_folder.RunFolder(task, tmp_path, {}, total=9)
    for t in (100.0, 110.0, 129.9, 130.0, 140.0):  # trials ending at these times
        clock[0] = t
        folder.write([], finished=1, running=0, final=False)
        assert (tmp_path / "trials.csv").is_file()
    assert drawn == [100.0, 130.0]
    clock[0] = 141.0
    folder.write([], finished=9, running=0)  # the search stops: drawn whatever the time
    assert drawn == [100.0, 130.0, 141.0]
