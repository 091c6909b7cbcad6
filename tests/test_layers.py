"""CondConv layers against their definition: the mixture of the experts' ordinary convolutions."""

import pytest
import torch
import torch.nn.functional as F

from condconv_nas.layers import CondConv2d, CondLinear, Routed, Router, RoutingState

CASES = {  # name: (in, out, k, stride, groups, bias, experts, batch, size)
    "3x3 regular": (8, 12, 3, 1, 1, False, 4, 3, 9),
    "depthwise stride 2": (16, 16, 3, 2, 16, False, 4, 2, 10),
    "1x1 with bias": (6, 10, 1, 1, 1, True, 3, 4, 7),
    "5x5 depthwise": (8, 8, 5, 1, 8, False, 8, 2, 11),
    "grouped": (12, 18, 3, 1, 3, True, 4, 2, 8),
    "1 expert": (5, 7, 3, 1, 1, True, 1, 3, 6),
    "32 experts": (4, 6, 3, 1, 1, False, 32, 2, 5),
    "batch 1": (8, 8, 3, 2, 1, True, 4, 1, 9),
    "spatial 1x1": (8, 16, 1, 1, 1, False, 4, 3, 1),
}


def mixture_reference(x, r, layer):
    """sum_i r_i * conv(x, W_i), with plain F.conv2d."""
    out = 0
    for i in range(layer.num_experts):
        b = None if layer.bias is None else layer.bias[i]
        y = F.conv2d(
            x, layer.weight[i], b, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        out = out + r[:, i, None, None, None] * y
    return out


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def grads(out_fn, tensors):
    for t in tensors:
        t.grad = None
    out = out_fn()
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad.clone() for t in tensors]


