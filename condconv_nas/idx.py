"""MNIST-format (idx) image folders: Fashion-MNIST and MNIST, read once into uint8 tensors.

A folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``).
An idx file is a big-endian header (two zero bytes, a type byte, the number of dimensions,
then each dimension as a 32-bit integer) followed by the values; images are unsigned bytes
``(N, rows, cols)``, labels unsigned bytes ``(N,)``.
"""

from __future__ import annotations

import functools
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08
HOW_TO_GET = (
    "MNIST and Fashion-MNIST are four idx files, plain or .gz, in one folder (Fashion-MNIST: "
    "`apt-get install dataset-fashion-mnist` on Debian and Ubuntu)"
)


@dataclass(frozen=True)
class IdxSplit:
    images: torch.Tensor  # uint8 (N, rows, cols)
    labels: torch.Tensor  # int64 (N,)


def find_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``; `UsageError` naming the file when neither is there."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{folder / name}[.gz]: no such file; {HOW_TO_GET}")


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes with ``ndim`` dimensions, as a uint8 tensor."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UsageError(f"{path}: cannot be read ({e}); {HOW_TO_GET}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        kind = "images" if ndim == 3 else "labels"
        raise UsageError(
            f"{path}: not an idx file of {kind} (wrong magic number {raw[:4].hex() or 'empty'}, "
            f"expected 0000080{ndim}); {HOW_TO_GET}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = 1
    for d in dims:
        size *= d
    if len(raw) - header != size:
        raise UsageError(
            f"{path}: holds {len(raw) - header} bytes of values, its header says "
            f"{' x '.join(map(str, dims))} = {size} (truncated?); {HOW_TO_GET}"
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(dims)


@functools.lru_cache(maxsize=4)
def _load(folder: Path, part: str, stamp: tuple) -> IdxSplit:
    image_file, label_file = (find_file(folder, name) for name in FILES[part])
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if len(images) != len(labels):
        raise UsageError(
            f"{label_file}: {len(labels)} labels for the {len(images)} images of {image_file}; "
            f"{HOW_TO_GET}"
        )
    if len(images) == 0:
        raise UsageError(f"{image_file}: holds no images; {HOW_TO_GET}")
    return IdxSplit(images, labels.long())


def load_split(folder: Path, part: str) -> IdxSplit:
    """The ``train`` or ``test`` images and labels of an idx folder (read once per process while
    the files stay unchanged); `UsageError` naming the file for a missing or malformed one."""
    stamp = tuple(
        (p.name, p.stat().st_mtime_ns, p.stat().st_size)
        for name in FILES[part]
        for p in (folder / name, folder / f"{name}.gz")
        if p.is_file()
    )
    return _load(Path(folder).resolve(), part, stamp)


def check_folder(folder: Path) -> int:
    """Read both splits of ``folder`` (so a broken file is refused before any work); the number
    of classes, which both splits must agree on."""
    train, test = load_split(folder, "train"), load_split(folder, "test")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UsageError(
            f"{folder}: training images are {tuple(train.images.shape[1:])}, test images "
            f"{tuple(test.images.shape[1:])}"
        )
    return int(max(train.labels.max(), test.labels.max())) + 1
