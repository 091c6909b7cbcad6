"""Declarative search spaces: which decisions, which choices; each point maps to one valid spec.

A space is a YAML file (``search_spaces/<base>.yaml`` ships one per base; a user's own file
works the same way) with ``base``, ``resolution``, ``num_classes`` and ``decisions``, each
decision a list of choices. Decisions not listed keep the spec's defaults. Every backend
(Optuna, Ray Tune, NNI) samples the same ``decisions`` and maps them with ``to_spec``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ..archs import BASES, stage_depths
from ..errors import UsageError
from ..files import find_yaml
from ..spec import ACTIVATIONS, HIDDENS, PRESETS, SHARES, ArchSpec, SpecError, load_spec
from ..validation import FORBID_EXTRA, Float, StrictBool, StrictInt, parse, read_yaml

_Multiplier = Annotated[Float, Field(gt=0, le=8)]  # as the spec allows


MAX_CHOICES = 100  # of one decision (a sampler's categorical; presets are matched over them all)


def _distinct(choices: list) -> list:
    if len(set(choices)) < len(choices):  # a repeat would weigh one choice double in sampling
        raise ValueError("choices must differ")
    return choices


def _choices(item: Any) -> Any:
    """A non-empty list of distinct ``item`` choices, at most `MAX_CHOICES`."""
    return Annotated[
        list[item], Field(min_length=1, max_length=MAX_CHOICES), AfterValidator(_distinct)
    ]


@dataclass(frozen=True)
class Decisions:
    """Every decision a space can search, each a list of choices; one choice fixes it, and a
    decision the file leaves out keeps the spec's default."""

    __pydantic_config__ = FORBID_EXTRA

    width_multiplier: _choices(_Multiplier) = (1.0,)
    depth_multiplier: _choices(_Multiplier) = (1.0,)
    # how many of the base's first stride-2 steps run at stride 1 (the spec's skip_downsample)
    skip_downsample: _choices(Annotated[StrictInt, Field(ge=0, le=64)]) = (0,)
    # the stage (1 = the first block stage) where CondConv begins; none = no CondConv block
    begin_stage: _choices(Literal["none"] | Annotated[StrictInt, Field(ge=1, le=10_000)]) = (
        "none",
    )
    # blocks into that stage (beyond the stage's last block: its last block)
    begin_offset: _choices(Annotated[StrictInt, Field(ge=0, le=10_000)]) = (0,)
    num_experts: _choices(Annotated[StrictInt, Field(ge=1, le=1024)]) = (8,)
    classifier: _choices(StrictBool) = (False,)
    routing_share: _choices(Literal[SHARES]) = ("block",)
    routing_hidden: _choices(Literal[HIDDENS]) = ("none",)
    routing_activation: _choices(Literal[ACTIVATIONS]) = ("sigmoid",)
    routing_hierarchical: _choices(StrictBool) = (False,)


@dataclass(frozen=True)
class SpaceFile:
    """A search space file's contents."""

    __pydantic_config__ = FORBID_EXTRA

    base: Literal[BASES]
    resolution: Annotated[StrictInt, Field(ge=8, le=4096)] = 224
    num_classes: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1000
    decisions: Decisions = Decisions()


# decision -> its default (the first choice of a decision a file leaves out)
DEFAULTS: dict[str, Any] = {f.name: f.default[0] for f in dataclasses.fields(Decisions)}


# Decisions that only matter when a point has CondConv (sampled only then).
CONDCONV_DECISIONS = (
    "begin_offset",
    "num_experts",
    "routing_share",
    "routing_hidden",
    "routing_activation",
    "routing_hierarchical",
)


