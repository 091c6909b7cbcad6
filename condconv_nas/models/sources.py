"""Weights from elsewhere, read into one form: a timm model, its state dict, a file, ``timm:NAME``.

A `WeightSource` holds tensors under canonical names: timm's own names for the base's dense
network (``blocks.4.0.conv_pw.weight``, ``layer1.0.conv1.weight``), whichever wrapper they came
from. Our models' ``net.`` prefix and the ``module`` level of ``Routed`` wrappers are dropped,
timm's CondConv routing layer ``routing_fn`` is named like ours (``router.fc``), and expert stacks
keep their experts first: ``(n, out, in / groups, kh, kw)`` for a convolution.

Which base a source has is read from its layout, not from its widths or depths: for each stage,
the names of its blocks' tensors and their kernel sizes (``layout``). Every base differs there
(MobileNetV1 has five stages, MobileNetV2 no squeeze-excitation, MnasNet-A1 squeeze-excitation
from its third stage, EfficientNet-B0 in every stage, ResNet-50 bottlenecks), and a base scaled
in width or depth keeps it.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import CondConv2d as TimmCondConv2d
from timm.layers import Conv2dSame

from ..archs import BASES
from ..errors import UsageError
from ..layers import CondConv2d
from ..training import checkpoint
from . import CondConvNet, build_model


@dataclass(frozen=True)
class WeightSource:
    """Tensors under canonical names, and what is known of the network they came from."""

    name: str  # the source as the user gave it (for messages)
    state: dict[str, torch.Tensor] = field(repr=False)  # canonical name -> tensor
    base: str | None  # the base whose layout it has; None: none of ours
    padding: str | None = None  # "symmetric" or "same" where the source tells (a model, our export)
    bn_eps: float | None = None  # batch-norm epsilon where the source tells

    @property
    def condconv(self) -> bool:
        """Whether the source has routers (a CondConv model), not only dense layers."""
        return any(".router." in k or k.startswith("router.") for k in self.state)


def canonical(name: str) -> str:
    """A tensor's name as timm's dense model of the base would have it (see the module doc)."""
    parts = [p for p in name.split(".") if p != "module"]  # Routed wrappers; DDP's prefix
    return ".".join(parts).replace("routing_fn.", "router.fc.")


def canonical_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under canonical names (our models' ``net.`` prefix dropped)."""
    state = {canonical(k): v for k, v in state.items()}
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net.") :]: v for k, v in state.items()}
    return state


_BLOCK = re.compile(r"(blocks\.\d+|layer\d+)\.\d+\.(.*)")


def layout(state: dict[str, torch.Tensor]) -> dict[str, frozenset]:
    """Tensor names without the block index, each with its kernel sizes: width- and depth-free.

    The classifier and the routers are left out: a headless model or a CondConv model of the base
    has the base's layout. timm's CondConv stacks, flattened to ``(n, k)``, show no kernel."""
    out: dict[str, set] = {}
    for name, t in state.items():
        if name.split(".")[0] in ("classifier", "fc") or "router." in name:
            continue
        m = _BLOCK.fullmatch(name)
        key = f"{m.group(1)}.*.{m.group(2)}" if m else name
        out.setdefault(key, set()).add(tuple(t.shape[-2:]) if t.dim() >= 4 else None)
    return {k: frozenset(v) for k, v in out.items()}


def _same_layout(a: dict[str, frozenset], b: dict[str, frozenset]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] or None in a[k] or None in b[k] for k in a)


@functools.cache
def base_layout(base: str) -> dict[str, frozenset]:
    """The layout of our static model of ``base`` (width and depth 1)."""

    return layout(canonical_state(build_model({"base": base}).state_dict()))


def detect_base(state: dict[str, torch.Tensor]) -> str | None:
    """The base whose layout ``state`` has, or None."""
    own = layout(state)
    return next((b for b in BASES if _same_layout(own, base_layout(b))), None)


