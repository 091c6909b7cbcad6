"""Declarative search spaces: which decisions, which choices; each point maps to one valid spec.

A space is a YAML file (``search_spaces/<base>.yaml`` ships one per base; a user's own file
works the same way) with ``base``, ``resolution``, ``num_classes`` and ``decisions``, each
decision a list of choices. Decisions not listed keep the spec's defaults. Every backend
(Optuna, Ray Tune, NNI) samples the same ``decisions`` and maps them with ``to_spec``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..archs import BASES, stage_depths
from ..errors import UsageError
from ..spec import ACTIVATIONS, HIDDENS, PRESETS, SHARES, ArchSpec, SpecError, load_spec

# decision -> (allowed type check, default)
DECISIONS: dict[str, tuple[Any, Any]] = {
    "width_multiplier": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        1.0,
    ),
    "depth_multiplier": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        1.0,
    ),
    "begin_stage": (
        lambda v: v == "none" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "none",
    ),
    "begin_offset": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, 0),
    "num_experts": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, 8),
    "classifier": (lambda v: isinstance(v, bool), False),
    "routing_share": (lambda v: v in SHARES, "block"),
    "routing_hidden": (lambda v: v in HIDDENS, "none"),
    "routing_activation": (lambda v: v in ACTIVATIONS, "sigmoid"),
    "routing_hierarchical": (lambda v: isinstance(v, bool), False),
}


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
        parameters; Ray's OptunaSearch takes the same function)."""
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
        p = {k: d for k, (_, d) in DECISIONS.items()}
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
            "begin_stage": max(self.decisions["begin_stage"], key=lambda v: order.get(v, v)),
            "begin_offset": max(self.decisions["begin_offset"]),
            "num_experts": pick("num_experts", int),
            "classifier": pick("classifier", int),
            "routing_share": pick("routing_share", ("single", "pair", "block", "layer").index),
            "routing_hidden": pick("routing_hidden", ("none", "small", "medium", "large").index),
            "routing_hierarchical": pick("routing_hierarchical", int),
        }
        return self.to_spec(p)


def _space_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"--space {name_or_path}: no such file")
        return path
    shipped = resources.files("condconv_nas.search_spaces")
    names = sorted(p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    if name_or_path not in names:
        raise UsageError(
            f"--space {name_or_path!r}: not a shipped space ({', '.join(names)}) nor a YAML file"
        )
    return Path(str(shipped / f"{name_or_path}.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (``efficientnet_b0``) or a YAML file; `UsageError` naming what is
    wrong."""
    path = _space_file(str(name_or_path))
    where = f"space {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{where}: expected a mapping with base, resolution, num_classes, decisions"
        )
    unknown = sorted(set(data) - {"base", "resolution", "num_classes", "decisions"})
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r} (allowed: base, resolution, num_classes, "
            f"decisions)"
        )
    if data.get("base") not in BASES:
        raise UsageError(f"{where}: base {data.get('base')!r} is not one of {', '.join(BASES)}")
    decisions = data.get("decisions") or {}
    if not isinstance(decisions, dict):
        raise UsageError(f"{where}: decisions must be a mapping of decision -> list of choices")
    parsed = {}
    for name, (check, default) in DECISIONS.items():
        choices = decisions.get(name, [default])
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: decisions.{name} must be a non-empty list of choices")
        for c in choices:
            if not check(c):
                raise UsageError(f"{where}: decisions.{name}: invalid choice {c!r}")
        parsed[name] = tuple(choices)
    for name in decisions:
        if name not in DECISIONS:
            raise UsageError(f"{where}: unknown decision {name!r} (known: {', '.join(DECISIONS)})")
    space = SearchSpace(
        name=path.stem,
        base=data["base"],
        resolution=data.get("resolution", 224),
        num_classes=data.get("num_classes", 1000),
        decisions=parsed,
    )
    try:  # every corner must map to a valid spec
        space.to_spec({})
        space.cheapest()
    except SpecError as e:
        raise UsageError(f"{where}: a point of the space is not a valid spec: {e}") from None
    return space
