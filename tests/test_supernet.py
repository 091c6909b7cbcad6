"""One-shot scoring (``nas/supernet.py``): what a point takes from the bank, that training
through a point trains the bank where that point has it, and ``search --strategy oneshot``."""

import json

import pytest
import torch
from helpers import TINY_RECIPE, run_cli

from condconv_nas.models import build_model
from condconv_nas.models.sources import canonical_state
from condconv_nas.nas import supernet as S
from condconv_nas.nas.space import load_space
from condconv_nas.training.checkpoint import load
from condconv_nas.training.recipe import recipe_from_dict
from condconv_nas.validation import read_yaml

# MobileNetV1 at small widths: every tensor of the space's points is in a bank of a few MB
SMALL_SPACE = """
base: mobilenet_v1
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.25, 0.5]
  begin_stage: [5, none]
  num_experts: [2, 4]
  classifier: [false, true]
  routing_share: [block, single]
  routing_hidden: [none, small]
  routing_hierarchical: [false, true]
"""


@pytest.fixture
def space(tmp_path):
    (tmp_path / "space.yaml").write_text(SMALL_SPACE)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE + "supernet_epochs: 4\n")
    return load_space(str(tmp_path / "space.yaml"))


def test_a_point_takes_the_leading_slices_and_a_static_layer_the_mean_of_the_experts():
    bank = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(4, 6, 3, 1, 1)
    two = S.take(bank, torch.Size([2, 5, 2, 1, 1]))
    for e in range(2):
        for o in range(5):
            for i in range(2):
                assert two[e, o, i, 0, 0] == bank[e, o, i, 0, 0]
    static = S.take(bank, torch.Size([5, 2, 1, 1]))
    for o in range(5):
        for i in range(2):
            expected = sum(float(bank[e, o, i, 0, 0]) for e in range(4)) / 4
            assert static[o, i, 0, 0].item() == pytest.approx(expected)


# Routers whose place depends on the point: pair and single sharing from several stages and
# depths, hierarchical routers (which also read the previous router's outputs), hidden layers
ROUTING_SPACE = """
base: mobilenet_v2
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.35, 0.5]
  depth_multiplier: [1.0, 1.4]
  begin_stage: [4, 5, 6, none]
  begin_offset: [0, 1]
  num_experts: [2, 4]
  classifier: [false, true]
  routing_share: [pair, single]
  routing_hidden: [none, small]
  routing_hierarchical: [false, true]
"""


def test_every_point_of_the_space_takes_every_tensor_from_the_bank(tmp_path):
    import random

    (tmp_path / "routing.yaml").write_text(ROUTING_SPACE)
    space = load_space(str(tmp_path / "routing.yaml"))
    net = S.Supernet(space, 10, recipe_from_dict({}))
    rng = random.Random(0)
    points = [space.sample(lambda _, c: rng.choice(c)) for _ in range(60)]
    assert len({space.to_spec(p).id for p in points}) > 50
    for point in points:
        model = net.path(point)
        views = net.weights(model)  # a tensor the bank lacks, or cannot hold whole, raises
        assert {n: v.shape for n, v in views.items()} == {
            n: p.shape for n, p in model.named_parameters()
        }


def test_a_narrow_hierarchical_router_takes_its_channels_and_the_previous_outputs_apart(space):
    net = S.Supernet(space, 10, recipe_from_dict({}))
    point = {"width_multiplier": 0.25, "begin_stage": 5, "num_experts": 2, "classifier": True}
    point.update(routing_share="block", routing_hidden="none", routing_hierarchical=True)
    model = net.path(point)
    router = model.net.classifier.router  # the last router: it reads the one before it
    assert router.prev_features == 2 and router.in_features == 256  # 1024 channels x 0.25
    name = next(n for n, p in model.named_parameters() if p is router.fc.weight)
    got = net.weights(model)[name]
    channels = net.bank["classifier/router/fc/weight"]  # (4 experts, 512 channels at width 0.5)
    previous = net.bank["classifier/router/fc/weight#prev"]  # (4, 4 outputs of the router before)
    assert channels.shape == (4, 512) and previous.shape == (4, 4)
    for e in range(2):
        for c in range(256):
            assert got[e, c] == channels[e, c]
        for k in range(2):
            assert got[e, 256 + k] == previous[e, k]


