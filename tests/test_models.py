"""The model zoo: presets, placement, parameter counts and MADDs against independent references."""

import pytest
import timm
import torch

from condconv_nas import build_model, count_madds, count_params, load_spec
from condconv_nas.archs import BASES
from condconv_nas.layers import CondConv2d, CondLinear, Router
from condconv_nas.spec import PRESETS, ArchSpec
from condconv_nas.table1 import PAPER_TABLE1

PARAMS = {  # every preset's parameter count: test_same_parameters_as_timm checks each of them
    "mobilenet-v1": 4231976,
    "condconv-mobilenet-v1": 32826824,
    "mobilenet-v2": 3504872,
    "condconv-mobilenet-v2": 22885496,
    "mnasnet-a1": 3887038,
    "condconv-mnasnet-a1": 14984718,
    "resnet50": 25557032,
    "condconv-resnet50": 129872800,
    "efficientnet-b0": 5288548,
    "condconv-efficientnet-b0": 24013284,
    "condconv-efficientnet-b0-depth": 39715968,
    "efficientnet-b1": 7794184,
}

# timm's own network for every static preset (MnasNet-A1 is timm's semnasnet_100, the one with
# squeeze-excitation; its mnasnet_100 is MnasNet-B1)
TIMM_STATIC = {
    "mobilenet-v1": "mobilenetv1_100",
    "mobilenet-v2": "mobilenetv2_100",
    "mnasnet-a1": "semnasnet_100",
    "resnet50": "resnet50",
    "efficientnet-b0": "efficientnet_b0",
    "efficientnet-b1": "efficientnet_b1",  # width 1.0, depth 1.1: our preset's network
}
# Every CondConv preset as the paper places it (docs/method.md's table: the static network, the
# begin layer, whether the classifier is CondConv; 8 experts, one router per block)...
CONDCONV_PLACEMENT = {
    "condconv-mobilenet-v1": ("mobilenetv1_100", 7, True),
    "condconv-mobilenet-v2": ("mobilenetv2_100", 13, True),
    "condconv-mnasnet-a1": ("semnasnet_100", 12, False),
    "condconv-resnet50": ("resnet50", 15, True),
    "condconv-efficientnet-b0": ("efficientnet_b0", 10, False),
    "condconv-efficientnet-b0-depth": ("efficientnet_b1", 14, False),
}
# ... and timm's own CondConv networks where timm has ours: efficientnet_cc_b0_8e and _cc_b1_8e
# make the blocks of the last three stages CondConv (8 experts, a routing FC per block on its
# input, squeeze-excitation and the classifier static), which is the paper's layer 10 of
# EfficientNet-B0 and layer 14 of its depth-1.1 version; their CondConv weights are stored flat,
# (experts, out * in * kh * kw), so only the counts compare, not the shapes
TIMM_CONDCONV = {
    "condconv-efficientnet-b0": "efficientnet_cc_b0_8e",
    "condconv-efficientnet-b0-depth": "efficientnet_cc_b1_8e",
}


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _condconv_params_by_hand(static, begin_layer: int, classifier: bool, experts: int = 8) -> int:
    """The parameters of ``static`` (a timm network) made CondConv as docs/method.md says, counted
    from its own modules: every convolution that is a direct child of a block from
    ``begin_layer`` on (layer 1 the stem, layer j + 1 block j) and the classifier if
    ``classifier`` keep ``experts`` copies of their weights and biases, and each of those blocks
    and the classifier gets a router, a Linear(its input channels, experts) with a bias."""
    if hasattr(static, "blocks"):  # timm's EfficientNet builder: stages of blocks
        blocks = [block for stage in static.blocks for block in stage]
    else:  # timm's ResNet
        layers = (static.layer1, static.layer2, static.layer3, static.layer4)
        blocks = [block for layer in layers for block in layer]
    cond_layers, router_inputs = [], []
    for layer_number, block in enumerate(blocks, start=2):
        if layer_number >= begin_layer:
            convs = [c for c in block.children() if isinstance(c, torch.nn.Conv2d)]
            cond_layers += convs
            router_inputs.append(convs[0].in_channels)  # the block's input
    if classifier:
        fc = static.get_classifier()
        cond_layers.append(fc)
        router_inputs.append(fc.in_features)
    return (
        _numel(static)
        + sum((experts - 1) * _numel(layer) for layer in cond_layers)
        + sum(c * experts + experts for c in router_inputs)
    )


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_runs_forward_backward(name):
    torch.manual_seed(0)
    spec = load_spec(name).replace(num_classes=10)
    model = build_model(spec).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    cond = [m for m in model.modules() if isinstance(m, (CondConv2d, CondLinear))]
    assert all(m.weight.grad is not None for m in cond)
    # (timm's ResNet zero-initialises each block's last BN, so only some CondConv grads are non-zero
    # there)
    assert not cond or any(m.weight.grad.abs().sum() > 0 for m in cond)
    assert count_params(build_model(name)) == PARAMS[name]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_parameters_as_timm(preset):
    """Every preset's count (ours, and PARAMS) against timm's: its own network for the static
    presets (the same tensors, shape for shape), and for the CondConv ones a count by hand from
    timm's static network, which equals timm's own CondConv network where timm has it."""
    assert set(PARAMS) == set(PRESETS) == set(TIMM_STATIC) | set(CONDCONV_PLACEMENT)
    ours = build_model(preset)
    if preset in TIMM_STATIC:
        ref = timm.create_model(TIMM_STATIC[preset], pretrained=False)
        expected = _numel(ref)
        shapes = sorted(tuple(p.shape) for p in ref.parameters())
        assert sorted(tuple(p.shape) for p in ours.parameters()) == shapes
    else:
        name, begin_layer, classifier = CONDCONV_PLACEMENT[preset]
        static = timm.create_model(name, pretrained=False)
        expected = _condconv_params_by_hand(static, begin_layer, classifier)
        assert expected > _numel(static)
        if preset in TIMM_CONDCONV:
            assert _numel(timm.create_model(TIMM_CONDCONV[preset], pretrained=False)) == expected
    assert count_params(ours) == expected and PARAMS[preset] == expected


