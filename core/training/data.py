"""Datasets for the autoencoder experiments: CURVES-like (generated here), DIGITS (bundled with
scikit-learn), and the paper's MNIST, FACES and original CURVES, read from files the user
supplies (the published IDX and MATLAB files, or .npz). Nothing is downloaded here: explicit
downloads live in :mod:`core.training.download`; files named by web visitors go through
:mod:`core.training.datafiles`.

Every loader returns a :class:`Dataset` whose images are flattened to ``float32`` rows of shape
``(n, d)``. Autoencoders reconstruct their input, so there are no labels: the target is ``x``.

* ``loss == "bce"``: intensities in ``[0, 1]``, the model outputs logits, and the per-sample loss
  is the Bernoulli negative log-likelihood summed over pixels (CURVES, MNIST, DIGITS).
* ``loss == "mse"``: real-valued targets, linear outputs, per-sample loss ``½‖ŷ − x‖²`` (the
  N(ŷ, I) negative log-likelihood up to a constant) (FACES). See :mod:`core.training.models`.

The setups follow Hinton & Salakhutdinov, "Reducing the dimensionality of data with neural
networks", Science 313 (2006), as used by Martens (2010) and Martens & Grosse (2015).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..engine.likelihoods import AUTOENCODER_LOSSES

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "default_cache_dir",
    "faces_split",
    "file_format",
    "file_help",
    "find_idx_images",
    "generate_curves",
    "load_curves",
    "load_curves_file",
    "load_curves_mat",
    "load_dataset",
    "load_digits",
    "load_faces",
    "load_idx_images",
    "load_mnist",
    "max_data_bytes",
]

Loss = Literal["bce", "mse"]

#: Environment variable that overrides the default cache directory.
CACHE_ENV_VAR = "KRONOSCOPE_CACHE_DIR"

#: Bump when the CURVES generator changes, so that stale cache files are never reused.
CURVES_VERSION = 1

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


class DatasetError(ValueError):
    """A dataset file is missing, malformed or too large. The message names the path, what was
    expected and what to do about it (:func:`core.training.datafiles.load_visitor_dataset` replaces
    it
    with one that names no path)."""


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
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    image_shape: tuple[int, int]
    loss: Loss
    label: str = ""

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
        if not self.label:
            spec = DATASET_SPECS.get(self.name)
            object.__setattr__(self, "label", spec.label if spec else self.name)

    @property
    def input_dim(self) -> int:
        """Number of pixels ``d = H·W`` (the autoencoder's first and last width)."""
        return self.image_shape[0] * self.image_shape[1]

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


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$KRONOSCOPE_CACHE_DIR`` if set, else ``~/.cache/kronoscope``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kronoscope"


def _resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz to ``path`` via a temporary file in the same directory and
    ``os.replace``, so that a concurrent reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# CURVES
# ---------------------------------------------------------------------------------------------


def _bezier_distance(
    px: np.ndarray, py: np.ndarray, p0: np.ndarray, p1: np.ndarray, p2: np.ndarray
) -> np.ndarray:
    """Exact Euclidean distance from points ``(px, py)`` (each ``(P,)``) to the quadratic Bézier
    segments with control points ``p0, p1, p2`` (each ``(m, 2)``); returns ``(m, P)``.

    With ``B(t) = p0 + 2t·a + t²·b``, ``a = p1 − p0``, ``b = p0 − 2p1 + p2`` and
    ``d = p0 − x``, the stationary points of ``‖B(t) − x‖²`` solve the cubic
    ``(b·b)t³ + 3(a·b)t² + (2a·a + d·b)t + d·a = 0``, solved in closed form (Cardano, or the
    trigonometric form when there are three real roots, of which the middle one is a maximum).
    The minimum over ``[0, 1]`` is at one of the clamped outer roots. Float64: the normalised
    cubic's coefficients grow like ``1/‖b‖²`` for nearly straight curves. NumPy rather than
    torch: single-threaded elementwise work on cache-sized chunks is the fastest here.
    """
    a = p1 - p0
    b = p0 - 2.0 * p1 + p2
    kk = 1.0 / np.maximum((b * b).sum(-1), 1e-12)
    ax, ay, bx, by = a[:, 0:1], a[:, 1:2], b[:, 0:1], b[:, 1:2]
    kx = (kk * (a * b).sum(-1))[:, None]
    dx = p0[:, 0:1] - px[None]
    dy = p0[:, 1:2] - py[None]
    # d·b and d·a are linear in the pixel position.
    ky = dx * (bx * kk[:, None] / 3.0)
    ky += dy * (by * kk[:, None] / 3.0)
    ky += (2.0 * kk * (a * a).sum(-1) / 3.0)[:, None]
    kz = dx * (ax * kk[:, None])
    kz += dy * (ay * kk[:, None])
    # Depressed cubic s³ + 3p·s + q = 0 with t = s − kx.
    p = ky - kx * kx
    q = ky
    q *= -3.0 * kx
    q += kz
    q += 2.0 * kx**3
    del kz
    h = q * q + 4.0 * p * p * p
    one_root = h >= 0.0
    sh = np.sqrt(np.maximum(h, 0.0, out=h), out=h)
    t_one = np.cbrt(0.5 * (sh - q)) + np.cbrt(-0.5 * (sh + q)) - kx
    z = np.sqrt(np.maximum(-p, 0.0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos_3phi = np.clip(q / np.minimum(2.0 * p * z, -1e-300), -1.0, 1.0)
    cos_phi = np.cos(np.arccos(cos_3phi) / 3.0)  # phi in [0, π/3]
    sin_phi = np.sqrt(np.maximum(1.0 - cos_phi * cos_phi, 0.0)) * 3.0**0.5
    t_hi = np.where(one_root, t_one, 2.0 * cos_phi * z - kx)
    t_lo = np.where(one_root, t_one, (-sin_phi - cos_phi) * z - kx)

    def squared_distance(t: np.ndarray) -> np.ndarray:
        np.clip(t, 0.0, 1.0, out=t)
        qx = bx * t
        qx += 2.0 * ax
        qx *= t
        qx += dx
        qy = by * t
        qy += 2.0 * ay
        qy *= t
        qy += dy
        qx *= qx
        qy *= qy
        return qx + qy

    return np.sqrt(np.minimum(squared_distance(t_hi), squared_distance(t_lo)))


def _fit_into_box(ctrl: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Shrink (about its centre) and shift each quadratic Bézier ``ctrl`` ``(m, 3, 2)`` so that
    the whole curve, not just its control points, lies in ``[lo, hi]²``. Curves already inside
    are unchanged. Uses the tight bounding box: per axis the extremum is at an end point or at
    ``t* = (p0 − p1)/(p0 − 2p1 + p2)``."""
    p0, p1, p2 = ctrl[:, 0], ctrl[:, 1], ctrl[:, 2]
    den = p0 - 2.0 * p1 + p2
    safe = np.where(np.abs(den) > 1e-12, den, 1.0)
    t = np.clip((p0 - p1) / safe, 0.0, 1.0)
    mid = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
    ext = np.stack([p0, p2, mid], 1)
    cmin, cmax = ext.min(1), ext.max(1)  # (m, 2)
    centre = (cmin + cmax) / 2
    extent = np.maximum((cmax - cmin).max(-1), 1e-12)  # (m,)
    scale = np.minimum((hi - lo) / extent, 1.0)[:, None]
    new_min = centre - scale * (cmax - cmin) / 2
    new_max = centre + scale * (cmax - cmin) / 2
    shift = np.maximum(lo - new_min, 0.0) - np.maximum(new_max - hi, 0.0)
    return centre[:, None] + scale[:, None] * (ctrl - centre[:, None]) + shift[:, None]


def generate_curves(
    n: int, *, size: int = 28, seed: int = 0, stream: int = 0, chunk: int = 512
) -> np.ndarray:
    """Generate ``n`` CURVES images, ``uint8`` array ``(n, size, size)`` (intensity·255).

    Each image is a smooth curve through three random points (Hinton & Salakhutdinov 2006):
    the points are uniform in the central 80 % of the image; the curve is the quadratic through
    them, parametrised by chord length (a quadratic Bézier with ``B(0) = P₀``, ``B(τ) = P₁``,
    ``B(1) = P₂``, ``τ = |P₀P₁| / (|P₀P₁| + |P₁P₂|)``), shrunk back into the central 80 % when
    it overshoots. It is drawn with a soft pen of random width ``w ~ U[1.5, 3]`` px (at 28×28,
    scaled with ``size``) and a 1 px (scaled) linear edge: intensity
    ``clip((w/2 − dist)/edge + ½, 0, 1)`` with the exact distance from the pixel centre to the
    curve, so the strokes are anti-aliased.

    Deterministic per ``(seed, stream, size)`` (``stream`` separates train from test); all
    random numbers come from one ``(n, 7)`` draw, so the first ``k`` images of a larger run
    equal a run with ``n = k``. Float64 throughout, then rounded to 8 bits.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if size < 4:
        raise ValueError(f"size must be at least 4, got {size}")
    if seed < 0 or stream < 0:
        raise ValueError(f"seed and stream must be non-negative, got {seed}, {stream}")
    u = np.random.default_rng([seed, stream, size]).random((n, 7))
    out = np.empty((n, size * size), dtype=np.uint8)
    centres = np.arange(size, dtype=np.float64) + 0.5
    py, px = (g.reshape(-1) for g in np.meshgrid(centres, centres, indexing="ij"))
    unit = size / 28.0
    for start in range(0, n, chunk):
        params = u[start : start + chunk]
        m = params.shape[0]
        pts = (0.1 + 0.8 * params[:, :6]).reshape(m, 3, 2) * size
        d01 = np.linalg.norm(pts[:, 1] - pts[:, 0], axis=-1)
        d12 = np.linalg.norm(pts[:, 2] - pts[:, 1], axis=-1)
        tau = np.clip(d01 / np.maximum(d01 + d12, 1e-12), 0.05, 0.95)[:, None]
        ctrl1 = (pts[:, 1] - (1 - tau) ** 2 * pts[:, 0] - tau**2 * pts[:, 2]) / (
            2 * tau * (1 - tau)
        )
        ctrl = np.stack([pts[:, 0], ctrl1, pts[:, 2]], 1)
        ctrl = _fit_into_box(ctrl, 0.1 * size, 0.9 * size)
        dist = _bezier_distance(px, py, ctrl[:, 0], ctrl[:, 1], ctrl[:, 2])
        width = (1.5 + 1.5 * params[:, 6:7]) * unit
        ink = np.clip((width / 2 - dist) / unit + 0.5, 0.0, 1.0)
        out[start : start + m] = np.rint(ink * 255.0).astype(np.uint8)
    return out.reshape(n, size, size)


def _curves_cache_path(cache_dir: Path, size: int, seed: int, split: str, n: int) -> Path:
    return cache_dir / f"curves-v{CURVES_VERSION}-{size}px-seed{seed}-{split}{n}.npz"


def _cached_curves(n: int, size: int, seed: int, split: str, cache_dir: Path | None) -> np.ndarray:
    """CURVES for one split, from ``cache_dir`` when present, else generated and cached."""
    stream = 0 if split == "train" else 1  # independent random streams per split
    if cache_dir is None:
        return generate_curves(n, size=size, seed=seed, stream=stream)
    path = _curves_cache_path(cache_dir, size, seed, split, n)
    if path.is_file():
        try:
            with np.load(path) as f:
                images = f["images"]
            if images.shape == (n, size, size) and images.dtype == np.uint8:
                return images
        except Exception:  # any unreadable cache file (bad zip, truncated, wrong keys): redo it
            pass
    images = generate_curves(n, size=size, seed=seed, stream=stream)
    try:
        _atomic_savez(path, images=images)
    except OSError as exc:
        warnings.warn(f"could not cache CURVES in {path}: {exc}", stacklevel=3)
    return images


def load_curves(
    *,
    size: int = 28,
    n_train: int = 20_000,
    n_test: int = 10_000,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    name: str | None = None,
) -> Dataset:
    """CURVES (see :func:`generate_curves`), cached as ``.npz`` under ``cache_dir`` (default
    :func:`default_cache_dir`). Train and test come from disjoint random streams of ``seed``."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    directory = _resolve_cache_dir(cache_dir) if use_cache else None
    x_train = _cached_curves(n_train, size, seed, "train", directory)
    x_test = _cached_curves(n_test, size, seed, "test", directory)
    return Dataset(
        name=name or ("curves" if size == 28 else f"curves-{size}px"),
        x_train=_to_unit_tensor(x_train),
        x_test=_to_unit_tensor(x_test),
        image_shape=(size, size),
        loss="bce",
    )


# ---------------------------------------------------------------------------------------------
# Helpers shared by the file loaders
# ---------------------------------------------------------------------------------------------


def _to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8`` images ``(n, H, W)`` -> ``float32`` rows ``(n, H·W)`` in ``[0, 1]``."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(flat)


def _split_sizes(total: int, n_train: int | None, n_test: int | None) -> tuple[int, int]:
    """Defaults: test = ``total // 6``, train = the rest."""
    n_test = total // 6 if n_test is None else n_test
    n_train = total - n_test if n_train is None else n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > total:
        raise ValueError(
            f"need 1 <= n_train, 1 <= n_test and n_train + n_test <= {total}, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    return n_train, n_test


def _take(x: np.ndarray, n: int | None, what: str) -> np.ndarray:
    if n is None:
        return x
    if not 1 <= n <= x.shape[0]:
        raise ValueError(f"{what}: asked for {n} images, the file has {x.shape[0]}")
    return x[:n]


# ---------------------------------------------------------------------------------------------
# DIGITS
# ---------------------------------------------------------------------------------------------


def load_digits(*, seed: int = 0, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixel values 0–16, no download), divided
    by 16. The split is a permutation drawn from ``seed``; default 1,498 train / 299 test."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    x = sklearn_load_digits().data.astype(np.float32) / np.float32(16.0)
    n_train, n_test = _split_sizes(x.shape[0], n_train, n_test)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(x[order[:n_train]])),
        x_test=torch.from_numpy(np.ascontiguousarray(x[order[n_train : n_train + n_test]])),
        image_shape=(8, 8),
        loss="bce",
    )


# ---------------------------------------------------------------------------------------------
# Limits on what a data file may make us read
# ---------------------------------------------------------------------------------------------

#: Environment variable: the most bytes a dataset file may hold once decompressed.
MAX_DATA_BYTES_ENV = "KRONOSCOPE_MAX_DATA_BYTES"
#: Default of :func:`max_data_bytes`: 1 GiB holds every file of the paper (FACES, the largest,
#: is 625 × 165,600 single-precision values ≈ 414 MB).
DEFAULT_MAX_DATA_BYTES = 1 << 30
#: An .npz dataset holds a few arrays; more members than this is not a dataset.
MAX_NPZ_MEMBERS = 16
#: Its central directory is then a few hundred bytes; refuse one beyond this before parsing it.
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024
_NPZ_MEMBER = re.compile(r"[A-Za-z0-9_]{1,64}\.npy")
_MAT_ITEMSIZE = {
    "double": 8,
    "single": 4,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "logical": 1,
}


def max_data_bytes() -> int:
    """``$KRONOSCOPE_MAX_DATA_BYTES`` (a positive integer) if set, else
    :data:`DEFAULT_MAX_DATA_BYTES`: the cap on a dataset file's decompressed size."""
    text = os.environ.get(MAX_DATA_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_DATA_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DatasetError(f"{MAX_DATA_BYTES_ENV} must be a positive integer, got {text!r}")
    return value


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _too_large(path: Path, what: str, n: int, limit: int) -> DatasetError:
    return DatasetError(
        f"{path}: {what} {n:,} bytes, above this machine's limit of {limit:,} bytes "
        f"({_bytes_text(limit)}); raise {MAX_DATA_BYTES_ENV} if the file is trusted."
    )


def file_format(path: Path) -> str:
    """The file's format from its first bytes, whatever its name says: ``"zip"`` (an .npz),
    ``"mat5"``/``"mat73"`` (MATLAB; 7.3 is HDF5), ``"gzip"``, ``"idx"`` or ``"unknown"``."""
    with path.open("rb") as f:
        head = f.read(128)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return "mat73"
    if head.startswith(b"MATLAB 5.0 MAT-file") and len(head) == 128:
        return "mat5"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        return "idx"
    return "unknown"


# ---------------------------------------------------------------------------------------------
# IDX (MNIST)
# ---------------------------------------------------------------------------------------------

_MNIST_HELP = (
    "Get the MNIST image files train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz "
    "(the label files are not used) from a mirror of Yann LeCun's MNIST page, or with "
    "--download, put them in one directory and pass that directory, or pass an .npz with "
    "arrays x_train and x_test of shape (n, 28, 28) or (n, 784)."
)


def _read_up_to(stream, n: int) -> bytearray:
    """Up to ``n`` bytes from a (possibly decompressing) stream, fewer only at its end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            break
        got += k
    del view
    del buf[got:]
    return buf


def load_idx_images(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX image file (plain or gzip-compressed), ``uint8`` array ``(n, rows, cols)``.

    Format (LeCun's MNIST page): big-endian ``uint32`` magic ``2051`` (``0x00000803``: unsigned
    bytes, 3 dimensions), then ``n``, ``rows``, ``cols`` as big-endian ``uint32``, then
    ``n·rows·cols`` pixel bytes, row-major. Read as a stream: the header's size is checked
    against ``max_bytes`` (default :func:`max_data_bytes`) before the pixels are decompressed,
    so a small .gz cannot expand into more. Raises :class:`DatasetError` otherwise.
    """
    path = Path(path)
    limit = max_data_bytes() if max_bytes is None else max_bytes
    if not path.is_file():
        raise DatasetError(f"IDX image file not found: {path}. {_MNIST_HELP}")
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file name says
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return _read_idx(stream, path, limit)
        except (OSError, EOFError, zlib.error) as exc:
            if not compressed:
                raise
            raise DatasetError(
                f"{path}: looks gzip-compressed but cannot be decompressed ({exc}); the file is "
                f"probably truncated or corrupt. Download it again. {_MNIST_HELP}"
            ) from exc


def _read_idx(stream, path: Path, limit: int) -> np.ndarray:
    header = bytes(_read_up_to(stream, 16))
    magic = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
    if magic is not None and magic != IDX_IMAGES_MAGIC:
        hint = (
            " This is an IDX label file (magic 2049); pass the images file instead."
            if magic == IDX_LABELS_MAGIC
            else ""
        )
        raise DatasetError(
            f"{path}: IDX magic number is {magic} (0x{magic:08x}), expected {IDX_IMAGES_MAGIC} "
            f"(0x{IDX_IMAGES_MAGIC:08x}, unsigned-byte images with 3 dimensions).{hint} "
            f"{_MNIST_HELP}"
        )
    if len(header) < 16:
        raise DatasetError(
            f"{path}: only {len(header)} bytes, too short for an IDX image header (16 bytes: "
            f"magic {IDX_IMAGES_MAGIC} and three big-endian uint32 dimensions). {_MNIST_HELP}"
        )
    n, rows, cols = struct.unpack(">III", header[4:16])
    expected = 16 + n * rows * cols
    if expected > limit:
        raise _too_large(
            path, f"header says {n} images of {rows}×{cols}, decompressed", expected, limit
        )
    body = _read_up_to(stream, expected - 16)
    if len(body) < expected - 16:
        raise DatasetError(
            f"{path}: header says {n} images of {rows}×{cols} = {expected} bytes in all, the file "
            f"has {16 + len(body)} bytes (truncated). Download it again. {_MNIST_HELP}"
        )
    if stream.read(1):
        raise DatasetError(
            f"{path}: header says {n} images of {rows}×{cols} = {expected} bytes in all, the file "
            f"has trailing data after them. Download it again. {_MNIST_HELP}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(n, rows, cols)


def find_idx_images(directory: Path, split: str) -> Path | None:
    """``{split}-images-idx3-ubyte`` (or ``.idx3-ubyte``), optionally ``.gz``, in ``directory``
    or in torchvision's layout ``directory/MNIST/raw``."""
    for folder in (directory, directory / "MNIST" / "raw"):
        for stem in (f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"):
            for suffix in ("", ".gz"):
                candidate = folder / (stem + suffix)
                if candidate.is_file():
                    return candidate
    return None


# ---------------------------------------------------------------------------------------------
# .npz files (MNIST, FACES, CURVES), read without numpy's own loader
# ---------------------------------------------------------------------------------------------

_TRAIN_KEYS = ("x_train", "train_images", "train")
_TEST_KEYS = ("x_test", "test_images", "test")
_SINGLE_KEYS = ("x", "images", "data", "faces")


def _npz_help(image_shape: tuple[int, int]) -> str:
    h, w = image_shape
    return (
        f"Expected an .npz with arrays 'x_train' and 'x_test' (or 'train_images'/'test_images', "
        f"or 'train'/'test'), or a single array 'x' (or 'images', 'data', 'faces') that is split "
        f"here; each of shape (n, {h}, {w}), (n, 1, {h}, {w}) or (n, {h * w})."
    )


def _check_images(
    arr: np.ndarray, path: Path, key: str, image_shape: tuple[int, int], unit_range: bool
) -> np.ndarray:
    """Validate one array of a dataset file and return ``float32`` rows ``(n, H·W)``. Integer
    arrays are divided by 255; float arrays are used as they are (and must lie in ``[0, 1]``
    when ``unit_range``)."""
    h, w = image_shape
    d = h * w
    ok_shape = arr.ndim >= 2 and (arr.shape[1:] in ((d,), (h, w), (1, h, w)) and arr.shape[0] >= 1)
    if not ok_shape:
        raise DatasetError(
            f"{path}: array '{key}' has shape {arr.shape}, expected (n, {h}, {w}), "
            f"(n, 1, {h}, {w}) or (n, {d}) ({h}×{w} = {d} pixels per image). "
            f"{_npz_help(image_shape)}"
        )
    flat = arr.reshape(arr.shape[0], d)
    if np.issubdtype(flat.dtype, np.integer):
        if flat.min() < 0 or flat.max() > 255:
            raise DatasetError(
                f"{path}: integer array '{key}' has values outside 0..255 "
                f"[{flat.min()}, {flat.max()}]; store 8-bit intensities or floats."
            )
        return flat.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(flat.dtype, np.floating):
        raise DatasetError(f"{path}: array '{key}' has dtype {flat.dtype}, expected numbers.")
    flat = flat.astype(np.float32)
    if not np.isfinite(flat).all():
        raise DatasetError(f"{path}: array '{key}' contains NaN or infinite values.")
    if unit_range and (flat.min() < 0.0 or flat.max() > 1.0):
        raise DatasetError(
            f"{path}: float array '{key}' has values in [{flat.min():g}, {flat.max():g}], "
            f"expected [0, 1] for a sigmoid/BCE dataset; divide by 255 (or store uint8)."
        )
    return flat


def _zip_directory_size(f, path: Path, help_text: str) -> None:
    """Check the zip's end-of-central-directory record (the last 22–65,557 bytes) before the
    directory is parsed: at most :data:`MAX_NPZ_MEMBERS` members and a small directory, so
    that an archive of 10,000 members is refused without reading them."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65_535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise DatasetError(f"{path}: cannot be read as an .npz (no zip directory). {help_text}")
    _, _, _, _, n_members, dir_bytes, _, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
    if n_members > MAX_NPZ_MEMBERS or dir_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise DatasetError(
            f"{path}: an archive of {n_members} members ({dir_bytes:,}-byte directory); a "
            f"dataset .npz holds at most {MAX_NPZ_MEMBERS} arrays. {help_text}"
        )


def _read_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, its header checked before its data is read: format 1.0 or 2.0, no
    object dtype (nothing is ever unpickled), and a data size that matches the member's
    declared size (zipfile stops decompressing at the declared size)."""
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise DatasetError(
                f"{path}: member {info.filename} is not a valid .npy ({exc})."
            ) from exc
        if dtype.hasobject:
            raise DatasetError(
                f"{path}: array {info.filename} holds Python objects; only numeric arrays are read."
            )
        n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes > info.file_size:
            raise DatasetError(
                f"{path}: array {info.filename} declares {n_bytes:,} bytes of data in a "
                f"{info.file_size:,}-byte member (corrupt or crafted)."
            )
        data = _read_up_to(fp, n_bytes)
    if len(data) != n_bytes:
        raise DatasetError(f"{path}: array {info.filename} is truncated.")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_npz(path: Path, image_shape: tuple[int, int], limit: int) -> dict[str, np.ndarray]:
    """The image arrays of an .npz, checked before anything is decompressed: member count and
    directory size (:func:`_zip_directory_size`), member names (plain ``name.npy``, no path
    separators), no encryption, and the sum of the declared uncompressed sizes at most
    ``limit``. Only the arrays a layout of :func:`_npz_help` uses are read."""
    help_text = _npz_help(image_shape)
    try:
        with path.open("rb") as f:
            _zip_directory_size(f, path, help_text)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                bad = [i.filename for i in infos if not _NPZ_MEMBER.fullmatch(i.filename)]
                if bad or len(infos) > MAX_NPZ_MEMBERS:
                    shown = ", ".join(repr(b[:40]) for b in bad[:3])
                    raise DatasetError(
                        f"{path}: unexpected archive members ({shown}); an .npz holds only "
                        f"plain 'name.npy' arrays. {help_text}"
                    )
                if any(i.flag_bits & 0x1 for i in infos):
                    raise DatasetError(f"{path}: the archive is encrypted. {help_text}")
                total = sum(i.file_size for i in infos)
                if total > limit:
                    raise _too_large(path, "archive decompresses to", total, limit)
                members = {i.filename[:-4]: i for i in infos}
                keys = _npz_layout(members, path, image_shape)
                return {k: _read_npy_member(zf, members[k], path) for k in keys}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot be read as an .npz ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc


def _npz_layout(members: Mapping[str, object], path: Path, image_shape: tuple[int, int]) -> tuple:
    """The keys to read: ``(train, test)`` or ``(single,)`` (see :func:`_npz_help`)."""
    train_key = next((k for k in _TRAIN_KEYS if k in members), None)
    test_key = next((k for k in _TEST_KEYS if k in members), None)
    if train_key and test_key:
        return (train_key, test_key)
    single_key = next((k for k in _SINGLE_KEYS if k in members), None)
    if single_key and not (train_key or test_key):
        return (single_key,)
    raise DatasetError(
        f"{path}: has arrays {sorted(members)}, none of the expected layouts. "
        f"{_npz_help(image_shape)}"
    )


def _load_npz(
    path: Path,
    image_shape: tuple[int, int],
    *,
    unit_range: bool,
    seed: int,
    n_train: int | None,
    n_test: int | None,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows from an .npz (see :func:`_npz_help` for the accepted layouts)."""
    if not path.is_file():
        raise DatasetError(f"file not found: {path}. {_npz_help(image_shape)}")
    arrays = _read_npz(path, image_shape, max_data_bytes() if max_bytes is None else max_bytes)
    if len(arrays) == 2:
        (train_key, train), (test_key, test) = arrays.items()
        x_train = _check_images(train, path, train_key, image_shape, unit_range)
        x_test = _check_images(test, path, test_key, image_shape, unit_range)
        return _take(x_train, n_train, f"{path} [{train_key}]"), _take(
            x_test, n_test, f"{path} [{test_key}]"
        )
    ((single_key, single),) = arrays.items()
    x = _check_images(single, path, single_key, image_shape, unit_range)
    n_train, n_test = _split_sizes(x.shape[0], n_train, n_test)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    return x[order[:n_train]], x[order[n_train : n_train + n_test]]


# ---------------------------------------------------------------------------------------------
# MATLAB files (the paper's CURVES and FACES)
# ---------------------------------------------------------------------------------------------

_CURVES_MAT_HELP = (
    "Expected the original CURVES file digs3pts_1.mat (MATLAB v5, arrays 'bdata' and "
    "'bdatatest' of shape (n, 784), values in [0, 1]; from James Martens' page or with "
    "--download), or an .npz with arrays x_train and x_test of 28×28 images."
)
_FACES_MAT_HELP = (
    "Expected the original FACES file newfaces_rot_single.mat (MATLAB v5, array "
    "'newfaces_single' of shape (625, n); from James Martens' page or with --download), or an "
    ".npz with arrays x_train and x_test of 25×25 images."
)


def _read_mat(path: Path, names: tuple[str, ...], help_text: str, limit: int) -> dict:
    """Arrays ``names`` of a MATLAB v5 file. Their headers are read first
    (:func:`scipy.io.whosmat`, which decompresses only the headers): each must be a 2-D numeric
    matrix and together they must fit in ``limit`` bytes; then only they are loaded."""
    import scipy.io

    kind = file_format(path)
    if kind == "mat73":
        raise DatasetError(
            f"{path}: a MATLAB v7.3 (HDF5) file; save it with -v7 (or -v6) to read it here. "
            f"{help_text}"
        )
    if kind != "mat5":
        raise DatasetError(f"{path}: not a MATLAB v5 file. {help_text}")
    size = path.stat().st_size
    if size > limit:
        raise _too_large(path, "file of", size, limit)
    try:
        found = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(path)}
    except Exception as exc:  # scipy raises many kinds for a corrupt file: all mean unreadable
        raise DatasetError(
            f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc
    missing = [n for n in names if n not in found]
    if missing:
        shown = sorted(found)[:10]
        raise DatasetError(f"{path}: has arrays {shown}, not {missing}. {help_text}")
    total = 0
    for name in names:
        shape, cls = found[name]
        if cls not in _MAT_ITEMSIZE or len(shape) != 2:
            raise DatasetError(
                f"{path}: '{name}' is a {cls} array of shape {shape}, expected a 2-D numeric "
                f"matrix. {help_text}"
            )
        total += int(np.prod(shape, dtype=np.int64)) * _MAT_ITEMSIZE[cls]
    if total > limit:
        raise _too_large(path, "arrays hold", total, limit)
    try:
        loaded = scipy.io.loadmat(path, variable_names=list(names))
    except Exception as exc:  # as above
        raise DatasetError(
            f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc
    return {name: loaded[name] for name in names}


def load_curves_mat(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """The original CURVES of Hinton & Salakhutdinov (2006), ``digs3pts_1.mat`` as published
    with Martens' Hessian-free code: ``bdata`` (20,000 × 784) for training and ``bdatatest``
    (10,000 × 784) for testing, intensities in ``[0, 1]``. Pixels keep the file's order (a
    fully connected autoencoder does not depend on it). ``n_train``/``n_test`` keep the first
    rows. Raises :class:`DatasetError` naming what was expected."""
    path = Path(path).expanduser()
    limit = max_data_bytes() if max_bytes is None else max_bytes
    arrays = _read_mat(path, ("bdata", "bdatatest"), _CURVES_MAT_HELP, limit)
    x_train = _check_images(arrays["bdata"], path, "bdata", (28, 28), True)
    x_test = _check_images(arrays["bdatatest"], path, "bdatatest", (28, 28), True)
    x_train = _take(x_train, n_train, f"{path} [bdata]")
    x_test = _take(x_test, n_test, f"{path} [bdatatest]")
    return Dataset(
        "curves",
        torch.from_numpy(np.ascontiguousarray(x_train)),
        torch.from_numpy(np.ascontiguousarray(x_test)),
        (28, 28),
        "bce",
        label=f"CURVES (original, {path.name})",
    )


def faces_split(total: int) -> tuple[int, int]:
    """FACES' train and test sizes from its ``total`` images, as in Martens' code
    (``nnet_experiments.m``): train the first ``25·(total // 40)``, test the last
    ``10·(total // 40)`` (the 5/40 between are unused). For the published 165,600 images:
    103,500 and 41,400."""
    unit = total // 40
    if unit < 1:
        raise ValueError(f"FACES needs at least 40 images to split 25:10, got {total}")
    return 25 * unit, 10 * unit


def _load_faces_mat(
    path: Path, n_train: int | None, n_test: int | None, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    arr = _read_mat(path, ("newfaces_single",), _FACES_MAT_HELP, limit)["newfaces_single"]
    if arr.ndim != 2 or arr.shape[0] != 625:
        raise DatasetError(
            f"{path}: 'newfaces_single' has shape {arr.shape}, expected (625, n): one 25×25 "
            f"image per column. {_FACES_MAT_HELP}"
        )
    try:
        size_train, size_test = faces_split(arr.shape[1])
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}. {_FACES_MAT_HELP}") from exc
    x = _check_images(arr.T, path, "newfaces_single", (25, 25), False)
    x_train = _take(x[:size_train], n_train, f"{path} [newfaces_single, train]")
    x_test = _take(x[x.shape[0] - size_test :], n_test, f"{path} [newfaces_single, test]")
    return np.ascontiguousarray(x_train), np.ascontiguousarray(x_test)


# ---------------------------------------------------------------------------------------------
# MNIST, FACES and the original CURVES
# ---------------------------------------------------------------------------------------------


def load_mnist(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """MNIST from a directory with the IDX image files (``train-images-idx3-ubyte`` and
    ``t10k-images-idx3-ubyte``, optionally ``.gz``; torchvision's ``MNIST/raw`` also works) or
    from an ``.npz`` (keys ``x_train``, ``x_test``, e.g. Keras' ``mnist.npz``). Intensities are
    divided by 255. ``n_train``/``n_test`` keep the first images in file order; ``seed`` is
    used only when an .npz holds a single array that must be split. ``max_bytes`` caps each
    file's decompressed size (default :func:`max_data_bytes`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = {split: find_idx_images(path, split) for split in ("train", "t10k")}
        missing = [split for split, p in found.items() if p is None]
        if missing:
            names = ", ".join(f"{s}-images-idx3-ubyte[.gz]" for s in missing)
            raise DatasetError(f"{path}: directory has no {names}. {_MNIST_HELP}")
        images = {
            split: load_idx_images(p, max_bytes=max_bytes)
            for split, p in found.items()
            if p is not None
        }
        for split, x in images.items():
            if x.shape[1:] != (28, 28):
                raise DatasetError(
                    f"{found[split]}: images are {x.shape[1]}×{x.shape[2]}, MNIST's are 28×28."
                )
        x_train = _take(images["train"], n_train, str(found["train"]))
        x_test = _take(images["t10k"], n_test, str(found["t10k"]))
        return Dataset("mnist", _to_unit_tensor(x_train), _to_unit_tensor(x_test), (28, 28), "bce")
    if not path.is_file():
        raise DatasetError(f"MNIST path not found: {path}. {_MNIST_HELP}")
    kind = file_format(path)
    if kind in ("idx", "gzip"):
        raise DatasetError(
            f"{path} is a single IDX file; pass the directory that holds both "
            f"train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz]. {_MNIST_HELP}"
        )
    if kind in ("mat5", "mat73"):
        raise DatasetError(f"{path} is a MATLAB file; {_MNIST_HELP}")
    x_train, x_test = _load_npz(
        path,
        (28, 28),
        unit_range=True,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        max_bytes=max_bytes,
    )
    return Dataset("mnist", torch.from_numpy(x_train), torch.from_numpy(x_test), (28, 28), "bce")


def load_faces(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """FACES (Hinton & Salakhutdinov 2006: 25×25 = 625-pixel face images, squared-error loss)
    from the original ``newfaces_rot_single.mat`` (array ``newfaces_single``, 625 × n, split by
    :func:`faces_split`), or from an ``.npz`` with ``x_train``/``x_test`` or one array
    ``x``/``images``/``faces`` split with ``seed`` (default 1/6 test). Integer arrays are
    divided by 255; float arrays are used unchanged (linear outputs need no [0, 1] range)."""
    path = Path(path).expanduser()
    limit = max_data_bytes() if max_bytes is None else max_bytes
    if path.is_file() and file_format(path) in ("mat5", "mat73"):
        x_train, x_test = _load_faces_mat(path, n_train, n_test, limit)
        label = f"FACES (original, {path.name})"
    else:
        x_train, x_test = _load_npz(
            path,
            (25, 25),
            unit_range=False,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            max_bytes=limit,
        )
        label = "FACES"
    return Dataset(
        "faces", torch.from_numpy(x_train), torch.from_numpy(x_test), (25, 25), "mse", label=label
    )


def load_curves_file(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """CURVES from a file: the original ``digs3pts_1.mat`` (:func:`load_curves_mat`) or an
    ``.npz`` of 28×28 images in ``[0, 1]`` (layouts of :func:`_npz_help`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"CURVES file not found: {path}. {_CURVES_MAT_HELP}")
    if file_format(path) in ("mat5", "mat73"):
        return load_curves_mat(path, n_train=n_train, n_test=n_test, max_bytes=max_bytes)
    x_train, x_test = _load_npz(
        path,
        (28, 28),
        unit_range=True,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        max_bytes=max_bytes,
    )
    return Dataset(
        "curves",
        torch.from_numpy(x_train),
        torch.from_numpy(x_test),
        (28, 28),
        "bce",
        label=f"CURVES ({path.name})",
    )


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def file_help(name: str) -> str:
    """What a file for dataset ``name`` must hold (one sentence or two, no paths)."""
    if name == "mnist":
        return _MNIST_HELP
    if name == "faces":
        return _FACES_MAT_HELP
    if name == "curves":
        return _CURVES_MAT_HELP
    return f"Dataset {name!r} is built in and reads no file."


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
