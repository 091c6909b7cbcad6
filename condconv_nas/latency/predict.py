"""Predicted and measured latency of a spec on this machine, and building the table for a space.

A prediction is the sum of the table's entries for the network's parts (``units.plan``: every
unit's body and every router) plus the base network's per-model overhead, calibrated against whole
networks measured on this machine. Parts the table lacks are measured on demand: the network is
built and its units timed in place, which also adds a calibration sample. Finding the parts
needs no weights (the network is built on the meta device), so once the table holds them a
prediction takes a fraction of a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..errors import StaleTableWarning, UsageError
from ..layers import Router
from ..spec import ArchSpec, load_spec
from ..validation import check_int
from .measure import Rounds, in_place_ms, router_ms, whole_ms
from .table import LatencyTable
from .units import Part, Plan, plan, router_part, routers, units

_plans: dict[tuple[str, int], Plan] = {}
ROUTER_CHUNK = 256  # routers timed together (interleaved); bounds the memory they take
# A table built while another job held a core predicted 2.5 to 10 times what the idle machine
# measured: a cached table further than this from a measurement now is not trusted.
STALE_RATIO = 1.5
PROBE = Rounds(warmup=2, min_rounds=7, seconds=0.5, max_rounds=50)  # a quick whole-network check


def check_batch(batch) -> int:
    return check_int(batch, "batch", 1, 4096)


def _build(spec: ArchSpec, *, meta: bool = False):
    """``spec``'s network in eval mode; on the meta device (no weights: shapes only) if ``meta``."""
    from ..models import build_model  # timm

    if not meta:
        return build_model(spec).eval()
    with torch.device("meta"):
        return build_model(spec).eval()


def plan_of(spec: ArchSpec, batch: int) -> Plan:
    """The parts of ``spec``'s network at ``batch`` (cached per process)."""
    key = (spec.id, batch)
    if key not in _plans:
        _plans[key] = plan(_build(spec, meta=True), batch, spec.resolution)
    return _plans[key]


def _sum_ms(table: LatencyTable, p: Plan) -> float:
    return sum(table.ms(part.key) for part in p.parts())


def _time_routers(table: LatencyTable, items: list[tuple[Router, Part]]) -> None:
    """Time the routers the table lacks, on their own, and add them."""
    todo = {part.key: (router, part) for router, part in items if table.ms(part.key) is None}
    todo = list(todo.values())
    for i in range(0, len(todo), ROUTER_CHUNK):
        chunk = todo[i : i + ROUTER_CHUNK]
        times = router_ms([(router, part.shape) for router, part in chunk])
        table.add(
            {
                part.key: {"ms": round(t, 5), "what": part.what}
                for (_, part), t in zip(chunk, times, strict=True)
            }
        )


