"""The search's own dense start: a static network of the space's base (its widest, at the largest
maps the budget affords: `SearchSpace.dense_start`), trained once per run on the search's
training split, from which every candidate is upcycled before the proxy trains it; and
`once_per_run`, the lock and hand-over that it and the one-shot supernet are trained under.

Trained from scratch for the proxy's few steps, candidates are scored by how fast they start
to learn; upcycled from a dense model trained on the same images, they are scored by what
their architecture adds to it (benchmarks/README.md, "proxy fidelity").

It trains in ``RUN/.dense/`` with a checkpoint per epoch, so a killed search resumes it; one
process trains it (``.dense/lock`` holds its host and pid) and the other workers of the run wait
for ``dense.pt``, or take over when the holder on this machine has died.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

DENSE = "dense.pt"  # in the run folder
POLL_SECONDS = 5.0


def _holder_alive(lock: Path) -> bool:
    """Whether the process named in ``lock`` may still be training (on another machine we
    cannot tell: assume so)."""
    try:
        host, pid = lock.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False  # unreadable or half-written: no holder to wait for
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _claim(lock: Path) -> bool:
    """Take the lock (True), or find it held by a live process (False). A dead holder's lock is
    taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _holder_alive(lock):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return True
    return False


def once_per_run(
    run_dir: Path,
    name: str,
    train: Callable[[Path, Path, Path], None],
    *,
    what: str,
    note: Callable[[str], None] | None = None,
) -> dict:
    """``RUN/<name>.pt`` with its record ``RUN/<name>.json``, made first if the run has neither:
    ``train(work, final, info)`` trains in ``RUN/.<name>/`` and puts both in place (`publish`).
    One process trains (``.<name>/lock`` holds its host and pid); the others wait for the file, or
    take over when the holder on this machine has died. Returns ``{"init": path, **record}``."""
    final, info, work = run_dir / f"{name}.pt", run_dir / f"{name}.json", run_dir / f".{name}"
    waiting = False
    while not final.is_file():
        work.mkdir(parents=True, exist_ok=True)
        if _claim(work / "lock"):
            try:
                if not final.is_file():  # else finished by another between our look and claim
                    train(work, final, info)
            finally:
                (work / "lock").unlink(missing_ok=True)
            if final.is_file():
                shutil.rmtree(work, ignore_errors=True)
            break
        if not waiting and note is not None:
            note(f"waiting for another worker's {what} (trained once per run)")
        waiting = True
        time.sleep(POLL_SECONDS)
    record = json.loads(info.read_text()) if info.is_file() else {}
    return {"init": str(final.resolve()), **record}


def publish(work: Path, model: Path, final: Path, info: Path, record: dict) -> None:
    """Put a finished training's ``model`` file and ``record`` in place: links never leave a
    half-written file, and the record goes first, so the model file means both."""
    (work / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    for src, dst in ((work / "record.json", info), (model, final)):
        try:
            os.link(src, dst)
        except FileExistsError:
            pass


def dense_start(
    run_dir: Path,
    *,
    spec: dict,
    trainer: str,
    data: str,
    epochs: int,
    progress=False,
    note: Callable[[str], None] | None = None,
) -> dict:
    """The run folder's dense start, trained first if the run has none: ``{"init": path,
    "top1": its held-out top-1, "epochs": epochs, "spec": spec}``.

    ``spec``: the static network to train, as `train` takes it (``{"base": "mobilenet_v1"}``, or
    a search space's `SearchSpace.dense_start` as a dict). ``progress``: as `train` takes it
    (True: epoch lines and a bar on stderr; or a `progress.Reporter`, as the search's own);
    ``note(line)`` hears when this process resumes the dense start or waits for another's."""

    def train(work: Path, final: Path, info: Path) -> None:
        _train(work, final, info, spec=spec, trainer=trainer, data=data, epochs=epochs,
               progress=progress, note=note)  # fmt: skip

    return once_per_run(run_dir, Path(DENSE).stem, train, what="dense start", note=note)


def _train(work: Path, final: Path, info: Path, *, spec, trainer, data, epochs, progress, note):
    from ..data import parse_source
    from ..training.checkpoint import load, spec_of
    from ..training.recipe import load_recipe
    from ..training.run import train  # training loads torch and timm

    # the base learns from all of the search's training images, with the running statistics it
    # trained with: subsets and re-estimated statistics are the candidates' short trainings'
    recipe = load_recipe(trainer).for_data(parse_source(data).kind)
    recipe = dataclasses.replace(recipe, train_subset=1.0, bn_recalibrate=0)
    last = work / "last.pt"
    resume = last.is_file()
    if resume:
        # the shape the run started with: an earlier version chose another for some spaces
        spec = spec_of(load(last), last).to_dict()
        if note is not None:
            note(f"resuming the dense start from {last}")
    metrics = train(
        spec,
        trainer=recipe,
        data=data,
        epochs=epochs,
        out=work,
        resume=resume,
        progress=progress,
        split="search",
    )
    trained = spec_of(load(work / "model.pt"), work / "model.pt")  # its class count the data's
    record = {"top1": metrics["top1"], "epochs": epochs, "spec": trained.to_dict()}
    publish(work, work / "model.pt", final, info, record)
