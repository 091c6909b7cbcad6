"""The search's proxy: short training that learns, fair to CondConv, and its chance-level rule."""

import math

import pytest
import torch
import torch.nn as nn

from condconv_nas import load_spec
from condconv_nas.data import parse_source
from condconv_nas.errors import UsageError
from condconv_nas.layers import CondConv2d, CondLinear
from condconv_nas.results import pareto_front
from condconv_nas.training.bn_stats import recalibrate_bn
from condconv_nas.training.evaluate import chance_threshold
from condconv_nas.training.init import build_for_training
from condconv_nas.training.optim import setup_training
from condconv_nas.training.proxy import proxy_top1
from condconv_nas.training.recipe import load_recipe, recipe_from_dict

# Many experts, per-layer hierarchical routing with a hidden layer, a CondConv classifier: the kind
# of candidate the proxy of condconv-nas 0.1 left at chance.
MANY_EXPERTS = {
    "schema_version": 1,
    "base": "efficientnet_b0",
    "width_multiplier": 0.5,
    "depth_multiplier": 1.0,
    "resolution": 224,
    "num_classes": 1000,
    "condconv": {
        "begin_layer": 12,
        "num_experts": 16,
        "classifier": True,
        "routing": {
            "share": "layer",
            "hidden": "small",
            "activation": "sigmoid",
            "hierarchical": True,
        },
    },
}


# Softmax routing over 16 independently drawn experts, a router per layer: from scratch its
# gradients exploded and it stayed at chance (0.107 here, 0.12 on Fashion-MNIST) until such
# experts started alike (0.81 here).
SOFTMAX_PER_LAYER = {
    **MANY_EXPERTS,
    "condconv": {
        "begin_layer": 1,
        "num_experts": 16,
        "classifier": True,
        "routing": {"share": "layer", "hidden": "none", "activation": "softmax"},
    },
}


@pytest.mark.parametrize(
    "spec",
    ["mobilenet-v2", {**MANY_EXPERTS, "width_multiplier": 0.25}, SOFTMAX_PER_LAYER],
    ids=["mobilenet-v2", "16-experts-hierarchical-quarter-width", "16-experts-softmax-per-layer"],
)
def test_proxy_learns_well_above_chance(spec):
    """From scratch with the proxy a search on digits runs (6 epochs, 1 training): about 0.89 on
    one core (chance 0.1); the proxy of 0.1 reached 0.40 (mobilenet-v2) and 0.1 to 0.25 with 16
    experts."""
    recipe = load_recipe("proxy").for_data("digits")
    metrics = proxy_top1(load_spec(spec), parse_source("digits"), recipe)
    assert metrics["top1"] >= 0.8, metrics
    assert metrics["top1"] > metrics["chance_threshold"] + 0.5


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_softmax_routed_experts_start_alike_and_sigmoid_ones_independent(activation):
    cc = SOFTMAX_PER_LAYER["condconv"]
    spec = {
        **SOFTMAX_PER_LAYER,
        "condconv": {**cc, "routing": {**cc["routing"], "activation": activation}},
    }
    model = build_for_training(load_spec(spec).replace(num_classes=10), recipe_from_dict({}))
    # the CondConv classifier starts at zero either way (zero_classifier)
    layers = [m for m in model.modules() if isinstance(m, CondConv2d)]
    assert len(layers) > 20
    alike = [all(torch.equal(w, m.weight[0]) for w in m.weight) for m in layers]
    assert alike == [activation == "softmax"] * len(layers)


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    spec = load_spec("condconv-efficientnet-b0").replace(num_classes=10, width_multiplier=0.5)
    model = build_for_training(spec, recipe_from_dict({"zero_init_residual": True})).eval()
    seen = []

    def hook(module, inputs, output):
        seen.append(torch.equal(output, inputs[0]))

    blocks = [m for m in model.modules() if getattr(m, "has_skip", False)]
    assert len(blocks) == 9  # B0's blocks with a skip: 16 minus the first of each of the 7 stages
    for m in blocks:
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert seen == [True] * 9
    untouched = build_for_training(spec, recipe_from_dict({})).eval()
    assert all(
        m.bn3.weight.abs().sum() > 0
        for m in untouched.modules()
        if getattr(m, "has_skip", False) and hasattr(m, "bn3")
    )


