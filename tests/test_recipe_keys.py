"""The recipe keys that set how CondConv's routers and experts train, against hand computation."""

import math

import pytest
import torch
from timm.optim import param_groups_weight_decay

from condconv_nas.errors import UsageError
from condconv_nas.layers import Router
from condconv_nas.spec import load_spec
from condconv_nas.training.epoch import train_epoch
from condconv_nas.training.init import build_for_training
from condconv_nas.training.optim import param_groups, routing_temperature, setup_training
from condconv_nas.training.recipe import Recipe, recipe_from_dict

CC = "condconv-mobilenet-v1"


def test_router_divides_its_logits_by_the_temperature():
    router = Router(4, 3)
    x = torch.randn(5, 4)
    logits = router.fc(x)
    router.temperature = 30.0
    assert torch.allclose(router(x), torch.sigmoid(logits / 30))
    soft = Router(4, 3, activation="softmax")
    soft.temperature = 4.0
    assert torch.allclose(soft(x), torch.softmax(soft.fc(x) / 4, dim=1))


def test_routing_temperature_anneals_linearly_to_1_within_the_training():
    r = Recipe(routing_temperature=31.0, routing_warmup_epochs=2)
    assert [routing_temperature(r, 10, e) for e in (0, 0.5, 1, 2, 5)] == [31, 23.5, 16, 1, 1]
    # a warm-up longer than the training ends with it: the last epoch trains at 1
    assert routing_temperature(r, 1, 0.5) == 16 and routing_temperature(r, 1, 1) == 1
    assert routing_temperature(Recipe(), 10, 0) == 1


def test_a_temperature_without_a_warm_up_or_the_reverse_is_refused():
    for keys in ({"routing_temperature": 30.0}, {"routing_warmup_epochs": 2}):
        with pytest.raises(UsageError, match="routing_temperature and routing_warmup_epochs"):
            recipe_from_dict(keys)
    with pytest.raises(UsageError, match="overrides.mobilenet_v1"):
        recipe_from_dict({"overrides": {"mobilenet_v1": {"routing_warmup_epochs": 1}}})


def routers(model):
    return [m for m in model.modules() if isinstance(m, Router)]


def test_router_init_timm_zeroes_the_bias_and_bounds_the_weights():
    torch.manual_seed(0)
    default = build_for_training(load_spec(CC), Recipe())
    assert all(r.fc.bias.abs().sum() > 0 for r in routers(default))  # nn.Linear's random bias
    model = build_for_training(load_spec(CC), Recipe(router_init="timm"))
    for r in routers(model):
        bound = 1 / math.sqrt(r.fc.in_features + r.fc.out_features)
        assert torch.all(r.fc.bias == 0)
        assert r.fc.weight.abs().max() <= bound and r.fc.weight.abs().max() > 0.9 * bound


def test_router_weight_decay_acts_on_router_weights_only():
    model = build_for_training(load_spec(CC), Recipe())
    ids = {id(p): n for n, p in model.named_parameters()}
    router_weights = {id(r.fc.weight) for r in routers(model)}

    def decays(groups):
        return {id(p): g["weight_decay"] for g in groups for p in g["params"]}

    # timm's own groups are the reference: every parameter keeps its decay but the routers' weights
    timm = decays(param_groups_weight_decay(model, 0.05))
    assert set(timm) == set(ids) and {timm[pid] for pid in router_weights} == {0.05}
    got = decays(param_groups(model, 0.05, router_weight_decay=0.3))
    assert got == {pid: 0.3 if pid in router_weights else timm[pid] for pid in ids}
    assert decays(param_groups(model, 0.05)) == timm


def test_every_key_has_a_default_that_changes_nothing():
    model = build_for_training(load_spec(CC), Recipe())
    r = Recipe()
    groups = param_groups(
        model, 0.05, r.expert_lr, r.router_lr, r.router_weight_decay, r.router_lr_scale
    )
    timm = param_groups_weight_decay(model, 0.05)
    assert [(g["weight_decay"], [id(p) for p in g["params"]]) for g in groups] == [
        (g["weight_decay"], [id(p) for p in g["params"]]) for g in timm
    ]
    assert not any("lr_scale" in g for g in groups)
    t = setup_training(model, r, num_classes=1000, steps_per_epoch=10, epochs=3)
    assert t.temperature is None


