"""Retraining from a spec: resume, DDP under torchrun, image folders of real-world mess, recipes."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_here

from condconv_nas import load_spec
from condconv_nas.training.checkpoint import load_exported

RECIPE = """
epochs: 3
batch_size: 32
resolution: 16
optimizer: adamw
lr: 0.002
weight_decay: 0.01
bn_momentum: 0.2
holdout: 0.2
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


def test_train_then_resume_continues(tmp_path, recipe, cli):
    out = tmp_path / "run"
    res = cli("train", "mobilenet-v1", "--trainer", recipe, "--epochs", "2", "--out", out)
    assert res.returncode == 0, res.stderr
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["epoch"] == 2
    state2 = torch.load(out / "last.pt", weights_only=True)
    res = cli(
        "train", "mobilenet-v1", "--trainer", recipe, "--epochs", "3", "--out", out, "--resume"
    )
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and "epoch 1/3" not in res.stderr and "epoch 3/3" in res.stderr
    m3 = json.loads((out / "metrics.json").read_text())
    assert m3["epoch"] == 3 and {"top1", "top5", "madds", "params"} <= set(m3)
    # the curve goes on from the checkpoint's: the first two epochs' losses as they were
    assert m3["train_losses"][:2] == m2["train_losses"] and len(m3["train_losses"]) == 3
    assert m3["train_losses"][-1] == m3["train_loss"] < m3["train_losses"][0]
    assert m3["top1"] > 0.3  # well above chance (0.1)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3 and state2["epoch"] == 2
    model = load_exported(out / "model.pt")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    res = cli("evaluate", out / "model.pt", "--format", "json")
    assert res.returncode == 0 and abs(json.loads(res.stdout)["top1"] - m3["top1"]) < 1e-6
    # --resume into this folder with another spec or another optimizer: refused, nothing changed
    (tmp_path / "sgd.yaml").write_text(RECIPE.replace("adamw", "sgd"))
    before = (out / "last.pt").read_bytes()
    for args, word in (
        (["mobilenet-v2", "--trainer", recipe], "spec"),
        (["mobilenet-v1", "--trainer", tmp_path / "sgd.yaml"], "optimizer"),
    ):
        res = run_here("train", *args, "--epochs", "4", "--out", out, "--resume")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and word in lines[0], res.stderr
    # fewer epochs than last.pt holds: refused; as many: nothing trained, the same answer
    res = run_here(
        "train", "mobilenet-v1", "--trainer", recipe, "--epochs", "2", "--out", out, "--resume"
    )
    assert res.returncode == 2 and "has trained 3 epochs" in res.stderr, res.stderr
    res = cli(
        "train", "mobilenet-v1", "--trainer", recipe, "--epochs", "3", "--out", out, "--resume",
        "--format", "json",
    )  # fmt: skip
    assert res.returncode == 0 and "epoch 3/3" not in res.stderr, res.stderr
    assert json.loads(res.stdout) == m3
    assert (out / "last.pt").read_bytes() == before


def test_resume_of_a_checkpoint_older_than_a_recipe_key():
    """A key added to Recipe after a checkpoint was written: the checkpoint trained as its default,
    so the default resumes and any other value is refused (a run killed across an upgrade)."""
    from condconv_nas.errors import UsageError
    from condconv_nas.spec import ArchSpec
    from condconv_nas.training.checkpoint import check_resumable
    from condconv_nas.training.recipe import Recipe

    spec = ArchSpec(base="mobilenet_v1", width_multiplier=0.25)
    old = dataclasses.asdict(Recipe(epochs=2))
    del old["router_lr_scale"]
    state = {"epoch": 1, "metrics": {}, "spec": spec.to_dict(), "recipe": old}
    check_resumable(state, "last.pt", spec=spec, recipe=Recipe(epochs=4))
    with pytest.raises(UsageError, match="router_lr_scale 1.0, this recipe has 2.0"):
        check_resumable(state, "last.pt", spec=spec, recipe=Recipe(epochs=4, router_lr_scale=2.0))
    with pytest.raises(UsageError, match="records no recipe"):  # nothing to compare with
        check_resumable({**state, "recipe": {}}, "last.pt", spec=spec, recipe=Recipe(epochs=4))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, recipe):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    # CondConv-MobileNetV1 at width 0.25: DDP over per-example kernels, at a quarter of the time
    spec = load_spec("condconv-mobilenet-v1").replace(width_multiplier=0.25)
    spec_file = spec.save(tmp_path / "spec.json")
    res = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "condconv_nas",
            "train",
            str(spec_file),
            "--trainer",
            str(recipe),
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["epoch"] == 1 and m["spec_id"] == spec.id