def _fill(spec: ArchSpec, p: Plan, table: LatencyTable) -> None:
    """Measure what ``spec``'s prediction lacks: its routers on their own; its units in place
    (and a calibration sample) when a unit's entry or the base's overhead is missing."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        model = _build(spec)
        us = [module for _, module in units(model)]
        items = [
            (router, part)
            for module, parts in zip(us, p.routers, strict=True)
            for router, part in zip(routers(module), parts, strict=True)
        ]
        _time_routers(table, items)
        if not table.missing(p.units) and table.overhead_ms(p.base) is not None:
            return
        x = torch.randn(p.units[0].shape)
        timed = in_place_ms(model, x)
        bodies = {
            part.key: {"ms": round(ms, 5), "what": part.what}
            for part, ms in zip(p.units, timed.bodies, strict=True)
        }
        # the sample compares the network with the entries its prediction will use: for a unit
        # the table held already (timed in another network), that entry, not this timing
        parts = sum(
            table.ms(q.key) if table.ms(q.key) is not None else bodies[q.key]["ms"]
            for q in p.parts()
        )
        table.add(bodies, (p.base, parts, timed.whole))


def device_table(path, batch: int) -> LatencyTable:
    """The latency table of another machine (a file ``condconv-nas latency --space`` wrote there),
    checked to be of ``batch``; `UsageError` naming the file otherwise."""
    table = LatencyTable.from_file(path)
    if table.key["batch"] != batch:
        raise UsageError(
            f"latency table {table.path} is of batch {table.key['batch']}, not {batch}: fill one "
            f"for batch {batch} on that machine (`condconv-nas latency --space NAME --batch "
            f"{batch}`)"
        )
    return table


def predict_latency(spec, batch: int = 1, *, table=None) -> float:
    """``spec``'s predicted forward latency on this machine in milliseconds (inference mode, the
    process's torch threads, ``batch`` images at the spec's resolution).

    Parts missing from this machine's table are measured first (seconds, once per machine).
    ``table``: instead, the table file of another machine (the target device, filled there with
    ``condconv-nas latency --space``); nothing is measured, and a part it lacks is a
    `UsageError`."""
    spec = load_spec(spec)
    batch = check_batch(batch)
    p = plan_of(spec, batch)
    if table is not None:
        table = device_table(table, batch)
        _require(
            table,
            p.parts(),
            p.base,
            of=f"spec {spec.id}",
            fill="for the space on that machine (`condconv-nas latency --space NAME`)",
        )
        return table.whole_ms(p.base, _sum_ms(table, p))
    table = LatencyTable.for_batch(batch)
    if not table.trusted:
        _check_cached(table, spec, p, batch)
    if table.missing(p.parts()) or table.overhead_ms(p.base) is None:
        table.reload()  # another process may have measured them
    if table.missing(p.parts()) or table.overhead_ms(p.base) is None:
        _fill(spec, p, table)
    return table.whole_ms(p.base, _sum_ms(table, p))


def _check_cached(table: LatencyTable, spec: ArchSpec, p: Plan, batch: int) -> None:
    """Before a process first predicts from a table an earlier process measured, time ``spec``'s
    network now; if the table's prediction is more than `STALE_RATIO` off, set the table aside
    (it is refilled from measurements made now) and warn, saying by how much it was off."""
    table.trusted = True
    if table.missing(p.parts()) or table.overhead_ms(p.base) is None:
        return  # nothing to compare: this network's parts are measured now anyway
    predicted = table.whole_ms(p.base, _sum_ms(table, p))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, spec.resolution, spec.resolution)
        measured = whole_ms([_build(spec)], [x], PROBE)[0]
    ratio = predicted / measured if measured > 0 else 1.0  # a clock that cannot tell: trusted
    if 1 / STALE_RATIO <= ratio <= STALE_RATIO:
        return
    stale = table.set_aside()
    warnings.warn(
        f"latency table {table.path} predicted {predicted:.1f} ms for spec {spec.id}, "
        f"{ratio:.2f}x the {measured:.1f} ms measured now (it was built under another load): "
        f"set aside as {stale.name}, measuring afresh",
        StaleTableWarning,
        stacklevel=3,
    )


def measure_latencies(specs: list, batch: int = 1) -> list[float]:
    """The measured forward latency of each spec on this machine in milliseconds: the median over
    rounds in which every spec's network takes a turn (two runs, the second timed; inference
    mode, the process's threads)."""
    specs = [load_spec(s) for s in specs]
    batch = check_batch(batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = [_build(s) for s in specs]
        inputs = [torch.randn(batch, 3, s.resolution, s.resolution) for s in specs]
        return whole_ms(models, inputs)


def measure_latency(spec, batch: int = 1) -> float:
    """``spec``'s measured forward latency on this machine in milliseconds (the median over
    rounds after warm-up; inference mode, the process's torch threads)."""
    return measure_latencies([spec], batch)[0]


def covering_specs(space) -> tuple[list[ArchSpec], list[ArchSpec]]:
    """``(built, planned)``: networks whose units cover every unit of the space's candidates
    (for each width and depth: the static network, and CondConv from the earliest point with
    the CondConv classifier for each number of experts), and networks whose routers are at every
    place a candidate's router can be (routing per layer, per block)."""
    d = space.decisions
    stages = [s for s in d["begin_stage"] if s != "none"]
    cc_on = bool(stages) or True in d["classifier"]
    shares = [s for s in ("layer", "block") if s in d["routing_share"]]
    if set(d["routing_share"]) - {"layer"} and "block" not in shares:
        shares.append("block")  # pair and single route at a subset of the blocks' places
    built, planned = [], []
    for w in d["width_multiplier"]:
        for depth in d["depth_multiplier"]:
            point = {"width_multiplier": w, "depth_multiplier": depth}
            built.append(space.to_spec({**point, "begin_stage": "none", "classifier": False}))
            if not cc_on:
                continue
            for experts in d["num_experts"]:
                cc = {
                    **point,
                    "begin_stage": min(stages) if stages else "none",
                    "begin_offset": min(d["begin_offset"]),
                    "classifier": True in d["classifier"],
                    "num_experts": experts,
                }
                specs = [space.to_spec({**cc, "routing_share": share}) for share in shares]
                built.append(specs[0])  # the units' bodies do not depend on the routing
                planned += specs
    return built, planned


def space_parts(space, batch: int) -> tuple[list[ArchSpec], list[tuple[Router, Part]]]:
    """What every candidate of ``space`` needs from a table: ``(built, routers)``, networks whose
    units cover every candidate's units (``covering_specs``), and every router (with its part)
    the space's routing choices can put at every place a router can be."""
    built, planned = covering_specs(space)
    d = space.decisions
    variants = [
        dict(hidden=h, activation=a) for h in d["routing_hidden"] for a in d["routing_activation"]
    ]
    items = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for spec in planned:
            n = spec.condconv.num_experts
            prevs = (0, n) if True in d["routing_hierarchical"] else (0,)
            for part in (part for group in plan_of(spec, batch).routers for part in group):
                for v in variants:
                    for prev in prevs:
                        router = Router(part.shape[1], n, prev_features=prev, **v)
                        items.append((router, router_part(router, part.shape)))
    return built, items


def check_covers(table: LatencyTable, space, batch: int) -> None:
    """`UsageError` unless ``table`` holds every part of every candidate of ``space`` (for a
    table from another machine, which cannot be filled here)."""
    built, items = space_parts(space, batch)
    parts = [part for _, part in items] + [u for s in built for u in plan_of(s, batch).units]
    _require(
        table,
        parts,
        space.base,
        of=f"space {space.name!r}'s candidates",
        fill=f"on that machine (`condconv-nas latency --space {space.name} --batch {batch}`)",
    )


def _require(table: LatencyTable, parts, base: str, *, of: str, fill: str) -> None:
    """`UsageError` unless ``table`` (another machine's: it cannot be filled here) holds ``parts``
    and a calibration of ``base``; the message names what lacks them (``of``) and how to fill
    it (``fill``)."""
    lacking = table.missing(parts)
    if lacking or table.overhead_ms(base) is None:
        what = f"{len(lacking)} part(s)" if lacking else f"a calibration of base {base}"
        raise UsageError(
            f"latency table {table.path} ({table.describe()}) lacks {what} of {of}: fill it {fill}"
        )


def build_table(
    space="efficientnet_b0", batch: int = 1, *, progress: Callable[[int, int], None] | None = None
) -> LatencyTable:
    """Fill this machine's table for ``batch`` with every part of every candidate of ``space``
    (a name or a file, as ``search --space`` takes), so that no later prediction measures.

    ``progress(done, total)`` hears of each network measured."""
    from ..nas.space import load_space

    space = load_space(space)
    batch = check_batch(batch)
    table = LatencyTable.for_batch(batch)
    built, items = space_parts(space, batch)
    _time_routers(table, items)
    if progress is not None:
        progress(1, len(built) + 1)
    for k, spec in enumerate(built, start=2):
        predict_latency(spec, batch)
        if progress is not None:
            progress(k, len(built) + 1)
    return table


def table_info(batch: int = 1) -> dict:
    """This machine's table for ``batch``: where it is, its key and how many entries it holds."""
    table = LatencyTable.for_batch(check_batch(batch))
    table.reload()
    return {
        "table": str(table.path),
        "entries": len(table.entries),
        **{f"key_{k}": v for k, v in table.key.items()},
        "calibrated": sorted(table.calibration),
    }


__all__ = [
    "build_table",
    "check_batch",
    "check_covers",
    "covering_specs",
    "device_table",
    "measure_latencies",
    "measure_latency",
    "plan_of",
    "predict_latency",
    "space_parts",
    "table_info",
]
