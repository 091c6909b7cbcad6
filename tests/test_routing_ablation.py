"""`routing_ablation`: a model scored with its routing and with every router fixed at its mean,
against a hand-set model whose answer needs per-example kernels and against `evaluate`."""

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from condconv_nas import ArchSpec, evaluate, load_exported, routing_ablation, train
from condconv_nas.errors import UsageError
from condconv_nas.layers import CondConv2d, Router


class NeedsRouting(nn.Module):
    """Images are 1 x 1 x 1 of one value v. ``gate`` routes (sigmoid(10 v), sigmoid(-10 v)) to a
    1x1 CondConv with experts +1 and -1, so the kernel is tanh(5 v) and the feature k = v tanh(5 v)
    (large for |v| = 2, small for |v| = 0.1); the head says class 1 when k > 0.5."""

    def __init__(self):
        super().__init__()
        self.gate = Router(1, 2)
        self.conv = CondConv2d(1, 1, 1, num_experts=2)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.gate.fc.weight.copy_(torch.tensor([[10.0], [-10.0]]))
            self.gate.fc.bias.zero_()
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([[0.0], [1.0]]))
            self.head.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x):
        return self.head(self.conv(x, self.gate(x)).flatten(1))


def images(values, labels=None):
    x = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.tensor(labels if labels is not None else [0] * len(values))
    return TensorDataset(x, y)


SCORED = images([-2.0, -0.1, 0.1, 2.0] * 3, [1, 0, 0, 1] * 3)


def test_fixing_the_routing_of_a_model_that_needs_it_costs_what_hand_computation_says():
    # routed: every example right. The mean routing over symmetric images is (1/2, 1/2): the kernel
    # is 0, k = 0 < 0.5, every example called 0: half right.
    r = routing_ablation(NeedsRouting(), SCORED, mean_data=images([-2.0, 2.0, -0.1, 0.1]))
    # no BatchNorm: re-estimating statistics changes nothing
    assert (r["top1"], r["top1_bn"], r["top1_fixed"], r["top1_fixed_bn"]) == (1.0, 1.0, 0.5, 0.5)
    assert r["drop"] == 0.5
    assert (r["images"], r["mean_images"]) == (12, 4)
    # the mean is taken over mean_data, not the scored images: over v = 2 alone it is about
    # (1, 0), the kernel +1, k = v: right for v = 2 and +-0.1, wrong for v = -2
    r = routing_ablation(NeedsRouting(), SCORED, mean_data=images([2.0] * 5), mean_images=3)
    assert (r["top1"], r["top1_fixed"], r["mean_images"]) == (1.0, 0.75, 3)


def test_the_model_is_left_routing_as_before():
    model = NeedsRouting().train()
    routing_ablation(model, SCORED, mean_data=images([-2.0, 2.0]))
    assert model.training
    x = SCORED.tensors[0]
    assert torch.allclose(model.eval()(x)[:, 1], (x * torch.tanh(5 * x)).flatten(), atol=1e-6)


def test_bad_calls_are_refused():
    with pytest.raises(UsageError, match="mean_data"):
        routing_ablation(NeedsRouting(), SCORED)
    with pytest.raises(UsageError, match="mean_images"):
        routing_ablation(NeedsRouting(), SCORED, mean_data=SCORED, mean_images=0)
    with pytest.raises(UsageError, match="static model"):
        routing_ablation(nn.Sequential(nn.Flatten(), nn.Linear(1, 2)), SCORED, mean_data=SCORED)


def test_a_checkpoint_on_a_source_scores_what_evaluate_scores(tmp_path):
    spec = ArchSpec.from_dict(
        {
            "base": "mobilenet_v1",
            "width_multiplier": 0.25,
            "depth_multiplier": 0.1,
            "resolution": 16,
            "num_classes": 10,
            "condconv": {"begin_layer": 4, "num_experts": 4, "classifier": True},
        }
    )
    (tmp_path / "r.yaml").write_text(
        "epochs: 1\nbatch_size: 32\noptimizer: adamw\nlr: 0.003\ntrain_subset: 0.5\n"
    )
    train(spec, trainer=str(tmp_path / "r.yaml"), out=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "model.pt"
    r = routing_ablation(path, "digits", mean_images=200)
    m = evaluate(path, data="digits")
    assert r["top1"] == pytest.approx(m["top1"]) and r["images"] == m["images"]
    assert r["mean_images"] == 200 and 0 <= r["top1_fixed"] <= 1
    assert math.isclose(r["drop"], r["top1_bn"] - r["top1_fixed_bn"])
    # a built model is left with its statistics: the same call on it gives the same figures
    model = load_exported(path)
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    assert routing_ablation(model, "digits", mean_images=200) == {**r}
    after = [b.running_mean for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    assert stats and all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))


class WithNorm(NeedsRouting):
    """NeedsRouting with a BatchNorm between the CondConv layer and the head."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x):
        return self.head(self.norm(self.conv(x, self.gate(x))).flatten(1))


def test_fixed_routing_with_statistics_re_estimated_is_the_static_network_of_the_mean_kernels():
    """At the mean routing the layer is the static 1x1 kernel w = sum_i mean(r_i) W_i; its
    BatchNorm, re-estimated over the mean images (one batch), normalises by their exact mean and
    unbiased variance of w x. Class 1 where that normalised feature exceeds 0.5."""
    model = WithNorm()
    pool = images([-2.0, -1.0, 0.5, 1.5, 3.0])
    r = routing_ablation(model, SCORED, mean_data=pool)
    with torch.no_grad():
        x = pool.tensors[0].flatten()
        r_mean = torch.stack([torch.sigmoid(10 * x), torch.sigmoid(-10 * x)], 1).mean(0)
        w = r_mean[0] - r_mean[1]  # experts +1 and -1
        mu, var = (w * x).mean(), (w * x).var(unbiased=True)
        k = (w * SCORED.tensors[0].flatten() - mu) / torch.sqrt(var + 1e-5)
    want = ((k > 0.5).long() == SCORED.tensors[1]).float().mean().item()
    assert r["top1_fixed_bn"] == pytest.approx(want)
    assert r["top1_fixed_bn"] != r["top1_fixed"]  # the statistics as trained (0 and 1) differ
    assert model.norm.running_mean.item() == 0  # the caller's model untouched
