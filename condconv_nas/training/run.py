"""``condconv-nas train`` and ``evaluate``: retrain an exported spec with a recipe, on one
process or under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU; only rank 0 writes)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from ..data import check_datasets, describe_split, make_datasets, parse_source
from ..errors import UsageError
from ..files import check_writable_folder, write_atomic
from ..spec import load_spec
from ..validation import check_batch_size, check_int, check_seed
from . import checkpoint
from .engine import (
    Accelerator,
    build_for_training,
    evaluate,
    make_loader,
    own_random_state,
    setup_training,
    train_epoch,
)
from .recipe import load_recipe


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
    trainer: str = "proxy",
    data: str = "digits",
    epochs: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    init: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    split: str = "final",
    seed: int | None = None,
) -> dict:
    """Train ``spec`` (an ArchSpec, a spec file or a preset name) with a recipe; returns
    ``metrics.json``.

    Writes ``last.pt``, ``model.pt``, ``metrics.json`` and TensorBoard logs under ``out`` after
    every epoch (default ``runs/<spec id>``; ``metrics.json`` holds that ``spec_id`` and
    ``model_spec_id``, the spec as trained, whose classifier has the data's classes); ``resume``
    continues from ``out/last.pt``. ``init``: start from other weights (a state dict file of the
    base's timm model, one of our ``model.pt``, ``timm:NAME``; see ``models.upcycle.inherit``):
    what matches is taken, metrics.json records the share of parameters ``inherited``.
    Under ``torchrun`` every process trains (DDP) and rank 0 writes.
    ``split``: ``final`` learns from all training images and scores on the data's test images;
    ``search`` (the search's dense start) holds a part of the training images out to score on
    (`data.make_datasets`). metrics.json says how many ``images`` were scored.
    ``seed``: the recipe's ``seed`` (model init and data order) replaced.
    ``progress``: epoch lines and a bar on stderr. Bad input raises `UsageError` before any work
    or any file.
    """
    spec = load_spec(spec)
    source = None
    if init is not None:  # read and checked before anything is written
        from ..models.sources import check_base, load_source

        source = load_source(init)
        check_base(source, spec.base)
    given_id = spec.id  # names the default output folder, and metrics.json's spec_id
    data = parse_source(data)
    recipe = load_recipe(trainer).for_data(data.kind).for_base(spec.base)
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=check_seed(seed))
    # the recipe's ranges (training.recipe.Recipe)
    epochs = check_int(epochs if epochs is not None else recipe.epochs, "--epochs", 1, 100_000)
    batch = check_batch_size(recipe.batch_size if batch_size is None else batch_size)
    if workers is None:  # the recipe's, but no more loader processes than this machine has cores
        workers = min(recipe.workers, os.cpu_count() or 1)
    check_int(workers, "--workers", 0, 1024)
    recipe.check_optimizer()
    out = Path(out or default_out(given_id))
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
        if state["epoch"] == epochs:  # finished already: nothing to train, the same answer
            return state["metrics"] if os.environ.get("RANK", "0") == "0" else {}

    from ..madds import count_madds, count_params

    world, rank = _dist()
    acc = Accelerator.pick(int(os.environ.get("LOCAL_RANK", "0")))
    device = acc.device
    res = recipe.resolution or spec.resolution
    train_ds, val_ds, num_classes = make_datasets(
        data,
        res,
        holdout=recipe.holdout,
        seed=recipe.seed,
        autoaugment=recipe.autoaugment,
        split=split,
    )
    check_datasets(data, train_ds, val_ds, num_classes)
    if spec.num_classes != num_classes:
        if rank == 0 and progress:
            print(
                f"note: {data} has {num_classes} classes; the classifier is built for "
                f"{num_classes} "
                f"(the spec says {spec.num_classes})",
                file=sys.stderr,
            )
        spec = spec.replace(num_classes=num_classes)
    torch.manual_seed(recipe.seed)
    model = build_for_training(spec, recipe)
    if state is not None:  # a resumed run's weights come from its checkpoint
        inherited = {k: v for k, v in state["metrics"].items() if k in ("init", "inherited")}
    elif source is not None:
        inherited = _inherit(model, source, note=rank == 0 and progress)
    else:
        inherited = {}
    madds, n_params = count_madds(model), count_params(model)
    model = model.to(device)
    sampler = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_ds, seed=recipe.seed, drop_last=True
        )
    # mixup needs whole batches; otherwise keep every image (small folders have less than one batch)
    train_loader = make_loader(
        train_ds,
        batch,
        train=True,
        seed=recipe.seed,
        workers=workers,
        sampler=sampler,
        drop_last=recipe.mixup_alpha > 0 and len(train_ds) >= batch * world,
    )
    if len(train_loader) == 0:
        raise UsageError(
            f"--data {data}: {len(train_ds)} training images, fewer than one batch of {batch}"
        )
    val_loader = make_loader(val_ds, batch, train=False, seed=0, workers=workers)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    t = setup_training(
        train_model,
        recipe,
        num_classes=num_classes,
        steps_per_epoch=len(train_loader),
        epochs=epochs,
        world_size=world,
    )
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        if t.scheduler is not None and state.get("scheduler"):
            t.scheduler.load_state_dict(state["scheduler"])
        if t.ema is not None and state.get("ema"):
            t.ema.module.load_state_dict(state["ema"])
        start = state["epoch"]
        if rank == 0 and progress:
            print(f"resuming {out} after epoch {start}", file=sys.stderr)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    metrics = {}
    for epoch in range(start, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = None
        if rank == 0 and progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(train_loader),
                desc=f"epoch {epoch + 1}/{epochs}",
                file=sys.stderr,
                leave=False,
            )
        t0 = time.time()
        loss = train_epoch(t, train_loader, epoch, acc=acc, progress=bar)
        seconds = time.time() - t0
        if bar is not None:
            bar.close()
        if rank != 0:
            continue
        evaluated = t.ema.module if t.ema is not None else model
        m = evaluate(evaluated, val_loader, device=device)
        metrics = {
            "epoch": epoch + 1,
            "top1": m["top1"],
            "top5": m["top5"],
            "val_loss": m["loss"],
            "train_loss": loss,
            "epoch_seconds": round(seconds, 2),
            "madds": madds,
            "params": n_params,
            "spec_id": given_id,
            "model_spec_id": spec.id,
            "data": str(data),
            "images": len(val_ds),
            "scored_on": describe_split(data, val_ds, train_ds, split),
            "world_size": world,
            **inherited,
        }
        if progress:
            print(
                f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  top-1 {m['top1']:.4f}  top-5 "
                f"{m['top5']:.4f}  ({seconds:.1f}s; about "
                f"{_duration(seconds * (epochs - epoch - 1))} left)",
                file=sys.stderr,
            )
        for k in ("top1", "top5", "loss"):
            writer.add_scalar(f"val/{k}", m[k], epoch + 1)
        writer.add_scalar("train/loss", loss, epoch + 1)
        ckpt = {
            "epoch": epoch + 1,
            "spec": spec.to_dict(),
            "recipe": {**recipe.__dict__, "overrides": {}},
            "model": model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else {},
            "ema": t.ema.module.state_dict() if t.ema is not None else {},
            "metrics": metrics,
        }
        checkpoint.save(ckpt, out / "last.pt")
        checkpoint.save(
            {
                "spec": spec.to_dict(),
                "model": evaluated.state_dict(),
                "recipe": ckpt["recipe"],
                "metrics": metrics,
            },
            out / "model.pt",
        )
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return metrics if rank == 0 else {}


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2 h 05 min``: time left, to a reader's precision."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _inherit(model, source, *, note: bool) -> dict:
    """Start ``model`` from ``source`` (what matches); what metrics.json records of it."""
    from ..models.upcycle import inherit

    got = inherit(model, source)
    if note:
        for diff in got.differences:
            print(f"note: --init {source.name} has {diff}", file=sys.stderr)
        if got.not_inherited:
            print(
                f"note: --init {source.name}: {len(got.not_inherited)} tensor(s) not or partly "
                f"inherited (widths or depths differ), e.g. {got.not_inherited[0]}",
                file=sys.stderr,
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
