"""What a trained CondConv model's routers learned (the paper's section 5), as numbers.

`analyze_routing` runs a model over data in evaluation mode, catches every router's output with
forward hooks, and returns, for every router in the order the network runs them: where it sits,
the CondConv layers it feeds, the mean routing weight per class and expert, the mean and
standard deviation per expert, a histogram of the weights, and the router's class specificity
(the share of the routing weights' variance that the class explains; docs/routing.md) beside
the class spread (how far class means lie from the mean, in routing-weight units) and the
example spread (how much each expert's weight moves from example to example); and, for every
CondConv layer, its expert spread (how far its experts' kernels lie from their mean).
`write_routing` writes that as ``routing.json`` beside the pictures of `routing_plots`;
`condconv_diagnostics` boils it down to four spreads, per layer, per router and per model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .data import class_names, make_datasets, parse_source
from .errors import UsageError
from .files import check_writable_folder, write_atomic
from .layers import CondConv2d, CondLinear, Router
from .models import FAMILIES
from .routing_plots import draw_routing
from .training import checkpoint
from .validation import check_batch_size

SPLITS = ("val", "train")
BINS = 20  # histogram bins over [0, 1], where sigmoid and softmax weights both lie
SPECIFICITY = (
    "class_specificity: between-class sum of squares of the routing weights over their total "
    "sum of squares (eta squared, summed over experts): 0 = every class routed alike, "
    "1 = routing fixed by the class; class_spread: the root mean square of (class mean - mean) "
    "over examples and experts, in routing-weight units; example_spread: the mean over experts "
    "of the routing weight's standard deviation across examples; expert_layers' expert_spread: "
    "the mean over experts of |W_i - W_mean| / |W_mean| (Frobenius norms), 0 = identical experts; "
    "kernel_spread: the mean over examples of |W(x) - W(mean routing)| / |W(mean routing)|, "
    "W(x) the kernel mixed for example x (docs/routing.md)"
)


def analyze_routing(
    model: nn.Module | str | os.PathLike,
    data: str | Dataset | DataLoader,
    *,
    split: str = "val",
    batch_size: int = 64,
    resolution: int | None = None,
    holdout: float | None = None,
    seed: int | None = None,
) -> dict:
    """The routing of a CondConv model over ``data``, as ``routing.json`` holds it.

    ``model``: a built model (`build_model`, `load_exported`) or the path of a checkpoint or
    exported model; the model runs in evaluation mode and is left in the mode it was in.
    ``data``: a source (``digits``, ``fashion-mnist``, ``imagefolder:PATH``, ... as ``--data``),
    whose ``split`` (``val``: the images ``train`` scored on, the test images where the source
    has them; ``train``) is read with the
    evaluation transforms at ``resolution`` with ``holdout`` and ``seed`` (for a checkpoint, by
    default its recipe's, as ``evaluate`` does; for a model, its spec's resolution, 0.2 and 0);
    or a ``Dataset`` or ``DataLoader`` of ``(image, label)`` batches, used as given (class names
    from its ``classes`` when it has them). Every routing weight is kept until the end: memory is
    examples x experts floats per router. A model without CondConv layers raises `UsageError`.

    Besides ``layers`` (one entry per router), ``expert_layers`` lists every CondConv layer in
    the order the network runs them: ``name``, ``layer`` (the paper's layer number, None when
    unknown), ``num_experts``, ``expert_spread`` (`expert_spread`) and ``kernel_spread``
    (`kernel_spread`, over these examples; None for a layer no router fed).
    """
    if split not in SPLITS:
        raise UsageError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
    check_batch_size(batch_size)
    source = None
    if isinstance(data, str):
        source = parse_source(data)
    elif not isinstance(data, (Dataset, DataLoader)):
        raise UsageError(
            f"data: expected a source string, a Dataset or a DataLoader, got {type(data).__name__}"
        )
    model, checkpoint_path, recipe = load_model(model)

    routers = {n: m for n, m in model.named_modules() if isinstance(m, Router)}
    if not routers:
        where = f"{checkpoint_path}: " if checkpoint_path else ""
        raise UsageError(f"{where}a static model (no CondConv layers): no routing to analyze")
    spec = getattr(model, "spec", None)

    meta: dict = {"checkpoint": checkpoint_path, "spec_id": spec.id if spec else None}
    if source is not None:
        loader, names, where = source_loader(
            source, spec, recipe, split=split, batch_size=batch_size, resolution=resolution,
            holdout=holdout, seed=seed,
        )  # fmt: skip
    else:
        loader, names, where = _given_loader(data, batch_size)
    meta.update(where)
    cond_layers = {
        n: m for n, m in model.named_modules() if isinstance(m, (CondConv2d, CondLinear))
    }
    weights, labels, num_classes = _run(model, loader, routers, cond_layers)
    if names is None:
        names = class_names(loader.dataset, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    entries = _entries(model, weights, labels, num_classes, routers, cond_layers)
    return {
        **meta,
        "num_examples": int(labels.numel()),
        "classes": names,
        "class_counts": counts.tolist(),
        "specificity": SPECIFICITY,
        "bins": [i / BINS for i in range(BINS + 1)],
        "layers": entries,
        "expert_layers": _expert_layers(model, weights, cond_layers),
    }


def _given_loader(data: Dataset | DataLoader, batch_size: int) -> tuple[DataLoader, None, dict]:
    """A Dataset or DataLoader the caller gave, as analyze_routing reads it (no class names)."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size, shuffle=False)
    return loader, None, dict(data=type(loader.dataset).__name__, split=None, resolution=None)


