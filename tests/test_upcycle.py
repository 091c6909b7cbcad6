"""Weights from elsewhere: dense timm models upcycled into CondConv, timm's CondConv-EfficientNets
read as ours, and --init for train and search. Every reference is timm's own model output."""

import csv
import json

import pytest
import timm
import torch
import torch.nn as nn

from condconv_nas import ArchSpec, build_model, count_madds, from_timm, load_spec, upcycle
from condconv_nas.errors import UsageError
from condconv_nas.layers import Router
from condconv_nas.models.upcycle import inherit

RES = 64


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm affine parameters and running statistics (not the init's 1 and 0), and a
    random classifier bias, so that no layer can be skipped or mis-mapped unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        head = model.get_classifier()
        head = getattr(head, "module", head)  # a CondConv classifier runs inside `Routed`
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.05)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g))
    return model.eval()


def served(model: nn.Module) -> nn.Module:
    """Every CondConv layer in its per-example-kernel form (no per-shape timing: a fast test)."""
    from condconv_nas.layers import CondConv2d, CondLinear

    for m in model.modules():
        if isinstance(m, (CondConv2d, CondLinear)):
            m.strategy = "kernel"
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within float rounding, relative to the logits' size."""
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def _cc(begin, **routing):
    return {"begin_layer": begin, "num_experts": 4, "classifier": True, "routing": routing}


UPCYCLE_CASES = [
    ("efficientnet_b0", "condconv-efficientnet-b0"),
    ("mobilenetv2_100", "condconv-mobilenet-v2"),
    ("mobilenetv1_100", "condconv-mobilenet-v1"),
    ("semnasnet_100", "condconv-mnasnet-a1"),
    ("efficientnet_b1", "condconv-efficientnet-b0-depth"),  # depth 1.1
    (
        "efficientnet_b0",
        {
            "base": "efficientnet_b0",
            "num_classes": 1000,
            "condconv": _cc(1, hidden="small", activation="softmax", hierarchical=True),
        },
    ),
    (
        "mobilenetv2_100",
        {"base": "mobilenet_v2", "condconv": _cc(12, share="layer", hidden="medium")},
    ),
    ("mobilenetv2_100", {"base": "mobilenet_v2", "condconv": _cc(3, share="pair")}),
    (
        "mobilenetv2_100",
        {"base": "mobilenet_v2", "condconv": _cc(5, share="single", activation="softmax")},
    ),
]


@pytest.mark.parametrize("timm_name,spec", UPCYCLE_CASES)
def test_upcycled_equals_dense_at_init_and_routers_learn(timm_name, spec):
    torch.manual_seed(0)
    dense = randomise(timm.create_model(timm_name))
    model = served(upcycle(spec, dense)).eval()
    x = torch.randn(3, 3, RES, RES)
    with torch.no_grad():
        want = dense(x)
    got = model(x)
    assert close(got, want), (got - want).abs().max()
    # Gradients reach every router's last layer and differ between experts (they can separate).
    nn.functional.cross_entropy(got, torch.tensor([1, 2, 3])).backward()
    routers = [m for m in model.modules() if isinstance(m, Router)]
    assert routers
    for r in routers:
        last = r.fc if isinstance(r.fc, nn.Linear) else r.fc[-1]
        g = torch.cat([last.weight.grad, last.bias.grad[:, None]], dim=1)
        assert (g - g.mean(0)).abs().max() > 0


def test_exact_copies_never_separate_hence_the_zero_sum_noise():
    """With noise=0 every expert is the dense kernel: softmax routers then get no gradient at all
    (the same gradient for every expert cancels), which is why upcycle perturbs the experts."""
    torch.manual_seed(0)
    dense = randomise(timm.create_model("mobilenetv2_100"))
    spec = {"base": "mobilenet_v2", "condconv": _cc(16, activation="softmax")}
    model = served(upcycle(spec, dense, noise=0.0)).eval()
    conv = model.net.blocks[6][0].module.conv_pw.module
    ref = dense.blocks[6][0].conv_pw.weight
    assert all(torch.equal(w, ref) for w in conv.weight)
    x = torch.randn(2, 3, RES, RES)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    router = model.net.blocks[6][0].router
    assert router.fc.weight.grad.abs().max() < 1e-7
    assert close(model(x), dense(x))