def assert_equals_mixture(layer, x, r):
    """Output and every gradient of a CondConv2d against `mixture_reference`."""
    params = [x, r, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    out, g_ours = grads(lambda: layer(x, r), params)
    ref, g_ref = grads(lambda: mixture_reference(x, r, layer), params)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5
    for name, a, b in zip(["input", "routing", "weight", "bias"], g_ours, g_ref, strict=False):
        assert rel_err(a, b) <= 1e-5, name


@pytest.mark.parametrize("strategy", ["kernel", "mixture", "expand", "auto"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_condconv2d_equals_expert_mixture(case, mode, strategy):
    cin, cout, k, s, g, bias, n, B, hw = CASES[case]
    torch.manual_seed(0)
    layer = CondConv2d(
        cin, cout, k, stride=s, groups=g, bias=bias, num_experts=n, strategy=strategy
    )
    layer.train(mode == "train")
    assert_equals_mixture(
        layer, torch.randn(B, cin, hw, hw, requires_grad=True), torch.rand(B, n, requires_grad=True)
    )


def test_bmm_form_for_pointwise():
    torch.manual_seed(0)
    layer = CondConv2d(6, 10, 1, bias=True, num_experts=4, strategy="bmm")
    x, r = torch.randn(3, 6, 5, 5), torch.rand(3, 4)
    assert rel_err(layer(x, r), mixture_reference(x, r, layer)) <= 1e-5
    with pytest.raises(ValueError, match="1x1"):
        CondConv2d(6, 10, 3, num_experts=4, strategy="bmm")(x, r)


def test_strategies_agree_and_padding_rule():
    torch.manual_seed(1)
    layer = CondConv2d(8, 8, 3, dilation=2, num_experts=4)
    assert layer.padding == (2, 2)
    assert CondConv2d(8, 8, 3, padding=0).padding == (0, 0)
    x, r = torch.randn(4, 8, 12, 12), torch.rand(4, 4)
    outs = []
    for s in ("kernel", "mixture", "expand"):
        layer.strategy = s
        outs.append(layer(x, r))
    assert rel_err(outs[0], outs[1]) <= 1e-5 and rel_err(outs[0], outs[2]) <= 1e-5
    assert outs[0].shape == (4, 8, 12, 12)


@pytest.mark.parametrize("hw", [11, 3])  # 3: the dilated kernel overhangs the input
@pytest.mark.parametrize("strategy", ["kernel", "mixture", "expand"])
def test_dilated_strided_grouped_condconv2d_equals_expert_mixture(strategy, hw):
    """Dilation enters every form's convolution: each form, output and gradients, against the
    plain per-expert F.conv2d mixture (dilation 2, stride 2, 2 groups)."""
    torch.manual_seed(2)
    layer = CondConv2d(6, 8, 3, stride=2, dilation=2, groups=2, bias=True, num_experts=3,
                       strategy=strategy)  # fmt: skip
    x, r = torch.randn(3, 6, hw, hw, requires_grad=True), torch.rand(3, 3, requires_grad=True)
    assert_equals_mixture(layer, x, r)
    assert layer(x, r).shape == (3, 8, (hw + 1) // 2, (hw + 1) // 2)


def test_weight_shapes_and_expert_init():
    layer = CondConv2d(16, 32, 3, groups=4, bias=True, num_experts=8)
    assert layer.weight.shape == (8, 32, 4, 3, 3) and layer.bias.shape == (8, 32)
    # each expert drawn as nn.Conv2d draws one kernel: kaiming_uniform(a=sqrt(5)) -> bound
    # 1/sqrt(fan_in)
    bound = 1 / (4 * 9) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.8 * bound
    assert not torch.equal(layer.weight[0], layer.weight[1])
    lin = CondLinear(20, 5, num_experts=3)
    assert lin.weight.shape == (3, 5, 20) and lin.bias.shape == (3, 5)


@pytest.mark.parametrize("strategy", ["kernel", "mixture", "expand", "auto"])
@pytest.mark.parametrize(
    "cin, cout, n, B", [(20, 7, 5, 6), (256, 256, 4, 1)]
)  # the second: blocked batch-1 mixing
def test_condlinear_equals_expert_mixture(strategy, cin, cout, n, B):
    torch.manual_seed(0)
    lin = CondLinear(cin, cout, num_experts=n, strategy=strategy)
    x = torch.randn(B, cin, requires_grad=True)
    r = torch.rand(B, n, requires_grad=True)
    ref_fn = lambda: sum(r[:, i, None] * F.linear(x, lin.weight[i], lin.bias[i]) for i in range(n))  # noqa: E731
    out, g1 = grads(lambda: lin(x, r), [x, r, lin.weight, lin.bias])
    ref, g2 = grads(ref_fn, [x, r, lin.weight, lin.bias])
    assert rel_err(out, ref) <= 1e-5
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(g1, g2, strict=False))


def test_measured_choice_is_cached_per_layer_shape_and_grad_mode(monkeypatch):
    from condconv_nas.layers import strategy as S

    S.clear_cache()
    measured = []
    real = S.measure_forms
    monkeypatch.setattr(
        S, "measure_forms", lambda layer, *a, **k: measured.append(layer) or real(layer, *a, **k)
    )
    lin, conv = CondLinear(20, 7, num_experts=5), CondConv2d(6, 10, 1, num_experts=4)
    with torch.no_grad():
        lin(torch.randn(6, 20), torch.rand(6, 5))
        lin(torch.randn(6, 20), torch.rand(6, 5))  # same shape: measured once
        lin(torch.randn(2, 20), torch.rand(2, 5))
        conv(torch.randn(3, 6, 5, 5), torch.rand(3, 4))
    conv(torch.randn(3, 6, 5, 5), torch.rand(3, 4))  # with grad: another measurement
    assert measured == [lin, lin, conv, conv]  # 5 calls, 4 shapes and grad modes
    choices = S.chosen()
    keys = list(choices)
    assert [k[0] for k in keys] == ["CondLinear", "CondLinear", "CondConv2d", "CondConv2d"]
    assert [k[-1] for k in keys] == [False, False, False, True]
    assert choices[keys[0]] in ("kernel", "mixture", "expand")
    assert choices[keys[2]] in ("kernel", "mixture", "expand", "bmm")


def test_bad_input_names_shapes():
    layer = CondConv2d(8, 8, 3, num_experts=4)
    with pytest.raises(
        ValueError,
        match=r"routing_weights must have shape \(batch=2, num_experts=4\), got \(2, 3\)",
    ):
        layer(torch.randn(2, 8, 5, 5), torch.rand(2, 3))
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(2, 7, 5, 5), torch.rand(2, 4))
    with pytest.raises(ValueError, match="num_experts must be >= 1, got 0"):
        CondConv2d(8, 8, 3, num_experts=0)
    with pytest.raises(ValueError, match="in_channels=10 .* groups=4"):
        CondConv2d(10, 8, 3, groups=4)
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        CondLinear(4, 4, num_experts=0)
    with pytest.raises(ValueError, match="routing_weights"):
        CondLinear(4, 4, num_experts=2)(torch.randn(3, 4), torch.rand(2, 2))


def test_router_variants():
    x = torch.randn(5, 16, 7, 7)
    r = Router(16, 8)
    w = r(x)
    assert w.shape == (5, 8) and (w > 0).all() and (w < 1).all()
    assert torch.allclose(w, torch.sigmoid(r.fc(x.mean((2, 3)))))
    soft = Router(16, 8, activation="softmax")(x)
    assert torch.allclose(soft.sum(1), torch.ones(5))
    for hidden, size in (("small", 2), ("medium", 16), ("large", 128)):
        rr = Router(16, 8, hidden=hidden)
        assert rr.fc[0].out_features == size and rr.fc[2].in_features == size
        assert rr(x).shape == (5, 8)
    hier = Router(16, 8, prev_features=8)
    assert hier.fc.in_features == 24
    prev = torch.rand(5, 8)
    assert torch.allclose(
        hier(x, prev), torch.sigmoid(hier.fc(torch.cat([x.mean((2, 3)), prev], 1)))
    )
    with pytest.raises(ValueError, match="hidden"):
        Router(16, 8, hidden="huge")


def test_expert_dropout_train_only():
    torch.manual_seed(0)
    r = Router(16, 8, expert_dropout=0.5)
    x = torch.randn(64, 16, 3, 3)
    r.train()
    w = r(x)
    zero_frac = (w == 0).float().mean().item()
    assert 0.35 < zero_frac < 0.65
    r.eval()
    w_eval = r(x)
    assert (w_eval > 0).all() and torch.allclose(w_eval, torch.sigmoid(r.fc(x.mean((2, 3)))))


class TinyNet(torch.nn.Module):
    """A block with two CondConv layers sharing one router, then a CondConv classifier."""

    def __init__(self):
        super().__init__()
        self.state = RoutingState()
        self.conv1 = Routed(CondConv2d(3, 8, 3, num_experts=4), self.state, Router(3, 4))
        self.conv2 = Routed(CondConv2d(8, 8, 3, groups=8, num_experts=4), self.state)
        self.fc = Routed(CondLinear(8, 5, num_experts=4), self.state, Router(8, 4))

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_shared_router_is_used_by_both_layers():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    r = net.conv1.router(x)
    h = torch.relu(net.conv1.module(x, r))
    h = torch.relu(net.conv2.module(h, r))
    pooled = h.mean((2, 3))
    expected = net.fc.module(pooled, net.fc.router(pooled))
    assert torch.allclose(net(x), expected, atol=1e-6)


def test_trace_state_dict_dtype_channels_last_batch1():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(3, 3, 8, 8)
    traced = torch.jit.trace(net, (x,), check_trace=False)
    assert torch.allclose(traced(x), net(x), atol=1e-6)
    other = TinyNet()
    other.load_state_dict(net.state_dict())
    other.eval()
    assert torch.equal(other(x), net(x))
    assert torch.allclose(net(x.contiguous(memory_format=torch.channels_last)), net(x), atol=1e-6)
    assert net(x[:1]).shape == (1, 5)
    d = TinyNet().to(torch.float64).eval()
    assert d(x.double()).dtype == torch.float64


def test_module_to_channels_last():
    """``Module.to(memory_format=torch.channels_last)`` works on a model holding CondConv2d (PyTorch
    refuses channels-last on a 5-D tensor): 4-D weights go channels-last, the experts keep their
    values and stay contiguous, outputs agree, other conversions still reach the experts."""
    torch.manual_seed(0)
    static, cond = torch.nn.Conv2d(3, 8, 3, padding=1), CondConv2d(8, 8, 3, num_experts=4)
    net = torch.nn.ModuleDict({"static": static, "cond": cond})
    x, r = torch.randn(2, 3, 8, 8), torch.rand(2, 4)
    before, experts = cond(static(x), r), cond.weight.detach().clone()
    assert net.to(memory_format=torch.channels_last) is net
    assert (
        static.weight.is_contiguous(memory_format=torch.channels_last)
        and not static.weight.is_contiguous()
    )
    assert isinstance(cond.weight, torch.nn.Parameter) and cond.weight.is_contiguous()
    assert torch.equal(cond.weight, experts)
    assert torch.allclose(cond(static(x), r), before, atol=1e-6)
    net.double()
    assert cond.weight.dtype == torch.float64 and cond.weight.shape == experts.shape


@pytest.mark.parametrize("strategy", ["kernel", "bmm"])
def test_batch_one_with_large_kernels(strategy):
    """Batch 1 and kernels of >= 2**16 weights take the blocked mixing of `mix_experts`."""
    torch.manual_seed(0)
    layer = CondConv2d(256, 256, 1, bias=True, num_experts=4, strategy=strategy)
    assert_equals_mixture(
        layer, torch.randn(1, 256, 3, 3, requires_grad=True), torch.rand(1, 4, requires_grad=True)
    )


def test_measuring_stops_timing_hopeless_forms(monkeypatch):
    """After the warm-up round only forms within 3x of the fastest warm-up are timed again."""
    from types import SimpleNamespace

    from condconv_nas.layers import strategy as S

    clock = [0.0]  # a clock of our own: the forms' costs are exact, whatever the machine's load
    monkeypatch.setattr(S, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Fake:
        calls = {"fast": 0, "slow": 0}

        def run(self, form, *args):
            self.calls[form] += 1
            clock[0] += 0.001 if form == "fast" else 0.05
            return torch.zeros(1)

    fake = Fake()
    best = S.measure_forms(fake, ("fast", "slow"), (), grad=False)
    assert fake.calls == {"fast": 1 + S.ROUNDS, "slow": 1}
    assert list(best) == ["fast"] and best["fast"] == pytest.approx(0.001)


CROP_CASES = {  # name: (in, out, k, stride, padding, dilation, groups, size)
    "5x5 depthwise on 1x1": (8, 8, 5, 1, 2, 1, 8, 1),
    "5x5 depthwise on 2x2": (8, 8, 5, 1, 2, 1, 8, 2),
    "5x5 stride 2 on 1x1": (8, 8, 5, 2, 2, 1, 8, 1),
    "3x3 stride 2 on 2x3": (6, 4, 3, 2, 1, 1, 1, 2),
    "dilated 3x3 on 2x2": (4, 4, 3, 1, 2, 2, 1, 2),
    "3x3 on 7x7 (nothing to crop)": (4, 4, 3, 1, 1, 1, 1, 7),
    "1x1 stride 2 on 1x1 (stride dropped)": (8, 8, 1, 2, 0, 1, 8, 1),
}


@pytest.mark.parametrize("case", list(CROP_CASES))
def test_cropping_conv_equals_nn_conv2d_and_counts_the_whole_kernel(case):
    """Taps that read only padding are dropped for small inputs: same outputs and gradients as
    nn.Conv2d, and under tracing (fvcore) the whole kernel is used."""
    from condconv_nas.layers.crop import CroppingConv2d, crop, use_cropping_convs

    cin, cout, k, s, p, d, g, n = CROP_CASES[case]
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(cin, cout, k, s, p, d, g, bias=True)
    ours = use_cropping_convs(
        torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, s, p, d, g, bias=True))
    )[0]
    assert type(ours) is CroppingConv2d
    ours.load_state_dict(ref.state_dict())
    w = n + 1 if case.endswith("2x3") else n
    x = torch.randn(3, cin, n, w, requires_grad=True)
    out, g_ours = grads(lambda: ours(x), [x, ours.weight, ours.bias])
    want, g_ref = grads(lambda: ref(x), [x, ref.weight, ref.bias])
    assert out.shape == want.shape and rel_err(out, want) <= 1e-5
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(g_ours, g_ref, strict=False))
    cropped, _, _ = crop(ref.weight, (n, w), ref.stride, ref.padding, ref.dilation)
    if "nothing" in case:
        assert cropped is ref.weight
    elif "stride dropped" in case:
        assert crop(ref.weight, (n, w), ref.stride, ref.padding, ref.dilation)[1] == (1, 1)
    else:
        assert cropped.shape[-2:] != ref.weight.shape[-2:]
    from fvcore.nn import FlopCountAnalysis

    x = x.detach()
    counts = [FlopCountAnalysis(m, x).unsupported_ops_warnings(False).total() for m in (ours, ref)]
    assert counts[0] == counts[1] == 3 * cout * out.shape[-2] * out.shape[-1] * cin // g * k * k