def _expert_layers(model: nn.Module, weights: dict, cond_layers: dict) -> list[dict]:
    """routing.json's ``expert_layers``: every CondConv layer in the order the network ran them,
    with its expert spread and kernel spread."""
    routing_of = {s: r for r, served in weights.values() for s in served}
    ran = list(routing_of)
    ran += [n for n in cond_layers if n not in ran]  # layers no router's weights reached
    numbers = _layer_numbers(model)
    return [
        {
            "name": _place(n),
            "layer": numbers.get(id(cond_layers[n])),
            "num_experts": cond_layers[n].num_experts,
            "expert_spread": expert_spread(cond_layers[n].weight),
            "kernel_spread": (
                kernel_spread(cond_layers[n].weight, routing_of[n]) if n in routing_of else None
            ),
        }
        for n in ran
    ]


def condconv_diagnostics(
    model: nn.Module | str | os.PathLike, data: str | Dataset | DataLoader, **options
) -> dict:
    """What a CondConv model's experts and routers do, as four spreads.

    Runs `analyze_routing` with the same arguments (``options``: its keyword options) and returns
    `diagnostics_of` its result:

    - ``layers``: per CondConv layer (network order) ``name``, ``layer``, ``num_experts`` and
      ``expert_spread``: the mean over experts ``i`` of ``|W_i - W_mean| / |W_mean|``
      (Frobenius norms of the layer's weight, bias left out; ``W_mean`` the mean expert). 0 means
      every expert is the same kernel (an upcycled start, or experts that never moved apart), so
      the layer is a static convolution whatever its routing; for experts drawn independently
      around zero (a fresh initialisation) it is about ``sqrt(num_experts - 1)``; in between,
      the experts are a shared kernel plus differences of that relative size. None where the
      mean expert is zero but the experts are not (no scale to measure against).
      Each layer also has ``kernel_spread`` (`kernel_spread`): how far the kernel it mixes for
      an example lies from the kernel of the mean routing, relative to that kernel.
    - ``routers``: per router (the order the network runs them) ``name``, ``layers``,
      ``serves``, ``num_experts``, ``example_spread`` (the mean over experts of the routing
      weight's standard deviation across examples: 0 = every example is routed alike) and
      ``class_spread`` (the root mean square of class mean - mean, as `analyze_routing`).
    - ``expert_spread``, ``kernel_spread``, ``example_spread``, ``class_spread``: their means over
      layers / routers.
    """
    return diagnostics_of(analyze_routing(model, data, **options))


def diagnostics_of(info: dict) -> dict:
    """`condconv_diagnostics` of an `analyze_routing` result (``routing.json``'s dict)."""
    layers = [
        {k: lay.get(k) for k in ("name", "layer", "num_experts", "expert_spread", "kernel_spread")}
        for lay in info["expert_layers"]
    ]
    routers = [
        {
            k: lay[k]
            for k in ("name", "layers", "serves", "num_experts", "example_spread", "class_spread")
        }
        for lay in info["layers"]
    ]
    return {
        "layers": layers,
        "routers": routers,
        "expert_spread": _mean(lay["expert_spread"] for lay in layers),
        "kernel_spread": _mean(lay["kernel_spread"] for lay in layers),
        "example_spread": _mean(r["example_spread"] for r in routers),
        "class_spread": _mean(r["class_spread"] for r in routers),
    }


