"""Data sources: ``digits`` (scikit-learn's, embedded), ``imagefolder:PATH``, ``cifar10:PATH``,
``cifar100:PATH``. Local disks only: nothing is ever downloaded.

Real folders hold greyscale, RGBA and palette images, upper-case extensions, hidden files and
the odd corrupt file: images are converted to RGB, non-images and hidden files are ignored,
and an unreadable image is skipped with a warning that names it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .errors import UsageError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSource:
    kind: str  # digits | imagefolder | cifar10 | cifar100
    path: Path | None = None  # local path (None for digits)

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_source(text: str) -> DataSource:
    """Parse and check a ``--data`` value up front; `UsageError` naming the problem."""
    kind, _, path = str(text).partition(":")
    if kind == "digits" and not path:
        return DataSource("digits")
    if kind not in ("imagefolder", "cifar10", "cifar100") or not path:
        raise UsageError(
            f"--data {text!r}: expected digits, imagefolder:PATH, cifar10:PATH or cifar100:PATH"
        )
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"--data {text}: {p} is not a folder")
    if kind.startswith("cifar"):
        folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[kind]
        if not (p / folder).is_dir():
            raise UsageError(
                f"--data {text}: no {folder}/ in {p} (torchvision's CIFAR format; it is never "
                f"downloaded)"
            )
    return DataSource(kind, p)


def load_rgb(path: str):
    """Open an image of any mode as RGB (palette/RGBA through RGBA, so transparency becomes
    black)."""
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "PA", "LA", "RGBA") or "transparency" in im.info:
            im = im.convert("RGBA")
        return im.convert("RGB")


def is_image_file(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class RobustImageFolder(Dataset):
    """torchvision's ImageFolder that skips unreadable images (with a warning naming the file)."""

    def __init__(self, root: Path, transform=None) -> None:
        from torchvision.datasets import ImageFolder  # noqa: PLC0415

        try:
            self.folder = ImageFolder(str(root), loader=load_rgb, is_valid_file=is_image_file)
        except (FileNotFoundError, RuntimeError) as e:
            raise UsageError(f"--data imagefolder:{root}: {str(e).splitlines()[0]}") from None
        self.transform = transform
        self.classes = self.folder.classes
        self.targets = self.folder.targets

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            path, target = self.folder.samples[(index + attempt) % len(self)]
            try:
                img = load_rgb(path)
            except Exception as e:  # noqa: BLE001  (PIL raises many kinds for corrupt files)
                warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
                continue
            return (self.transform(img) if self.transform else img), target
        raise UsageError(f"--data imagefolder:{self.folder.root}: no readable image")


class Transformed(Dataset):
    """A dataset view with its own transform (train and val splits of one folder differ)."""

    def __init__(self, base: Dataset, indices, transform) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, target = self.base[self.indices[i]]
        return self.transform(img), target


def image_transforms(
    resolution: int, *, train: bool, autoaugment: bool = False, crop_pct: float = 0.875
):
    from torchvision import transforms as T  # noqa: PLC0415

    if train:
        ops = [T.RandomResizedCrop(resolution), T.RandomHorizontalFlip()]
        if autoaugment:
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    else:
        ops = [T.Resize(int(round(resolution / crop_pct))), T.CenterCrop(resolution)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


def _split(n: int, holdout: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    k = max(1, int(round(n * holdout)))
    return perm[k:], perm[:k]


def _digits(resolution: int, holdout: float, seed: int) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits  # noqa: PLC0415  (shipped with scikit-learn)

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False
    )
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    train, val = _split(len(y), holdout, seed)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10


def make_datasets(
    source: DataSource,
    resolution: int,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    autoaugment: bool = False,
    augment: bool = True,
) -> tuple[Dataset, Dataset, int]:
    """(train, val, num_classes). Folders with ``train/`` and ``val/`` use them; otherwise a seeded
    hold-out. ``augment=False`` gives the training split the evaluation transforms (to look at it).
    """
    if source.kind == "digits":
        return _digits(resolution, holdout, seed)
    train_tf = (
        image_transforms(resolution, train=True, autoaugment=autoaugment)
        if augment
        else image_transforms(resolution, train=False)
    )
    val_tf = image_transforms(resolution, train=False)
    if source.kind.startswith("cifar"):
        from torchvision import datasets  # noqa: PLC0415

        cls = datasets.CIFAR10 if source.kind == "cifar10" else datasets.CIFAR100
        try:
            train = cls(str(source.path), train=True, download=False, transform=train_tf)
            val = cls(str(source.path), train=False, download=False, transform=val_tf)
        except Exception:  # noqa: BLE001  (a corrupt batch file fails in pickle, numpy, ...)
            # torchvision's message suggests download=True; we never download
            raise UsageError(
                f"--data {source}: not a readable CIFAR folder (torchvision's python version, "
                f"its batch files checked against their MD5 sums)"
            ) from None
        return train, val, len(train.classes)
    root = source.path
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = RobustImageFolder(root / "train", train_tf)
        val = RobustImageFolder(root / "val", val_tf)
        if val.classes != train.classes:
            raise UsageError(f"--data {source}: train/ and val/ have different class folders")
        return train, val, len(train.classes)
    base = RobustImageFolder(root)
    train_idx, val_idx = _split(len(base), holdout, seed)
    return (
        Transformed(base, train_idx, train_tf),
        Transformed(base, val_idx, val_tf),
        len(base.classes),
    )


def class_names(ds: Dataset, num_classes: int) -> list[str]:
    """The class names of a dataset from `make_datasets` (folders', CIFAR's), else "0", "1", ...

    Looks through the views this module and torch wrap datasets in (``Transformed``, ``Subset``).
    """
    while ds is not None:
        classes = getattr(ds, "classes", None)
        if classes is not None and len(classes) == num_classes:
            return [str(c) for c in classes]
        inner = getattr(ds, "base", None)
        ds = inner if inner is not None else getattr(ds, "dataset", None)
    return [str(i) for i in range(num_classes)]


def subset(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded random fraction of a dataset (all of it for fraction >= 1)."""
    if fraction >= 1.0:
        return ds
    g = torch.Generator().manual_seed(seed + 1)
    n = max(1, int(len(ds) * fraction))
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def check_datasets(source: DataSource, train: Dataset, val: Dataset, num_classes: int) -> None:
    """`UsageError` unless both splits hold a readable example and there are two classes at
    least: a source training cannot use is refused before anything is written."""
    if num_classes < 2:
        raise UsageError(f"--data {source}: {num_classes} class; a classifier needs 2 or more")
    for name, ds in (("training", train), ("validation", val)):
        if len(ds) == 0:
            raise UsageError(f"--data {source}: the {name} split is empty")
        with warnings.catch_warnings():  # one message, not a warning per unreadable file
            warnings.simplefilter("ignore")
            ds[0]  # an image folder reads on until an image opens (UsageError when none does)


def check_data(source: DataSource, *, holdout: float = 0.2, seed: int = 0) -> int:
    """Check that training can use ``source`` (see `check_datasets`); its number of classes."""
    train, val, num_classes = make_datasets(source, 32, holdout=holdout, seed=seed)
    check_datasets(source, train, val, num_classes)
    return num_classes
