"""The search's own dense start: the space's base network, trained once per run on the search's
training split, from which every candidate is upcycled before the proxy trains it.

Trained from scratch for the proxy's few steps, candidates are scored by how fast they start
to learn: on digits a width-0.5 CondConv candidate scored 0.80 (5x longer training: 0.95) and a
candidate's score moved by up to 0.033 between seeds. Upcycled from a dense model trained on the
same images, every candidate scored 0.94 or more, moved by 0.009 at most, and CondConv and
static candidates were equally far from longer training. See benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DENSE = "dense.pt"  # in the run folder


def dense_start(run_dir: Path, *, base: str, trainer: str, data: str, epochs: int) -> dict:
    """The run folder's dense start, trained first if the run has none: ``{"init": path,
    "top1": its held-out top-1, "epochs": epochs}``.

    Each process that finds none trains one in a folder of its own and links it into place
    unless another got there first; every process then starts its candidates from the file in
    place, so workers started together score with one dense model. A process killed while
    training leaves its folder (``.dense-*``) and nothing else."""
    from ..training.run import train  # noqa: PLC0415

    final = run_dir / DENSE
    info = run_dir / "dense.json"
    if not final.is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".dense-", dir=run_dir))
        try:
            metrics = train(
                {"base": base},
                trainer=trainer,
                data=data,
                epochs=epochs,
                out=tmp,
                progress=False,
                split="search",
            )
            record = {"top1": metrics["top1"], "epochs": epochs, "base": base}
            (tmp / "dense.json").write_text(json.dumps(record, indent=2) + "\n")
            # the first process to finish wins; a link never leaves a half-written file. Each
            # link is tried on its own, so the model is in place when this returns (two
            # processes finishing at once may leave one's record with the other's model)
            for src, dst in ((tmp / "dense.json", info), (tmp / "model.pt", final)):
                try:
                    os.link(src, dst)
                except FileExistsError:
                    pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    record = json.loads(info.read_text()) if info.is_file() else {}
    return {"init": str(final.resolve()), **record}