def expert_spread(weight: torch.Tensor) -> float | None:
    """The mean over experts ``i`` of ``|W_i - W_mean| / |W_mean|`` of an expert stack ``weight``
    (experts first: ``(n, out, in/groups, kh, kw)`` or ``(n, out, in)``), Frobenius norms.

    0 when all experts are equal (all zero included); None when the mean is zero but they are not.
    """
    w = weight.detach().double().flatten(1)
    mean = w.mean(0)
    norm, gaps = mean.norm(), (w - mean).norm(dim=1)
    if not norm > 1e-12 * w.norm():
        return None if bool(gaps.any()) else 0.0
    return float((gaps / norm).mean())


def kernel_spread(weight: torch.Tensor, routing: torch.Tensor) -> float | None:
    """The mean over examples of ``|W(x) - W(mean)| / |W(mean)|``: how far each example's mixed
    kernel ``W(x) = sum_i r_i(x) W_i`` lies from the kernel of the mean routing (Frobenius norms;
    ``weight`` an expert stack, experts first; ``routing`` examples x experts).

    It joins what the expert and example spreads say apart: routing that varies little can still
    move the kernel far when the experts differ, and the reverse. 0 when every example gets one
    kernel; None when the mean kernel is zero.
    """
    w = weight.detach().double().flatten(1)
    r = routing.detach().double().to(w.device)
    gram = w @ w.T  # |sum_i a_i W_i|^2 = a G a^T: no kernel per example is built
    mean = r.mean(0)
    d = r - mean
    norm2 = float(mean @ gram @ mean)
    if not norm2 > 1e-24 * float(gram.diagonal().sum()):
        return None
    gaps = ((d @ gram) * d).sum(1).clamp_min(0).sqrt()
    return float(gaps.mean() / norm2**0.5)


def _mean(values) -> float | None:
    """The mean of the values that are not None (None if there are none)."""
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def load_model(model) -> tuple[nn.Module, str | None, dict]:
    """A model as given, or read from a checkpoint path with that path and its recipe."""
    if isinstance(model, nn.Module):
        return model, None, {}

    obj = checkpoint.load(model)
    return checkpoint.model_from(obj, model), str(model), checkpoint.recipe_of(obj, str(model))


def _entries(model, weights: dict, labels, num_classes: int, routers, cond_layers) -> list[dict]:
    """routing.json's ``layers``: per router, where it sits, what it serves and its statistics."""
    numbers = _layer_numbers(model)
    entries = []
    for name, (r, served) in weights.items():
        router = routers[name]
        entries.append(
            {
                "name": _place(name),
                "layers": sorted(
                    {numbers[id(cond_layers[s])] for s in served if id(cond_layers[s]) in numbers}
                ),
                "serves": [_place(s) for s in served],
                "num_experts": router.num_experts,
                "activation": router.activation,
                "hierarchical": router.prev_features > 0,
                **_statistics(r, labels, num_classes),
            }
        )
    return entries


def source_datasets(source, spec, recipe: dict, *, resolution, holdout, seed):
    """A ``--data`` source's training and scored datasets at evaluation transforms, its number
    of classes and the resolution (a checkpoint's recipe gives the defaults). The scored images
    are the ones `train` scored on: the test images where there are some."""
    res = resolution or recipe.get("resolution") or (spec.resolution if spec else None)
    if res is None:
        raise UsageError("resolution: the model has no spec; pass resolution=")
    train_ds, val_ds, num_classes = make_datasets(
        source,
        res,
        holdout=holdout if holdout is not None else recipe.get("holdout", 0.2),
        seed=seed if seed is not None else recipe.get("seed", 0),
        augment=False,
        split="final",
    )
    if spec is not None and num_classes != spec.num_classes:
        raise UsageError(
            f"the model has {spec.num_classes} classes, --data {source} has {num_classes}"
        )
    return train_ds, val_ds, num_classes, res


def source_loader(source, spec, recipe: dict, *, split, batch_size, resolution, holdout, seed):
    """The loader of ``split`` of a ``--data`` source at evaluation transforms, its class names,
    and what routing.json says of it (`source_datasets`)."""
    train_ds, val_ds, num_classes, res = source_datasets(
        source, spec, recipe, resolution=resolution, holdout=holdout, seed=seed
    )
    ds = val_ds if split == "val" else train_ds
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    return loader, class_names(ds, num_classes), dict(data=str(source), split=split, resolution=res)


