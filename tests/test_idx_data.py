"""MNIST-format data (Fashion-MNIST, MNIST): the reader against files written here byte by byte,
the official split kept (search never sees test images), bad files refused, and the real
Fashion-MNIST where Debian's package is installed."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from condconv_nas.cli import main
from condconv_nas.data import make_datasets, parse_source
from condconv_nas.errors import UsageError
from condconv_nas.idx import DEBIAN_FASHION_MNIST, load_split, read_idx

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array, written out from the format's definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_folder(folder: Path, *, n_train=40, n_test=20, size=28, gz=True, classes=4):
    """An idx folder whose test images are marked (pixel (0, 0) = 255, training images 0 there)
    and whose every image carries its index in pixel (0, 1), so a split can be traced."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 200, size=(n, size, size), dtype=np.uint8)
        images[:, 0, 0] = 255 if part == "test" else 0
        images[:, 0, 1] = np.arange(n) % 256
        labels = (np.arange(n) % classes).astype(np.uint8)
        arrays[part] = (images, labels)
        for name, array in zip(NAMES[part], (images, labels), strict=True):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reader_returns_the_bytes_written(tmp_path, gz):
    arrays = write_folder(tmp_path, gz=gz)
    for part in ("train", "test"):
        split = load_split(tmp_path, part)
        assert split.images.dtype == torch.uint8
        assert np.array_equal(split.images.numpy(), arrays[part][0])
        assert np.array_equal(split.labels.numpy(), arrays[part][1])


def test_search_split_holds_out_training_images_and_final_scores_on_test(tmp_path):
    write_folder(tmp_path, n_train=40, n_test=20)
    source = parse_source(f"fashion-mnist:{tmp_path}")
    learn, held, classes = make_datasets(source, 28, holdout=0.25, seed=0, augment=False)
    assert classes == 4 and (len(learn), len(held)) == (30, 10)
    marks = [ds[i][0][0, 0, 0].item() for ds in (learn, held) for i in range(len(ds))]
    assert max(marks) == -1.0  # pixel 0 of a training image (0 -> -1); a test image gives 1
    seen = sorted(
        round((ds[i][0][0, 0, 1].item() + 1) / 2 * 255)
        for ds in (learn, held)
        for i in range(len(ds))
    )
    assert seen == list(range(40))  # every training image exactly once
    train, test, _ = make_datasets(source, 28, augment=False, split="final")
    assert (len(train), len(test)) == (40, 20)
    assert all(test[i][0][0, 0, 0].item() == 1.0 for i in range(len(test)))


def test_images_are_resized_three_channel_and_augmented_only_for_training(tmp_path):
    write_folder(tmp_path)
    source = parse_source(f"mnist:{tmp_path}")
    learn, held, _ = make_datasets(source, 32, holdout=0.25, seed=0)
    x, y = held[0]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1 and y.dtype == torch.long
    assert torch.equal(held[3][0], held[3][0])  # scoring images do not change between reads
    draws = {tuple(learn[3][0].flatten()[:64].tolist()) for _ in range(12)}
    assert len(draws) > 1  # random crop and flip


def _write_broken(folder: Path, case: str):
    write_folder(folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    images = folder / "train-images-idx3-ubyte.gz"
    if case == "missing":
        labels.unlink()
        return "train-labels-idx1-ubyte"
    if case == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
        return "train-images-idx3-ubyte"
    if case == "magic":  # a labels file where the images belong
        images.write_bytes(labels.read_bytes())
        return "wrong magic number"
    if case == "counts":
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(39, np.uint8))))
        return "39 labels for the 40 images"
    if case == "not_gzip":
        labels.write_bytes(b"not gzip at all")
        return "cannot be read"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "truncated", "magic", "counts", "not_gzip"])
def test_broken_files_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    expected = _write_broken(tmp_path / "data", case)
    results = tmp_path / "results"
    code = main(
        [
            "search",
            "--budget",
            "400M",
            "--data",
            f"fashion-mnist:{tmp_path / 'data'}",
            "--results",
            str(results),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "apt-get install dataset-fashion-mnist" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not results.exists()


def test_missing_folder_and_bad_magic_via_reader(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        parse_source(f"fashion-mnist:{tmp_path / 'nowhere'}")
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(UsageError, match="expected 00000803"):
        read_idx(path, 3)


def test_train_scores_on_test_images_and_evaluate_counts_them(tmp_path, files, capsys):
    write_folder(tmp_path / "data", n_train=64, n_test=24, size=16)
    data = f"mnist:{tmp_path / 'data'}"
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "mobilenet-v1",
                "--trainer",
                str(files / "tiny.yaml"),
                "--data",
                data,
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 24 and "test images" in metrics["scored_on"]
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pt"), "--data", data, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 24


def test_search_config_says_which_images_scored_its_trials(tmp_path, files):
    write_folder(tmp_path / "data", n_train=80, n_test=20, size=16)
    code = main(
        [
            "search",
            "--budget",
            "400M",
            "--space",
            str(files / "space.yaml"),
            "--trainer",
            str(files / "tiny.yaml"),
            "--trials",
            "1",
            "--data",
            f"mnist:{tmp_path / 'data'}",
            "--results",
            str(tmp_path / "results"),
            "--run",
            "r",
            "--quiet",
        ]
    )
    assert code == 0
    config = json.loads((tmp_path / "results/r/config.json").read_text())
    assert config["scored_on"].startswith("16 images held out of the 80 training images")


def test_cifar_search_never_scores_on_the_test_batch(monkeypatch, tmp_path):
    """The search split of CIFAR comes from the training batches (torchvision's class stood in
    for by one that marks which batch an image came from)."""
    from PIL import Image
    from torchvision import datasets

    class FakeCifar:
        classes = ["a", "b"]

        def __init__(self, root, train, download, transform=None):
            self.train, self.transform = train, transform
            self.n = 50 if train else 10

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            img = Image.new("RGB", (32, 32), (0, 0, 0) if self.train else (255, 255, 255))
            return (self.transform(img) if self.transform else img), i % 2

    monkeypatch.setattr(datasets, "CIFAR10", FakeCifar)
    (tmp_path / "cifar-10-batches-py").mkdir()
    source = parse_source(f"cifar10:{tmp_path}")
    learn, held, _ = make_datasets(source, 32, holdout=0.2, seed=0)
    assert (len(learn), len(held)) == (40, 10)
    assert all(held[i][0].mean() < 0 for i in range(len(held)))  # black: training batches
    _, test, _ = make_datasets(source, 32, split="final")
    assert len(test) == 10 and test[0][0].mean() > 0


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    source = parse_source("fashion-mnist")
    train, test = load_split(source.path, "train"), load_split(source.path, "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    learn, held, classes = make_datasets(source, 32, holdout=0.1, seed=0)
    assert classes == 10 and (len(learn), len(held)) == (54000, 6000)
