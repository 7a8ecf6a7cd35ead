"""MNIST's IDX label files (core/training/readers.py): read beside the images, so that the
classifier presets train on MNIST; every bad file one clear DatasetError."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from core.training.data import load_dataset
from core.training.datasets import DatasetError
from core.training.readers import load_idx_labels
from core.training.runner import RunConfig, TrainingRun
from tests.training.test_data import _write_mnist_dir


def _labels(y: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(y)) + y.astype(np.uint8).tobytes()


def _write_labels(directory: Path, train: np.ndarray, test: np.ndarray, gz: bool) -> None:
    for stem, y in (("train-labels-idx1-ubyte", train), ("t10k-labels-idx1-ubyte", test)):
        raw = _labels(y)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_labels_beside_the_images_become_the_dataset_labels(tmp_path: Path, gz: bool) -> None:
    _write_mnist_dir(tmp_path, 7, 3, gz)
    y_train, y_test = np.array([3, 1, 4, 1, 5, 9, 2]), np.array([6, 5, 3])
    _write_labels(tmp_path, y_train, y_test, gz)
    ds = load_dataset("mnist", path=tmp_path)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert ds.n_classes == 10
    small = load_dataset("mnist", path=tmp_path, n_train=4, n_test=2)
    assert small.y_train.tolist() == [3, 1, 4, 1] and small.y_test.tolist() == [6, 5]


def test_without_label_files_mnist_has_no_labels_and_the_classifier_says_so(tmp_path):
    _write_mnist_dir(tmp_path, 4, 2, gz=False)
    ds = load_dataset("mnist", path=tmp_path)
    assert ds.y_train is None and ds.n_classes is None
    config = RunConfig.from_settings("mnist", "adam", preset="mnist-cnn", steps=1)
    with pytest.raises(ValueError, match="needs class labels"):
        TrainingRun(config, dataset=ds)


def test_the_classifier_trains_on_mnist_with_labels(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, 16, 4, gz=False)
    _write_labels(tmp_path, np.arange(16) % 10, np.arange(4), gz=False)
    ds = load_dataset("mnist", path=tmp_path)
    config = RunConfig.from_settings(
        "mnist", "kfac", preset="mnist-cnn", steps=2, batch_size=8, eval_every=1
    )
    run = TrainingRun(config, dataset=ds)
    run.run()
    assert run.status == "finished" and run.loss_kind == "ce"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("one file", "no t10k-labels-idx1-ubyte"),
        ("count", "3 labels for 2 images"),
        ("magic", "magic number is 2051"),
        ("label 10", "a label is 10"),
        ("truncated", "header says 2 labels"),
    ],
)
def test_bad_label_files(tmp_path: Path, case: str, match: str) -> None:
    _write_mnist_dir(tmp_path, 2, 2, gz=False)
    train, test = tmp_path / "train-labels-idx1-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    train.write_bytes(_labels(np.array([1, 2])))
    test.write_bytes(_labels(np.array([1, 2])))
    if case == "one file":
        test.unlink()
    elif case == "count":
        train.write_bytes(_labels(np.array([1, 2, 3])))
    elif case == "magic":
        train.write_bytes(_labels(np.array([1, 2]), magic=2051))
    elif case == "label 10":
        train.write_bytes(_labels(np.array([1, 10])))
    else:
        train.write_bytes(_labels(np.array([1, 2]))[:-1])
    with pytest.raises(DatasetError, match=match):
        load_dataset("mnist", path=tmp_path)


def test_label_size_is_checked_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "labels"
    f.write_bytes(gzip.compress(struct.pack(">II", 2049, 10**9)))
    with pytest.raises(DatasetError, match="above this machine's limit"):
        load_idx_labels(f, max_bytes=1 << 20)
