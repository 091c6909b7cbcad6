"""One-shot scoring (``--strategy oneshot``): one supernet trained once per run, and every
candidate scored by the weights it takes from it, with no training of its own.

The supernet is a bank of tensors, one per canonical tensor name (``models.sources``) that any
point of the space has, each as large as that tensor gets in the space: the widest, deepest
point with the most experts. A point takes from each tensor what ``upcycle.inherit`` takes from
a dense model: the leading slices (its channels, its first ``n`` experts and their routers'
first ``n`` outputs, the blocks it has); a layer that is static in the point and CondConv in the
bank takes the mean of the bank's experts. Training samples a point every `PATH_STEPS` steps
(each decision uniform, as the random sampler draws them) and trains the bank through it: a
single path of shared weights per step, as single-path one-shot search does. Scoring a point
re-estimates its BatchNorm statistics on training images and evaluates it on the held-out ones.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call

from ..data import DataSource
from ..errors import UsageError
from ..layers import Router
from ..models import build_model
from ..models.sources import canonical
from ..training.accelerator import CPU
from ..training.bn_stats import BATCH_NORMS, recalibrate_bn
from ..training.checkpoint import load, save
from ..training.datasets import recipe_datasets
from ..training.epoch import make_loader
from ..training.evaluate import chance_threshold, evaluate
from ..training.fit import Hooks, fit
from ..training.init import build_for_training
from ..training.random_state import own_random_state
from ..training.recipe import Recipe
from .space import SearchSpace
from .warm_start import once_per_run, publish

SUPERNET = "supernet.pt"  # in the run folder
SIZES = ("width_multiplier", "depth_multiplier", "num_experts")  # larger choice, larger tensors
# a new path every few steps: building a point's network costs about as much as a training step
PATH_STEPS = 4
PREV = "#prev"  # a hierarchical router's inputs from the previous router, banked apart
RECALIBRATE = 16  # batches that re-estimate a scored point's BatchNorm statistics, at least


def largest(space: SearchSpace, params: dict) -> dict:
    """``params`` with width, depth and experts at their largest choices: every tensor of the
    point fits in the same tensor of this one."""
    return {**params, **{k: max(space.decisions[k]) for k in SIZES}}


def covering_points(space: SearchSpace) -> list[dict]:
    """Points whose tensors, together, name and size every tensor of every point of the space:
    the largest sizes, CondConv from the earliest block and in the classifier where the space
    allows, under each routing hidden layer and hierarchy (the activation changes no shape), with
    a router at every conv (``layer`` sharing) or at every block (``block``: the block routers of
    ``pair`` and ``single`` sharing sit at some of them, where depends on the point); then the
    static point, if the space has one. They need not be points of the space."""
    order = {"none": float("inf")}
    structure = {
        "begin_stage": min(space.decisions["begin_stage"], key=lambda v: order.get(v, v)),
        "begin_offset": min(space.decisions["begin_offset"]),
        "classifier": max(space.decisions["classifier"]),
    }
    shares = sorted({s if s == "layer" else "block" for s in space.decisions["routing_share"]})
    points = [
        largest(
            space,
            {
                **structure,
                "routing_share": share,
                "routing_hidden": hidden,
                "routing_hierarchical": hierarchical,
            },
        )  # fmt: skip
        for share, hidden, hierarchical in itertools.product(
            shares, space.decisions["routing_hidden"], space.decisions["routing_hierarchical"]
        )
    ]
    static = {"begin_stage": "none", "classifier": False}
    if all(v in space.decisions[k] for k, v in static.items()):
        points.append(largest(space, static))
    seen = {}
    for p in points:
        seen.setdefault(space.to_spec(p).id, p)
    return list(seen.values())


def take(bank: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The part of a bank tensor that a point's tensor of ``shape`` is: the leading slices, or,
    for a static layer of a CondConv bank (one dimension fewer), the mean of those slices over the
    experts. A view where possible, so gradients reach the bank."""
    if any(b < n for b, n in zip(bank.shape[bank.dim() - len(shape) :], shape, strict=True)):
        raise ValueError(f"a tensor of shape {tuple(shape)} is not in {tuple(bank.shape)}")
    if bank.dim() == len(shape) + 1:
        return bank[(slice(None), *(slice(0, n) for n in shape))].mean(0)
    return bank[tuple(slice(0, n) for n in shape)]


def _hierarchical(model: nn.Module) -> dict[str, int]:
    """The first FC weight of every router that also reads the previous router's outputs (its
    input is the pooled channels, then those outputs): its name -> how many channels. Its two
    parts are banked apart, so that a narrower point takes both parts' leading slices."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Router) and m.prev_features:
            fc = next(n for n, sub in m.named_modules() if isinstance(sub, nn.Linear))
            out[f"{name}.{fc}.weight"] = m.in_features
    return out


def parts(model: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(parameter name, bank name, tensor) for every tensor the bank holds of ``model``: each
    parameter under its canonical name, a hierarchical router's inputs from the previous router
    apart, under the name + `PREV`."""
    split = _hierarchical(model)
    for name, p in model.named_parameters():
        key, channels = _canonical(name), split.get(name)
        if channels is None:
            yield name, key, p
        else:
            yield name, key, p[:, :channels]
            yield name, key + PREV, p[:, channels:]


