"""The search's own dense start: the space's base network, trained once per run on the search's
training split, from which every candidate is upcycled before the proxy trains it.

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
WORK = ".dense"  # where it trains (last.pt per epoch), removed once dense.pt is in place
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


def dense_start(
    run_dir: Path,
    *,
    base: str,
    trainer: str,
    data: str,
    epochs: int,
    progress: bool = False,
    note: Callable[[str], None] | None = None,
) -> dict:
    """The run folder's dense start, trained first if the run has none: ``{"init": path,
    "top1": its held-out top-1, "epochs": epochs}``.

    ``progress``: the training's epoch lines and bar on stderr; ``note(line)`` hears when this
    process resumes the dense start or waits for another's."""
    final, info, work = run_dir / DENSE, run_dir / "dense.json", run_dir / WORK
    waiting = False
    while not final.is_file():
        work.mkdir(parents=True, exist_ok=True)
        if _claim(work / "lock"):
            if final.is_file():  # finished by another between our look and our claim
                (work / "lock").unlink(missing_ok=True)
                break
            _train(work, final, info, base=base, trainer=trainer, data=data, epochs=epochs,
                   progress=progress, note=note)  # fmt: skip
            break
        if not waiting and note is not None:
            note("waiting for another worker's dense start (trained once per run)")
        waiting = True
        time.sleep(POLL_SECONDS)
    record = json.loads(info.read_text()) if info.is_file() else {}
    return {"init": str(final.resolve()), **record}


def _train(work: Path, final: Path, info: Path, *, base, trainer, data, epochs, progress, note):
    from ..data import parse_source
    from ..training.recipe import load_recipe
    from ..training.run import train  # training loads torch and timm

    # the base learns from all of the search's training images, with the running statistics it
    # trained with: subsets and re-estimated statistics are the candidates' short trainings'
    recipe = load_recipe(trainer).for_data(parse_source(data).kind)
    recipe = dataclasses.replace(recipe, train_subset=1.0, bn_recalibrate=0)
    try:
        resume = (work / "last.pt").is_file()
        if resume and note is not None:
            note(f"resuming the dense start from {work / 'last.pt'}")
        metrics = train(
            {"base": base},
            trainer=recipe,
            data=data,
            epochs=epochs,
            out=work,
            resume=resume,
            progress=progress,
            split="search",
        )
        record = {"top1": metrics["top1"], "epochs": epochs, "base": base}
        (work / "dense.json").write_text(json.dumps(record, indent=2) + "\n")
        # links never leave a half-written file; the record first, so dense.pt means both
        for src, dst in ((work / "dense.json", info), (work / "model.pt", final)):
            try:
                os.link(src, dst)
            except FileExistsError:
                pass
    finally:
        (work / "lock").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