def _image_folder(root: Path):
    from PIL import Image

    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for cls, rgb in colours.items():
        d = root / cls
        d.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), rgb).save(d / f"rgb{i}.JPG")
        Image.new("L", (20, 20), 128).save(d / "grey.png")
        Image.new("RGBA", (20, 20), rgb + (128,)).save(d / "alpha.png")
        Image.new("RGB", (20, 20), rgb).convert("P").save(d / "palette.gif")
        (d / ".hidden.jpg").write_bytes(b"junk")
        (d / "notes.txt").write_text("not an image")
    good = root / "cat" / "rgb0.JPG"
    (root / "cat" / "truncated.jpg").write_bytes(good.read_bytes()[:60])


def test_imagefolder_with_mixed_modes_and_a_truncated_jpeg(tmp_path, recipe, cli):
    data = tmp_path / "imgs"
    _image_folder(data)
    from condconv_nas.data import RobustImageFolder

    ds = RobustImageFolder(data)
    assert len(ds) == 2 * 9 + 1  # hidden files and notes.txt ignored; upper-case .JPG kept
    with pytest.warns(UserWarning, match="truncated.jpg"):
        for i in range(len(ds)):
            img, _ = ds[i]
            assert img.mode == "RGB"
    res = cli(
        "train",
        "mobilenet-v1",
        "--trainer",
        recipe,
        "--epochs",
        "1",
        "--data",
        f"imagefolder:{data}",
        "--out",
        tmp_path / "out",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    assert "truncated.jpg" in res.stderr and "Traceback" not in res.stderr


def test_imagenet_recipe_augmentations_one_step(tmp_path, monkeypatch):
    """``train()`` with the shipped imagenet recipe (trainers/imagenet.yaml) for one step of 8
    images: every key of it that acts on an EfficientNet-B0 does, seen on what the training
    built (the datasets, `setup_training`'s Training, its mixup call) and on its checkpoints.
    Not seen: epochs, batch_size and workers (this call's arguments replace them)."""
    from timm.layers import DropPath
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import RMSpropTF
    from timm.scheduler import StepLRScheduler
    from torchvision import transforms as T

    import condconv_nas
    from condconv_nas import load_spec
    from condconv_nas.layers import Router
    from condconv_nas.training import datasets as datasets_module
    from condconv_nas.training import fit as fit_module

    data = tmp_path / "imgs"
    _image_folder(data)
    shutil.move(str(data / "cat" / "truncated.jpg"), str(tmp_path / "t.jpg"))  # 18 images left
    built = {}

    def datasets(*args, **kwargs):
        built["datasets"] = run_module_make_datasets(*args, **kwargs)
        return built["datasets"]

    def setup(*args, **kwargs):
        t = real_setup(*args, **kwargs)
        built["training"] = t
        mixup = t.mixup

        def seen_mixup(x, y):  # timm mixes x in place: keep what came in
            x_in, y_in = x.clone(), y.clone()
            x_out, y_out = mixup(x, y)
            built["mixup"] = (x_in, y_in, x_out.clone(), y_out.clone())
            return x_out, y_out

        t.mixup = seen_mixup if mixup is not None else None
        return t

    run_module_make_datasets, real_setup = datasets_module.make_datasets, fit_module.setup_training
    monkeypatch.setattr(datasets_module, "make_datasets", datasets)
    monkeypatch.setattr(fit_module, "setup_training", setup)
    # resolution null in the recipe: the spec's, here 32 px
    spec = load_spec("condconv-efficientnet-b0").replace(resolution=32, width_multiplier=0.25)
    out = tmp_path / "out"
    metrics = condconv_nas.train(
        spec,
        trainer="imagenet",
        data=f"imagefolder:{data}",
        epochs=1,
        batch_size=8,
        workers=0,
        out=out,
        progress=False,
    )
    assert metrics["epoch"] == 1 and metrics["images"] == 4  # holdout 0.2 of the 18 images
    train_ds, val_ds, num_classes = built["datasets"]
    t = built["training"]
    model = t.model
    assert num_classes == 2 and t.steps_per_epoch == 1  # 14 images, batches of 8 kept whole

    # autoaugment: torchvision's ImageNet policy on the training images only, at 32 px
    augment = [op for op in train_ds.transform.transforms if isinstance(op, T.AutoAugment)]
    assert [op.policy for op in augment] == [T.AutoAugmentPolicy.IMAGENET]
    assert not any(isinstance(op, T.AutoAugment) for op in val_ds.transform.transforms)
    x_in, y_in, x_out, y_out = built["mixup"]
    assert x_in.shape == (8, 3, 32, 32)

    # mixup_alpha 0.2 with label_smoothing 0.1: each image mixed with the batch's reverse,
    # x' = lam x + (1 - lam) flip(x), the targets likewise from smoothed one-hot ones (0.1 spread
    # over the 2 classes), and a loss that takes such soft targets
    assert t.mixup is not None and isinstance(t.loss_fn, SoftTargetCrossEntropy)
    diff = x_in - x_in.flip(0)
    lam = float(((x_out - x_in.flip(0)) * diff).sum() / diff.square().sum())
    torch.testing.assert_close(x_out, lam * x_in + (1 - lam) * x_in.flip(0), rtol=0, atol=1e-4)
    smooth = torch.full((8, 2), 0.1 / 2).scatter_(1, y_in[:, None], 1 - 0.1 + 0.1 / 2)
    torch.testing.assert_close(y_out, lam * smooth + (1 - lam) * smooth.flip(0))

    # dropout 0.2 before the classifier, drop_path 0.2 (timm: rising over the 16 blocks to
    # 0.2 * 15/16), expert_dropout 0 on every router, bn_momentum 0.01 on every batch norm
    assert model.net.drop_rate == 0.2
    drop_paths = sorted(m.drop_prob for m in model.modules() if isinstance(m, DropPath))
    assert drop_paths == pytest.approx([0.2 * i / 16 for i in range(1, 16)])
    routers = [m for m in model.modules() if isinstance(m, Router)]
    assert routers and all(r.expert_dropout == 0.0 for r in routers)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)

    # optimizer rmsproptf (momentum 0.9, decay 0.9) at lr 0.008; weight_decay 1e-5 on every
    # weight, none on biases and norms
    opt = t.optimizer
    assert isinstance(opt, RMSpropTF)
    assert all(g["momentum"] == 0.9 and g["alpha"] == 0.9 for g in opt.param_groups)
    assert all(g["initial_lr"] == 0.008 for g in opt.param_groups)
    decay = {id(p) for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")}
    by_decay = {}
    for g in opt.param_groups:
        by_decay.setdefault(g["weight_decay"], set()).update(id(p) for p in g["params"])
    assert by_decay == {1e-5: decay, 0.0: {id(p) for p in model.parameters()} - decay}
    # TF's RMSProp starts its square averages at 1: after one step with decay 0.9, >= 0.9
    avgs = [s["square_avg"] for s in opt.state.values()]
    assert len(avgs) == len(list(model.parameters())) and all(a.min() >= 0.9 for a in avgs)

    # schedule step: warmup_epochs 5 from lr / 100, then 0.97 every 2.4 epochs (1 step each)
    sched = t.scheduler
    assert isinstance(sched, StepLRScheduler) and not sched.t_in_epochs
    assert (sched.warmup_t, sched.decay_t, sched.decay_rate) == (5, 2.4, 0.97)
    assert sched.warmup_lr_init == pytest.approx(0.008 / 100)
    after_one_step = 0.008 / 100 + (0.008 - 0.008 / 100) / 5
    assert all(g["lr"] == pytest.approx(after_one_step) for g in opt.param_groups)

    # ema_decay 0.9999: the EMA is kept, checkpointed, and it is what model.pt holds and scores
    assert t.ema is not None and t.ema.decay == 0.9999
    last = torch.load(out / "last.pt", weights_only=True)
    exported = torch.load(out / "model.pt", weights_only=True)
    assert last["ema"].keys() == exported["model"].keys() == last["model"].keys()
    assert all(torch.equal(last["ema"][k], exported["model"][k]) for k in last["ema"])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["ema"])
    assert last["recipe"]["optimizer"] == "rmsproptf" and last["recipe"]["ema_decay"] == 0.9999

    # rmsproptf's epsilon: the recipe's comment says 1e-3 (TF's RMSProp as EfficientNet trains)
    assert all(g["eps"] == 1e-3 for g in opt.param_groups), [g["eps"] for g in opt.param_groups]