# the paper's Table 1, millions of MADDs at 224 px, written here rather than read from the
# package's own copy (condconv_nas.table1), which the test would otherwise grade itself against
PAPER_MADDS_M = {
    "mobilenet-v1": 567, "condconv-mobilenet-v1": 600,
    "mobilenet-v2": 301, "condconv-mobilenet-v2": 329,
    "mnasnet-a1": 312, "condconv-mnasnet-a1": 325,
    "resnet50": 4093, "condconv-resnet50": 4213,
    "efficientnet-b0": 391, "condconv-efficientnet-b0": 413,
}  # fmt: skip


@pytest.mark.parametrize("preset", PAPER_MADDS_M)
def test_table1_within_2_5_percent(preset):
    madds, paper = count_madds(preset) / 1e6, PAPER_MADDS_M[preset]
    assert abs(madds - paper) / paper <= 0.025, (preset, madds, paper)


def test_the_packages_table1_is_the_papers():
    rows = {r[1]: r[3] for r in PAPER_TABLE1} | {r[2]: r[4] for r in PAPER_TABLE1}
    assert rows == PAPER_MADDS_M


def test_presets_place_condconv_as_the_paper():
    def cond_blocks(name):
        m = build_model(name)
        blocks = m.spec.num_blocks
        convs = [n for n, mod in m.named_modules() if isinstance(mod, CondConv2d)]
        fc = any(isinstance(mod, CondLinear) for mod in m.modules())
        return blocks, len(convs), fc

    assert cond_blocks("condconv-efficientnet-b0") == (
        16,
        8 * 3,
        False,
    )  # final 3 stages: 3+4+1 blocks
    assert cond_blocks("condconv-efficientnet-b0-depth") == (23, 11 * 3, False)
    assert cond_blocks("condconv-mobilenet-v1") == (13, 8 * 2, True)  # separable blocks 6..13
    assert cond_blocks("condconv-mobilenet-v2") == (17, 6 * 3, True)
    assert cond_blocks("condconv-mnasnet-a1") == (16, 6 * 3, False)
    assert cond_blocks("condconv-resnet50") == (16, 3 * 3, True)
    # SE, head conv and shortcut projections stay static
    m = build_model("condconv-resnet50")
    assert isinstance(
        m.net.layer4[0].module.downsample[0], torch.nn.Conv2d
    )  # static (maybe cropping)
    b0 = build_model("condconv-efficientnet-b0")
    assert isinstance(b0.net.blocks[6][0].module.se.conv_reduce, torch.nn.Conv2d)
    assert isinstance(b0.net.conv_head, torch.nn.Conv2d)


