"""Loading a dataset by its registry name: :func:`load_dataset`, what the CLI, the app and the
benchmarks call. The datasets: CURVES-like (generated, :mod:`core.training.curves`), DIGITS
(bundled with scikit-learn, :func:`load_digits`), and the paper's MNIST, FACES and original
CURVES, read from files the user supplies (:mod:`core.training.readers`). Nothing is downloaded
here: explicit downloads live in :mod:`core.training.download`; files named by web visitors go
through :mod:`core.training.datafiles`. The registry and the :class:`~.datasets.Dataset` type
every loader returns: :mod:`core.training.datasets`.

The setups follow Hinton & Salakhutdinov, "Reducing the dimensionality of data with neural
networks", Science 313 (2006), as used by Martens (2010) and Martens & Grosse (2015).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .curves import load_curves
from .datasets import DATASET_SPECS, Dataset, DatasetError, split_sizes
from .readers import file_help, load_curves_file, load_faces, load_mnist

__all__ = ["load_dataset", "load_digits"]


def load_digits(*, seed: int = 0, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixel values 0–16, no download), divided
    by 16, with their class labels 0–9. The split is a permutation drawn from ``seed``; default
    1,498 train / 299 test."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = bunch.data.astype(np.float32) / np.float32(16.0)
    n_train, n_test = split_sizes(x.shape[0], n_train, n_test)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    train, test = order[:n_train], order[n_train : n_train + n_test]
    labels = bunch.target.astype(np.int64)
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(x[train])),
        x_test=torch.from_numpy(np.ascontiguousarray(x[test])),
        image_shape=(8, 8),
        loss="bce",
        y_train=torch.from_numpy(np.ascontiguousarray(labels[train])),
        y_test=torch.from_numpy(np.ascontiguousarray(labels[test])),
    )


def load_dataset(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """Load a dataset by registry name (see :data:`DATASETS`).

    ``path`` is required for ``"mnist"`` and ``"faces"``, optional for ``"curves"`` (without it
    the CURVES-like set is generated; with it the original file is read) and rejected for the
    others. Nothing is ever downloaded here (see :mod:`core.training.download`). ``seed`` selects
    the generated CURVES sample or the DIGITS/single-array split; ``n_train``/``n_test`` default to
    the dataset's standard sizes; ``cache_dir`` is where generated CURVES are kept;
    ``max_bytes`` caps a file's decompressed size (default :func:`max_data_bytes`).
    """
    spec = DATASET_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_SPECS)}")
    if spec.needs_path and path is None:
        raise DatasetError(
            f"dataset {name!r} is not bundled and is never downloaded implicitly: pass its "
            f"location as path=... (--data-path on the command line). {file_help(name)}"
        )
    if not spec.accepts_path and path is not None:
        raise ValueError(f"dataset {name!r} takes no path (got {path!r})")

    if name == "curves" and path is not None:
        return load_curves_file(
            path, n_train=n_train, n_test=n_test, seed=seed, max_bytes=max_bytes
        )
    if name == "curves":
        return load_curves(
            size=28,
            n_train=20_000 if n_train is None else n_train,
            n_test=10_000 if n_test is None else n_test,
            seed=seed,
            cache_dir=cache_dir,
            name=name,
        )
    if name == "curves-small":
        return load_curves(
            size=14,
            n_train=2_000 if n_train is None else n_train,
            n_test=1_000 if n_test is None else n_test,
            seed=seed,
            cache_dir=cache_dir,
            name=name,
        )
    if name == "digits":
        return load_digits(seed=seed, n_train=n_train, n_test=n_test)
    assert path is not None
    if name == "mnist":
        return load_mnist(path, n_train=n_train, n_test=n_test, seed=seed, max_bytes=max_bytes)
    return load_faces(path, n_train=n_train, n_test=n_test, seed=seed, max_bytes=max_bytes)
