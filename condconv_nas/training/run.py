"""``condconv-nas train`` and ``evaluate``: retrain an exported spec with a recipe, on one
process or under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU; only rank 0 writes)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DataSource, check_datasets, describe_split, make_datasets, parse_source
from ..errors import UsageError
from ..files import check_writable_folder, write_atomic
from ..madds import count_madds, count_params
from ..progress import BarReporter, Epoch, Reporter
from ..spec import ArchSpec, load_spec
from ..validation import check_batch_size, check_int, check_seed
from . import checkpoint
from .accelerator import Accelerator
from .datasets import recipe_datasets
from .distributed import unwrap
from .epoch import make_loader
from .evaluate import evaluate
from .fit import Hooks, fit
from .init import build_for_training
from .random_state import own_random_state
from .recipe import Recipe, load_recipe


def default_out(spec_id: str) -> Path:
    """Where `train` writes when no ``out`` is given: ``runs/<spec id>``."""
    return Path("runs") / spec_id


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return world, rank


@own_random_state
def train(
    spec,
    *,
    trainer: str | Recipe = "proxy",
    data: str = "digits",
    epochs: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    init: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool | Reporter = True,
    split: str = "final",
    seed: int | None = None,
) -> dict:
    """Train ``spec`` (an ArchSpec, a spec file or a preset name) with a recipe; returns
    metrics.json.

    Writes ``last.pt``, ``model.pt``, ``metrics.json`` and TensorBoard logs under ``out`` each
    epoch (default ``runs/<spec id>``; metrics.json's ``spec_id`` is that spec's, ``model_spec_id``
    the spec as trained, with the data's classes); ``resume`` continues from ``out/last.pt``.
    ``init``: start from other weights (the base's timm state dict file, one of our ``model.pt``,
    ``timm:NAME``; see ``models.upcycle.inherit``); metrics.json's ``inherited`` is the share of
    parameters taken. Under ``torchrun`` every process trains (DDP), rank 0 writes. ``split``:
    ``final`` learns from all training images and scores on the test images; ``search`` (the
    dense start) scores on a held-out part of the training images (`data.make_datasets`);
    metrics.json's ``images`` counts those scored. ``seed`` replaces the recipe's (model init,
    data order). ``progress``: True for epoch lines and a bar on stderr, False for silence, or a
    `progress.Reporter`; only rank 0 reports. Bad input raises `UsageError` before any work or file.
    """
    a = _check_inputs(
        spec, trainer, data, epochs, out, resume, init, batch_size, workers, seed=seed
    )
    if a.state is not None and a.state["epoch"] == a.epochs:  # finished: the same answer
        return a.state["metrics"] if os.environ.get("RANK", "0") == "0" else {}
    world, rank = _dist()
    recipe, data = a.recipe, a.data
    if not isinstance(progress, Reporter):
        progress = BarReporter() if progress else Reporter()
    reporter = progress if rank == 0 else Reporter()
    train_ds, val_ds, num_classes = _datasets(a, split)
    spec, model, inherited = _model(a, num_classes, reporter.note)
    folder = _Writer(a.out, spec, recipe, reporter=reporter)
    if a.state is not None:  # a resumed run's curve goes on from its checkpoint's
        folder.train_losses = list(a.state["metrics"].get("train_losses", []))
    folder.fixed = dict(
        madds=count_madds(model), params=count_params(model), spec_id=a.given_id,
        model_spec_id=spec.id, data=str(data), images=len(val_ds),
        scored_on=describe_split(data, val_ds, train_ds, split), world_size=world, **inherited,
    )  # fmt: skip
    try:
        fit(
            model,
            recipe,
            train_ds,
            val_ds,
            epochs=a.epochs,
            seed=recipe.seed,
            batch=a.batch,
            num_classes=num_classes,
            acc=Accelerator.pick(int(os.environ.get("LOCAL_RANK", "0"))),
            lr_scale=world,
            workers=a.workers,
            val_batch=a.batch,
            restore=a.state,
            hooks=Hooks(
                bar=reporter.bar,
                on_epoch=folder.epoch if rank == 0 else None,
                every_epoch=True,
            ),
        )
    except UsageError as e:
        raise UsageError(f"--data {data}: {e}") from None
    finally:
        folder.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return folder.metrics if rank == 0 else {}


@dataclass
class _Inputs:
    """``train()``'s arguments, checked."""

    spec: ArchSpec
    given_id: str  # names the default output folder, and metrics.json's spec_id
    source: object | None  # the --init weights (models.sources.WeightSource)
    data: DataSource
    recipe: Recipe
    epochs: int
    batch: int
    workers: int
    out: Path
    state: dict | None  # the checkpoint resumed from


def _check_inputs(
    spec, trainer, data, epochs, out, resume, init, batch_size, workers, *, seed
) -> _Inputs:
    """Every argument of ``train()`` read and checked, before anything is written."""
    spec = load_spec(spec)
    source = None
    if init is not None:
        from ..models.sources import check_base, load_source

        source = load_source(init)
        check_base(source, spec.base)
    data = parse_source(data)
    recipe = trainer if isinstance(trainer, Recipe) else load_recipe(trainer)
    recipe = recipe.for_data(data.kind).for_base(spec.base)
    if recipe.resolution:  # the images train at the recipe's size, not the spec's
        spec.check_resolution(recipe.resolution, "--trainer resolution")
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=check_seed(seed))
    # the recipe's ranges (training.recipe.Recipe)
    epochs = check_int(epochs if epochs is not None else recipe.epochs, "--epochs", 1, 100_000)
    batch = check_batch_size(recipe.batch_size if batch_size is None else batch_size)
    if workers is None:  # the recipe's, but no more loader processes than this machine has cores
        workers = min(recipe.workers, os.cpu_count() or 1)
    check_int(workers, "--workers", 0, 1024)
    recipe.check_optimizer()
    out = Path(out or default_out(spec.id))
    check_writable_folder(out, "--out")
    if resume and not (out / "last.pt").is_file():
        raise UsageError(f"--resume: no checkpoint {out / 'last.pt'}")
    state = checkpoint.load(out / "last.pt") if resume else None
    if state is not None:
        checkpoint.check_resumable(state, out / "last.pt", spec=spec, recipe=recipe)
        if state["epoch"] > epochs:
            raise UsageError(
                f"--epochs {epochs}: {out / 'last.pt'} has trained {state['epoch']} epochs already;"
                " ask for more epochs to go on"
            )
    return _Inputs(spec, spec.id, source, data, recipe, epochs, batch, workers, out, state)


