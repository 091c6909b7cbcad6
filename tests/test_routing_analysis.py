"""`condconv-nas analyze` / `analyze_routing`: the routing statistics against hooks written here."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from condconv_nas import ArchSpec, analyze_routing, build_model, routing_ablation
from condconv_nas.data import make_datasets, parse_source
from condconv_nas.layers import CondConv2d, CondLinear, Router
from condconv_nas.routing_analysis import condconv_diagnostics, expert_spread
from condconv_nas.training import checkpoint

# MobileNetV1 0.25x with one block per stage (5 blocks): layer 1 stem, 2..6 blocks, 7 classifier.
TINY = {
    "base": "mobilenet_v1",
    "width_multiplier": 0.25,
    "depth_multiplier": 0.1,
    "resolution": 32,
    "num_classes": 10,
}
# Trained at 16 px (not the spec's 32): analyze must read the checkpoint's recipe.
RECIPE = (
    "epochs: 1\nbatch_size: 32\nresolution: 16\noptimizer: adamw\nlr: 0.003\ntrain_subset: 0.5\n"
)


def tiny(begin=4, experts=4, classifier=True, base="mobilenet_v1", **routing):
    return ArchSpec.from_dict(
        {
            **TINY,
            "base": base,
            "condconv": {
                "begin_layer": begin,
                "num_experts": experts,
                "classifier": classifier,
                "routing": routing,
            },
        }
    )


def reference(model, loader):
    """Each router's weights over the loader, caught by hooks here, in the order the routers ran."""
    caught, labels = {}, []
    hooks = [
        m.register_forward_hook(lambda m, a, out, n=n: caught.setdefault(n, []).append(out))
        for n, m in model.named_modules()
        if isinstance(m, Router)
    ]
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            model(x)
            labels.append(y)
    for h in hooks:
        h.remove()
    y = torch.cat(labels).numpy()
    return {n: torch.cat(rs).double().numpy() for n, rs in caught.items()}, y


def check_against(info, weights, y, num_classes=10):
    """Every statistic of routing.json recomputed with numpy from the hooked weights."""
    assert len(info["layers"]) == len(weights)
    assert info["num_examples"] == len(y)
    assert info["class_counts"] == np.bincount(y, minlength=num_classes).tolist()
    for entry, r in zip(info["layers"], weights.values(), strict=True):
        means = np.array(entry["class_means"], dtype=float)
        assert means.shape == (num_classes, entry["num_experts"]) == (num_classes, r.shape[1])
        for c in range(num_classes):
            if (y == c).any():
                np.testing.assert_allclose(means[c], r[y == c].mean(0), atol=1e-6)
            else:
                assert np.isnan(means[c]).all()
        np.testing.assert_allclose(entry["mean"], r.mean(0), atol=1e-6)
        np.testing.assert_allclose(entry["std"], r.std(0), atol=1e-6)
        assert entry["example_spread"] == pytest.approx(r.std(0).mean(), abs=1e-6)
        grand = r.mean(0)
        between = sum(((r[y == c].mean(0) - grand) ** 2).sum() * (y == c).sum() for c in set(y))
        eta2 = between / ((r - grand) ** 2).sum()
        assert entry["class_specificity"] == pytest.approx(eta2, abs=1e-6)
        assert entry["class_spread"] == pytest.approx(np.sqrt(between / r.size), abs=1e-6)
        assert sum(entry["histogram"]) == r.size
        assert entry["histogram"] == np.histogram(r, bins=20, range=(0, 1))[0].tolist()