# A tiny spec, counted by hand: MobileNetV1 0.25x, one block per stage, 32 px, 10 classes.
TINY = {
    "base": "mobilenet_v1",
    "width_multiplier": 0.25,
    "depth_multiplier": 0.1,
    "resolution": 32,
    "num_classes": 10,
}
# stem 3->8 k3 s2 at 16x16; blocks (in, out, H_out): (8,16,16) (16,32,8) (32,64,4) (64,128,2)
# (128,256,1)
STATIC = (
    8 * 27 * 256
    + sum(
        c * 9 * h * h + c * o * h * h
        for c, o, h in [(8, 16, 16), (16, 32, 8), (32, 64, 4), (64, 128, 2), (128, 256, 1)]
    )
    + 256 * 10
)
# CondConv from layer 5 (blocks 4, 5) and the classifier, 4 experts: mixing = n x kernel size (+
# bias mixing)
MIXING = 4 * (64 * 9 + 128 * 64 + 128 * 9 + 256 * 128 + 10 * 256) + 4 * 10


def tiny(share="block", hidden="none", hierarchical=False):
    return ArchSpec.from_dict(
        {
            **TINY,
            "condconv": {
                "begin_layer": 5,
                "num_experts": 4,
                "classifier": True,
                "routing": {
                    "share": share,
                    "hidden": hidden,
                    "activation": "sigmoid",
                    "hierarchical": hierarchical,
                },
            },
        }
    )


def test_hand_computed_madds_tiny():
    assert STATIC == 257408
    assert count_madds(ArchSpec.from_dict(TINY)) == STATIC
    # block routing: one FC per unit on its input: 64 -> 4, 128 -> 4, classifier 256 -> 4
    assert count_madds(tiny()) == STATIC + MIXING + (64 + 128 + 256) * 4
    assert count_madds(tiny(), resolution=64) > count_madds(tiny())


def test_hand_computed_madds_with_skip_downsample():
    # skip 2: the stem and block 2 at stride 1, so the maps are 4x larger on each side until the
    # three halvings left: (8,16,32) (16,32,32) (32,64,16) (64,128,8) (128,256,4)
    skipped = ArchSpec.from_dict({**TINY, "skip_downsample": 2})
    hand = (
        8 * 27 * 32 * 32
        + sum(
            c * 9 * h * h + c * o * h * h
            for c, o, h in [(8, 16, 32), (16, 32, 32), (32, 64, 16), (64, 128, 8), (128, 256, 4)]
        )
        + 256 * 10
    )
    assert count_madds(skipped) == hand
    # CondConv's mixing is per example, not per position: the same as without the skip
    cc = skipped.replace(condconv=tiny().to_dict()["condconv"])
    assert count_madds(cc) == hand + MIXING + (64 + 128 + 256) * 4


def test_a_count_that_cannot_fit_in_memory_is_refused_before_tracing(monkeypatch):
    from condconv_nas import madds
    from condconv_nas.errors import UsageError

    # MobileNetV1 at 224 px: its largest layer is the BatchNorm after the first pointwise
    # convolution, 64 channels at 112x112 in and out
    assert madds.largest_layer_bytes(build_model(load_spec("mobilenet-v1")), 224) == (
        2 * 64 * 112 * 112 * 4
    )
    # every halving skipped at 1024 px: 1024 channels at 1024x1024, 8 GiB in and out, held twice
    # while traced; with 14 GiB free (above the quick bound's 12) the count is refused, not
    # traced into the out-of-memory killer
    skip5 = load_spec("mobilenet-v1").replace(skip_downsample=5)
    monkeypatch.setattr(madds, "_available_bytes", lambda device: 14 * 2**30)
    monkeypatch.setattr(madds, "JitModelAnalysis", None)  # a trace would fail the test
    with pytest.raises(UsageError, match=r"resolution 1024: .* 16\.0 GB .* 14\.0 GB are free"):
        count_madds(skip5, resolution=1024)
    monkeypatch.undo()
    assert count_madds(tiny()) == STATIC + MIXING + (64 + 128 + 256) * 4  # small ones still count


