"""Checkpoints and exported models: plain tensors and JSON-able values, loadable with
weights_only=True."""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..files import write_atomic
from ..models import build_model
from ..spec import ArchSpec
from ..validation import parse
from .recipe import Recipe


def save(obj: dict[str, Any], path: Path) -> None:
    """Atomic ``torch.save`` (through ``write_atomic``: temporary file, then rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load(path, *, ours: bool = True) -> dict[str, Any]:
    """A ``torch.save`` file, loaded weights-only: one of our checkpoints or exports (``ours``:
    with a spec and model weights), or any mapping of tensors (an outside state dict)."""
    path = Path(path)
    what = "condconv-nas checkpoint" if ours else "file of weights"
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (b"PK"), before torch 1.6 a pickle (b"\x80"): anything else
    # (a spec's JSON, text) would reach torch's unpickler and come back as a riddle
    if head != b"PK" and head[:1] != b"\x80":
        raise UsageError(f"{path}: not a {what} (not a file torch.save wrote)")
    try:
        with warnings.catch_warnings():  # a foreign pickle also warns about its protocol
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many kinds
        # torch's own message suggests weights_only=False, which must never be followed
        if "Weights only load failed" in str(e):
            reason = "it holds Python objects, which are never loaded: only tensors and plain data"
        elif "zip archive" in str(e):
            reason = "not a file torch.save wrote"
        else:
            reason = _first_line(e)
        raise UsageError(f"{path}: not a {what} ({reason})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: not a {what} (it holds a {type(obj).__name__}, no mapping)")
    if ours and ("spec" not in obj or "model" not in obj):
        raise UsageError(f"{path}: not a condconv-nas checkpoint (no spec and model weights)")
    return obj


# Recipe keys that may change when a run is resumed: its length, and how data is loaded.
RESUMABLE_CHANGES = ("epochs", "workers", "trials", "overrides")


def check_resumable(state: dict[str, Any], path, *, spec, recipe) -> None:
    """`UsageError` unless the checkpoint ``state`` trained ``spec`` (up to its class count, which
    the data sets) with ``recipe``: resuming another run would mix two trainings."""

    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise UsageError(f"--resume: {path} is no training checkpoint (no count of epochs)")
    if not isinstance(state.get("metrics"), dict):
        raise UsageError(f"--resume: {path} is no training checkpoint (no metrics)")
    trained = spec_of(state, path)
    if trained.replace(num_classes=spec.num_classes).id != spec.id:
        raise UsageError(
            f"--resume: {path} trained spec {trained.id}, not {spec.id}; use another --out"
        )
    if not state.get("recipe"):
        raise UsageError(f"--resume: {path} records no recipe; use another --out")
    # a key the checkpoint lacks was added to Recipe after it was written: it trained as the
    # default (a new key's default is the behaviour from before it existed)
    old = {**dataclasses.asdict(Recipe()), **recipe_of(state, path)}
    new = dataclasses.asdict(recipe)
    for key in new:
        if key not in RESUMABLE_CHANGES and old[key] != new[key]:
            raise UsageError(
                f"--resume: {path} was trained with {key} {old[key]!r}, this recipe has "
                f"{new[key]!r}; use another --out"
            )


def load_exported(path):
    """A trained model from one file (a checkpoint or ``model.pt``): spec + weights, no run folder
    needed."""
    return model_from(load(path), path)


def model_from(obj: dict[str, Any], path) -> torch.nn.Module:
    """The model a loaded checkpoint or export holds (EMA weights when it has them), in eval
    mode."""

    if not isinstance(obj, dict) or "spec" not in obj or "model" not in obj:
        raise UsageError(f"{path}: holds no spec and model weights")
    model = build_model(spec_of(obj, path))
    weights = obj["ema"] if obj.get("ema") else obj["model"]
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        # torch's first line is a header ("Error(s) in loading state_dict"): the detail follows
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise UsageError(f"{path}: its weights do not fit its spec ({reason})") from None
    return model.eval()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def spec_of(obj: dict[str, Any], path) -> ArchSpec:
    """A loaded checkpoint's spec; `UsageError` naming ``path`` when it is not a valid spec."""
    try:
        return ArchSpec.from_dict(obj["spec"])
    except UsageError as e:
        raise UsageError(f"{path}: spec: {e}") from None


def recipe_of(obj: dict[str, Any], path) -> dict[str, Any]:
    """A loaded checkpoint's recipe (``{}`` if it has none), its ``resolution``, ``holdout`` and
    ``seed`` (what evaluating it reads) checked as a recipe's; `UsageError` naming ``path``."""

    recipe = obj.get("recipe") or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"{path}: not a condconv-nas checkpoint (its recipe is no mapping)")
    parse(
        Recipe,
        {k: recipe[k] for k in ("resolution", "holdout", "seed") if k in recipe},
        f"{path}: recipe",
    )
    return recipe


def resolution(obj: dict[str, Any], path="checkpoint") -> int:
    """The image size a loaded checkpoint's model was trained at: its recipe's, else its spec's."""

    return recipe_of(obj, path).get("resolution") or spec_of(obj, path).resolution
