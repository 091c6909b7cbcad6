"""Data sources: ``digits`` (scikit-learn's, embedded), ``fashion-mnist`` (Debian's package),
``fashion-mnist:PATH``, ``mnist:PATH``, ``imagefolder:PATH``, ``cifar10:PATH``, ``cifar100:PATH``.
Local disks only: nothing is ever downloaded.

Two ways to split a source (`make_datasets`): ``search`` (the search, the proxy and the dense
start) learns from the training images less a seeded held-out part and scores on that part;
``final`` (``train``'s figure, ``evaluate``, ``analyze``) learns from all training images and
scores on the source's test images. A source without a test split (digits, an image folder
without ``val/``) uses the held-out part for both.

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

from . import idx
from .errors import UsageError
from .training.options import DATA_HELP  # the sources, named once for help and errors

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


IDX_KINDS = ("fashion-mnist", "mnist")
KINDS = ("digits", *IDX_KINDS, "imagefolder", "cifar10", "cifar100")  # every --data kind


@dataclass(frozen=True)
class DataSource:
    kind: str  # digits | fashion-mnist | mnist | imagefolder | cifar10 | cifar100
    path: Path | None = None  # local path (None for digits)

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @property
    def has_test_split(self) -> bool:
        """Whether the source keeps test images apart (only ``final`` splits score on them)."""
        if self.kind in IDX_KINDS or self.kind.startswith("cifar"):
            return True
        return self.kind == "imagefolder" and _has_train_val(self.path)


def _has_train_val(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def parse_source(text: str) -> DataSource:
    """Parse and check a ``--data`` value up front; `UsageError` naming the problem."""
    kind, _, path = str(text).partition(":")
    if kind == "digits" and not path:
        return DataSource("digits")
    if kind == "fashion-mnist" and not path:
        path = str(idx.DEBIAN_FASHION_MNIST)
        if not idx.DEBIAN_FASHION_MNIST.is_dir():
            raise UsageError(f"--data fashion-mnist: no folder {path}; {idx.HOW_TO_GET}")
    if kind not in KINDS or kind == "digits" or not path:
        raise UsageError(f"--data {text!r}: expected one of {DATA_HELP}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"--data {text}: {p} is not a folder")
    if kind in IDX_KINDS:
        for names in idx.FILES.values():
            for name in names:
                idx.find_file(p, name)
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
    from PIL import Image

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
        from torchvision.datasets import ImageFolder

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
            except Exception as e:  # PIL raises many kinds for corrupt files
                warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
                continue
            return (self.transform(img) if self.transform else img), target
        raise UsageError(f"--data imagefolder:{self.folder.root}: no readable image")


class ByteImages(Dataset):
    """Greyscale uint8 images held in memory, made model input one at a time: resized to
    ``resolution``, three channels, scaled to [-1, 1] (as digits). With ``augment``: a random
    crop from an eighth-size zero pad and a horizontal flip (Fashion-MNIST's garments and
    MNIST's strokes keep their class under both at this scale)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, resolution: int, *, augment: bool
    ) -> None:
        self.images, self.targets = images, labels
        self.resolution, self.augment = resolution, augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)[None, None]
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            size = (self.resolution, self.resolution)
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.augment:
            pad = max(1, self.resolution // 8)
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = x[..., top : top + self.resolution, left : left + self.resolution]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x[0].sub_(0.5).div_(0.5).expand(3, -1, -1), self.targets[i]


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
    from torchvision import transforms as T

    if train:
        ops = [T.RandomResizedCrop(resolution), T.RandomHorizontalFlip()]
        if autoaugment:
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    else:
        ops = [T.Resize(int(round(resolution / crop_pct))), T.CenterCrop(resolution)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


def _split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (learn, held-out) partition of ``range(n)``, ``holdout`` the held-out share."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    k = max(1, int(round(n * holdout)))
    return perm[k:], perm[:k]


def _digits(resolution: int, holdout: float, seed: int) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits  # shipped with scikit-learn

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False
    )
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    train, val = _split(len(y), holdout, seed)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10


def _idx(
    source: DataSource, resolution: int, holdout: float, seed: int, *, final: bool, augment: bool
) -> tuple[Dataset, Dataset, int]:
    num_classes = idx.check_folder(source.path)
    train = idx.load_split(source.path, "train")
    if final:
        test = idx.load_split(source.path, "test")
        return (
            ByteImages(train.images, train.labels, resolution, augment=augment),
            ByteImages(test.images, test.labels, resolution, augment=False),
            num_classes,
        )
    learn, held = _split(len(train.labels), holdout, seed)
    return (
        ByteImages(train.images[learn], train.labels[learn], resolution, augment=augment),
        ByteImages(train.images[held], train.labels[held], resolution, augment=False),
        num_classes,
    )


def _cifar(source: DataSource, train_tf, val_tf, holdout: float, seed: int, *, final: bool):
    from torchvision import datasets

    cls = datasets.CIFAR10 if source.kind == "cifar10" else datasets.CIFAR100
    try:
        if final:
            train = cls(str(source.path), train=True, download=False, transform=train_tf)
            val = cls(str(source.path), train=False, download=False, transform=val_tf)
            return train, val, len(train.classes)
        base = cls(str(source.path), train=True, download=False)
    except Exception:  # a corrupt batch file fails in pickle, numpy, ...
        # torchvision's message suggests download=True; we never download
        raise UsageError(
            f"--data {source}: not a readable CIFAR folder (torchvision's python version, "
            f"its batch files checked against their MD5 sums)"
        ) from None
    learn, held = _split(len(base), holdout, seed)
    return Transformed(base, learn, train_tf), Transformed(base, held, val_tf), len(base.classes)


def make_datasets(
    source: DataSource,
    resolution: int,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    autoaugment: bool = False,
    augment: bool = True,
    split: str = "search",
) -> tuple[Dataset, Dataset, int]:
    """(train, val, num_classes) of ``source`` at ``resolution``.

    ``split="search"``: the training images less a held-out share ``holdout`` (seeded by
    ``seed``), and that share to score on; the test images are never touched. ``split="final"``:
    all training images, and the test images (idx folders' t10k files, CIFAR's test batch, an
    image folder's ``val/``); a source without test images splits as for ``search``.
    ``augment=False`` gives the training split the evaluation transforms (to look at it).
    """
    if split not in ("search", "final"):
        raise ValueError(f"split must be 'search' or 'final', got {split!r}")
    final = split == "final"
    if source.kind == "digits":
        return _digits(resolution, holdout, seed)
    if source.kind in IDX_KINDS:
        return _idx(source, resolution, holdout, seed, final=final, augment=augment)
    train_tf = (
        image_transforms(resolution, train=True, autoaugment=autoaugment)
        if augment
        else image_transforms(resolution, train=False)
    )
    val_tf = image_transforms(resolution, train=False)
    if source.kind.startswith("cifar"):
        return _cifar(source, train_tf, val_tf, holdout, seed, final=final)
    root = source.path
    if _has_train_val(root):
        train = RobustImageFolder(root / "train", train_tf if final else None)
        val = RobustImageFolder(root / "val", val_tf)  # its class list is checked either way
        if val.classes != train.classes:
            raise UsageError(f"--data {source}: train/ and val/ have different class folders")
        if final:
            return train, val, len(train.classes)
        base = train
    else:
        base = RobustImageFolder(root)
    train_idx, val_idx = _split(len(base), holdout, seed)
    return (
        Transformed(base, train_idx, train_tf),
        Transformed(base, val_idx, val_tf),
        len(base.classes),
    )


def describe_split(source: DataSource, val: Dataset, train: Dataset, split: str) -> str:
    """Which images score a model, in words (a run's ``config.json`` records it)."""
    if not source.has_test_split:
        return f"{len(val)} images held out of the {len(val) + len(train)} images of {source}"
    if split == "final":
        return f"the {len(val)} test images of {source}"
    return (
        f"{len(val)} images held out of the {len(val) + len(train)} training images of {source} "
        f"(never its test images)"
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


def check_data(source: DataSource, *, holdout: float = 0.2, seed: int = 0) -> tuple[int, str]:
    """Check that the search can use ``source`` (see `check_datasets`): its number of classes,
    and which images score its trials (`describe_split`)."""
    train, val, num_classes = make_datasets(source, 32, holdout=holdout, seed=seed)
    check_datasets(source, train, val, num_classes)
    return num_classes, describe_split(source, val, train, "search")
