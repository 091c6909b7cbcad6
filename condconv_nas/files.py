"""Writing files so that a crash or a kill never leaves one half-written."""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from .errors import UsageError

__all__ = ["check_writable_folder", "find_yaml", "write_atomic"]

_UMASK = os.umask(0o022)  # read once (umask can only be read by setting it), then put back
os.umask(_UMASK)


def write_atomic(path: Path, data) -> None:
    """Write text or bytes to ``path`` through a temporary file of its own and a rename: never
    half-written, even with several workers writing one run folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name stays short: any name the file system takes for ``path`` works
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:50]}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as an ordinary write would (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_folder(path: Path, flag: str) -> None:
    """`UsageError` unless ``path`` is a folder we can write in, or one we can create."""
    path = Path(path)
    problem = too_long(path)  # before any look at it: the look itself would fail
    if problem:
        raise UsageError(f"{flag} {path}: {problem}")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    problem = unwritable(path)
    if problem:
        raise UsageError(f"{flag} {path}: {problem}")


def too_long(path: Path) -> str | None:
    """Why no file system takes the name ``path`` (a name in it over 255 bytes, or all of it over
    4096), or None: a folder of that name could not be created, not even its first parts."""
    path = Path(path)
    if max((len(os.fsencode(p)) for p in path.parts), default=0) > 255 or (
        len(os.fsencode(str(path.absolute()))) >= 4096
    ):
        return "a name too long for a file system (255 bytes a name, 4096 in all)"
    return None


def unwritable(path: Path) -> str | None:
    """Why a folder ``path`` could not be created or written in (a name in it too long for the
    file system, its nearest existing ancestor no writable folder), or None."""
    problem = too_long(path)
    if problem:
        return problem
    parent = Path(path)
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def find_yaml(text: str, package: str, flag: str, what: str) -> Path:
    """The YAML file ``text`` names: a file (a file of that name wins), or one that ``package``
    ships, by name (``proxy``, ``efficientnet_b0``)."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = resources.files(package)
    names = sorted(p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    if text in names:
        return Path(str(shipped / f"{text}.yaml"))
    if path.is_dir():
        raise UsageError(f"{flag} {text}: a folder, not a YAML file")
    if path.suffix in (".yaml", ".yml") and path.stem in names:
        raise UsageError(f"{flag} {text}: no such file; the shipped {what} is {path.stem!r}")
    if path.suffix in (".yaml", ".yml") or path.exists():
        raise UsageError(f"{flag} {text}: no such file")
    raise UsageError(f"{flag} {text!r}: not a shipped {what} ({', '.join(names)}) nor a YAML file")
