"""Checkpoints and exported models: plain tensors and JSON-able values, loadable with weights_only=True."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..results import write_atomic


def save(obj: dict[str, Any], path: Path) -> None:
    """Atomic ``torch.save`` (through ``write_atomic``: temporary file, then rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load(path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (corrupt or foreign files raise many kinds)
        # torch.load's messages run to paragraphs; their first sentence names the problem.
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
        first = first if len(first) <= 100 else first[:97] + "..."
        raise UsageError(
            f"{path}: not a condconv-nas checkpoint ({type(e).__name__}: {first})"
        ) from None


def load_exported(path):
    """A trained model from one file (a checkpoint or ``model.pt``): spec + weights, no run folder needed."""
    return model_from(load(path), path)


def model_from(obj: dict[str, Any], path) -> torch.nn.Module:
    """The model a loaded checkpoint or export holds (EMA weights when it has them), in eval mode."""
    from ..models import build_model  # noqa: PLC0415
    from ..spec import ArchSpec  # noqa: PLC0415

    if not isinstance(obj, dict) or "spec" not in obj or "model" not in obj:
        raise UsageError(f"{path}: holds no spec and model weights")
    model = build_model(ArchSpec.from_dict(obj["spec"]))
    try:
        model.load_state_dict(obj["ema"] if obj.get("ema") else obj["model"])
    except (RuntimeError, TypeError, AttributeError):
        raise UsageError(
            f"{path}: its weights do not fit its spec (missing or unexpected keys, or other shapes)"
        ) from None
    return model.eval()


def resolution(obj: dict[str, Any]) -> int:
    """The image size a loaded checkpoint's model was trained at: its recipe's, else its spec's."""
    return (obj.get("recipe") or {}).get("resolution") or obj["spec"]["resolution"]
