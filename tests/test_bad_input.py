"""Malformed input to every command: exit status 2, one line on stderr naming the problem, no
traceback, no warning, and nothing written."""

import json
import os
import pickle
import warnings

import pytest
import torch
from PIL import Image

from condconv_nas.cli import main


def _image(path, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


def _garbage(path, data=b"\x89PNG not really an image"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Pickled:  # a class instance: torch.load(weights_only=True) must refuse to build it
    pass


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A folder of malformed inputs, one per case."""
    d = tmp_path_factory.mktemp("bad")
    (d / "afile").write_text("not a folder\n")
    (d / "nonutf8.yaml").write_bytes(b"epochs: 3\nname: \xff\xfe\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)))
    (d / "syntax.yaml").write_text("epochs: [1, 2\n")
    (d / "optim.yaml").write_text("optimizer: sgdx\n")
    (d / "decay.yaml").write_text("schedule: step\ndecay_epochs: 0\n")
    (d / "string_lr.yaml").write_text("lr: '0.1'\n")
    space = "base: mobilenet_v1\ndecisions:\n  {}\n"
    (d / "experts.yaml").write_text(space.format("num_experts: [4, 100000]"))
    (d / "inf.yaml").write_text(space.format("width_multiplier: [0.5, .inf]"))
    (d / "stage.yaml").write_text(space.format("begin_stage: [3, 99]"))
    (d / "decision.yaml").write_text(space.format("kernel_size: [3, 5]"))
    (d / "nonutf8.json").write_bytes(b'{"base": "\xff"}')
    # pathological files: nested past Python's recursion, numbers too long, "billion laughs"
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "deep_object.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    (d / "long_number.json").write_text(
        '{"base": "mobilenet_v1", "num_classes": 9' + "9" * 5000 + "}"
    )
    (d / "schema_true.json").write_text('{"base": "mobilenet_v1", "schema_version": true}')
    (d / "deep.yaml").write_text("base: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (d / "deep_block.yaml").write_text("- " * 5000 + "1\n")
    (d / "long_number.yaml").write_text("epochs: 9" + "9" * 5000 + "\n")
    (d / "bad_date.yaml").write_text("epochs: 2020-99-99\n")
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (d / "laughs.yaml").write_text("\n".join([*laughs, "optimizer: *a9"]) + "\n")
    (d / "huge_seed.yaml").write_text("seed: 1" + "0" * 30 + "\n")
    (d / "huge_trials.yaml").write_text("trials: 1" + "0" * 30 + "\n")
    (d / "huge_offset.yaml").write_text(
        space.format("begin_stage: [3]\n  begin_offset: [1" + "0" * 30 + "]")
    )
    (d / "repeated.yaml").write_text(space.format("skip_downsample: [1, 1]"))
    (d / "many_choices.yaml").write_text(
        space.format("num_experts: [" + ", ".join(["4"] * 101) + "]")
    )
    # image folders the proxy cannot use
    _image(d / "empty_class/a/1.png")
    (d / "empty_class/b").mkdir()
    _garbage(d / "no_images/a/readme.txt", b"hello")
    _garbage(d / "no_images/b/notes.txt", b"hello")
    _garbage(d / "corrupt/a/1.png")
    _garbage(d / "corrupt/b/2.png")
    _image(d / "flat/1.png")
    _image(d / "flat/2.png")
    for split, classes in (("train", "ab"), ("val", "ac")):
        for c in classes:
            _image(d / f"mismatch/{split}/{c}/1.png")
    _image(d / "one_class/a/1.png")
    _image(d / "one_class/a/2.png")
    _garbage(d / "cifar/cifar-10-batches-py/data_batch_1", b"garbage")
    _garbage(d / "cifar/cifar-10-batches-py/batches.meta", b"garbage")
    # checkpoints that are ours in name only
    torch.save(torch.zeros(3), d / "tensor.pt")
    _garbage(d / "garbage.pt", b"PK\x03\x04 not a zip")
    wrong = {"spec": {"base": "mobilenet_v1"}, "model": {"net.conv_stem.weight": torch.zeros(1)}}
    torch.save(wrong, d / "wrong_shape.pt")
    (d / "code.pt").write_bytes(pickle.dumps(Pickled()))
    (d / "text.pt").write_text("epoch 1: loss 0.3\n")
    (d / "spec.json").write_text('{"base": "mobilenet_v1"}')
    badspec = {"spec": {"base": "mobilenet_v1", "skip_downsample": "2"}, "model": {}}
    torch.save(badspec, d / "badspec.pt")
    (d / "norun").mkdir()
    (d / "norun" / "config.json").write_text("{}")
    # stride plans that do not fit a resolution: under 1x1 maps, or maps of a fraction of a pixel
    (d / "skip1.json").write_text('{"base": "mobilenet_v1", "skip_downsample": 1}')
    (d / "skip65.json").write_text('{"base": "mobilenet_v1", "skip_downsample": 65}')
    (d / "r36.yaml").write_text("resolution: 36\n")  # a recipe whose images no skip plan divides
    (d / "skip2.json").write_text(
        '{"base": "mobilenet_v1", "skip_downsample": 2, "resolution": 32}'
    )
    # run folders whose pareto.json is not what a search writes
    for name, text in (
        ("badjson", "[{"),
        ("schema", json.dumps([{"trial": "x", "madds": 1, "params": 1, "top1": 0.5, "spec": {}}])),
        ("mapping", json.dumps({"front": []})),
        ("top1", json.dumps([{"trial": 1, "madds": 1, "params": 1, "top1": 7, "spec": {}}])),
        ("badspec", json.dumps([{"trial": 1, "madds": 1, "params": 1, "top1": 0.5, "spec": {}}])),
    ):
        (d / "runs" / name).mkdir(parents=True)
        (d / "runs" / name / "pareto.json").write_text(text)
    for name, text in (
        ("deep", "[" * 100_000 + "]" * 100_000),
        (
            "madds",
            json.dumps([{"trial": 1, "madds": 10**400, "params": 1, "top1": 0.5, "spec": {}}]),
        ),
    ):
        (d / "runs" / name).mkdir(parents=True)
        (d / "runs" / name / "pareto.json").write_text(text)
    (d / "runs" / "csv").mkdir()
    (d / "runs" / "csv" / "pareto.json").write_text("[]")
    (d / "runs" / "csv" / "trials.csv").write_text("trial,untrained\n1," + "x" * 200_000 + "\n")
    (d / "runs" / "deepconfig").mkdir()
    (d / "runs" / "deepconfig" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "runs" / "broken").mkdir()
    (d / "runs" / "broken" / "config.json").write_text("{not json")
    (d / "runs" / "nonutf8").mkdir()
    (d / "runs" / "nonutf8" / "pareto.json").write_bytes(b"[\xff]")
    return d


S = ["search", "--budget", "400M", "--trials", "1", "--quiet"]
T = ["train", "mobilenet-v1", "--out", "out"]
CASES = {  # name: (argv, a word the message must contain)
    "search seed -1": (S + ["--seed", "-1"], "--seed"),
    "search budget words": (["search", "--budget", "lots"], "budget"),
    "search budget impossible": (S[:2] + ["1K"] + S[3:], "impossible"),
    "search empty run": (S + ["--run", ""], "--run"),
    "search run with a slash": (S + ["--run", "a/b"], "--run"),
    "search results a file": (S + ["--results", "afile"], "--results"),
    "search trials 0": (S + ["--trials", "0"], "--trials"),
    "search recipe not utf-8": (S + ["--trainer", "nonutf8.yaml"], "UTF-8"),
    "search recipe binary": (S + ["--trainer", "binary.yaml"], "UTF-8"),
    "search recipe bad yaml": (S + ["--trainer", "syntax.yaml"], "YAML"),
    "search unknown optimizer": (S + ["--trainer", "optim.yaml"], "optimizer"),
    "search decay_epochs 0": (S + ["--trainer", "decay.yaml"], "decay_epochs"),
    "search lr a string": (S + ["--trainer", "string_lr.yaml"], "lr"),
    "search space experts": (S + ["--space", "experts.yaml"], "num_experts"),
    "search space infinite width": (S + ["--space", "inf.yaml"], "width_multiplier"),
    "search space stage": (S + ["--space", "stage.yaml"], "begin_stage"),
    "search space unknown decision": (S + ["--space", "decision.yaml"], "kernel_size"),
    "search empty class folder": (S + ["--data", "imagefolder:empty_class"], "imagefolder"),
    "search no images": (S + ["--data", "imagefolder:no_images"], "imagefolder"),
    "search only corrupt images": (S + ["--data", "imagefolder:corrupt"], "readable"),
    "search flat folder": (S + ["--data", "imagefolder:flat"], "imagefolder"),
    "search train/val mismatch": (S + ["--data", "imagefolder:mismatch"], "class"),
    "search one class": (S + ["--data", "imagefolder:one_class"], "class"),
    "search corrupt cifar": (S + ["--data", "cifar10:cifar"], "CIFAR"),
    "search nni option on optuna": (S + ["--nni-strategy", "tpe"], "--nni-strategy"),
    "search storage scheme": (S + ["--storage", "nosuch://x"], "--storage"),
    "search broken config.json": (S + ["--results", "runs", "--run", "broken"], "config.json"),
    "search latency budget words": (S + ["--latency-budget", "abc"], "--latency-budget"),
    "search latency budget 0": (S + ["--latency-budget", "0ms"], "--latency-budget"),
    "search latency batch 0": (S + ["--latency-batch", "0"], "--latency-batch"),
    "search objective unknown": (S + ["--objective", "speed"], "--objective"),
    "train out a file": (["train", "mobilenet-v1", "--out", "afile"], "--out"),
    "train batch 0": (T + ["--batch-size", "0"], "--batch-size"),
    "train workers -1": (T + ["--workers", "-1"], "--workers"),
    "train epochs 0": (T + ["--epochs", "0"], "--epochs"),
    "train spec not utf-8": (["train", "nonutf8.json", "--out", "out"], "nonutf8.json"),
    "train corrupt images": (T + ["--data", "imagefolder:corrupt"], "readable"),
    "train unknown optimizer": (T + ["--trainer", "optim.yaml"], "optimizer"),
    "train resume nothing": (T + ["--resume"], "--resume"),
    "evaluate bare tensor": (["evaluate", "tensor.pt"], "checkpoint"),
    "evaluate garbage": (["evaluate", "garbage.pt"], "checkpoint"),
    "evaluate wrong shapes": (["evaluate", "wrong_shape.pt"], "weights"),
    "evaluate pickled code": (["evaluate", "code.pt"], "holds Python objects"),
    "evaluate a text file": (["evaluate", "text.pt"], "not a file torch.save wrote"),
    "evaluate a spec file": (["evaluate", "spec.json"], "not a file torch.save wrote"),
    "evaluate a bad spec inside": (["evaluate", "badspec.pt"], "badspec.pt: spec: skip_downsample"),
    "analyze a bad spec inside": (["analyze", "badspec.pt"], "badspec.pt: spec: skip_downsample"),
    "train a folder with no front": (["train", "norun", "--out", "out"], "not a run folder"),
    "madds resolution under 1x1": (["madds", "skip1.json", "--resolution", "8"], "--resolution"),
    "madds skip past the base's steps": (["madds", "skip65.json"], "at most 5"),
    "train at a recipe resolution the plan cannot divide": (
        ["train", "skip2.json", "--out", "out", "--trainer", "r36.yaml"],
        "--trainer resolution: skip_downsample 2",
    ),
    "search a space at a recipe resolution it cannot divide": (
        S + ["--space", "mobilenet_v1_32", "--trainer", "r36.yaml"],
        "--trainer resolution: skip_downsample 1",
    ),
    "search space a folder": (S + ["--space", "runs"], "a folder"),
    "search shipped space with a suffix": (
        S + ["--space", "mobilenet_v1_32.yaml"],
        "the shipped space is 'mobilenet_v1_32'",
    ),
    "search budget negative": (["search", "--budget=-60M"], "must be positive"),
    "search budget in other digits": (["search", "--budget", "\uff16\uff10M"], "not a number"),
    "madds resolution undivided": (["madds", "skip2.json", "--resolution", "33"], "--resolution"),
    "export resolution under 1x1": (["export", "skip1.json", "--resolution", "8"], "1x1"),
    "export resolution undivided": (["export", "skip2.json", "--resolution", "36"], "divide"),
    "show not json": (["show", "runs/badjson"], "JSON"),
    "show wrong types": (["show", "runs/schema"], "trial"),
    "show a mapping": (["show", "runs/mapping"], "pareto.json"),
    "show top-1 out of range": (["show", "runs/top1"], "top1"),
    "show invalid spec": (["show", "runs/badspec"], "base"),
    "show not utf-8": (["show", "runs/nonutf8"], "JSON"),
    "show no run": (["show", "runs"], "not a run folder"),
    "madds resolution huge": (["madds", "mobilenet-v1", "--resolution", "100000"], "resolution"),
    "madds resolution 0": (["madds", "mobilenet-v1", "--resolution", "0"], "resolution"),
    "madds unknown preset": (["madds", "mobilenet-v9"], "mobilenet-v9"),
    "export resolution huge": (["export", "mobilenet-v1", "--resolution", "100000"], "resolution"),
    "search ray cpus nan": (S + ["--backend", "ray", "--cpus-per-trial", "nan"], "--cpus-per"),
    "search ray gpus inf": (S + ["--backend", "ray", "--gpus-per-trial", "inf"], "--gpus-per"),
    "latency batch 0": (["latency", "mobilenet-v1", "--batch", "0"], "--batch"),
    "latency batch huge": (["latency", "mobilenet-v1", "--batch", "100000"], "batch"),
    "latency no spec": (["latency"], "SPEC"),
    "latency spec and space": (["latency", "mobilenet-v1", "--space", "efficientnet_b0"], "SPEC"),
    "latency unknown preset": (["latency", "mobilenet-v9"], "mobilenet-v9"),
    "latency unknown space": (["latency", "--space", "nope"], "nope"),
    "unknown command": (["fly"], "fly"),
    # numbers far beyond any range, pathological files (the fuzzed kinds of tests/test_fuzz.py)
    "search budget beyond a float": (["search", "--budget", "9" * 400 + "G"], "budget"),
    "search budget past 10**18": (["search", "--budget", "1000000000000000001"], "budget"),
    "search ray cpus 1e308": (S + ["--backend", "ray", "--cpus-per-trial", "1e308"], "--cpus"),
    "search ray gpus 1e308": (S + ["--backend", "ray", "--gpus-per-trial", "1e308"], "--gpus"),
    "search run name too long": (S + ["--run", "r" * 300], "--run"),
    "search results name too long": (S + ["--results", "x/" + "r" * 300], "--results"),
    "search space nested deeply": (S + ["--space", "deep.yaml"], "nested too deeply"),
    "search space block nested deeply": (S + ["--space", "deep_block.yaml"], "deep_block.yaml"),
    "search space huge offset": (S + ["--space", "huge_offset.yaml"], "begin_offset"),
    "search space 101 choices": (S + ["--space", "many_choices.yaml"], "num_experts"),
    "search space a repeated choice": (
        S + ["--space", "repeated.yaml"],
        "decisions.skip_downsample: choices must differ, got [1, 1]",
    ),
    "search recipe number too long": (S + ["--trainer", "long_number.yaml"], "long_number"),
    "search recipe bad date": (S + ["--trainer", "bad_date.yaml"], "bad_date.yaml"),
    "search recipe billion laughs": (S + ["--trainer", "laughs.yaml"], "optimizer"),
    "search recipe seed huge": (S + ["--trainer", "huge_seed.yaml"], "seed"),
    "search recipe trials huge": (S + ["--trainer", "huge_trials.yaml"], "trials"),
    "search config nested deeply": (S + ["--results", "runs", "--run", "deepconfig"], "config"),
    "search latency table nested deeply": (
        S + ["--latency-budget", "20ms", "--latency-device", "deep.json"],
        "nested too deeply",
    ),
    "train epochs huge": (T + ["--epochs", "1" + "0" * 30], "--epochs"),
    "train batch huge": (T + ["--batch-size", "1" + "0" * 30], "--batch-size"),
    "train workers huge": (T + ["--workers", "100000"], "--workers"),
    "train out name too long": (["train", "mobilenet-v1", "--out", "x/" + "o" * 300], "--out"),
    "train spec nested deeply": (["train", "deep.json", "--out", "out"], "nested too deeply"),
    "evaluate batch huge": (["evaluate", "tensor.pt", "--batch-size", "1" + "0" * 30], "batch"),
    "analyze batch huge": (["analyze", "tensor.pt", "--batch-size", "1" + "0" * 30], "batch"),
    "show front nested deeply": (["show", "runs/deep"], "nested too deeply"),
    "show madds beyond a float": (["show", "runs/madds"], "madds"),
    "show trials.csv field too large": (["show", "runs/csv"], "trials.csv"),
    "madds spec object nested deeply": (["madds", "deep_object.json"], "nested too deeply"),
    "madds spec number too long": (["madds", "long_number.json"], "too long"),
    "madds schema_version true": (["madds", "schema_true.json"], "schema_version"),
    "madds resolution --": (["madds", "mobilenet-v1", "--resolution=--"], "--resolution"),
    "madds file name too long": (["madds", "s" * 300], "too long"),
    "latency spec nested deeply": (["latency", "deep.json"], "nested too deeply"),
}


def _tree(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad, capsys, monkeypatch):
    argv, word = CASES[case]
    monkeypatch.chdir(bad)
    before = _tree(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("condconv-nas"), err
    assert word in lines[0], lines[0]
    assert "Traceback" not in err and "weights_only=False" not in err and out == ""
    assert not [str(w.message) for w in caught if w.category is not FutureWarning]
    assert _tree(bad) == before, "something was written"
    assert not (bad / "results").exists() and not (bad / "out").exists()
    assert os.getcwd() == str(bad)
