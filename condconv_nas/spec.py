"""The architecture spec (schema_version 1): what a model is, as JSON.

``ArchSpec.from_dict`` is the one gate every spec passes (files, presets, search spaces): it
rejects unknown fields, wrong types and out-of-range values with a `SpecError` whose message
names the field. A spec's ``id`` is a hash of its canonical JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .archs import BASES, num_blocks
from .errors import UsageError
from .files import write_atomic

SCHEMA_VERSION = 1
SHARES = ("layer", "block", "pair", "single")
HIDDENS = ("none", "small", "medium", "large")
ACTIVATIONS = ("sigmoid", "softmax")
PADDINGS = ("symmetric", "same")  # PyTorch's k // 2 on every side | TensorFlow's 'SAME'
# Fields that to_dict() (and so the id) leaves out while they hold their default: specs written
# before the field existed read unchanged and keep their ids.
OPTIONAL_DEFAULTS = {"padding": "symmetric", "bn_eps": 1e-5}


class SpecError(UsageError):
    """A spec that is not valid; the message names the field."""


@dataclass(frozen=True)
class RoutingSpec:
    share: str = (
        "block"  # which layers share one routing: layer | block | pair (two blocks) | single
    )
    hidden: str = (
        "none"  # hidden layer of the routing FC: none | small (in/8) | medium (in) | large (8*in)
    )
    activation: str = "sigmoid"  # sigmoid (paper) | softmax
    hierarchical: bool = False  # concatenate the previous routing weights to the pooled input


@dataclass(frozen=True)
class CondConvSpec:
    begin_layer: int  # 1 = stem, 2..B+1 = blocks, B+2 = classifier only (docs/method.md)
    num_experts: int = 8  # experts per CondConv layer
    classifier: bool = False  # the final FC is a CondConv (CondLinear) layer
    routing: RoutingSpec = field(default_factory=RoutingSpec)


@dataclass(frozen=True)
class ArchSpec:
    base: str  # mobilenet_v1 | mobilenet_v2 | mnasnet_a1 | resnet50 | efficientnet_b0
    width_multiplier: float = 1.0  # channels scale as the family's paper does
    depth_multiplier: float = 1.0  # repeats per stage scale (ceil)
    resolution: int = 224  # input size the MADDs are counted at
    num_classes: int = 1000  # classifier outputs
    # symmetric | same: TensorFlow's 'SAME', as timm's tf_ models (their pad_type='same')
    padding: str = "symmetric"
    bn_eps: float = 1e-5  # batch-norm epsilon (timm's tf_ models: 1e-3)
    condconv: CondConvSpec | None = None  # None: a static model
    schema_version: int = SCHEMA_VERSION

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name, default in OPTIONAL_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any) -> ArchSpec:
        spec = _parse(cls, d, "")
        spec.validate()
        return spec

    def replace(self, **changes) -> ArchSpec:
        spec = dataclasses.replace(self, **changes)
        spec.validate()
        return spec

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        write_atomic(path, self.to_json() + "\n")
        return path

    @property
    def id(self) -> str:
        """Hash of the canonical JSON: equal specs, equal ids, across runs and machines."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.base, self.depth_multiplier)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                f"schema_version: {self.schema_version} is not supported (this version reads 1)"
            )
        if self.base not in BASES:
            raise SpecError(f"base: {self.base!r} is not one of {', '.join(BASES)}")
        for name in ("width_multiplier", "depth_multiplier"):
            v = getattr(self, name)
            if not (0 < v <= 8):
                raise SpecError(f"{name}: must be in (0, 8], got {v}")
        if not 8 <= self.resolution <= 4096:
            raise SpecError(f"resolution: must be in [8, 4096], got {self.resolution}")
        if not 1 <= self.num_classes <= 1_000_000:
            raise SpecError(f"num_classes: must be >= 1, got {self.num_classes}")
        if self.padding not in PADDINGS:
            raise SpecError(f"padding: {self.padding!r} is not one of {', '.join(PADDINGS)}")
        if self.padding == "same" and self.base == "resnet50":
            raise SpecError(
                "padding: 'same' is for the EfficientNet family; resnet50 pads symmetrically"
            )
        if not 0 < self.bn_eps < 1:
            raise SpecError(f"bn_eps: must be in (0, 1), got {self.bn_eps}")
        cc = self.condconv
        if cc is None:
            return
        last = self.num_blocks + 2
        if not 1 <= cc.begin_layer <= last:
            raise SpecError(
                f"condconv.begin_layer: must be in [1, {last}] for {self.base} with "
                f"depth_multiplier "
                f"{self.depth_multiplier} ({last - 2} blocks; {last} = classifier only), "
                f"got {cc.begin_layer}"
            )
        if not 1 <= cc.num_experts <= 1024:
            raise SpecError(f"condconv.num_experts: must be in [1, 1024], got {cc.num_experts}")
        if cc.begin_layer == last and not cc.classifier:
            raise SpecError(
                f"condconv.begin_layer: {last} means classifier only, but condconv.classifier is "
                f"false"
            )
        r = cc.routing
        for name, allowed in (("share", SHARES), ("hidden", HIDDENS), ("activation", ACTIVATIONS)):
            if getattr(r, name) not in allowed:
                raise SpecError(
                    f"condconv.routing.{name}: {getattr(r, name)!r} is not one of "
                    f"{', '.join(allowed)}"
                )


