"""The architecture spec (schema_version 1): what a model is, as JSON.

``ArchSpec.from_dict`` is the one gate every spec passes (files, presets, search spaces): the
dataclasses' type hints say every type, choice and range, pydantic checks them
(``validation.parse``: unknown fields, wrong types and out-of-range values are a `SpecError`
naming the field), and ``validate`` adds the checks across fields. A spec's ``id`` is a hash of
its canonical JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from .archs import BASES, num_blocks, stride_steps
from .errors import UsageError
from .files import write_atomic
from .validation import FORBID_EXTRA, Float, StrictBool, StrictInt, parse, read_json

SCHEMA_VERSION = 1
SHARES = ("layer", "block", "pair", "single")
HIDDENS = ("none", "small", "medium", "large")
ACTIVATIONS = ("sigmoid", "softmax")
PADDINGS = ("symmetric", "same")  # PyTorch's k // 2 on every side | TensorFlow's 'SAME'
# Fields that to_dict() (and so the id) leaves out while they hold their default: specs written
# before the field existed read unchanged and keep their ids.
OPTIONAL_DEFAULTS = {"padding": "symmetric", "bn_eps": 1e-5, "skip_downsample": 0}


class SpecError(UsageError):
    """A spec that is not valid; the message names the field."""


_Multiplier = Annotated[Float, Field(gt=0, le=8)]


@dataclass(frozen=True)
class RoutingSpec:
    __pydantic_config__ = FORBID_EXTRA

    # which layers share one routing: layer | block | pair (two blocks) | single
    share: Literal[SHARES] = "block"
    # hidden layer of the routing FC: none | small (in/8) | medium (in) | large (8*in)
    hidden: Literal[HIDDENS] = "none"
    activation: Literal[ACTIVATIONS] = "sigmoid"  # sigmoid (paper) | softmax
    hierarchical: StrictBool = False  # concatenate the previous routing weights to the pooled input


@dataclass(frozen=True)
class CondConvSpec:
    __pydantic_config__ = FORBID_EXTRA

    # 1 = stem, 2..B+1 = blocks, B+2 = classifier only (docs/method.md)
    begin_layer: Annotated[StrictInt, Field(ge=1, le=10_000)]
    num_experts: Annotated[StrictInt, Field(ge=1, le=1024)] = 8  # experts per CondConv layer
    classifier: StrictBool = False  # the final FC is a CondConv (CondLinear) layer
    routing: RoutingSpec = field(default_factory=RoutingSpec)


@dataclass(frozen=True)
class ArchSpec:
    __pydantic_config__ = FORBID_EXTRA

    base: Literal[BASES]  # mobilenet_v1 | mobilenet_v2 | mnasnet_a1 | resnet50 | efficientnet_b0
    width_multiplier: _Multiplier = 1.0  # channels scale as the family's paper does
    depth_multiplier: _Multiplier = 1.0  # repeats per stage scale (ceil)
    resolution: Annotated[StrictInt, Field(ge=8, le=4096)] = 224  # input size of the MADD count
    num_classes: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1000  # classifier outputs
    # symmetric | same: TensorFlow's 'SAME', as timm's tf_ models (their pad_type='same')
    padding: Literal[PADDINGS] = "symmetric"
    # batch-norm epsilon (timm's tf_ models: 1e-3)
    bn_eps: Annotated[Float, Field(gt=0, lt=1)] = 1e-5
    # the first k of the base's stride-2 steps (from the stem) run at stride 1: small images keep
    # larger maps (EfficientNet-B0 at 32 px ends on 1x1 maps with 0, 2x2 with 1, 4x4 with 2)
    skip_downsample: Annotated[StrictInt, Field(ge=0)] = 0  # the base bounds it (below)
    condconv: CondConvSpec | None = None  # None: a static model
    # an integer (a Literal would take 1.0 and true)
    schema_version: Annotated[StrictInt, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)] = (
        SCHEMA_VERSION
    )

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name, default in OPTIONAL_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any) -> ArchSpec:
        spec = parse(cls, d, error=SpecError)
        spec.validate()
        return spec

    def replace(self, **changes) -> ArchSpec:
        """A copy with ``changes``, checked like any spec."""
        return ArchSpec.from_dict(dataclasses.asdict(dataclasses.replace(self, **changes)))

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
        """The checks across fields (each field's own are in its type hint)."""
        if self.padding == "same" and self.base == "resnet50":
            raise SpecError(
                "padding: 'same' is for the EfficientNet family; resnet50 pads symmetrically"
            )
        self._validate_strides()
        cc = self.condconv
        if cc is None:
            return
        last = self.num_blocks + 2
        if cc.begin_layer > last:
            raise SpecError(
                f"condconv.begin_layer: must be in [1, {last}] for {self.base} with "
                f"depth_multiplier {self.depth_multiplier} ({last - 2} blocks; {last} = "
                f"classifier only), got {cc.begin_layer}"
            )
        if cc.begin_layer == last and not cc.classifier:
            raise SpecError(
                f"condconv.begin_layer: {last} means classifier only, but condconv.classifier is "
                f"false"
            )

    @property
    def total_stride(self) -> int:
        """How many times smaller than the input the final feature maps are."""
        return 2 ** (stride_steps(self.base) - self.skip_downsample)

    def _validate_strides(self) -> None:
        skip, steps = self.skip_downsample, stride_steps(self.base)
        if skip > steps:
            raise SpecError(
                f"skip_downsample: {self.base} has {steps} stride-2 steps, so at most {steps}, "
                f"got {skip}"
            )
        self.check_resolution(self.resolution)

    def check_resolution(self, resolution: int, name: str = "skip_downsample") -> None:
        """`SpecError` naming ``name`` unless this stride plan, where it skips a step, runs at
        ``resolution``: a final map of at least 1x1, a resolution its stride divides. The
        published bases (skipping none) are left as they always were: they run at any size, as
        padded stride-2 layers keep a 1x1 map 1x1, and at sizes such as 240 px."""
        skip, stride = self.skip_downsample, self.total_stride
        plan = f"{skip} leaves {self.base} a total stride of {stride}"
        if name != "skip_downsample":  # else the message would name the field twice
            plan = f"skip_downsample {plan}"
        if skip and resolution < stride:
            raise SpecError(
                f"{name}: {plan}, which shrinks resolution {resolution} under a 1x1 map; "
                f"skip more steps or raise the resolution"
            )
        if skip and resolution % stride:
            raise SpecError(
                f"{name}: {plan}, which does not divide resolution {resolution} (final maps of "
                f"{resolution / stride:g} px); use a resolution divisible by {stride}"
            )


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
    """A spec from a preset name, a JSON file, a run folder (its most accurate front spec), a
    dict or an ArchSpec; raises `SpecError` if invalid."""
    if isinstance(path_or_name, ArchSpec):
        return path_or_name
    if isinstance(path_or_name, dict):
        return ArchSpec.from_dict(path_or_name)
    key = str(path_or_name)
    if key in PRESETS:
        return ArchSpec.from_dict(PRESETS[key])
    path = Path(key)
    if path.is_dir():  # a run folder: its most accurate front spec
        from .front_file import best_spec_path  # only a run folder needs it

        path = best_spec_path(path, ArchSpec)
    if not path.is_file():
        raise SpecError(
            f"{key}: no such spec file, and not a preset (presets: {', '.join(PRESETS)})"
        )
    data = read_json(path, key, SpecError)
    try:
        return ArchSpec.from_dict(data)
    except SpecError as e:
        raise SpecError(f"{key}: {e}") from None