@pytest.mark.parametrize("schedule", ["cosine", "none"])
def test_expert_lr_rsqrt_scales_every_expert_and_nothing_else(schedule):
    spec = load_spec("condconv-mobilenet-v2").replace(num_classes=10)
    recipe = recipe_from_dict(
        {
            "optimizer": "adamw",
            "lr": 0.004,
            "expert_lr": "rsqrt",
            "schedule": schedule,
            "weight_decay": 0.01,
        }
    )
    model = build_for_training(spec, recipe)
    t = setup_training(model, recipe, num_classes=10, steps_per_epoch=10, epochs=2)
    if t.scheduler is not None:
        t.scheduler.step_update(7)
    experts = {
        id(p)
        for m in model.modules()
        if isinstance(m, (CondConv2d, CondLinear))
        for p in m.parameters()
    }
    lr_of = {id(p): g["lr"] for g in t.optimizer.param_groups for p in g["params"]}
    assert set(lr_of) == {id(p) for p in model.parameters()}  # every parameter, once
    others = {lr for i, lr in lr_of.items() if i not in experts}
    assert len(others) == 1
    base = others.pop()
    # timm's cosine over 20 updates, at update 7
    assert base == pytest.approx(
        0.004 if schedule == "none" else 0.004 * (1 + math.cos(math.pi * 7 / 20)) / 2
    )
    assert [lr_of[i] for i in experts] == pytest.approx([base / math.sqrt(8)] * len(experts))


def test_recalibrated_bn_statistics_are_the_exact_mean_and_variance_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.BatchNorm2d(4)
    )
    batches = [(torch.randn(5, 3, 8, 8) * 3 + 1, None) for _ in range(4)]
    model.eval()
    recalibrate_bn(model, batches, 3)
    assert not model.training and model[1].momentum == 0.3 and model[3].momentum == 0.1
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in batches[:3]])  # the 4th batch is not used
    # each batch's statistics averaged over the batches (BN's cumulative mode), unbiased variance
    # per batch
    per_batch = feats.view(3, 5, 4, 6, 6).transpose(1, 2).reshape(3, 4, -1)
    torch.testing.assert_close(model[1].running_mean, per_batch.mean(2).mean(0))
    torch.testing.assert_close(model[1].running_var, per_batch.var(2, unbiased=True).mean(0))


def test_chance_threshold_is_a_one_sided_binomial_test():
    assert chance_threshold(10, 449) == pytest.approx(0.1 + 3.1 * math.sqrt(0.09 / 449))  # 0.1439
    assert chance_threshold(1000, 50000) == pytest.approx(
        0.001 + 3.1 * math.sqrt(0.001 * 0.999 / 50000)
    )


def test_recipe_refuses_an_unknown_expert_lr():
    with pytest.raises(UsageError, match="expert_lr"):
        recipe_from_dict({"expert_lr": "double"})


def test_untrained_trials_stay_off_the_front():
    rows = [
        dict(trial=0, state="COMPLETE", feasible=True, madds=100, top1=0.12, untrained=True),
        dict(trial=1, state="COMPLETE", feasible=True, madds=200, top1=0.90, untrained=False),
    ]
    assert [r["trial"] for r in pareto_front(rows)] == [1]


def test_repeats_score_a_candidate_by_the_mean_of_trainings_from_different_seeds():
    """repeats: 2 is the mean of the two single trainings from seeds s and s + 1000 (same split);
    epoch progress counts over both."""
    one = recipe_from_dict({"epochs": 1, "batch_size": 64, "resolution": 16, "optimizer": "adamw"})
    two = recipe_from_dict({**one.__dict__, "overrides": {}, "repeats": 2})
    spec, data = load_spec("mobilenet-v1").replace(width_multiplier=0.25), parse_source("digits")
    singles = [proxy_top1(spec, data, one, seed=s)["top1"] for s in (3, 1003)]
    epochs = []
    both = proxy_top1(spec, data, two, seed=3, on_epoch=lambda e, n: epochs.append((e, n)))
    assert both["top1_repeats"] == pytest.approx(singles, abs=1e-6)
    assert both["top1"] == pytest.approx(sum(singles) / 2, abs=1e-6)
    assert epochs == [(1, 2), (2, 2)]


def test_a_proxy_training_keeps_the_callers_random_state_and_its_score_whatever_ran_before():
    """A training seeds a stream of its own: torch's global random state is as the caller left it,
    and the training is the same whether the CondConv layers' forms were timed mid-training (an
    empty cache) or not (the cache the first run filled). drop_path draws from the global stream
    during training, so a random draw inside the timing would change the loss."""
    from condconv_nas.layers import strategy as S

    one = recipe_from_dict(
        {"epochs": 1, "batch_size": 64, "resolution": 16, "optimizer": "adamw", "drop_path": 0.2}
    )
    spec = load_spec(MANY_EXPERTS).replace(width_multiplier=0.25)
    data = parse_source("digits")
    S.clear_cache()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    timed = proxy_top1(spec, data, one, seed=3)  # every form timed during its first steps
    assert torch.equal(torch.get_rng_state(), before)
    cached = proxy_top1(spec, data, one, seed=3)  # the same forms, no timing
    assert (timed["train_loss"], timed["top1"]) == (cached["train_loss"], cached["top1"])