@dataclass(frozen=True)
class SearchSpace:
    name: str  # the file's stem
    base: str  # the base architecture every point builds on
    resolution: int  # resolution of the full-size spec (MADDs are counted there)
    num_classes: int  # classes of the full-size spec
    decisions: dict[str, tuple[Any, ...]]  # decision -> its choices (1 choice = fixed)

    @property
    def searched(self) -> dict[str, tuple[Any, ...]]:
        """Decisions with more than one choice: what a sampler samples."""
        return {k: v for k, v in self.decisions.items() if len(v) > 1}

    def condconv_on(self, params: dict[str, Any]) -> bool:
        """Whether a point has any CondConv (a CondConv block or the CondConv classifier)."""
        p = self.complete(params)
        return p["begin_stage"] != "none" or bool(p["classifier"])

    def active(self, params: dict[str, Any]) -> dict[str, Any]:
        """The searched decisions that matter for this point: CondConv's own only when CondConv is
        on."""
        on = self.condconv_on(params)
        return {
            k: v
            for k, v in params.items()
            if k in self.searched and (on or k not in CONDCONV_DECISIONS)
        }

    def sample(self, suggest: Callable[[str, tuple[Any, ...]], Any]) -> dict[str, Any]:
        """A point, define-by-run: ``suggest(name, choices)`` for each decision that matters, the
        structure first, CondConv's own decisions only when CondConv is on (Optuna's conditional
        parameters; the Ray and NNI engines ask the same way)."""
        params = {k: suggest(k, v) for k, v in self.searched.items() if k not in CONDCONV_DECISIONS}
        if self.condconv_on(params):
            params.update(
                {k: suggest(k, v) for k, v in self.searched.items() if k in CONDCONV_DECISIONS}
            )
        return params

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: params.get(k, v[0]) for k, v in self.decisions.items()}

    def to_spec(self, params: dict[str, Any]) -> ArchSpec:
        """The spec of one point (missing searched decisions take their first choice)."""
        p = dict(DEFAULTS)
        p.update(self.complete(params))
        depth = float(p["depth_multiplier"])
        cc = None
        depths = stage_depths(self.base, depth)
        if p["begin_stage"] != "none" or p["classifier"]:
            if p["begin_stage"] == "none":
                begin = sum(depths) + 2  # classifier only
            else:
                stage = min(int(p["begin_stage"]), len(depths))
                begin = (
                    2
                    + sum(depths[: stage - 1])
                    + min(int(p["begin_offset"]), depths[stage - 1] - 1)
                )
            cc = {
                "begin_layer": begin,
                "num_experts": p["num_experts"],
                "classifier": p["classifier"],
                "routing": {
                    "share": p["routing_share"],
                    "hidden": p["routing_hidden"],
                    "activation": p["routing_activation"],
                    "hierarchical": p["routing_hierarchical"],
                },
            }
        return ArchSpec.from_dict(
            {
                "base": self.base,
                "width_multiplier": float(p["width_multiplier"]),
                "depth_multiplier": depth,
                "skip_downsample": int(p["skip_downsample"]),
                "resolution": self.resolution,
                "num_classes": self.num_classes,
                "condconv": cc,
            }
        )

    def params_for(self, spec: ArchSpec) -> dict[str, Any] | None:
        """Decisions that give exactly ``spec`` (compared by id), or None if the space cannot
        express it."""
        if (
            spec.base != self.base
            or spec.resolution != self.resolution
            or spec.num_classes != self.num_classes
        ):
            return None
        # Narrow the product with what the spec pins down directly, then match by id.
        fixed = {
            "width_multiplier": spec.width_multiplier,
            "depth_multiplier": spec.depth_multiplier,
            "skip_downsample": spec.skip_downsample,
        }
        cc = spec.condconv
        if cc is not None:
            fixed.update(
                num_experts=cc.num_experts,
                classifier=cc.classifier,
                routing_share=cc.routing.share,
                routing_hidden=cc.routing.hidden,
                routing_activation=cc.routing.activation,
                routing_hierarchical=cc.routing.hierarchical,
            )
        names = list(self.decisions)
        choices = [[v for v in self.decisions[n] if n not in fixed or v == fixed[n]] for n in names]
        for values in itertools.product(*choices):
            params = dict(zip(names, values, strict=False))
            if self.to_spec(params).id == spec.id:
                return self.active(params)
        return None

    def presets(self) -> dict[str, dict[str, Any]]:
        """The named presets this space contains, with their decisions."""
        found = {}
        for name in PRESETS:
            spec = load_spec(name).replace(num_classes=self.num_classes)
            if spec.resolution != self.resolution:
                continue  # not the same model as the space's
            params = self.params_for(spec)
            if params is not None:
                found[name] = params
        return found

    def dense_start(self, fits: Callable[[ArchSpec], bool]) -> ArchSpec:
        """The static network the search's dense start trains: the base at the space's widest
        width and its own depth (1.0), at the largest ``skip_downsample`` where it ``fits`` the
        budget (else the smallest).

        Widest, so every candidate inherits its tensors whole or their leading slices; a deeper
        candidate's extra blocks start fresh (at depth 1.1 EfficientNet-B0's start would cost 1.5
        times as much). The stride plan changes no tensor, but it changes what the weights learn:
        a start trained on 1x1 maps gave its own shape the proxy's best score in a 32 px search
        (benchmarks/README.md, "small images"), so it trains on the largest maps the budget
        affords."""
        top = {
            "width_multiplier": max(self.decisions["width_multiplier"], key=float),
            "depth_multiplier": 1.0,
            "begin_stage": "none",
            "classifier": False,
        }
        skips = sorted(self.decisions["skip_downsample"], key=int)
        shapes = [self.to_spec({**top, "skip_downsample": s}) for s in skips]
        return next((s for s in reversed(shapes) if fits(s)), shapes[0])

    def check_trains_at(self, resolution: int, name: str) -> None:
        """`SpecError` naming ``name`` unless every stride plan the space holds runs at
        ``resolution`` (a recipe's, where its candidates train): maps of 1x1 or more, whole."""
        for skip in self.decisions["skip_downsample"]:
            spec = ArchSpec(base=self.base, resolution=self.resolution, skip_downsample=int(skip))
            spec.check_resolution(resolution, name)

    def cheapest(self) -> ArchSpec:
        """The cheapest point: smallest width and depth, CondConv as late and as light as the space
        allows.

        CondConv never lowers MADDs (it adds mixing and routing to the same convolutions), and
        MADDs grow with width and depth, so this bounds the space from below.
        """

        def pick(name, key):
            return min(self.decisions[name], key=key)

        order = {"none": float("inf")}
        p = {
            "width_multiplier": pick("width_multiplier", float),
            "depth_multiplier": pick("depth_multiplier", float),
            "skip_downsample": pick("skip_downsample", int),  # larger maps cost more
            "begin_stage": max(self.decisions["begin_stage"], key=lambda v: order.get(v, v)),
            "begin_offset": max(self.decisions["begin_offset"]),
            "num_experts": pick("num_experts", int),
            "classifier": pick("classifier", int),
            # the most shared routing (fewest routers) and the smallest hidden layer
            "routing_share": pick("routing_share", SHARES[::-1].index),
            "routing_hidden": pick("routing_hidden", HIDDENS.index),
            "routing_hierarchical": pick("routing_hierarchical", int),
        }
        return self.to_spec(p)


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (``efficientnet_b0``) or a YAML file; `UsageError` naming what is
    wrong."""
    path = find_yaml(str(name_or_path), "condconv_nas.search_spaces", "--space", "space")
    where = f"space {path}"
    parsed = parse(SpaceFile, read_yaml(path, where), where)
    stages = len(stage_depths(parsed.base, 1.0))
    for stage in parsed.decisions.begin_stage:
        if stage != "none" and stage > stages:
            raise UsageError(
                f"{where}: decisions.begin_stage: {parsed.base} has stages 1..{stages}, got {stage}"
            )
    for skip in parsed.decisions.skip_downsample:
        try:
            ArchSpec.from_dict(
                {"base": parsed.base, "resolution": parsed.resolution, "skip_downsample": skip}
            )
        except SpecError as e:
            raise UsageError(f"{where}: decisions.{e}") from None
    space = SearchSpace(
        name=path.stem,
        base=parsed.base,
        resolution=parsed.resolution,
        num_classes=parsed.num_classes,
        decisions={k: tuple(v) for k, v in dataclasses.asdict(parsed.decisions).items()},
    )
    try:  # every corner must map to a valid spec
        space.to_spec({})
        space.cheapest()
    except SpecError as e:
        raise UsageError(f"{where}: a point of the space is not a valid spec: {e}") from None
    return space