def places(model, kind):
    """Module paths without the Routed wrappers, as routing.json names them."""
    return [
        ".".join(p for p in n.split(".")[1:] if p not in ("module", "router"))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CondConv model trained one epoch on digits at 16 px: blocks 3-5 and the classifier."""
    import condconv_nas

    root = tmp_path_factory.mktemp("trained")
    (root / "r.yaml").write_text(RECIPE)
    condconv_nas.train(
        tiny(), trainer=str(root / "r.yaml"), out=root / "run", workers=0, progress=False
    )
    return root / "run" / "model.pt"


def test_analyze_writes_json_and_pictures_equal_to_hooks(trained, tmp_path, cli):
    out = tmp_path / "routing"
    res = cli("analyze", trained, "--out", out, "--ablate")
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "routing.json").read_text())
    a = info["ablation"]
    # analyze's batches (64): re-estimated statistics average per-batch variances. Another
    # process may time another execution form, summing in another order, and a borderline
    # image of this barely trained model may flip (one image is 1/359)
    here = routing_ablation(trained, "digits", batch_size=64)
    assert a.keys() == here.keys() and (a["images"], a["mean_images"]) == (359, 1438)
    assert all(a[k] == pytest.approx(here[k], abs=2.5 / 359) for k in a if k.startswith("top1"))
    assert (
        f"routing ablation: top-1 {a['top1_bn']:.4f} as routed, {a['top1_fixed_bn']:.4f} with "
        "every router at its mean over 1438 training images, BatchNorm re-estimated there for "
        f"both ({a['top1']:.4f} and {a['top1_fixed']:.4f} as trained): drop {a['drop']:+.4f}"
    ) in res.stderr  # digits: 1797 images less the 359 held out
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["split"] == "val" and info["resolution"] == 16 and info["data"] == "digits"
    model = checkpoint.load_exported(trained)
    _, val, _ = make_datasets(parse_source("digits"), 16, holdout=0.2, seed=0)
    weights, y = reference(model, DataLoader(val, batch_size=50))
    check_against(info, weights, y)
    # network order and placement: blocks 3, 4, 5 (layers 4-6), then the classifier (layer 7)
    assert [e["name"] for e in info["layers"]] == [
        "blocks.2.0",
        "blocks.3.0",
        "blocks.4.0",
        "classifier",
    ]
    assert [e["layers"] for e in info["layers"]] == [[4], [5], [6], [7]]
    assert [e["serves"] for e in info["layers"]][1] == ["blocks.3.0.conv_dw", "blocks.3.0.conv_pw"]
    assert all(e["activation"] == "sigmoid" and not e["hierarchical"] for e in info["layers"])
    for name in ("routing_class_means.png", "routing_specificity.png", "routing_distribution.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    table = res.stdout.splitlines()
    assert table[0].split()[:7] == [
        "router", "experts", "specificity", "class_spread", "example_spread", "expert_spread",
        "kernel_spread",
    ]  # fmt: skip
    assert len(table) == 2 + 4 and "L7 classifier" in res.stdout
    diag = condconv_diagnostics(trained, "digits")
    # the classifier's row: its router's spreads, then its one CondLinear's expert spread
    cells = table[-1].split()
    assert cells[:2] == ["L7", "classifier"]
    assert [float(c) for c in cells[4:8]] == pytest.approx(
        [
            diag["routers"][-1]["class_spread"],
            diag["routers"][-1]["example_spread"],
            diag["layers"][-1]["expert_spread"],
            diag["layers"][-1]["kernel_spread"],
        ],
        abs=6e-4,
    )
    summary = next(ln for ln in res.stderr.splitlines() if ln.startswith("spreads:"))
    assert (
        f"expert {round(diag['expert_spread'], 3)}, kernel {round(diag['kernel_spread'], 3)} "
        "(means over 7 CondConv layers)"
    ) in summary
    assert f"example {round(diag['example_spread'], 3)}, " in summary
    assert f"class {round(diag['class_spread'], 3)} (means over 4 routers)" in summary
    assert [lay["name"] for lay in diag["layers"]] == [
        s for e in info["layers"] for s in e["serves"]
    ]
    # two passes over the same images (float32 routing, other batches): the last bits may differ
    for mine, theirs in zip(info["expert_layers"], diag["layers"], strict=True):
        assert mine.keys() == theirs.keys()
        for k, v in mine.items():
            assert v == (pytest.approx(theirs[k], rel=1e-6) if isinstance(v, float) else theirs[k])


def test_train_split(trained):
    info = analyze_routing(trained, "digits", split="train")
    assert info["num_examples"] == 1797 - 359 and info["split"] == "train"


@pytest.mark.parametrize(
    "spec,layers",
    [
        # a router per CondConv layer, softmax: blocks 4 and 5 (dw, pw each), then the classifier
        (tiny(5, share="layer", activation="softmax"), [[5], [5], [6], [6], [7]]),
        # blocks 4+5 share, then the classifier; hierarchical routers with a hidden layer
        (tiny(5, share="pair", hierarchical=True, hidden="small"), [[5, 6], [7]]),
        (tiny(5, share="single"), [[5, 6, 7]]),
        # the stem is CondConv too (EfficientNet-B0 at depth 0.1: 7 blocks), static classifier
        (tiny(1, classifier=False, base="efficientnet_b0"), [[j] for j in range(1, 9)]),
        # ResNet-50 at depth 0.1 has 4 blocks: block 4 (layer 5) and the classifier (layer 6)
        (tiny(5, experts=3, base="resnet50"), [[5], [6]]),
    ],
    ids=["layer-softmax", "pair-hierarchical", "single", "b0-stem", "resnet50"],
)
def test_every_routing_variant(spec, layers):
    torch.manual_seed(0)
    model = build_model(spec).train()
    _, val, _ = make_datasets(parse_source("digits"), 16, holdout=0.2, seed=0)
    loader = DataLoader(Subset(val, range(64)), batch_size=16)
    info = analyze_routing(model, loader)
    assert model.training  # left as it was
    weights, y = reference(model, loader)
    check_against(info, weights, y)
    assert [e["layers"] for e in info["layers"]] == layers
    assert [e["name"] for e in info["layers"]] == places(model, Router)
    served = [s for e in info["layers"] for s in e["serves"]]
    assert served == places(model, (CondConv2d, CondLinear))  # each layer fed by one router
    assert info["layers"][-1]["hierarchical"] == spec.condconv.routing.hierarchical
    # every CondConv layer's expert spread, recomputed with numpy from its weight
    cond = [m for m in model.modules() if isinstance(m, (CondConv2d, CondLinear))]
    assert [e["name"] for e in info["expert_layers"]] == served
    assert [e["num_experts"] for e in info["expert_layers"]] == [m.num_experts for m in cond]
    for entry, m in zip(info["expert_layers"], cond, strict=True):
        w = m.weight.detach().double().numpy().reshape(m.num_experts, -1)
        gaps = np.linalg.norm(w - w.mean(0), axis=1) / np.linalg.norm(w.mean(0))
        assert entry["expert_spread"] == pytest.approx(gaps.mean(), rel=1e-6)
    number = {e["name"]: e["layer"] for e in info["expert_layers"]}
    assert [sorted({number[s] for s in e["serves"]}) for e in info["layers"]] == layers
    # every layer's kernel spread, from each example's mixed kernel built whole with numpy
    module = dict(zip(served, cond, strict=True))
    spread = {e["name"]: e["kernel_spread"] for e in info["expert_layers"]}
    for entry, r in zip(info["layers"], weights.values(), strict=True):
        for name in entry["serves"]:
            m = module[name]
            w = m.weight.detach().double().numpy().reshape(m.num_experts, -1)
            kernels, mean = r @ w, r.mean(0) @ w  # examples x weights; the mean routing's kernel
            gaps = np.linalg.norm(kernels - mean, axis=1) / np.linalg.norm(mean)
            assert spread[name] == pytest.approx(gaps.mean(), rel=1e-6), name
    assert all(v > 0 for v in spread.values())  # fresh routers vary, fresh experts differ


def test_static_model_and_foreign_files_exit_2(tmp_path, refuse):
    static = ArchSpec.from_dict(TINY)
    checkpoint.save(
        {"spec": static.to_dict(), "model": build_model(static).state_dict()}, tmp_path / "s.pt"
    )
    res = refuse("analyze", tmp_path / "s.pt")
    assert res.returncode == 2 and "no CondConv layers" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "routing").exists()
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    res = refuse("analyze", tmp_path / "notes.pt")
    assert res.returncode == 2 and "not a condconv-nas checkpoint" in res.stderr
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    res = refuse("analyze", tmp_path / "other.pt", "--data", "digits")
    assert res.returncode == 2 and "no spec" in res.stderr
    assert not (tmp_path / "routing").exists()


def _overflow(fig) -> list[float]:
    """How far (inches) what the figure draws reaches past its left, bottom, right and top edges:
    matplotlib's tight box holds every drawn text, title and tick label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # the constrained layout is made while drawing
    drawn, page = fig.get_tightbbox(renderer), fig.bbox_inches
    return [page.x0 - drawn.x0, page.y0 - drawn.y0, drawn.x1 - page.x1, drawn.y1 - page.y1]


def test_pictures_of_one_router_keep_their_titles_and_show_both_specificity_marks():
    """One router (routing shared by every CondConv layer): every title fits inside its picture,
    and in the specificity picture the class-spread mark (drawn on the twin axis, above) is an open
    marker larger than the specificity dot it may fall on, so neither hides the other."""
    from condconv_nas.routing_plots import PICTURES

    torch.manual_seed(0)
    model = build_model(tiny(5, share="single")).eval()
    _, val, _ = make_datasets(parse_source("digits"), 16, holdout=0.2, seed=0)
    info = analyze_routing(model, DataLoader(Subset(val, range(64)), batch_size=16))
    assert len(info["layers"]) == 1
    for name, plot in PICTURES.items():
        assert max(_overflow(plot(info))) <= 0.01, name
    fig = PICTURES["routing_specificity.png"](info)
    left, right = fig.axes[:2]
    (dots,), (squares,) = left.get_lines(), right.get_lines()
    assert fig.axes.index(right) > fig.axes.index(left) and right.zorder >= left.zorder
    assert squares.get_markerfacecolor() == "none"
    assert squares.get_markersize() > dots.get_markersize()


def test_pictures_of_a_saturated_router_show_its_marks_whole_on_a_fixed_scale():
    """A sigmoid router stuck at 1.0 (a quickstart's classifier): the mean's red line lies inside
    the histogram's frame, the points at 0 of the specificity picture sit above the frame's
    bottom, the class means use the whole [0, 1] scale, and each title gives the spread beside
    the specificity (0.34 of nothing is nothing)."""
    from condconv_nas.routing_plots import PICTURES

    layer = {
        "name": "classifier", "layers": [18], "num_experts": 4, "activation": "sigmoid",
        "class_means": [[1.0] * 4] * 10, "mean": [1.0] * 4, "std": [0.0] * 4,
        "class_specificity": 0.335, "class_spread": 0.0, "histogram": [0] * 19 + [359],
    }  # fmt: skip
    info = {"layers": [layer], "classes": [str(c) for c in range(10)], "num_examples": 359,
            "data": "digits", "split": "val", "bins": [i / 20 for i in range(21)]}  # fmt: skip
    hist = PICTURES["routing_distribution.png"](info).axes[0]
    (mean,) = hist.get_lines()
    left, right = hist.get_xlim()
    assert left < mean.get_xdata()[0] == 1.0 < right
    spec = PICTURES["routing_specificity.png"](info)
    for ax in spec.axes[:2]:
        low, high = ax.get_ylim()
        assert all(low < y < high for ln in ax.get_lines() for y in ln.get_ydata()), ax
    means = PICTURES["routing_class_means.png"](info).axes[0]
    assert means.images[0].get_clim() == (0, 1)
    assert "specificity 0.34, spread 0.000" in means.get_title()


class HandSet(nn.Module):
    """A CondConv2d with 2 experts (all ones, all threes) routed by ``gate``, then a CondLinear
    head with 3 experts (W, 2W, 3W) routed by ``head_gate``; every weight set by hand.

    Images are 1 x 2 x 2 of one value v: ``gate`` gives (sigmoid(v), 1/2) (expert 1's row and both
    biases zero), ``head_gate`` a softmax of zero logits, 1/3 for every expert and example."""

    def __init__(self):
        super().__init__()
        self.gate = Router(1, 2)
        self.conv = CondConv2d(1, 2, 1, num_experts=2)
        self.head_gate = Router(1, 3, activation="softmax")
        self.head = CondLinear(2, 2, num_experts=3)
        with torch.no_grad():
            self.gate.fc.weight.copy_(torch.tensor([[1.0], [0.0]]))
            self.gate.fc.bias.zero_()
            self.head_gate.fc.weight.zero_()
            self.head_gate.fc.bias.zero_()
            self.conv.weight[0].fill_(1.0)
            self.conv.weight[1].fill_(3.0)
            w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
            self.head.weight.copy_(torch.stack([w, 2 * w, 3 * w]))

    def forward(self, x):
        y = self.conv(x, self.gate(x)).mean((2, 3))
        return self.head(y, self.head_gate(x))


def hand_data():
    """Class 0: routing weights 0.1 and 0.3 for expert 0 of ``gate``; class 1: 0.7 and 0.9."""
    p = torch.tensor([0.1, 0.3, 0.7, 0.9, 0.1, 0.3, 0.7, 0.9])
    x = torch.logit(p, eps=0)[:, None, None, None].expand(-1, 1, 2, 2).contiguous()
    return TensorDataset(x, torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]))