@pytest.mark.parametrize("base", BASES)
def test_skip_downsample_keeps_larger_maps_for_every_base(base):
    from condconv_nas.archs import stride_steps as steps_of
    from condconv_nas.models import FAMILIES
    from condconv_nas.models.strides import stride_steps

    spec = ArchSpec.from_dict({"base": base, "resolution": 32, "num_classes": 10})
    static = build_model(spec)
    assert len(stride_steps(static.net, FAMILIES[base])) == steps_of(base) == 5
    x = torch.randn(2, 3, 32, 32)
    for k in (0, 1, 2):
        model = build_model(spec.replace(skip_downsample=k)).eval()
        assert model.net.forward_features(x).shape[-1] == 2**k
        assert len(stride_steps(model.net, FAMILIES[base])) == 5 - k
        # the same weights, the same layers: only strides change
        assert count_params(model) == count_params(static)
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize(
    "share,routers,routing_madds",
    [
        (
            "layer",
            5,
            (64 + 64 + 128 + 128 + 256) * 4,
        ),  # one per CondConv layer, on that layer's input
        ("block", 3, (64 + 128 + 256) * 4),  # one per block (and the classifier)
        ("pair", 2, (64 + 256) * 4),  # units (b4, b5) share, then the classifier
        ("single", 1, 64 * 4),  # once where CondConv begins
    ],
)
def test_routing_share(share, routers, routing_madds):
    spec = tiny(share)
    model = build_model(spec)
    assert sum(isinstance(m, Router) for m in model.modules()) == routers
    assert count_madds(model) == STATIC + MIXING + routing_madds
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_routing_hidden_and_hierarchical():
    # small hidden layer: in -> in/8 -> n
    small = sum(c * (c // 8) + (c // 8) * 4 for c in (64, 128, 256))
    assert count_madds(tiny(hidden="small")) == STATIC + MIXING + small
    medium = sum(c * c + c * 4 for c in (64, 128, 256))
    assert count_madds(tiny(hidden="medium")) == STATIC + MIXING + medium
    # hierarchical: every router after the first also reads the previous 4 routing weights
    assert (
        count_madds(tiny(hierarchical=True)) == STATIC + MIXING + (64 + 128 + 256) * 4 + 2 * 4 * 4
    )
    routers = [m for m in build_model(tiny(hierarchical=True)).modules() if isinstance(m, Router)]
    assert [r.prev_features for r in routers] == [0, 4, 4]
    soft = build_model(
        tiny().replace(
            condconv=tiny().condconv.__class__(
                begin_layer=5,
                num_experts=4,
                classifier=True,
                routing=tiny().condconv.routing.__class__(activation="softmax"),
            )
        )
    )
    assert all(r.activation == "softmax" for r in soft.modules() if isinstance(r, Router))


def test_begin_layer_1_makes_stem_condconv_and_classifier_switch():
    spec = ArchSpec.from_dict(
        {**TINY, "condconv": {"begin_layer": 1, "num_experts": 2, "classifier": False}}
    )
    model = build_model(spec)
    assert isinstance(model.net.conv_stem.module, CondConv2d)
    assert type(model.net.classifier) is torch.nn.Linear
    fc_only = ArchSpec.from_dict(
        {**TINY, "condconv": {"begin_layer": 7, "num_experts": 2, "classifier": True}}
    )
    m = build_model(fc_only)
    assert sum(isinstance(x, CondConv2d) for x in m.modules()) == 0
    assert isinstance(m.net.classifier.module, CondLinear)


def test_uncountable_weighted_op_raises():
    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, x):
            return self.emb((x.flatten(1)[:, :3] > 0).long())

    with pytest.raises(ValueError, match="aten::embedding"):
        count_madds(Embed(), resolution=8)


def test_trace_of_a_built_model_matches_eager():
    model = build_model(tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    assert torch.allclose(traced(x), model(x), atol=1e-5)
