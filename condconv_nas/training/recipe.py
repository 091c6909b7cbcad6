"""Training recipes (``trainers/*.yaml``): every key typed and ranged in `Recipe`, checked by
pydantic (``validation.parse``); unknown keys are refused by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import UsageError
from ..files import find_yaml
from ..validation import FORBID_EXTRA, Float, StrictBool, StrictInt, StrictStr, parse, read_yaml

_Epochs = Annotated[StrictInt, Field(ge=0, le=100_000)]  # a number of epochs, as `epochs` allows
_Fraction = Annotated[Float, Field(ge=0, lt=1)]  # a probability or a smoothing factor


@dataclass(frozen=True)
class Recipe:
    __pydantic_config__ = FORBID_EXTRA

    epochs: Annotated[StrictInt, Field(ge=1, le=100_000)] = 3  # total epochs
    batch_size: Annotated[StrictInt, Field(ge=1, le=1 << 20)] = 64  # per process
    # training image size (None: the spec's)
    resolution: Annotated[StrictInt, Field(ge=8, le=4096)] | None = None
    optimizer: StrictStr = "sgd"  # a timm optimizer name: sgd, momentum, rmsproptf, adamw, ...
    # peak learning rate for batch_size (scaled linearly with the global batch)
    lr: Annotated[Float, Field(ge=0, le=100)] = 0.1
    momentum: Annotated[Float, Field(ge=0, le=1)] = 0.9  # optimizer momentum
    # the optimizer's epsilon (None: timm's default for it; TF's RMSProp: 1e-3)
    opt_eps: Annotated[Float, Field(gt=0, le=1)] | None = None
    weight_decay: Annotated[Float, Field(ge=0, le=1)] = 1e-5  # L2 / decoupled weight decay
    schedule: Literal["cosine", "step", "none"] = "cosine"  # timm scheduler
    warmup_epochs: _Epochs = 0  # linear warm-up
    # step schedule: decay every this many epochs
    decay_epochs: Annotated[Float, Field(gt=0, le=100_000)] = 2.4
    decay_rate: Annotated[Float, Field(gt=0, le=1)] = 0.97  # step schedule: by this factor
    label_smoothing: _Fraction = 0.0  # cross-entropy label smoothing
    dropout: _Fraction = 0.0  # dropout before the classifier (1 - keep prob)
    drop_path: _Fraction = 0.0  # stochastic depth
    mixup_alpha: Annotated[Float, Field(ge=0, le=100)] = 0.0  # mixup (the paper: 0.2); 0 = off
    autoaugment: StrictBool = False  # torchvision AutoAugment, ImageNet policy (image folders)
    # zero routing weights at random in training (the paper's ResNet regulariser)
    expert_dropout: _Fraction = 0.0
    # BatchNorm momentum (PyTorch convention; TF 0.99 = 0.01)
    bn_momentum: Annotated[Float, Field(ge=0, le=1)] | None = None
    ema_decay: _Fraction = 0.0  # weight EMA decay (evaluated model); 0 = off
    zero_init_residual: StrictBool = False  # last BatchNorm of every residual branch starts at 0
    # CondConv experts' lr: same, or rsqrt (lr / sqrt(num_experts))
    expert_lr: Literal["same", "rsqrt"] = "same"
    router_lr: Literal["same", "rsqrt"] = "same"  # routing FCs' lr: same, or lr / sqrt(fan-in)
    # routing FCs' lr multiplied by this (on top of router_lr)
    router_lr_scale: Annotated[Float, Field(gt=0, le=1000)] = 1.0
    # routing FCs' initialisation: torch (nn.Linear's default, a random bias) or timm (bias 0)
    router_init: Literal["torch", "timm"] = "torch"
    # --init: each expert's zero-sum perturbation where a dense kernel fills every expert, relative
    # to the kernel's std (alike experts and constant routers are a fixed point training leaves
    # slowly: the perturbation is what tells them apart)
    upcycle_noise: _Fraction = 0.01
    # --init: routers the source lacks start constant (1/n each: the dense function exactly) or
    # drawn (their initial weights kept, the constant bias: routing differs per example at once;
    # the dense function still for softmax routing, not for sigmoid: `inherit`)
    upcycle_routers: Literal["constant", "drawn"] = "constant"
    # a CondConv classifier's start: zero (every expert 0, so its router gets no gradient until the
    # experts move) or zero_sum (nn.Linear's draw, centred over the experts: the mixed classifier
    # starts near 0 and its router learns from the first step); a static classifier starts at 0
    classifier_init: Literal["zero", "zero_sum"] = "zero"
    # routing FCs' weight decay (None: weight_decay, as every other weight)
    router_weight_decay: Annotated[Float, Field(ge=0, le=1)] | None = None
    # routing warm-up: logits divided by this temperature at the first step, annealed linearly
    # to 1 over routing_warmup_epochs (near-uniform routing while the experts take shape)
    routing_temperature: Annotated[Float, Field(ge=1, le=1000)] = 1.0
    routing_warmup_epochs: _Epochs = 0
    # batches of training data that re-estimate BN statistics before evaluation
    bn_recalibrate: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    train_subset: Annotated[Float, Field(gt=0, le=1)] = 1.0  # fraction of the training split used
    holdout: Annotated[Float, Field(gt=0, le=0.9)] = 0.2  # held-out fraction without a val split
    # seeds the model init, the data order and the split (as --seed: [0, 2**32))
    seed: Annotated[StrictInt, Field(ge=0, lt=2**32)] = 0
    workers: Annotated[StrictInt, Field(ge=0, le=1024)] = 0  # data loader worker processes
    # proxy only: trainings from different seeds whose mean top-1 scores a candidate
    repeats: Annotated[StrictInt, Field(ge=1, le=100)] = 1
    # search only, without --init: a static network of the space's base (`SearchSpace.dense_start`)
    # is first trained this many epochs on the search's training split and every candidate
    # starts from it (0: every one from scratch)
    dense_epochs: _Epochs = 0
    # search with --strategy oneshot: the supernet's epochs over the search's training split
    # (0: dense_epochs, else epochs)
    supernet_epochs: _Epochs = 0
    # default --trials of a search with this recipe (as --trials: at most 1000000)
    trials: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 16
    # per-base changes: {base: {key: value}}, each checked as the recipe with it applied
    overrides: dict[StrictStr, dict[StrictStr, Any]] = dataclasses.field(default_factory=dict)
    # per-data changes: {source kind (digits, fashion-mnist, cifar10, ...): {key: value}}, applied
    # before the per-base ones (a proxy for 60,000 images is not one for 1,797)
    data_overrides: dict[StrictStr, dict[StrictStr, Any]] = dataclasses.field(default_factory=dict)

    def for_base(self, base: str) -> Recipe:
        """The recipe with the per-family overrides for ``base`` applied."""
        return dataclasses.replace(self, **self.overrides.get(base, {}), overrides={})

    def for_data(self, kind: str) -> Recipe:
        """The recipe with the changes for the data source ``kind`` applied (once: the result has
        no per-data changes left)."""
        return dataclasses.replace(self, **self.data_overrides.get(kind, {}), data_overrides={})

    def check_optimizer(self) -> None:
        """`UsageError` unless timm knows the optimizer (imports timm: called before training)."""
        from timm.optim import list_optimizers

        names = list_optimizers()
        for r in [self, *(self.for_base(b) for b in self.overrides)]:
            if r.optimizer not in names:
                raise UsageError(
                    f"recipe: optimizer {r.optimizer!r} is not a timm optimizer "
                    f"(e.g. sgd, momentum, adamw, rmsproptf)"
                )


def _check_keys(recipe: Recipe, where: str) -> None:
    """The checks across keys: a key that would do nothing is refused, not ignored."""
    if (recipe.routing_temperature > 1) != (recipe.routing_warmup_epochs > 0):
        raise UsageError(
            f"{where}: routing_temperature and routing_warmup_epochs go together (a temperature "
            f"above 1 is annealed over the warm-up's epochs), got routing_temperature "
            f"{recipe.routing_temperature} and routing_warmup_epochs {recipe.routing_warmup_epochs}"
        )


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    recipe = parse(Recipe, data, where)
    _check_keys(recipe, where)
    from ..archs import BASES

    for base, changes in recipe.overrides.items():
        if base not in BASES:
            raise UsageError(f"{where}: overrides: unknown base {base!r}")
        if "overrides" in changes:
            raise UsageError(f"{where}: overrides.{base}: unknown field overrides")
        w = f"{where}: overrides.{base}"
        _check_keys(parse(Recipe, {**data, "overrides": {}, **changes}, w), w)
    from ..data import KINDS

    for kind, changes in recipe.data_overrides.items():
        if kind not in KINDS:
            raise UsageError(
                f"{where}: data_overrides: unknown data source {kind!r} ({', '.join(KINDS)})"
            )
        if {"overrides", "data_overrides"} & set(changes):
            raise UsageError(f"{where}: data_overrides.{kind}: only recipe keys may change")
        w = f"{where}: data_overrides.{kind}"
        _check_keys(parse(Recipe, {**data, "data_overrides": {}, **changes}, w), w)
    return recipe


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe (``proxy``, ``cifar``, ``imagenet``) or a YAML file."""
    path = find_yaml(str(name_or_path), "condconv_nas.trainers", "--trainer", "recipe")
    data = read_yaml(path, f"recipe {path}")
    return recipe_from_dict(data if data is not None else {}, f"recipe {path}")