@pytest.mark.parametrize("routers", ["constant", "drawn"])
def test_drawn_softmax_routers_keep_the_dense_function_and_set_exact_copies_apart(routers):
    """Exact copies (noise 0) under constant routers get the same gradient, expert by expert;
    drawn routers weigh each example differently, so the experts' gradients differ at once, while
    softmax weights still sum to 1 and the model still computes the dense function."""
    torch.manual_seed(0)
    dense = randomise(timm.create_model("mobilenetv2_100"))
    spec = {"base": "mobilenet_v2", "condconv": _cc(16, activation="softmax")}
    model = served(upcycle(spec, dense, noise=0.0, routers=routers)).eval()
    x = torch.randn(4, 3, RES, RES)
    got = model(x)
    assert close(got, dense(x))
    router = model.net.blocks[6][0].router
    r = router(torch.randn(4, router.fc.in_features))
    assert (r.std(0).max() > 1e-3) == (routers == "drawn"), r
    nn.functional.cross_entropy(got, torch.tensor([0, 1, 2, 3])).backward()
    g = model.net.blocks[6][0].module.conv_pw.module.weight.grad
    assert ((g - g.mean(0)).abs().max() > 1e-6 * g.abs().max()) == (routers == "drawn")


def test_drawn_sigmoid_routers_start_near_one_over_n_and_unknown_routers_are_refused():
    torch.manual_seed(0)
    dense = randomise(timm.create_model("mobilenetv2_100"))
    spec = {"base": "mobilenet_v2", "condconv": _cc(16)}
    model = upcycle(spec, dense, routers="drawn")
    router = model.net.blocks[6][0].router
    r = router(torch.randn(64, router.fc.in_features))
    assert r.std(0).max() > 1e-3 and r.mean().item() == pytest.approx(0.25, abs=0.05)
    with pytest.raises(UsageError, match="routers must be"):
        upcycle(spec, dense, routers="random")


def test_upcycled_resnet_and_single_expert():
    torch.manual_seed(0)
    dense = randomise(timm.create_model("resnet50"))
    spec = load_spec("condconv-resnet50")
    spec = spec.replace(
        condconv=type(spec.condconv)(begin_layer=16, num_experts=1, classifier=True)
    )
    x = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        assert close(served(upcycle(spec, dense)).eval()(x), dense(x))


def test_other_class_count_gets_a_fresh_classifier_and_strict_mismatches_raise():
    dense = randomise(timm.create_model("mobilenetv2_100"))
    spec = load_spec("condconv-mobilenet-v2").replace(num_classes=10)
    model = served(upcycle(spec, dense))
    x = torch.randn(2, 3, RES, RES)
    # the features are the dense model's: its pooled features, through our classifier experts
    with torch.no_grad():
        feats = dense.forward_head(dense.forward_features(x), pre_logits=True)
        head = model.net.classifier.module
        want = feats @ head.weight.mean(0).T + head.bias.mean(0)
        assert close(model.eval()(x), want)
    with pytest.raises(UsageError, match="width or depth differ"):
        upcycle(spec.replace(width_multiplier=0.5), dense)
    narrow = build_model(spec.replace(width_multiplier=0.5))
    got = inherit(narrow, dense)  # not strict: leading slices of the wider source's tensors
    assert got.fraction > 0.9 and "conv_stem.weight" in got.not_inherited
    stem = narrow.net.conv_stem.weight
    assert torch.equal(stem, dense.conv_stem.weight[: stem.shape[0]])
    first = narrow.net.blocks[6][0].module.conv_pw.module.weight  # (4, 480, 80, 1, 1)
    want = dense.blocks[6][0].conv_pw.weight[: first.shape[1], : first.shape[2]]
    assert torch.allclose(first.mean(0), want, atol=1e-6) and not torch.equal(first[0], want)
    with pytest.raises(UsageError, match="resnet50.*mobilenet_v2|mobilenet_v2.*resnet50"):
        upcycle("resnet50", dense)
    tf = randomise(timm.create_model("tf_mobilenetv3_small_100"))  # not a base of ours
    with pytest.raises(UsageError, match="does not fit base mobilenet_v2"):
        upcycle(spec, tf)