class _Writer:
    """What ``train()`` writes after each epoch: ``last.pt`` (to resume), ``model.pt`` (to use),
    ``metrics.json``, TensorBoard's scalars, and a line for the reader."""

    def __init__(self, out: Path, spec, recipe: Recipe, *, reporter: Reporter) -> None:
        self.out, self.spec, self.reporter = out, spec, reporter
        self.recipe = {**recipe.__dict__, "overrides": {}}
        self.fixed: dict = {}  # what every epoch's metrics.json repeats
        self.metrics: dict = {}  # the last epoch's metrics.json
        self.train_losses: list[float] = []  # every epoch's mean training loss, from the first
        self.writer = None  # TensorBoard's, opened with the first epoch's files

    def epoch(self, end) -> None:
        m = end.metrics
        self.train_losses = self.train_losses[: end.epoch - 1] + [end.loss]
        self.metrics = {
            "epoch": end.epoch,
            "top1": m["top1"],
            "top5": m["top5"],
            "val_loss": m["loss"],
            "train_loss": end.loss,
            "train_losses": self.train_losses,
            "epoch_seconds": round(end.seconds, 2),
            **self.fixed,
        }
        left = end.seconds * (end.epochs - end.epoch)
        line = (
            f"epoch {end.epoch}/{end.epochs}  loss {end.loss:.4f}  top-1 {m['top1']:.4f}  top-5 "
            f"{m['top5']:.4f}  ({end.seconds:.1f}s; about {_duration(left)} left)"
        )
        self.reporter.epoch(Epoch(end.epoch, end.epochs, line=line))
        self._scalars(end)
        self._checkpoints(end)
        write_atomic(self.out / "metrics.json", json.dumps(self.metrics, indent=2) + "\n")

    def _scalars(self, end) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        for k in ("top1", "top5", "loss"):
            self.writer.add_scalar(f"val/{k}", end.metrics[k], end.epoch)
        self.writer.add_scalar("train/loss", end.loss, end.epoch)

    def _checkpoints(self, end) -> None:
        t, spec = end.training, self.spec.to_dict()
        checkpoint.save(
            {
                "epoch": end.epoch,
                "spec": spec,
                "recipe": self.recipe,
                "model": unwrap(t.model).state_dict(),
                "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict() if t.scheduler is not None else {},
                "ema": t.ema.module.state_dict() if t.ema is not None else {},
                "metrics": self.metrics,
            },
            self.out / "last.pt",
        )
        model = {"spec": spec, "model": end.evaluated.state_dict(), "recipe": self.recipe}
        checkpoint.save({**model, "metrics": self.metrics}, self.out / "model.pt")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _datasets(a: _Inputs, split: str):
    """The training and scoring images of ``split`` (`datasets.recipe_datasets`), checked."""
    recipe = a.recipe
    train_ds, val_ds, num_classes = recipe_datasets(a.data, recipe, a.spec.resolution, split=split)
    check_datasets(a.data, train_ds, val_ds, num_classes)
    return train_ds, val_ds, num_classes