def test_diagnostics_of_a_hand_set_model():
    """Expert spreads: the conv's experts 1 and 3 (mean 2): |1 - 2| / 2 = |3 - 2| / 2 = 0.5; the
    head's W, 2W, 3W (mean 2W): (1/2 + 0 + 1/2) / 3 = 1/3. Routing of ``gate``: expert 0 takes
    0.1, 0.3, 0.7, 0.9 alike often (std sqrt(0.1)), expert 1 is always 1/2 (std 0): example spread
    sqrt(0.1) / 2; class means 0.2 and 0.8 for expert 0 around 0.5: class spread
    sqrt((8 x 0.09 + 0) / (8 x 2)) = sqrt(0.045). ``head_gate`` is 1/3 everywhere: both 0."""
    model = HandSet()
    diag = condconv_diagnostics(model, hand_data(), batch_size=3)
    assert [lay["name"] for lay in diag["layers"]] == ["conv", "head"]
    assert [lay["num_experts"] for lay in diag["layers"]] == [2, 3]
    assert [lay["expert_spread"] for lay in diag["layers"]] == pytest.approx([0.5, 1 / 3])
    assert [r["name"] for r in diag["routers"]] == ["gate", "head_gate"]
    assert [r["serves"] for r in diag["routers"]] == [["conv"], ["head"]]
    assert [r["example_spread"] for r in diag["routers"]] == pytest.approx([0.1**0.5 / 2, 0])
    assert [r["class_spread"] for r in diag["routers"]] == pytest.approx([0.045**0.5, 0])
    assert diag["expert_spread"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert diag["example_spread"] == pytest.approx(0.1**0.5 / 4)
    assert diag["class_spread"] == pytest.approx(0.045**0.5 / 2)
    # kernel spread: the conv mixes p x ones + 1/2 x threes, its mean kernel 2 x ones, so an example
    # lies |p - 1/2| |ones| / (2 |ones|) from it: (0.4 + 0.2 + 0.2 + 0.4) / 4 / 2 = 0.15; the head's
    # routing never moves: 0
    assert [lay["kernel_spread"] for lay in diag["layers"]] == pytest.approx([0.15, 0])
    assert diag["kernel_spread"] == pytest.approx(0.075)
    assert set(diag) == {
        "layers",
        "routers",
        "expert_spread",
        "kernel_spread",
        "example_spread",
        "class_spread",
    }


def test_expert_spread_of_equal_fresh_and_opposite_experts():
    """0 for copies of one kernel (an upcycled start); about sqrt(n - 1) for experts drawn
    independently around zero (each entry of W_i - mean has n - 1 times the variance of one of the
    mean); None when the experts cancel (mean zero: nothing to measure against), 0 if all zero."""
    torch.manual_seed(0)
    fresh = CondConv2d(64, 64, 3, num_experts=4).weight
    assert expert_spread(fresh) == pytest.approx(math.sqrt(3), rel=0.02)
    assert expert_spread(CondLinear(256, 128, num_experts=8).weight) == pytest.approx(
        math.sqrt(7), rel=0.02
    )
    assert expert_spread(fresh[:1].expand(4, -1, -1, -1, -1)) == 0.0
    assert expert_spread(torch.stack([fresh[0], -fresh[0]])) is None
    assert expert_spread(torch.zeros(3, 2, 2)) == 0.0