def test_tf_padding_spec_fields():
    old = load_spec("condconv-efficientnet-b0")
    assert "padding" not in old.to_dict() and "bn_eps" not in old.to_dict()
    # ids of specs written before these fields existed (computed by the previous version)
    assert old.id == "a855c35684e2" and load_spec("mobilenet-v2").id == "bdc77dabd787"
    tf = old.replace(padding="same", bn_eps=1e-3)
    assert ArchSpec.from_dict(json.loads(tf.to_json())) == tf and tf.id != old.id
    assert count_madds(tf, 64) == count_madds(old, 64)  # SAME padding adds no weight use
    for bad in ({"padding": "valid"}, {"bn_eps": 0.0}, {"padding": 1}):
        with pytest.raises(UsageError):
            ArchSpec.from_dict({"base": "efficientnet_b0", **bad})
    with pytest.raises(UsageError, match="resnet50"):
        ArchSpec.from_dict({"base": "resnet50", "padding": "same"})
    dense = randomise(timm.create_model("tf_efficientnet_b0"))
    with pytest.raises(UsageError, match="padding 'same'"):
        upcycle(old, dense)
    x = torch.randn(2, 3, 67, 67)  # odd: TF 'SAME' pads more after than before
    with torch.no_grad():
        assert close(served(upcycle(tf, dense)).eval()(x), dense(x))


@pytest.mark.parametrize(
    "timm_name", ["efficientnet_cc_b0_8e", "tf_efficientnet_cc_b0_8e", "efficientnet_cc_b0_4e"]
)
def test_from_timm_gives_timms_logits(timm_name):
    torch.manual_seed(0)
    ref = randomise(timm.create_model(timm_name))
    spec, ours = from_timm(ref)
    served(ours)
    tf = timm_name.startswith("tf_")
    assert spec.padding == ("same" if tf else "symmetric") and spec.bn_eps == (1e-3 if tf else 1e-5)
    cc = spec.condconv
    assert (cc.begin_layer, cc.num_experts) == (10, 4 if "4e" in timm_name else 8)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        assert close(ours(x), ref(x))
    if not tf:
        assert spec.replace(num_classes=1000) == load_spec("condconv-efficientnet-b0").replace(
            condconv=cc
        )


def test_from_timm_refuses_other_models():
    with pytest.raises(UsageError, match="efficientnet_cc_b0_8e"):
        from_timm(timm.create_model("efficientnet_b0"))


