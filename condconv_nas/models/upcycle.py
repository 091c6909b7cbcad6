"""Upcycling: a model of any spec started from another network's weights (docs/weights.md).

Every tensor is taken from the source by its canonical name (``models.sources``). A CondConv
layer whose source is a dense layer gets the dense kernel in every expert, and every router
that the source does not have is made constant (by default), its routing weights summing to 1
for every input, so at initialisation each CondConv layer convolves with exactly the dense
kernel: the upcycled model computes the dense model's function (evaluation mode, within float
rounding). ``routers="drawn"`` keeps the routers' random weights instead (see `inherit`).

Exact copies would stay copies, though: with constant routing every expert receives the same
gradient, and so does every router output (for softmax that gradient even cancels), so nothing
ever tells the experts apart. Each expert therefore gets a small perturbation (``noise`` times
the kernel's standard deviation) and the perturbations sum to zero over the experts: the mixed
kernel is still the dense one, but the experts, and with them the routers' gradients, differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import UsageError
from .registry import FAMILIES
from .sources import WeightSource, canonical_state, check_base, load_source


@dataclass(frozen=True)
class Inheritance:
    """What a model took from its source."""

    source: str  # the source as given
    inherited: int  # parameter elements taken from the source (each expert's copy counts)
    total: int  # parameter elements of the model
    not_inherited: tuple[str, ...]  # tensors not or only partly taken (routers made constant and
    # a classifier of another class count aside)
    differences: tuple[str, ...] = ()  # padding or batch-norm epsilon the source has otherwise

    @property
    def fraction(self) -> float:
        """Share of the model's parameters taken from the source."""
        return self.inherited / self.total if self.total else 0.0


def constant_router(router: nn.Module, *, keep_weight: bool = False) -> None:
    """Make a `Router`'s output the same for every input, summing to 1 over its experts: the last
    FC's weights zero; its bias zero for softmax (1/n each), ``-log(n - 1)`` for sigmoid (also
    1/n each). A single sigmoid expert cannot get 1 from a finite bias: it gets 1/2 (bias 0), and
    `inherit` doubles its kernel. ``keep_weight``: only the bias is set, the weights keep their
    draw (`inherit`'s ``routers="drawn"``)."""
    fc = router.fc if isinstance(router.fc, nn.Linear) else router.fc[-1]
    n = router.num_experts
    with torch.no_grad():
        if not keep_weight:
            fc.weight.zero_()
        bias = -math.log(n - 1) if router.activation == "sigmoid" and n > 1 else 0.0
        fc.bias.fill_(bias)


def _overlap(target: torch.Size, source: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(0, min(a, b)) for a, b in zip(target, source, strict=True))


def _copy(t: torch.Tensor, s: torch.Tensor, *, experts: bool, noise: float, scale: float) -> int:
    """Copy what fits of ``s`` into ``t`` (leading slices); returns the elements of ``t`` set.

    ``experts``: ``t`` is an expert stack; a dense ``s`` goes into every expert (times ``scale``,
    with zero-sum noise on weights), a stack of as many experts expert by expert."""
    if experts and s.dim() == t.dim() - 1:
        sl = _overlap(t.shape[1:], s.shape)
        part = s[sl].to(t.dtype) * scale
        stack = part.expand(t.shape[0], *part.shape)
        if noise > 0 and part.dim() >= 2 and part.numel() > 1:
            e = torch.randn(stack.shape, dtype=t.dtype) * (noise * part.std())
            stack = stack + (e - e.mean(0, keepdim=True))
        t[(slice(None), *sl)] = stack
        return stack.numel()
    if experts and s.dim() == 2 < t.dim() and s.shape[0] == t.shape[0]:
        if s.shape[1] != math.prod(t.shape[1:]):  # timm's flattened experts: only whole ones fit
            return 0
        s = s.reshape(t.shape)
    if s.dim() != t.dim() or (experts and s.shape[0] != t.shape[0]):
        return 0
    sl = _overlap(t.shape, s.shape)
    t[sl] = s[sl]
    return t[sl].numel()


def differences(src: WeightSource, spec) -> tuple[str, ...]:
    """Where a source that tells its padding and batch-norm epsilon differs from the spec."""
    out = []
    for name, value in (("padding", src.padding), ("bn_eps", src.bn_eps)):
        want = getattr(spec, name)
        if value is None or value == want or (name == "bn_eps" and math.isclose(value, want)):
            continue
        out.append(f"{name} {value!r} where the spec has {want!r}")
    return tuple(out)


def inherit(
    model: nn.Module,
    source,
    *,
    strict: bool = False,
    noise: float = 0.01,
    routers: str = "constant",
) -> Inheritance:
    """Load ``source`` (anything `load_source` takes) into ``model`` (a `CondConvNet`), in place.

    Tensors of the same name are copied; where widths differ the leading slices are taken, where
    depths differ the blocks that both have; a classifier of another class count and everything
    the source lacks keep the model's own initialisation. Routers the source lacks are made
    constant (`constant_router`). ``strict``: the model must take every tensor of the source
    whole, the source fill every tensor of the model and have the spec's padding and batch-norm
    epsilon where it tells them (`UsageError` naming what does not fit), so that the model
    computes what the source computes. ``noise``: the experts' zero-sum perturbation, relative
    to each dense kernel's standard deviation (0: exact copies). ``routers``: ``"constant"`` (the
    above), or ``"drawn"``: the routers the source lacks keep their weights as drawn (a router
    partly copied from a CondConv source keeps the copied ones) and get the constant routers'
    bias, so routing differs per example from the start and the experts get different gradients.
    With softmax routing over alike experts the mixed kernel is still the dense one (the weights
    sum to 1 whatever the input). With sigmoid routing their sum varies per example: on a small
    MobileNetV1 with random inputs each mixed kernel was scaled by 0.74 to 1.23, and the logits
    moved by a fifth to a half of their largest, so the model starts away from the dense
    function. A single expert's router stays constant either way. A source of another base is a
    `UsageError` naming both.
    """
    src, differ = _open_source(model.spec, source, strict=strict, noise=noise, routers=routers)
    with torch.no_grad():
        took = _take(model, src, noise=noise)
        for r in took.routers_lacking:
            constant_router(r, keep_weight=routers == "drawn" and r.num_experts > 1)
    if strict:
        unused = sorted(set(src.state) - took.used - took.fresh_head)
        _check_fits(src, model.spec, took.not_inherited, unused)
    total = sum(p.numel() for p in model.parameters())
    return Inheritance(src.name, took.inherited, total, tuple(took.not_inherited), differ)