def _parse(cls, d: Any, where: str):
    """Build dataclass ``cls`` from a dict, strictly: no unknown keys, exact types."""
    if not isinstance(d, dict):
        raise SpecError(f"{where or 'spec'}: expected an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise SpecError(f"{where}{unknown[0]}: unknown field (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        path = where + name
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{path}: missing")
            continue
        kwargs[name] = _convert(cls, name, d[name], path)
    return cls(**kwargs)


_NESTED = {(ArchSpec, "condconv"): CondConvSpec, (CondConvSpec, "routing"): RoutingSpec}
_TYPES = {
    "base": str,
    "share": str,
    "hidden": str,
    "activation": str,
    "width_multiplier": float,
    "depth_multiplier": float,
    "resolution": int,
    "num_classes": int,
    "padding": str,
    "bn_eps": float,
    "schema_version": int,
    "begin_layer": int,
    "num_experts": int,
    "classifier": bool,
    "hierarchical": bool,
}


def _convert(cls, name: str, v: Any, path: str):
    nested = _NESTED.get((cls, name))
    if nested is not None:
        if v is None and nested is CondConvSpec:
            return None
        return _parse(nested, v, path + ".")
    want = _TYPES[name]
    if want is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if want is int and isinstance(v, int) and not isinstance(v, bool):
        return v
    if want in (str, bool) and isinstance(v, want):
        return v
    raise SpecError(f"{path}: expected {want.__name__}, got {type(v).__name__} {v!r}")


# -- presets: the paper's table 1 placements (docs/method.md), 8 experts, shared routing per block
def _cc(begin: int, classifier: bool) -> dict:
    return {
        "begin_layer": begin,
        "num_experts": 8,
        "classifier": classifier,
        "routing": {
            "share": "block",
            "hidden": "none",
            "activation": "sigmoid",
            "hierarchical": False,
        },
    }


PRESETS: dict[str, dict] = {
    "mobilenet-v1": {"base": "mobilenet_v1"},
    "condconv-mobilenet-v1": {"base": "mobilenet_v1", "condconv": _cc(7, True)},
    "mobilenet-v2": {"base": "mobilenet_v2"},
    "condconv-mobilenet-v2": {"base": "mobilenet_v2", "condconv": _cc(13, True)},
    "mnasnet-a1": {"base": "mnasnet_a1"},
    "condconv-mnasnet-a1": {"base": "mnasnet_a1", "condconv": _cc(12, False)},
    "resnet50": {"base": "resnet50"},
    "condconv-resnet50": {"base": "resnet50", "condconv": _cc(15, True)},
    "efficientnet-b0": {"base": "efficientnet_b0"},
    "condconv-efficientnet-b0": {"base": "efficientnet_b0", "condconv": _cc(10, False)},
    "condconv-efficientnet-b0-depth": {
        "base": "efficientnet_b0",
        "depth_multiplier": 1.1,
        "condconv": _cc(14, False),
    },
    "efficientnet-b1": {"base": "efficientnet_b0", "depth_multiplier": 1.1, "resolution": 240},
}


def load_spec(path_or_name: str | os.PathLike | ArchSpec | dict) -> ArchSpec:
    """A spec from a preset name, a JSON file, a dict or an ArchSpec; raises `SpecError` if
    invalid."""
    if isinstance(path_or_name, ArchSpec):
        return path_or_name
    if isinstance(path_or_name, dict):
        return ArchSpec.from_dict(path_or_name)
    key = str(path_or_name)
    if key in PRESETS:
        return ArchSpec.from_dict(PRESETS[key])
    path = Path(key)
    if not path.is_file():
        raise SpecError(
            f"{key}: no such spec file, and not a preset (presets: {', '.join(PRESETS)})"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{key}: not valid JSON ({e})") from None
    try:
        return ArchSpec.from_dict(data)
    except SpecError as e:
        raise SpecError(f"{key}: {e}") from None