# -- the command line: train and search from a local file (no network) ---------------------------
RECIPE = """
epochs: 1
batch_size: 64
resolution: 16
optimizer: adamw
lr: 0.002
weight_decay: 0.01
holdout: 0.2
train_subset: 0.3
trials: 2
"""
SMALL = {
    "base": "mobilenet_v2",
    "width_multiplier": 0.35,
    "condconv": {"begin_layer": 17, "num_experts": 2, "classifier": True},
}
SPACE = """
base: mobilenet_v2
resolution: 224
num_classes: 1000
decisions:
  width_multiplier: [0.35, 0.5]
  begin_stage: [7]
  num_experts: [2]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    torch.save(randomise(timm.create_model("mobilenetv2_035")).state_dict(), d / "v2.pt")
    (d / "r.yaml").write_text(RECIPE)
    (d / "space.yaml").write_text(SPACE)
    (d / "small.json").write_text(json.dumps(SMALL))
    return d


def test_train_init_file_end_to_end(files, cli, tmp_path):
    out = tmp_path / "run"
    res = cli(
        "train", files / "small.json", "--trainer", files / "r.yaml", "--init", files / "v2.pt",
        "--out", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    # everything but the routers and the classifier (10 classes here, 1000 in the source)
    model = build_model({**SMALL, "num_classes": 10})
    fresh = sum(p.numel() for r in model.modules() if isinstance(r, Router) for p in r.parameters())
    fresh += sum(p.numel() for p in model.net.classifier.module.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert m["init"] == str(files / "v2.pt") and m["inherited"] == round(1 - fresh / total, 4)
    assert m["epoch"] == 1 and (out / "model.pt").is_file()
    assert "not or partly inherited" not in res.stderr  # the same widths and depths: all of it


def test_search_init_file_end_to_end(files, cli):
    res = cli(
        "search", "--budget", "200M", "--space", files / "space.yaml", "--trainer",
        files / "r.yaml", "--results", files / "results", "--run", "s", "--quiet",
        "--init", files / "v2.pt",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = files / "results" / "s"
    assert json.loads((run / "config.json").read_text())["init"] == str(files / "v2.pt")
    rows = list(csv.DictReader((run / "trials.csv").open()))
    trained = [r for r in rows if r["status"] in ("trained", "untrained")]
    assert trained, rows
    for r in trained:  # width 0.5 takes leading slices of the width-0.35 source where it is wider
        share = float(r["inherited"])
        assert (0.8 < share < 1) if r["width_multiplier"] == "0.35" else (0.2 < share < 0.8)


def test_mismatched_source_exits_2_naming_both(files, refuse, tmp_path):
    res = refuse("train", "mobilenet-v1", "--init", files / "v2.pt", "--out", tmp_path / "o")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "mobilenet_v1" in res.stderr and "mobilenet_v2" in res.stderr
    assert not (tmp_path / "o").exists()
    res = refuse(
        "search", "--budget", "400M", "--space", "efficientnet_b0", "--results", tmp_path / "res",
        "--init", files / "v2.pt",
    )  # fmt: skip
    assert res.returncode == 2 and "mobilenet_v2" in res.stderr and "efficientnet_b0" in res.stderr
    assert not (tmp_path / "res").exists()
    res = refuse("train", "mobilenet-v2", "--init", tmp_path / "none.pt", "--out", tmp_path / "o")
    assert res.returncode == 2 and "none.pt" in res.stderr


def test_our_exports_as_sources(tmp_path):
    """A static model.pt upcycles like a timm model; a CondConv model.pt of the same spec comes
    back whole, routers included."""
    from condconv_nas import load_exported
    from condconv_nas.training import checkpoint

    torch.manual_seed(0)
    static = build_model({**SMALL, "condconv": None, "num_classes": 10})
    randomise(static.net)
    checkpoint.save(
        {"spec": static.spec.to_dict(), "model": static.state_dict()}, tmp_path / "s.pt"
    )
    x = torch.randn(2, 3, RES, RES)
    cond = served(upcycle({**SMALL, "num_classes": 10}, tmp_path / "s.pt")).eval()
    with torch.no_grad():
        assert close(cond(x), static(x))
    randomise(cond.net, seed=1)
    with torch.no_grad():  # routers that depend on the input: they must come back too
        for r in cond.modules():
            if isinstance(r, Router):
                r.fc.weight.normal_()
    with torch.no_grad():
        want = cond(x)  # the model as it was saved: the reference both readers must give back
    checkpoint.save({"spec": cond.spec.to_dict(), "model": cond.state_dict()}, tmp_path / "c.pt")
    again = served(upcycle(cond.spec, tmp_path / "c.pt")).eval()
    with torch.no_grad():
        assert torch.equal(again(x), want)
        assert torch.equal(served(load_exported(tmp_path / "c.pt"))(x), want)


def test_search_trains_its_dense_start_once_and_upcycles_every_candidate(files, cli):
    """A recipe with dense_epochs: the space's base is trained first, every trained candidate
    starts from it (inherited > 0), and a resumed run reuses it instead of training again."""
    from helpers import TINY_RECIPE

    from condconv_nas import load_exported

    (files / "dense.yaml").write_text(TINY_RECIPE + "dense_epochs: 2\n")

    def search(trials):
        return cli(
            "search", "--budget", "2G", "--space", files / "space.yaml", "--trainer",
            files / "dense.yaml", "--results", files / "results", "--run", "d", "--trials",
            trials, "--seed", "1",
        )  # fmt: skip

    res = search(3)
    assert res.returncode == 0, res.stderr
    # the space's widest (0.5x), on the only maps it has
    madds = count_madds(load_spec({"base": "mobilenet_v2", "width_multiplier": 0.5}))
    assert (
        f"dense start first: mobilenet_v2 0.5x, skip_downsample 0 ({madds / 1e6:.1f}M MADDs "
        "counted at 224 px), 2 epochs on digits" in res.stderr
    )
    run = files / "results" / "d"
    dense = run / "dense.pt"
    spec = load_exported(dense).spec
    assert spec.base == "mobilenet_v2" and spec.condconv is None and spec.width_multiplier == 0.5
    config = json.loads((run / "config.json").read_text())
    assert config["dense_start"]["init"] == str(dense.resolve())
    assert config["dense_start"]["epochs"] == 2 and 0 < config["dense_start"]["top1"] <= 1
    assert config["init"] is None and not (run / ".dense").exists()  # the user gave no --init
    rows = list(csv.DictReader((run / "trials.csv").open()))
    trained = [r for r in rows if r["status"] in ("trained", "untrained")]
    assert trained and all(float(r["inherited"]) > 0.2 for r in trained), rows
    stamp = dense.stat().st_mtime_ns
    res = search(4)
    assert res.returncode == 0, res.stderr
    assert "dense start" not in res.stderr and dense.stat().st_mtime_ns == stamp
    assert len(list(csv.DictReader((run / "trials.csv").open()))) == 4


def test_the_recipes_upcycle_noise_sets_how_far_train_starts_its_experts_apart(tmp_path):
    """With lr 0 the trained weights are the start: every dense kernel copied into 4 experts plus
    zero-sum noise of 0.3 times its std, so each expert lies about 0.3 x sqrt(3/4) of the kernel's
    size from their mean (a kernel's mean is near zero: its std is about its rms). The default
    noise, 0.01, would give 0.009."""
    from condconv_nas import train
    from condconv_nas.layers import CondConv2d
    from condconv_nas.routing_analysis import expert_spread
    from condconv_nas.training import checkpoint

    tiny = {"base": "mobilenet_v1", "width_multiplier": 0.25, "depth_multiplier": 0.1,
            "resolution": 16, "num_classes": 10}  # fmt: skip
    torch.manual_seed(0)
    dense = build_model(tiny)
    checkpoint.save({"spec": dense.spec.to_dict(), "model": dense.state_dict()}, tmp_path / "d.pt")
    (tmp_path / "r.yaml").write_text(
        "epochs: 1\nbatch_size: 64\noptimizer: adamw\nlr: 0.0\ntrain_subset: 0.1\n"
        "upcycle_noise: 0.3\n"
    )
    spec = {**tiny, "condconv": {"begin_layer": 4, "num_experts": 4, "classifier": False}}
    train(spec, trainer=str(tmp_path / "r.yaml"), init=str(tmp_path / "d.pt"),
          out=tmp_path / "run", progress=False)  # fmt: skip
    model = checkpoint.load_exported(tmp_path / "run" / "model.pt")
    spreads = [expert_spread(m.weight) for m in model.modules() if isinstance(m, CondConv2d)]
    assert len(spreads) == 6  # blocks 3 to 5, depthwise and pointwise
    assert all(s == pytest.approx(0.3 * 0.75**0.5, rel=0.25) for s in spreads), spreads
    routers = routers_of(model)
    assert routers and all(r.fc.weight.abs().max() == 0 for r in routers)  # constant by default
    # upcycle_routers: drawn keeps the routers' initial weights
    (tmp_path / "d.yaml").write_text((tmp_path / "r.yaml").read_text() + "upcycle_routers: drawn\n")
    train(spec, trainer=str(tmp_path / "d.yaml"), init=str(tmp_path / "d.pt"),
          out=tmp_path / "drawn", progress=False)  # fmt: skip
    drawn = routers_of(checkpoint.load_exported(tmp_path / "drawn" / "model.pt"))
    assert drawn and all(r.fc.weight.abs().max() > 0 for r in drawn)


def routers_of(model: nn.Module) -> list[Router]:
    return [m for m in model.modules() if isinstance(m, Router)]
