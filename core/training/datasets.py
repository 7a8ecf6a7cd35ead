"""What a dataset is here: the :class:`Dataset` type every loader returns, the registry of the
datasets the CLI and the app offer (:data:`DATASET_SPECS`), :class:`DatasetError`, the cache
directory, and the row helpers the loaders share.

A :class:`Dataset` holds images flattened to ``float32`` rows of shape ``(n, d)``. Autoencoders
reconstruct their input, so their target is ``x``; a dataset may also hold class labels
(``y_train``, ``y_test``: DIGITS does), the targets of a classifier
(:class:`core.training.models.ConvClassifier`, the ``"ce"`` likelihood).

* ``loss == "bce"``: intensities in ``[0, 1]``, the model outputs logits, and the per-sample loss
  is the Bernoulli negative log-likelihood summed over pixels (CURVES, MNIST, DIGITS).
* ``loss == "mse"``: real-valued targets, linear outputs, per-sample loss ``½‖ŷ − x‖²`` (the
  N(ŷ, I) negative log-likelihood up to a constant) (FACES). See :mod:`core.training.models`.

Loading by name: :func:`core.training.data.load_dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import settings
from ..engine.likelihoods import AUTOENCODER_LOSSES

__all__ = [
    "CACHE_ENV_VAR",
    "DATASETS",
    "DATASET_SPECS",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "default_cache_dir",
    "split_sizes",
    "to_unit_tensor",
]

Loss = Literal["bce", "mse"]

#: Environment variable that overrides the default cache directory.
CACHE_ENV_VAR = "KRONOSCOPE_CACHE_DIR"


class DatasetError(ValueError):
    """A dataset file is missing, malformed or too large. The message names the path, what was
    expected and what to do about it (:func:`core.training.datafiles.load_visitor_dataset`
    replaces it with one that names no path)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """An autoencoder dataset: flattened images, train and test split.

    Attributes:
        name: registry name, e.g. ``"curves"``.
        x_train: ``float32`` tensor ``(n_train, d)``, ``d = H·W``.
        x_test: ``float32`` tensor ``(n_test, d)``.
        image_shape: ``(H, W)``, for drawing rows as images.
        loss: ``"bce"`` (values in ``[0, 1]``, sigmoid outputs) or ``"mse"`` (linear outputs).
        label: what to call it in front of a person, e.g. ``"CURVES-like (generated)"`` or
            ``"CURVES (original, digs3pts_1.mat)"``; the registry's label when empty.
        y_train, y_test: class labels, ``int64`` tensors ``(n_train,)`` and ``(n_test,)`` in
            ``[0, n_classes)``, or ``None`` (both) when the dataset has none.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    image_shape: tuple[int, int]
    loss: Loss
    label: str = ""
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    def __post_init__(self) -> None:
        d = self.image_shape[0] * self.image_shape[1]
        for split, x in (("x_train", self.x_train), ("x_test", self.x_test)):
            if x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != d:
                raise ValueError(
                    f"{self.name}: {split} must be a float32 tensor of shape (n, {d}), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
        if self.loss not in AUTOENCODER_LOSSES:
            raise ValueError(f"{self.name}: loss must be 'bce' or 'mse', got {self.loss!r}")
        self._check_labels()
        if not self.label:
            spec = DATASET_SPECS.get(self.name)
            object.__setattr__(self, "label", spec.label if spec else self.name)

    def _check_labels(self) -> None:
        if (self.y_train is None) != (self.y_test is None):
            raise ValueError(f"{self.name}: give class labels for both splits or for neither")
        for split, y, x in (
            ("y_train", self.y_train, self.x_train),
            ("y_test", self.y_test, self.x_test),
        ):
            if y is None:
                continue
            if y.dtype != torch.int64 or y.shape != (x.shape[0],) or bool((y < 0).any()):
                raise ValueError(
                    f"{self.name}: {split} must be a non-negative int64 tensor of shape "
                    f"({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
                )

    @property
    def input_dim(self) -> int:
        """Number of pixels ``d = H·W`` (the autoencoder's first and last width)."""
        return self.image_shape[0] * self.image_shape[1]

    @property
    def n_classes(self) -> int | None:
        """``1 + the largest class label`` of either split; ``None`` without labels."""
        if self.y_train is None or self.y_test is None:
            return None
        return 1 + int(torch.cat([self.y_train, self.y_test]).max())

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset before loading it. ``needs_path``: it is read
    from files only; ``optional_path``: it is generated without a path and read from the
    original file with one (CURVES). ``label``: the short name shown to people."""

    name: str
    image_shape: tuple[int, int]
    loss: Loss
    needs_path: bool
    description: str
    label: str = ""
    optional_path: bool = False

    @property
    def input_dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    @property
    def accepts_path(self) -> bool:
        return self.needs_path or self.optional_path


DATASET_SPECS: dict[str, DatasetSpec] = {
    "curves": DatasetSpec(
        "curves",
        (28, 28),
        "bce",
        False,
        "CURVES-like (generated): 28×28 curves through three random points, drawn here after "
        "Hinton & Salakhutdinov (2006), 20,000 train / 10,000 test. The paper's original "
        "CURVES is the file digs3pts_1.mat: give it as the data path (or --download).",
        label="CURVES-like (generated)",
        optional_path=True,
    ),
    "curves-small": DatasetSpec(
        "curves-small",
        (14, 14),
        "bce",
        False,
        "CURVES-like (generated) at 14×14, 2,000 train / 1,000 test: trains in seconds on a CPU.",
        label="CURVES-like small (generated)",
    ),
    "digits": DatasetSpec(
        "digits",
        (8, 8),
        "bce",
        False,
        "scikit-learn's bundled 8×8 handwritten digits (1,797 images), scaled to [0, 1].",
        label="DIGITS",
    ),
    "mnist": DatasetSpec(
        "mnist",
        (28, 28),
        "bce",
        True,
        "MNIST 28×28, 60,000 train / 10,000 test, from the IDX files (gzipped or not) or an "
        ".npz you provide.",
        label="MNIST",
    ),
    "faces": DatasetSpec(
        "faces",
        (25, 25),
        "mse",
        True,
        "FACES 25×25 (625 pixels), squared-error loss, 103,500 train / 41,400 test, from the "
        "original newfaces_rot_single.mat or an .npz you provide.",
        label="FACES",
    ),
}

#: Registry name -> one-line description, for user interfaces.
DATASETS: dict[str, str] = {name: spec.description for name, spec in DATASET_SPECS.items()}


def default_cache_dir() -> Path:
    """``$KRONOSCOPE_CACHE_DIR`` if set, else ``~/.cache/kronoscope``."""
    cache_dir: Path = settings.get(CACHE_ENV_VAR)
    return cache_dir


# ---------------------------------------------------------------------------------------------
# Helpers shared by the loaders
# ---------------------------------------------------------------------------------------------


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8`` images ``(n, H, W)`` -> ``float32`` rows ``(n, H·W)`` in ``[0, 1]``."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(flat)


def split_sizes(total: int, n_train: int | None, n_test: int | None) -> tuple[int, int]:
    """Train and test sizes for a split of ``total`` rows. Defaults: test = ``total // 6``,
    train = the rest."""
    n_test = total // 6 if n_test is None else n_test
    n_train = total - n_test if n_train is None else n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > total:
        raise ValueError(
            f"need 1 <= n_train, 1 <= n_test and n_train + n_test <= {total}, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    return n_train, n_test