@pytest.mark.parametrize("strategy", ["kernel", "mixture", "expand"])
def test_condconv2d_on_inputs_smaller_than_its_kernel(strategy):
    torch.manual_seed(0)
    layer = CondConv2d(8, 8, 5, groups=8, bias=True, num_experts=4, strategy=strategy)
    for size in (1, 2):
        assert_equals_mixture(
            layer,
            torch.randn(3, 8, size, size, requires_grad=True),
            torch.rand(3, 4, requires_grad=True),
        )


def test_fixed_forms_pick_the_first_offered_form_untimed(monkeypatch):
    from condconv_nas.layers import strategy as S

    torch.manual_seed(0)
    pointwise, dw = (
        CondConv2d(6, 10, 1, num_experts=4),
        CondConv2d(6, 6, 3, groups=6, num_experts=4),
    )
    lin = CondLinear(6, 5, num_experts=4)
    used = []
    for layer in (pointwise, dw, lin):
        run = layer.run
        monkeypatch.setattr(
            layer, "run", lambda form, *a, run=run: used.append(form) or run(form, *a)
        )
    S.clear_cache()
    x, r = torch.randn(3, 6, 5, 5), torch.rand(3, 4)
    with S.fixed_forms("bmm", "mixture"):
        outs = [pointwise(x, r), dw(x, r), lin(x.mean((2, 3)), r)]
    assert used == ["bmm", "mixture", "mixture"] and not S.chosen()  # nothing timed
    assert rel_err(outs[0], mixture_reference(x, r, pointwise)) <= 1e-5
    assert rel_err(outs[1], mixture_reference(x, r, dw)) <= 1e-5
    used.clear()
    pointwise(x, r)  # outside the block: timed again (every form runs), then the fastest
    assert len(used) > 1 and S.chosen()
    with pytest.raises(ValueError, match="offers none"), S.fixed_forms("bmm"):
        dw(x, r)
    with pytest.raises(ValueError, match="forms must be"), S.fixed_forms("auto"):
        pass
