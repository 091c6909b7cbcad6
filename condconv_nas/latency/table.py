"""The latency table of this machine: one JSON file per (machine, CPU, torch, condconv-nas,
threads, batch), cached on disk and shared by every process of the machine.

It maps each part's key (``units.Part``) to its median time in milliseconds, and keeps, per base
network, samples of (sum of the network's entries, the network's own time measured in place, see
``measure.InPlace.whole``) from which the per-model overhead is calibrated. Entries are added,
never changed; the overhead moves only when another network is measured.
Files live in ``$CONDCONV_NAS_CACHE`` if set, else ``$XDG_CACHE_HOME/condconv-nas`` (by default
``~/.cache/condconv-nas``). Each write merges the file's current contents and replaces it
atomically, so the file is never half-written; two processes adding at the same instant may lose
one side's new entries (there is no lock), which are then measured again when next needed.

A table file copied from another machine (the target device) is opened with ``from_file``: it is
read only, and its key says which machine, threads and batch its figures are of.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from functools import cache
from pathlib import Path

import torch

from .. import __version__
from ..errors import UsageError
from ..files import write_atomic
from ..validation import read_json

FORMAT = 1
CACHE_ENV = "CONDCONV_NAS_CACHE"


def cache_dir() -> Path:
    """Where the tables live (see the module's documentation)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "condconv-nas"


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, the platform's word elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(batch: int, threads: int | None = None) -> dict:
    """What a latency depends on besides the network: this machine, its software, the threads
    and the batch (CPU, float32, inference)."""
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "condconv_nas": __version__,
        "threads": threads or torch.get_num_threads(),
        "batch": batch,
        "device": "cpu",
        "dtype": "float32",
    }


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class LatencyTable:
    """One machine's table for one batch size (see the module's documentation)."""

    def __init__(self, key: dict, path: Path, *, read_only: bool = False) -> None:
        self.key, self.path, self.read_only = key, path, read_only
        self.entries: dict[str, dict] = {}  # part key -> {"ms": ..., "what": ...}
        self.calibration: dict[str, list[list[float]]] = {}  # base -> [[parts_ms, whole_ms]]
        self.reload()
        # figures another process measured, maybe under another load: checked before first use
        self.trusted = read_only or not self.entries

    @classmethod
    def for_batch(cls, batch: int) -> LatencyTable:
        """This process's table for ``batch`` (the same object for the same file)."""
        key = table_key(batch)
        path = cache_dir() / f"latency-{key_id(key)}.json"
        table = _open.get(path)
        if table is None or table.key != key:
            table = _open[path] = cls(key, path)
        return table

    @classmethod
    def from_file(cls, path: str | Path) -> LatencyTable:
        """The table in ``path``, written on another machine (read only); `UsageError` if the
        file is not a latency table."""
        path = Path(path).resolve()
        if path in _read_only:
            return _read_only[path]
        data = read_json(path, f"latency table {path}")
        key = data.get("key") if isinstance(data, dict) else None
        if (
            not isinstance(key, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("entries"), dict)
            or not isinstance(key.get("batch"), int)
        ):
            raise UsageError(
                f"latency table {path}: not a latency table of this version (write one on the "
                "target machine with `condconv-nas latency --space NAME`)"
            )
        bad = _malformed(data)
        if bad:
            raise UsageError(f"latency table {path}: {bad}")
        table = _read_only[path] = cls(key, path, read_only=True)
        return table

    def describe(self) -> str:
        """Which machine, threads and batch the figures are of, for messages."""
        k = self.key
        return f"{k.get('host')} ({k.get('cpu')}), {k.get('threads')} threads, batch {k['batch']}"

    def _read(self) -> tuple[dict, dict]:
        """The file's entries and calibration; a file that is not a table of this key is
        ignored (it is a cache: it will be measured again and replaced)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # a broken cache: measured again
            return {}, {}
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or data.get("key") != self.key
        ):
            return {}, {}
        entries, calibration = data.get("entries"), data.get("calibration")
        return (
            entries if isinstance(entries, dict) else {},
            calibration if isinstance(calibration, dict) else {},
        )

    def reload(self) -> None:
        """Take in what other processes added to the file."""
        entries, calibration = self._read()
        for k, v in entries.items():
            self.entries.setdefault(k, v)
        for base, samples in calibration.items():
            mine = self.calibration.setdefault(base, [])
            mine.extend(s for s in samples if s not in mine)

    def set_aside(self) -> Path:
        """Move the file out of the way (kept beside it, for a look) and start empty."""
        stale = self.path.with_suffix(f".stale-{int(time.time())}.json")
        if self.path.exists():
            os.replace(self.path, stale)
        self.entries, self.calibration, self.trusted = {}, {}, True
        return stale

    def ms(self, key: str) -> float | None:
        entry = self.entries.get(key)
        return None if entry is None else float(entry["ms"])

    def missing(self, parts) -> list:
        """The parts that have no entry yet (each once)."""
        out, seen = [], set()
        for p in parts:
            if p.key not in self.entries and p.key not in seen:
                out.append(p)
                seen.add(p.key)
        return out

    def overhead_ms(self, base: str) -> float | None:
        """The per-model overhead of ``base``: the median over its samples of the measured
        whole network minus the sum of its parts (None before the first sample)."""
        samples = self.calibration.get(base)
        if not samples:
            return None
        return statistics.median(whole - parts for parts, whole in samples)

    def whole_ms(self, base: str, parts_ms: float) -> float:
        """A network of ``base`` whose parts sum to ``parts_ms``, whole: the parts plus the base's
        overhead; where the parts timed in place came to more than the wholes (a negative
        overhead), the parts scaled by the median whole/parts ratio instead, which cannot turn a
        small network's prediction negative as a constant taken from larger ones can."""
        overhead = self.overhead_ms(base)
        if overhead >= 0:
            return parts_ms + overhead
        ratio = statistics.median(whole / parts for parts, whole in self.calibration[base])
        return parts_ms * ratio

    def add(
        self, entries: dict[str, dict], calibration: tuple[str, float, float] | None = None
    ) -> None:
        """Add entries (those present stay as they are) and a calibration sample ``(base,
        parts_ms, whole_ms)``, and write the file (merged with what other processes wrote)."""
        if self.read_only:  # another machine's figures: this one cannot add to them
            raise UsageError(f"latency table {self.path} is another machine's: it cannot grow here")
        self.reload()
        for k, v in entries.items():
            self.entries.setdefault(k, v)
        if calibration is not None:
            base, parts, whole = calibration
            self.calibration.setdefault(base, []).append([round(parts, 4), round(whole, 4)])
        data = {
            "format": FORMAT,
            "key": self.key,
            "entries": self.entries,
            "calibration": self.calibration,
        }
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _malformed(data: dict) -> str | None:
    """What is wrong with a table file's entries or calibration, if anything (for messages)."""

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    for k, v in data["entries"].items():
        if not isinstance(v, dict) or not number(v.get("ms")) or v["ms"] < 0:
            return f"entry {k!r} has no time in ms"
    calibration = data.get("calibration", {})
    if not isinstance(calibration, dict):
        return "calibration is not an object"
    for base, samples in calibration.items():
        if not isinstance(samples, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(map(number, x)) for x in samples
        ):
            return f"calibration of {base!r} is not a list of [parts_ms, whole_ms] pairs"
    return None


_open: dict[Path, LatencyTable] = {}  # this machine's tables
_read_only: dict[Path, LatencyTable] = {}  # other machines' (``from_file``)