def test_the_router_keys_reach_the_optimizer_and_the_training_steps():
    torch.manual_seed(0)
    recipe = Recipe(
        optimizer="adamw",
        lr=0.01,
        router_weight_decay=0.3,
        router_lr_scale=10.0,
        routing_temperature=31.0,
        routing_warmup_epochs=2,
    )
    spec = load_spec(CC).replace(num_classes=4, resolution=32, width_multiplier=0.25)
    model = build_for_training(spec, recipe)
    t = setup_training(model, recipe, num_classes=4, steps_per_epoch=2, epochs=4)
    router_weights = {id(r.fc.weight) for r in routers(model)}
    router_params = {id(p) for r in routers(model) for p in r.fc.parameters()}
    for g in t.optimizer.param_groups:
        for p in g["params"]:
            assert (g["weight_decay"] == 0.3) == (id(p) in router_weights)
            assert g.get("lr_scale", 1.0) == (10.0 if id(p) in router_params else 1.0)
    assert t.temperature(0) == 31
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))] * 2
    train_epoch(t, data, epoch=0)  # two steps: the second ran at 1 + 30 x (1 - 0.5 / 2)
    assert {r.temperature for r in routers(model)} == {16.0}  # the temperature after epoch 1


def test_router_lr_scale_multiplies_the_routers_lr_only():
    model = build_for_training(load_spec(CC), Recipe())
    router_params = {id(p) for r in routers(model) for p in r.fc.parameters()}
    scale_of = {
        id(p): g.get("lr_scale", 1.0)
        for g in param_groups(model, 0.05, expert_lr="rsqrt", router_lr_scale=10.0)
        for p in g["params"]
    }
    assert len(scale_of) == len(list(model.parameters()))  # every parameter once
    from condconv_nas.layers import CondConv2d, CondLinear

    experts = {
        id(p): m.num_experts
        for m in model.modules()
        if isinstance(m, (CondConv2d, CondLinear))
        for p in m.parameters(recurse=False)
    }
    assert experts
    for pid, scale in scale_of.items():
        if pid in router_params:
            assert scale == 10.0
        elif pid in experts:
            assert scale == pytest.approx(1 / math.sqrt(experts[pid]))
        else:
            assert scale == 1.0
    rsqrt = {
        id(p): g.get("lr_scale", 1.0)
        for g in param_groups(model, 0.05, router_lr="rsqrt", router_lr_scale=10.0)
        for p in g["params"]
    }
    for r in routers(model):
        assert rsqrt[id(r.fc.weight)] == pytest.approx(10 / math.sqrt(r.fc.in_features))


def classifier_of(model):
    head = model.net.get_classifier()
    return head.module, head.router


@pytest.mark.parametrize("start", ["zero", "zero_sum"])
def test_a_zero_sum_classifier_start_gives_its_router_a_gradient_at_the_first_step(start):
    torch.manual_seed(0)
    model = build_for_training(load_spec(CC), Recipe(router_init="timm", classifier_init=start))
    fc, router = classifier_of(model)
    assert router is not None  # the paper's placement routes its classifier itself
    # the experts' mean is the zero classifier either way; zero_sum keeps each expert's draw
    assert torch.allclose(fc.weight.mean(0), torch.zeros_like(fc.weight[0]), atol=1e-7)
    assert torch.all(fc.bias == 0)
    assert (fc.weight.abs().sum() > 0) == (start == "zero_sum")
    model.eval()  # the running BN statistics: the logits are of the model as it starts
    x = torch.randn(4, 3, 64, 64)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    loss.backward()
    grad = router.fc.weight.grad.abs().sum()
    if start == "zero":
        assert torch.all(logits == 0) and grad == 0  # every expert 0: nothing to route
    else:
        # sum_i r_i (W_i - mean W) is small while the routing varies little: the loss starts
        # near ln C, as from the zero classifier, and the router has a gradient
        assert abs(loss.item() - math.log(logits.shape[1])) < 0.25 and grad > 0