def test_bad_recipe_and_missing_data_exit_2(tmp_path, refuse):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    res = refuse("train", "mobilenet-v1", "--trainer", bad, "--out", tmp_path / "o")
    assert res.returncode == 2 and "learning_rate" in res.stderr and "Traceback" not in res.stderr
    res = refuse("train", "mobilenet-v1", "--data", "imagefolder:/no/such", "--out", tmp_path / "o")
    assert res.returncode == 2 and "/no/such" in res.stderr
    assert not (tmp_path / "o").exists()
    res = refuse("evaluate", tmp_path / "missing.pt")
    assert res.returncode == 2 and "missing.pt" in res.stderr


@pytest.mark.parametrize("name", ["mobilenet-v2", "condconv-mobilenet-v2", "condconv-resnet50"])
def test_training_starts_from_a_zero_classifier(name):
    """Every first logit is 0 (loss ln C), static or CondConv classifier; timm's init alone does
    not do that."""
    from condconv_nas import build_model, load_spec
    from condconv_nas.training.init import build_for_training
    from condconv_nas.training.recipe import load_recipe

    spec = load_spec(name).replace(num_classes=10, resolution=32)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    model = build_for_training(spec, load_recipe("cifar")).eval()
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(4, 10))
        assert build_model(spec).eval()(x).abs().max() > 0.01