def _model(a: _Inputs, num_classes: int, note):
    """The spec as trained (the data's classes), its network seeded and started from ``--init``
    where asked, and what metrics.json records of that start."""
    spec = a.spec
    if spec.num_classes != num_classes:
        note(
            f"note: {a.data} has {num_classes} classes; the classifier is built for "
            f"{num_classes} (the spec says {spec.num_classes})"
        )
        spec = spec.replace(num_classes=num_classes)
    torch.manual_seed(a.recipe.seed)
    model = build_for_training(spec, a.recipe)
    if a.state is not None:  # a resumed run's weights come from its checkpoint
        note(f"resuming {a.out} after epoch {a.state['epoch']}")
        return (
            spec,
            model,
            {k: v for k, v in a.state["metrics"].items() if k in ("init", "inherited")},
        )
    if a.source is not None:
        return spec, model, _inherit(model, a.source, recipe=a.recipe, note=note)
    return spec, model, {}


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2 h 05 min``: time left, to a reader's precision."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _inherit(model, source, *, recipe: Recipe, note) -> dict:
    """Start ``model`` from ``source`` (what matches; the recipe's ``upcycle_noise`` and
    ``upcycle_routers``); what metrics.json records of it."""
    from ..models.upcycle import inherit

    got = inherit(model, source, noise=recipe.upcycle_noise, routers=recipe.upcycle_routers)
    for diff in got.differences:
        note(f"note: --init {source.name} has {diff}")
    if got.not_inherited:
        note(
            f"note: --init {source.name}: {len(got.not_inherited)} tensor(s) not or partly "
            f"inherited (widths or depths differ), e.g. {got.not_inherited[0]}"
        )
    return {"init": source.name, "inherited": round(got.fraction, 4)}


def evaluate_checkpoint(path: str | Path, *, data: str = "digits", batch_size: int = 64) -> dict:
    """top-1, top-5, loss and the number of ``images`` scored, of a checkpoint or exported model
    (ours) on ``data``'s test images (its held-out part where it has no test split)."""
    data = parse_source(data)
    check_batch_size(batch_size)
    obj = checkpoint.load(path)
    model = checkpoint.model_from(obj, path)

    recipe = checkpoint.recipe_of(obj, path)
    _, val_ds, num_classes = make_datasets(
        data,
        recipe.get("resolution") or model.spec.resolution,  # checkpoint.resolution, read once
        holdout=recipe.get("holdout", 0.2),
        seed=recipe.get("seed", 0),
        split="final",
    )
    if num_classes != model.spec.num_classes:
        raise UsageError(f"{path} has {model.spec.num_classes} classes, {data} has {num_classes}")
    return {
        **evaluate(model, make_loader(val_ds, batch_size, train=False, seed=0)),
        "images": len(val_ds),
    }
