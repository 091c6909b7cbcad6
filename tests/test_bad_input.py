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
    "evaluate pickled code": (["evaluate", "code.pt"], "checkpoint"),
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