def _open_source(spec, source, *, strict: bool, noise: float, routers: str):
    """`inherit`'s options checked and its source loaded: the source and how it differs."""
    if isinstance(noise, bool) or not (isinstance(noise, (int, float)) and 0 <= noise < 1):
        raise UsageError(f"noise must be in [0, 1), got {noise!r}")
    if routers not in ("constant", "drawn"):
        raise UsageError(f"routers must be 'constant' or 'drawn', got {routers!r}")
    src = load_source(source)
    check_base(src, spec.base)
    differ = differences(src, spec)
    if strict and differ:
        raise UsageError(
            f"--init {src.name}: has {differ[0]}; give the spec that field "
            "(timm's tf_ models have padding 'same' and bn_eps 0.001)"
        )
    return src, differ


@dataclass
class _Taken:
    """What `_take` copied into a model."""

    used: set[str] = field(default_factory=set)  # the source's tensors taken
    fresh_head: set[str] = field(default_factory=set)  # a classifier of another class count
    not_inherited: list[str] = field(default_factory=list)  # not or only partly filled
    inherited: int = 0  # parameter elements set from the source
    routers_lacking: list[nn.Module] = field(default_factory=list)  # not filled whole


def _take(model: nn.Module, src: WeightSource, *, noise: float) -> _Taken:
    """Copy every tensor of ``src`` that fits into ``model`` (`inherit`), under no_grad."""
    from ..layers import CondConv2d, CondLinear, Router

    cc = model.spec.condconv
    scale = 2.0 if cc and cc.num_experts == 1 and cc.routing.activation == "sigmoid" else 1.0
    expert_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, (CondConv2d, CondLinear))
        for p in m.parameters(recurse=False)
    }
    router_list = [m for m in model.modules() if isinstance(m, Router)]
    router_ids = {id(p) for r in router_list for p in r.parameters()}
    param_ids = {id(p) for p in model.parameters()}
    head = FAMILIES[model.spec.base].classifier
    # the dimension that counts classes: biases (.., classes), weights (.., classes, in)
    head_dims = {f"{head}.weight": -2, f"{head}.bias": -1}
    target = model.state_dict(keep_vars=True)
    names = dict(zip(target, canonical_state(target), strict=True))
    took, kept = _Taken(), set()
    for key, t in target.items():
        name = names[key]
        s = src.state.get(name)
        dim = head_dims.get(name)
        if dim is not None and (s is None or s.dim() < 1 or s.shape[dim] != t.shape[dim]):
            took.fresh_head.add(name)  # another class count (or a headless source): afresh
            continue
        if s is None:
            if id(t) not in router_ids or src.condconv:
                took.not_inherited.append(name)
            continue
        if id(t) in router_ids:
            if s.shape != t.shape:
                took.not_inherited.append(name)
                continue
            t.copy_(s)
            n_set = t.numel()
            kept.add(id(t))
        else:
            n_set = _copy(t, s, experts=id(t) in expert_ids, noise=noise, scale=scale)
        took.used.add(name)
        expected = s.numel() * (t.shape[0] if s.dim() == t.dim() - 1 else 1)
        if not n_set == t.numel() == expected:
            took.not_inherited.append(name)
        if id(t) in param_ids:
            took.inherited += n_set
    took.routers_lacking = [
        r for r in router_list if not all(id(p) in kept for p in r.parameters())
    ]
    return took


def _check_fits(src, spec, not_inherited: list[str], unused: list[str]) -> None:
    """`UsageError` unless the model took every tensor of the source whole and the source filled
    every tensor of the model."""
    if not (not_inherited or unused):
        return
    what = (
        f"{len(not_inherited)} tensor(s) of the spec it does not fill whole, "
        f"e.g. {not_inherited[0]}"
        if not_inherited
        else f"{len(unused)} of its tensor(s) the spec has no place for, e.g. {unused[0]}"
    )
    raise UsageError(
        f"--init {src.name}: does not fit spec {spec.id} (width or depth differ): {what}"
    )


def upcycle(
    spec, dense, *, strict: bool = True, noise: float = 0.01, routers: str = "constant"
) -> nn.Module:
    """The model of ``spec`` (anything `build_model` takes) started from ``dense``: a timm model of
    the spec's base, its state dict, a file or one of our static models (see `inherit`).

    Every expert starts as the dense kernel (plus zero-sum ``noise``), every router constant at
    1/n per expert (``routers="constant"``), so in evaluation mode the model computes ``dense``'s
    function until training moves routers and experts apart. A classifier of another class count
    starts afresh. ``strict=False`` takes what matches from a source of other widths or depths;
    ``routers``: as `inherit`'s.
    """
    from . import build_model

    model = build_model(spec)
    inherit(model, dense, strict=strict, noise=noise, routers=routers)
    return model