def check_base(source: WeightSource, base: str) -> None:
    """`UsageError` naming the source and ``base`` if the source is not a model of that base."""
    if source.base != base:
        found = (
            f"a {source.base} model" if source.base else "no model of the bases " + ", ".join(BASES)
        )
        raise UsageError(f"--init {source.name}: holds {found}, which does not fit base {base}")


def padding_of(model: nn.Module) -> str:
    """``same`` if any convolution of ``model`` pads as TensorFlow's 'SAME', else ``symmetric``."""

    same = any(
        isinstance(m, Conv2dSame)
        or (isinstance(m, TimmCondConv2d) and m.dynamic_padding)
        or (isinstance(m, CondConv2d) and m.same)
        for m in model.modules()
    )
    return "same" if same else "symmetric"


def from_module(model: nn.Module, name: str | None = None) -> WeightSource:
    """A source from a timm model or one of ours (its weights, padding and batch-norm epsilon)."""

    spec = model.spec if isinstance(model, CondConvNet) else None
    if name is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or (f"spec {spec.id}" if spec else type(model).__name__)
    state = dict(model.state_dict())
    for mod_name, m in model.named_modules():
        # timm keeps each expert flattened: (n, out * in * kh * kw)
        if isinstance(m, TimmCondConv2d):
            key = f"{mod_name}.weight"
            state[key] = state[key].reshape(m.num_experts, *m.weight_shape)
    state = canonical_state(state)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if spec is not None:
        return WeightSource(name, state, spec.base, spec.padding, spec.bn_eps)
    return WeightSource(
        name, state, detect_base(state), padding_of(model), bns[0].eps if bns else None
    )


def from_state(state: dict, name: str = "a state dict") -> WeightSource:
    """A source from a state dict (timm's names, or ours)."""
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None or not state:
        raise UsageError(f"--init {name}: not a state dict of tensors")
    state = canonical_state(state)
    return WeightSource(name, state, detect_base(state))


def _from_file(path: str) -> WeightSource:
    obj = checkpoint.load(path, ours=False)
    if "spec" in obj and "model" in obj:  # one of our exports or checkpoints: EMA weights first
        spec = checkpoint.spec_of(obj, path)
        state = canonical_state(obj["ema"] if obj.get("ema") else obj["model"])
        return WeightSource(path, state, spec.base, spec.padding, spec.bn_eps)
    for key in ("state_dict_ema", "state_dict", "model"):  # timm's train.py checkpoints
        if isinstance(obj.get(key), dict) and obj[key]:
            return from_state(obj[key], path)
    return from_state(obj, path)


def _from_timm(text: str) -> WeightSource:
    name = text[len("timm:") :]
    if not timm.is_model(name):
        raise UsageError(f"--init {text}: timm has no model {name!r}")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # no network, no such weights: many kinds
        raise UsageError(
            f"--init {text}: cannot load timm's pretrained weights ({type(e).__name__}: {e})"
        ) from None
    return from_module(model, text)


@functools.lru_cache(maxsize=4)
def _load_cached(text: str, mtime: float | None) -> WeightSource:
    return _from_timm(text) if mtime is None else _from_file(text)


def load_source(source) -> WeightSource:
    """A `WeightSource` from a module, a state dict, a file path (a state dict of the base's timm
    model, timm's train.py checkpoint, or our ``model.pt``) or ``timm:NAME`` (timm's pretrained
    weights: needs the network). Named sources are read once per process (a search's candidates
    all start from the same source)."""
    if isinstance(source, WeightSource):
        return source
    if isinstance(source, nn.Module):
        return from_module(source)
    if isinstance(source, dict):
        return from_state(source)
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(
            f"--init: expected a file, timm:NAME or a model, got {type(source).__name__}"
        )
    text = str(source)
    if text.startswith("timm:"):
        return _load_cached(text, None)
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--init {text}: no such file (or timm:NAME for timm's weights)")
    return _load_cached(text, path.stat().st_mtime)