def test_the_largest_point_computes_what_its_own_network_with_the_banks_weights_does(space):
    recipe = recipe_from_dict({"dropout": 0.5})  # evaluation mode runs without it
    net = S.Supernet(space, 10, recipe)
    point = net.covering[0]  # the largest CondConv point: its tensors are the bank's leading ones
    model = build_model(space.to_spec(point).replace(num_classes=10))
    state = {k.replace("/", "."): v for k, v in net.bank.items()}
    params = dict(model.named_parameters())
    names = dict(zip(canonical_state(params), params, strict=True))  # canonical -> the model's
    assert set(names) <= set(state)
    with torch.no_grad():  # parameters only; the BatchNorm statistics stay fresh
        for name, own in names.items():
            p, bank = params[own], state[name]
            assert bank.dim() == p.dim()  # CondConv where the bank is
            p.copy_(bank[tuple(slice(0, n) for n in p.shape)])
    x = torch.randn(6, 3, 32, 32)
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_training_step_moves_the_bank_only_where_the_point_has_it(space):
    recipe = recipe_from_dict({})
    net = S.Supernet(space, 10, recipe)
    point = {"width_multiplier": 0.25, "begin_stage": 5, "num_experts": 2, "classifier": True}
    model = net.path(point)
    before = {k: v.detach().clone() for k, v in net.bank.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    out = torch.func.functional_call(model, net.weights(model), (torch.randn(8, 3, 32, 32),))
    torch.nn.functional.cross_entropy(out, torch.arange(8) % 10).backward()
    opt.step()
    key = "classifier/weight"  # a CondLinear: 4 experts of 10 x (1024 channels at width 1)
    shape = dict(model.named_parameters())["net.classifier.module.weight"].shape
    assert shape[0] == 2 and net.bank[key].shape[0] == 4
    used = tuple(slice(0, n) for n in shape)
    assert not torch.equal(net.bank[key][used], before[key][used])
    rest = net.bank[key].detach().clone()
    rest[used] = before[key][used]
    assert torch.equal(rest, before[key])  # experts 3-4 and channels past width 0.25 untouched


def test_oneshot_search_trains_one_supernet_scores_every_point_and_resumes(tmp_path, space):
    args = ["search", "--budget", "600M", "--space", tmp_path / "space.yaml", "--trainer",
            tmp_path / "tiny.yaml", "--results", tmp_path / "results", "--run", "os", "--quiet",
            "--strategy", "oneshot"]  # fmt: skip
    res = run_cli(*args, "--trials", "3")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "results" / "os"
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "oneshot" and config["supernet"]["epochs"] == 4
    bank = load(run / "supernet.pt", ours=False)["bank"]  # weights only
    assert bank["classifier.weight"].shape == (4, 10, 512)  # 4 experts, width 0.5, digits
    rows = list(csv_rows(run))
    assert len(rows) == 3 and all(r["top1"] and r["untrained"] == "False" for r in rows)
    stamp = (run / "supernet.pt").stat().st_mtime_ns
    res = run_cli(*args, "--trials", "5")
    assert res.returncode == 0, res.stderr
    assert "training the supernet" not in res.stderr
    assert (run / "supernet.pt").stat().st_mtime_ns == stamp and len(list(csv_rows(run))) == 5
    assert not (run / ".supernet").exists()


def csv_rows(run):
    import csv

    return csv.DictReader((run / "trials.csv").open())


def test_a_killed_supernet_training_resumes_from_its_last_epoch(tmp_path, space):
    from condconv_nas.data import parse_source

    recipe = recipe_from_dict({**read_yaml(tmp_path / "tiny.yaml", "r"), "supernet_epochs": 2})
    heard = []

    def killed_after_epoch_1(line):
        heard.append(line)
        if line.startswith("supernet epoch 1/2"):
            raise KeyboardInterrupt

    kw = dict(space=space, recipe=recipe, data=parse_source("digits"))
    with pytest.raises(KeyboardInterrupt):
        S.train_supernet(tmp_path, note=killed_after_epoch_1, **kw)
    assert not (tmp_path / "supernet.pt").exists()
    assert (tmp_path / ".supernet" / "last.pt").is_file()
    assert not (tmp_path / ".supernet" / "lock").exists()  # a rerun need not wait
    record = S.train_supernet(tmp_path, note=heard.append, **kw)
    assert any(line.startswith("resuming the supernet") and "(epoch 1)" in line for line in heard)
    assert "supernet epoch 2/2" in heard[-1] and record["epochs"] == 2
    assert (tmp_path / "supernet.pt").is_file() and not (tmp_path / ".supernet").exists()
