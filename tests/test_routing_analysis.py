"""`condconv-nas analyze` / `analyze_routing`: the routing statistics against hooks written here."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from condconv_nas import ArchSpec, analyze_routing, build_model
from condconv_nas.data import make_datasets, parse_source
from condconv_nas.layers import CondConv2d, CondLinear, Router
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
    res = cli("analyze", trained, "--out", out)
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "routing.json").read_text())
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
    assert table[0].split()[:3] == ["router", "experts", "specificity"] and len(table) == 2 + 4
    assert "L7 classifier" in res.stdout


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


def test_static_model_and_foreign_files_exit_2(tmp_path, cli):
    static = ArchSpec.from_dict(TINY)
    checkpoint.save(
        {"spec": static.to_dict(), "model": build_model(static).state_dict()}, tmp_path / "s.pt"
    )
    res = cli("analyze", tmp_path / "s.pt")
    assert res.returncode == 2 and "no CondConv layers" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "routing").exists()
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    res = cli("analyze", tmp_path / "notes.pt")
    assert res.returncode == 2 and "not a condconv-nas checkpoint" in res.stderr
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    res = cli("analyze", tmp_path / "other.pt", "--data", "digits")
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