def test_library_train_names_its_folder_after_the_spec_it_was_given(tmp_path, recipe, monkeypatch):
    """train() returns metrics.json; the default folder runs/<spec id> and metrics' spec_id agree,
    though the model was built for digits' 10 classes (model_spec_id)."""
    import condconv_nas
    from condconv_nas import load_spec

    monkeypatch.chdir(tmp_path)
    metrics = condconv_nas.train("mobilenet-v1", trainer=str(recipe), epochs=1, progress=False)
    spec_id = load_spec("mobilenet-v1").id
    assert metrics == json.loads((tmp_path / "runs" / spec_id / "metrics.json").read_text())
    assert metrics["spec_id"] == spec_id != metrics["model_spec_id"]
    assert load_spec("mobilenet-v1").replace(num_classes=10).id == metrics["model_spec_id"]
    evaluated = condconv_nas.evaluate(tmp_path / "runs" / spec_id / "model.pt")
    assert evaluated["top1"] == pytest.approx(metrics["top1"], abs=0.01)


def test_train_reports_through_its_reporter_and_prints_nothing(tmp_path, recipe, capsys):
    """A Reporter given to train() gets one line per epoch and a bar per epoch over the
    epoch's steps; nothing reaches stdout or stderr, as with progress=False."""
    import condconv_nas

    class Seen(condconv_nas.Reporter):  # the search's reporter: one protocol for both
        def __init__(self):
            self.epochs, self.steps = [], []

        def epoch(self, e):
            assert e.trial is None  # a training's own epoch, not a search trial's
            self.epochs.append(e.line)

        def bar(self, epoch, epochs, steps):
            self.steps.append((epoch, epochs, steps))

    seen = Seen()
    out = tmp_path / "run"
    metrics = condconv_nas.train(
        "mobilenet-v1", trainer=str(recipe), epochs=2, out=out, progress=seen
    )
    assert [line.split()[:2] for line in seen.epochs] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert f"top-1 {metrics['top1']:.4f}" in seen.epochs[-1]
    assert [s[:2] for s in seen.steps] == [(1, 2), (2, 2)] and all(s[2] > 0 for s in seen.steps)
    assert capsys.readouterr() == ("", "")


def test_the_proxy_and_the_supernet_train_on_the_recipe_s_augmented_images(tmp_path, monkeypatch):
    """A recipe key acts wherever a model is trained: with autoaugment on, the proxy's and the
    supernet's training images are AutoAugmented as train()'s are (one function builds all)."""
    from torchvision import transforms as T

    from condconv_nas import load_spec
    from condconv_nas.data import parse_source
    from condconv_nas.nas.space import load_space
    from condconv_nas.nas.supernet import train_supernet
    from condconv_nas.training import datasets as datasets_module
    from condconv_nas.training.proxy import proxy_top1
    from condconv_nas.training.recipe import load_recipe

    data = tmp_path / "imgs"
    _image_folder(data)
    shutil.move(str(data / "cat" / "truncated.jpg"), str(tmp_path / "t.jpg"))
    built = []
    real = datasets_module.make_datasets

    def seen(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(datasets_module, "make_datasets", seen)
    recipe = dataclasses.replace(
        load_recipe("proxy"), autoaugment=True, epochs=1, batch_size=8, resolution=32,
        dense_epochs=0, supernet_epochs=1, repeats=1, train_subset=1.0, overrides={},
    )  # fmt: skip
    source = parse_source(f"imagefolder:{data}")
    spec = load_spec("mobilenet-v1").replace(resolution=32, width_multiplier=0.25)
    proxy_top1(spec, source, recipe)
    space = load_space("mobilenet_v1_32")
    train_supernet(tmp_path / "run", space=space, recipe=recipe, data=source, seed=0)
    assert len(built) == 2
    for train_ds, val_ds, _ in built:
        assert any(isinstance(op, T.AutoAugment) for op in train_ds.transform.transforms)
        assert not any(isinstance(op, T.AutoAugment) for op in val_ds.transform.transforms)
