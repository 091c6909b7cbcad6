"""Training recipes (``trainers/*.yaml``): validated like a spec, unknown keys refused by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError


@dataclass(frozen=True)
class Recipe:
    epochs: int = 3  # total epochs
    batch_size: int = 64  # per process
    resolution: int | None = None  # training image size (None: the spec's)
    optimizer: str = "sgd"  # a timm optimizer name: sgd, momentum, rmsproptf, adamw, ...
    lr: float = 0.1  # peak learning rate for batch_size (scaled linearly with the global batch)
    momentum: float = 0.9  # optimizer momentum
    weight_decay: float = 1e-5  # L2 / decoupled weight decay
    schedule: str = "cosine"  # timm scheduler: cosine | step | none
    warmup_epochs: int = 0  # linear warm-up
    decay_epochs: float = 2.4  # step schedule: decay every this many epochs
    decay_rate: float = 0.97  # step schedule: by this factor
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    dropout: float = 0.0  # dropout before the classifier (1 - keep prob)
    drop_path: float = 0.0  # stochastic depth
    mixup_alpha: float = 0.0  # mixup (the paper: 0.2 on large models); 0 = off
    autoaugment: bool = False  # torchvision AutoAugment, ImageNet policy (image folders)
    # zero routing weights at random in training (the paper's ResNet regulariser)
    expert_dropout: float = 0.0
    bn_momentum: float | None = None  # BatchNorm momentum (PyTorch convention; TF 0.99 = 0.01)
    ema_decay: float = 0.0  # weight EMA decay (evaluated model); 0 = off
    zero_init_residual: bool = False  # last BatchNorm of every residual branch starts at zero
    expert_lr: str = "same"  # CondConv experts' lr: same, or rsqrt (lr / sqrt(num_experts))
    router_lr: str = "same"  # routing FCs' lr: same, or rsqrt (lr / sqrt(fan-in))
    # batches of training data that re-estimate BN statistics before evaluation
    bn_recalibrate: int = 0
    train_subset: float = 1.0  # fraction of the training split used
    holdout: float = 0.2  # held-out fraction when the data has no val split
    seed: int = 0  # seeds the model init, the data order and the split
    workers: int = 0  # data loader worker processes
    trials: int = 16  # default --trials of a search that uses this recipe
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per base

    def for_base(self, base: str) -> Recipe:
        """The recipe with the per-family overrides for ``base`` applied."""
        return dataclasses.replace(self, **self.overrides.get(base, {}), overrides={})


_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
_RANGES = {
    "epochs": (1, 100000),
    "batch_size": (1, 1 << 20),
    "lr": (0, 100),
    "label_smoothing": (0, 0.999),
    "dropout": (0, 0.999),
    "drop_path": (0, 0.999),
    "mixup_alpha": (0, 100),
    "expert_dropout": (0, 0.999),
    "ema_decay": (0, 0.999999),
    "train_subset": (1e-9, 1),
    "holdout": (1e-9, 0.9),
    "workers": (0, 1024),
    "trials": (1, 1 << 20),
    "weight_decay": (0, 1),
    "momentum": (0, 1),
    "warmup_epochs": (0, 100000),
    "bn_recalibrate": (0, 1 << 20),
}
_CHOICES = {
    "schedule": ("cosine", "step", "none"),
    "expert_lr": ("same", "rsqrt"),
    "router_lr": ("same", "rsqrt"),
}


def _check(key: str, value: Any, where: str) -> Any:
    f = _FIELDS.get(key)
    if f is None or key == "overrides":
        raise UsageError(f"{where}: unknown key {key!r}")
    want = {
        "int": int,
        "float": float,
        "str": str,
        "bool": bool,
        "int | None": int,
        "float | None": float,
    }[str(f.type)]
    if value is None and str(f.type).endswith("| None"):
        return None
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise UsageError(f"{where}: {key} must be {want.__name__}, got {value!r}")
    lo, hi = _RANGES.get(key, (None, None))
    if lo is not None and not lo <= value <= hi:
        raise UsageError(f"{where}: {key} must be in [{lo}, {hi}], got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise UsageError(f"{where}: {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    return value


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping of recipe keys")
    kwargs = {k: _check(k, v, where) for k, v in data.items() if k != "overrides"}
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UsageError(f"{where}: overrides must map a base name to recipe keys")
    from ..archs import BASES  # noqa: PLC0415

    for base, changes in overrides.items():
        if base not in BASES:
            raise UsageError(f"{where}: overrides: unknown base {base!r}")
        if not isinstance(changes, dict):
            raise UsageError(f"{where}: overrides.{base} must be a mapping")
        overrides[base] = {
            k: _check(k, v, f"{where}: overrides.{base}") for k, v in changes.items()
        }
    return Recipe(**kwargs, overrides=overrides)


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe (``proxy``, ``cifar``, ``imagenet``) or a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        shipped = resources.files("condconv_nas.trainers")
        names = sorted(p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml"))
        if text not in names:
            raise UsageError(
                f"--trainer {text!r}: not a shipped recipe ({', '.join(names)}) nor a YAML file"
            )
        path = Path(str(shipped / f"{text}.yaml"))
    if not path.is_file():
        raise UsageError(f"--trainer {text}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path}: not valid YAML ({e})") from None
    return recipe_from_dict(data if data is not None else {}, f"recipe {path}")