def views(bank: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` (a point's network) as the bank (canonical name -> tensor)
    gives it: `take` of each part, a hierarchical router's two parts side by side."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, key, p in parts(model):
        if key not in bank:
            raise ValueError(f"{key}: not in the supernet (a point outside its space?)")
        out.setdefault(name, []).append(take(bank[key], p.shape))
    return {name: got[0] if len(got) == 1 else torch.cat(got, dim=1) for name, got in out.items()}


def _merged(had: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """A bank tensor that holds both ``had`` and ``new`` (leading slices): a stack of experts
    over a static tensor, else each dimension at the larger size (a hierarchical router takes the
    previous router's outputs as extra inputs), ``new`` where both have it."""
    if had is None or new.dim() > had.dim():
        return new.contiguous()
    if had.dim() > new.dim():
        return had
    shape = [max(a, b) for a, b in zip(had.shape, new.shape, strict=True)]
    out = torch.zeros(shape, dtype=new.dtype)
    out[tuple(slice(0, n) for n in had.shape)] = had
    out[tuple(slice(0, n) for n in new.shape)] = new
    return out


def _key(name: str) -> str:
    return name.replace(".", "/")  # a ParameterDict key cannot hold a dot


def _name(key: str) -> str:
    return key.replace("/", ".")


class Supernet(nn.Module):
    """The bank, and the point it trains through: ``forward(images)`` runs the current point,
    drawing a new one every `PATH_STEPS` training steps (its own seeded draw, so a resumed
    training draws the same points); in evaluation mode it runs the largest point (the first of
    `covering_points`), its BatchNorms normalising over the batch."""

    def __init__(self, space: SearchSpace, num_classes: int, recipe: Recipe, *, seed: int = 0):
        super().__init__()
        self.space, self.num_classes, self.recipe, self.seed = space, num_classes, recipe, seed
        self.bank = nn.ParameterDict()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.covering = covering_points(space)
        for params in self.covering:
            # independent experts, as measured (the bank is shared by sigmoid and softmax points)
            model = build_for_training(self._spec(params), recipe, softmax_experts_alike=False)
            for _, name, p in parts(model):
                key = _key(name)
                had = self.bank[key].detach() if key in self.bank else None
                self.bank[key] = nn.Parameter(_merged(had, p.detach()))
        self._path: tuple[str, nn.Module] | None = None

    def _spec(self, params: dict):
        return self.space.to_spec(params).replace(num_classes=self.num_classes)

    def weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter of ``model`` (a point's network) as the bank gives it (`views`)."""
        return views({_name(k): v for k, v in self.bank.items()}, model)

    def path(self, params: dict) -> nn.Module:
        """The network of a point, its parameters left to `weights` (never initialised: the bank
        has them), its BatchNorm statistics fresh; the last one is kept."""
        spec = self._spec(params)
        if self._path is None or self._path[0] != spec.id:
            with torch.device("meta"):
                model = build_model(
                    spec,
                    drop_rate=self.recipe.dropout,
                    drop_path_rate=self.recipe.drop_path,
                    bn_momentum=self.recipe.bn_momentum,
                    expert_dropout=self.recipe.expert_dropout,
                )
            self._path = (spec.id, _materialised(model))
        return self._path[1]

    def draw(self, step: int) -> dict:
        """The point trained at ``step``: every decision uniform, drawn from the seed and step."""
        rng = random.Random(f"{self.seed}-{step}")
        return self.space.sample(lambda _, choices: rng.choice(choices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            model = self.path(self.covering[0]).eval()
            for m in model.modules():  # batch statistics: a path's own are never its own for long
                if isinstance(m, BATCH_NORMS):
                    m.train()
            with torch.no_grad():
                return functional_call(model, self.weights(model), (x,))
        step = int(self.steps)
        self.steps += 1
        model = self.path(self.draw(step - step % PATH_STEPS))
        model.train()
        return functional_call(model, self.weights(model), (x,))

    def state(self) -> dict:
        """What `score` needs: the bank under canonical names, and what it was trained for."""
        return {
            "bank": {_name(k): v.detach() for k, v in self.bank.items()},
            "space": self.space.name,
            "num_classes": self.num_classes,
        }


def _materialised(model: nn.Module) -> nn.Module:
    """A network built on the meta device given real (uninitialised) tensors, its BatchNorm
    statistics fresh: building without initialising is what makes a path cheap."""
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and m.track_running_stats:
            m.reset_running_stats()
    return model


def _canonical(name: str) -> str:
    name = canonical(name)
    return name[len("net.") :] if name.startswith("net.") else name


def supernet_recipe(recipe: Recipe, base: str) -> Recipe:
    """The search's proxy recipe for ``base`` as the supernet trains with it: ``supernet_epochs``
    (else the dense start's, else the proxy's epochs) over all of the search's training images,
    with no weight average (a point's weights are the bank's, not an average's)."""
    recipe = recipe.for_base(base)
    epochs = recipe.supernet_epochs or recipe.dense_epochs or recipe.epochs
    return dataclasses.replace(
        recipe,
        epochs=epochs,
        train_subset=1.0,
        bn_recalibrate=0,
        repeats=1,
        dense_epochs=0,
        ema_decay=0.0,
    )


def train_supernet(
    run_dir: Path,
    *,
    space: SearchSpace,
    recipe: Recipe,
    data: DataSource,
    seed: int = 0,
    note: Callable[[str], None] | None = None,
) -> dict:
    """The run folder's supernet, trained first if the run has none (one process; a killed
    training resumes from its last epoch): ``{"init": path, "top1", "epochs", "seconds"}``.
    ``recipe``: the search's proxy recipe (`supernet_recipe` makes the supernet's of it)."""
    recipe = supernet_recipe(recipe, space.base)

    def train(work: Path, final: Path, info: Path) -> None:
        _train(work, final, info, space=space, recipe=recipe, data=data, seed=seed, note=note)

    return once_per_run(run_dir, Path(SUPERNET).stem, train, what="supernet", note=note)


@own_random_state
def _train(work: Path, final: Path, info: Path, *, space, recipe, data, seed, note) -> None:
    t0 = time.perf_counter()
    train_ds, val_ds, num_classes = recipe_datasets(data, recipe, space.resolution)
    torch.manual_seed(seed + recipe.seed)
    net = Supernet(space, num_classes, recipe, seed=seed + recipe.seed)
    last = work / "last.pt"
    restore = load(last, ours=False) if last.is_file() else None
    if restore is not None and note is not None:
        note(f"resuming the supernet from {last} (epoch {restore['epoch']})")

    def checkpoint(end) -> None:
        t = end.training
        save({"model": net.state_dict(), "optimizer": t.optimizer.state_dict(),
              "scheduler": t.scheduler.state_dict() if t.scheduler else None,
              "epoch": end.epoch}, last)  # fmt: skip
        if note is not None:
            note(f"supernet epoch {end.epoch}/{end.epochs}: loss {end.loss:.3f}")

    end = fit(net, recipe, train_ds, val_ds, epochs=recipe.epochs, seed=seed + recipe.seed,
              batch=recipe.batch_size, num_classes=num_classes, acc=CPU, restore=restore,
              workers=recipe.workers,
              hooks=Hooks(on_epoch=checkpoint))  # fmt: skip
    save(net.state(), work / "model.pt")
    record = {
        "epochs": recipe.epochs,
        "top1": None if end is None else end.metrics["top1"],  # the largest point's
        "seconds": round(time.perf_counter() - t0, 1),
        "space": space.name,
    }
    publish(work, work / "model.pt", final, info, record)


@functools.lru_cache(maxsize=1)
def _bank(path: str, stamp: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The bank of a supernet file, kept while the file (its modification time and size, the
    ``stamp``) stays the same: every trial of a run scores from it."""
    bank = load(path, ours=False).get("bank")
    if not isinstance(bank, dict):
        raise UsageError(f"{path}: not a supernet (no bank of tensors)")
    return bank


@own_random_state
def score(spec, data: DataSource, recipe: Recipe, supernet: str) -> dict:
    """A candidate's held-out top-1 with the weights it takes from the supernet file (`views`),
    after its BatchNorm statistics are re-estimated on ``max(recipe.bn_recalibrate,
    RECALIBRATE)`` training batches (augmented from the recipe's seed); the split is the
    proxy's."""
    recipe = recipe.for_base(spec.base)
    torch.manual_seed(recipe.seed)
    stat = Path(supernet).stat()
    bank = _bank(supernet, (stat.st_mtime_ns, stat.st_size))
    train_ds, val_ds, num_classes = recipe_datasets(data, recipe, spec.resolution)
    with torch.device("meta"):
        model = build_model(spec.replace(num_classes=num_classes))
    model = _materialised(model)
    with torch.no_grad():
        weights = views(bank, model)
        for name, p in model.named_parameters():
            p.copy_(weights[name])
        loader = make_loader(train_ds, recipe.batch_size, train=True, seed=recipe.seed)
        recalibrate_bn(model, loader, max(recipe.bn_recalibrate, RECALIBRATE))
        val = make_loader(val_ds, 256, train=False, seed=0)
        metrics = evaluate(model, val)
    return {
        **metrics,
        "num_classes": num_classes,
        "val_size": len(val_ds),
        "chance_threshold": chance_threshold(num_classes, len(val_ds)),
    }
