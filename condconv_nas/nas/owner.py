"""The process that runs a trial, as the trial's record keeps it (``worker``: ``host:pid``, and
``worker_started``: when that process started), so that a later run can tell whether it lives.

On this host a process is gone when its pid is free, is a zombie (killed, not yet reaped by its
parent) or belongs to a process that started at another time (the pid was reused). Another host's
process cannot be asked: its trials wait for their heartbeat's grace period (``ledger``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

WORKER, STARTED = "worker", "worker_started"  # the trial's user attributes


def start_time(pid: int) -> str | None:
    """When process ``pid`` of this host started (Linux: clock ticks after boot), or None if no
    such process lives; "" where its start cannot be read (no /proc, or a /proc that hides other
    users' processes)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid is taken
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # taken, by another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:  # "pid (comm) state ... starttime (22nd) ..."
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie: killed, not yet reaped


@dataclass(frozen=True)
class Owner:
    """A process that runs trials: its host, pid and start time (None or "": not known)."""

    host: str
    pid: int
    started: str | None = None

    @classmethod
    def process(cls, pid: int) -> Owner:
        """Process ``pid`` of this host."""
        return cls(socket.gethostname(), pid, start_time(pid))

    @classmethod
    def me(cls) -> Owner:
        return cls.process(os.getpid())

    @classmethod
    def of(cls, attrs: dict) -> Owner | None:
        """The owner a trial's user attributes record, if any."""
        host, _, pid = str(attrs.get(WORKER) or "").rpartition(":")
        return cls(host, int(pid), attrs.get(STARTED)) if host and pid.isdigit() else None

    @property
    def worker(self) -> str:
        return f"{self.host}:{self.pid}"

    def attrs(self) -> dict:
        """What a trial's record keeps of its owner."""
        return {WORKER: self.worker, STARTED: self.started}

    def gone(self) -> bool:
        """Whether this is a process of this host that no longer runs (another host's: unknown,
        False)."""
        if self.host != socket.gethostname():
            return False
        now = start_time(self.pid)
        return now is None or bool(self.started and now and now != self.started)