def _run(model: nn.Module, loader, routers: dict, cond_layers: dict):
    """Every router's weights over the loader, in the order routers run, and the layers it feeds."""
    batch: dict[str, torch.Tensor] = {}
    made_by: dict[int, tuple[str, torch.Tensor]] = {}  # a routing tensor's id -> its router
    fed_by: dict[str, str] = {}  # CondConv layer -> the router whose weights it used

    def on_router(name):
        def hook(module, args, out):
            batch[name] = out.detach()
            made_by[id(out)] = (name, out)  # the tensor itself is kept, so its id stays its own

        return hook

    def on_layer(name):
        def hook(module, args):
            maker = made_by.get(id(args[1]))
            if maker is not None and maker[1] is args[1]:
                fed_by.setdefault(name, maker[0])

        return hook

    handles = [m.register_forward_hook(on_router(n)) for n, m in routers.items()]
    handles += [m.register_forward_pre_hook(on_layer(n)) for n, m in cond_layers.items()]
    collected: dict[str, list[torch.Tensor]] = {}
    labels, num_classes = [], None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in loader:
                batch.clear()
                made_by.clear()
                logits = model(x.to(device))
                y = torch.as_tensor(y).long().cpu()
                num_classes = logits.shape[1]
                if y.numel() and (y.min() < 0 or y.max() >= num_classes):
                    bad = int(y.min()) if y.min() < 0 else int(y.max())
                    raise UsageError(
                        f"data: label {bad} is not one of the model's {num_classes} classes"
                    )
                labels.append(y)
                for name, r in batch.items():  # insertion order: the order the routers ran
                    collected.setdefault(name, []).append(r.float().cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not labels or not sum(len(y) for y in labels):
        raise UsageError("data: no examples")
    served = {name: [] for name in collected}
    for layer, router in fed_by.items():
        served[router].append(layer)
    order = list(collected)
    return (
        {n: (torch.cat(collected[n]), served[n]) for n in order},
        torch.cat(labels),
        num_classes,
    )


def _statistics(r: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """One router's class means, mean and std per expert, example spread, class specificity and
    spread and histogram."""
    r = r.double()
    n, e = r.shape
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, e, dtype=torch.float64).index_add_(0, labels, r)
    means = sums / counts.clamp(min=1)[:, None]
    overall = r.mean(0)
    total = ((r - overall) ** 2).sum()
    between = (counts[:, None] * (means - overall) ** 2).sum()
    # Weights that do not vary at all carry no class information: specificity 0, not 0/0.
    specificity = float((between / total).clamp(0, 1)) if total > 1e-12 * n else 0.0
    std = r.std(0, unbiased=False)
    return {
        "class_means": [
            row if c else [None] * e for row, c in zip(means.tolist(), counts.tolist(), strict=True)
        ],
        "mean": overall.tolist(),
        "std": std.tolist(),
        "example_spread": float(std.mean()),
        "class_specificity": specificity,
        "class_spread": float((between / (n * e)).sqrt()),
        "histogram": torch.histc(r, BINS, 0, 1).long().tolist(),
    }


def _place(module_path: str) -> str:
    """Where a router or layer sits, unwrapped: ``net.blocks.4.2.router`` -> ``blocks.4.2``."""
    parts = [p for p in module_path.split(".") if p not in ("module", "router")]
    return ".".join(parts[1:] if parts[:1] == ["net"] else parts)


def _layer_numbers(model: nn.Module) -> dict[int, int]:
    """The paper's layer number (1 stem, 2..B+1 blocks, B+2 classifier) of each submodule, by id."""
    spec, net = getattr(model, "spec", None), getattr(model, "net", None)
    if spec is None or net is None:
        return {}

    family = FAMILIES[spec.base]
    units = [(1, getattr(net, family.stem))]
    units += [(j, getattr(p, n)) for j, (p, n) in enumerate(family.blocks(net), start=2)]
    units.append((len(units) + 1, getattr(net, family.classifier)))
    return {id(m): j for j, unit in units for m in unit.modules()}


def routing_folder(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """The folder ``analyze`` writes to (default ``routing/`` beside the checkpoint), checked."""

    out = Path(out) if out is not None else Path(checkpoint).parent / "routing"
    check_writable_folder(out, "--out")
    return out


def write_routing(info: dict, out: str | os.PathLike) -> list[Path]:
    """``routing.json`` and the pictures of `routing_plots` in folder ``out``; returns their paths.

    Everything is drawn before anything is written, and each file is written atomically.
    """
    out = routing_folder("", out)

    files = {"routing.json": json.dumps(info, indent=2) + "\n", **draw_routing(info)}
    for name, content in files.items():
        write_atomic(out / name, content)
    return [out / name for name in files]
