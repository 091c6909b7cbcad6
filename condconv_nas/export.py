"""Export a model to ONNX for deployment: any batch size, a fixed image size.

PyTorch's own exporter (``torch.onnx.export``, torch.export based) writes the graph. CondConv's
timed execution forms are fixed first (``layers.strategy.fixed_forms``): the per-example-kernel
form folds the batch into a grouped convolution's group count, an attribute that ONNX freezes
at export time, so exported layers run ``bmm`` (per-example 1x1 kernels as one batched matmul)
where they can and ``mixture`` (all experts in one convolution, then the routing-weighted sum)
elsewhere, both with the batch as a tensor dimension.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError
from .extras import load, require
from .files import too_long, unwritable, write_atomic

FORMATS = ("onnx",)
EXPORT_FORMS = ("bmm", "mixture")  # the CondConv forms whose graph holds for any batch size
_MAX_BYTES = 2**31 - 2**24  # an ONNX file is one protobuf: 2 GB at most, minus room for the graph


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: ``images`` (batch, 3, resolution, resolution) -> ``logits``."""

    path: Path
    resolution: int
    num_classes: int
    opset: int


def _is_json(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(64).lstrip()[:1] == b"{"


def _source(source: Any) -> tuple[torch.nn.Module, int | None, Path | None]:
    """``(model, training resolution or None, default output path or None)`` of what to export."""
    from .models import build_model
    from .spec import PRESETS, ArchSpec, load_spec
    from .training import checkpoint

    if isinstance(source, torch.nn.Module):
        spec = getattr(source, "spec", None)
        return source, getattr(spec, "resolution", None), None
    if isinstance(source, (ArchSpec, dict)) or str(source) in PRESETS:
        spec = load_spec(source)
        return build_model(spec), spec.resolution, Path(f"{spec.id}.onnx")
    path = Path(source)
    if not path.is_file():
        raise UsageError(
            f"{path}: no such checkpoint or spec file, and not a preset "
            f"(presets: {', '.join(PRESETS)})"
        )
    if _is_json(path):
        spec = load_spec(path)
        return build_model(spec), spec.resolution, Path(f"{spec.id}.onnx")
    obj = checkpoint.load(path)
    model = checkpoint.model_from(obj, path)
    return model, checkpoint.resolution(obj, path), path.with_suffix(".onnx")


def _check_writable(path: Path) -> None:
    """Refuse an output path that is a directory or cannot be created, before any work."""
    problem = too_long(path)
    if problem:
        raise UsageError(f"{path}: cannot be written ({problem})")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory (give a file name, e.g. {path / 'model.onnx'})")
    problem = unwritable(path.parent)  # the folders write_atomic would create
    if problem:
        raise UsageError(f"{path}: cannot be written ({problem})")


def _check_exportable(model) -> None:
    """`UsageError` for a model ONNX cannot hold: a batch-folding CondConv form, or weights
    over the 2 GB a protobuf file holds."""
    from .layers import CondConv2d

    for name, m in model.named_modules():
        if isinstance(m, CondConv2d) and m.strategy == "kernel":
            raise UsageError(
                f"{name}: strategy 'kernel' folds the batch into the group count, which ONNX fixes "
                "at export; build it with strategy 'auto'"
            )
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > _MAX_BYTES:
        raise UsageError(f"the model's weights take {size / 2**30:.1f} GB; an ONNX file holds 2 GB")


def export_onnx(
    model_or_checkpoint: Any,
    path: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    opset: int | None = None,
) -> OnnxExport:
    """Write an ONNX model with a dynamic batch axis and a fixed image size; returns what it wrote.

    ``model_or_checkpoint``: a built model, a checkpoint or ``model.pt`` (``condconv-nas train``),
    or a spec (an ArchSpec, a dict, a JSON file or a preset name; exported with freshly
    initialised weights). ``path``: default ``<checkpoint stem>.onnx`` next to a checkpoint,
    ``<spec id>.onnx`` in the current folder for a spec. ``resolution``: default the checkpoint's
    training resolution, else the spec's. ``opset``: default the exporter's. The model is exported
    in eval mode. Bad input raises `UsageError` before any file is written; the file is written
    atomically (a temporary file, then a rename).
    """
    if resolution is not None and (
        not isinstance(resolution, int)
        or isinstance(resolution, bool)
        or not 8 <= resolution <= 4096
    ):
        raise UsageError(f"resolution: must be an int in [8, 4096], got {resolution!r}")
    if torch.__version__ < "2.6":  # torch.onnx.export(dynamo=True) with dynamic shapes
        raise UsageError(f"ONNX export needs torch >= 2.6, this is {torch.__version__}")
    from .spec import ArchSpec

    model, trained_at, default_path = _source(model_or_checkpoint)
    spec = getattr(model, "spec", None)
    if resolution is not None and isinstance(spec, ArchSpec):  # the size asked for must fit
        spec.check_resolution(resolution, "resolution")
    require("onnxscript", needed_for="ONNX export")  # torch.onnx's exporter imports it
    onnx = load("onnx", needed_for="ONNX export")

    # Below 18 torch.onnx keeps 18 with a warning; above onnx's newest there is no such opset.
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and (not isinstance(opset, int) or not 18 <= opset <= newest):
        raise UsageError(f"opset: must be in [18, {newest}], got {opset!r}")
    resolution = resolution or trained_at
    if resolution is None:
        raise UsageError("resolution: required for a model without a spec")
    if path is None and default_path is None:
        raise UsageError("path: required for a model without a spec")
    path = Path(path if path is not None else default_path)
    _check_writable(path)
    if isinstance(model_or_checkpoint, (str, os.PathLike)) and path.resolve() == (
        Path(model_or_checkpoint).resolve()
    ):
        raise UsageError(f"{path}: is the file being exported (give another output path)")
    _check_exportable(model)
    from .layers.strategy import fixed_forms

    param = next(model.parameters(), None)
    # Batch 2, not 1: torch.export would take a size-1 dimension for a constant. Zeros: tracing
    # reads shapes only, and the caller's random state stays as it was.
    example = torch.zeros(
        2, 3, resolution, resolution, device=param.device if param is not None else None
    )
    was_training = model.training
    model.eval()
    try:
        with fixed_forms(*EXPORT_FORMS), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset,
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    write_atomic(path, proto.SerializeToString())
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    num_classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return OnnxExport(path, resolution, num_classes, opset_used)
