"""Tests for the datasets (core.training.datasets, .curves, .readers, .data): CURVES generation
and cache, DIGITS, IDX and .npz loaders, the registry."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import core.training.curves as curves
import core.training.datasets as datasets
import core.training.readers as readers
from core.training.curves import generate_curves, load_curves
from core.training.data import load_dataset, load_digits
from core.training.datasets import DATASET_SPECS, DATASETS, Dataset, DatasetError
from core.training.readers import load_faces, load_idx_images, load_mnist


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write into the real ~/.cache during tests."""
    cache = tmp_path / "env-cache"
    monkeypatch.setenv(datasets.CACHE_ENV_VAR, str(cache))
    return cache


# ---------------------------------------------------------------------------------------------
# CURVES
# ---------------------------------------------------------------------------------------------


def test_curves_deterministic_per_seed_and_stream() -> None:
    a = generate_curves(64, seed=3)
    b = generate_curves(64, seed=3)
    assert a.dtype == np.uint8 and a.shape == (64, 28, 28)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, generate_curves(64, seed=4))
    assert not np.array_equal(a, generate_curves(64, seed=3, stream=1))


def test_curves_prefix_and_chunking_invariant() -> None:
    big = generate_curves(300, seed=1, chunk=128)
    assert np.array_equal(generate_curves(37, seed=1), big[:37])
    assert np.array_equal(generate_curves(300, seed=1, chunk=7), big)


def test_curves_are_thin_inked_and_inside_the_frame() -> None:
    x = generate_curves(2000, seed=0).astype(np.float64) / 255.0
    assert x.min() == 0.0 and x.max() == 1.0
    ink_fraction = (x > 0).mean(axis=(1, 2))
    # Thin strokes: a few percent of the pixels per image, never a blob.
    assert 0.05 < ink_fraction.mean() < 0.2
    assert ink_fraction.max() < 0.4
    # Every image has a visible, fully inked stroke.
    assert ((x > 0.99).sum(axis=(1, 2)) >= 2).all()
    # Curves are kept inside the central 80 %: the outer frame of pixels stays empty.
    frame = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    assert frame.max() == 0.0
    # Anti-aliased: intermediate intensities occur.
    assert ((x > 0.05) & (x < 0.95)).mean() > 0.01


def test_curves_small_variant() -> None:
    x = generate_curves(200, size=14, seed=0)
    assert x.shape == (200, 14, 14)
    assert ((x > 0).sum(axis=(1, 2)) > 0).all()
    assert 0.05 < (x > 0).mean() < 0.3


def test_curves_argument_validation() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        generate_curves(-1)
    with pytest.raises(ValueError, match="non-negative"):
        generate_curves(3, seed=-1)
    with pytest.raises(ValueError, match="positive"):
        load_curves(n_train=0, n_test=5, use_cache=False)


def _brute_force_distance(px, py, p0, p1, p2, samples=6_001):  # type: ignore[no-untyped-def]
    t = np.linspace(0.0, 1.0, samples)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2  # (S, 2)
    d2 = (px[:, None] - curve[None, :, 0]) ** 2 + (py[:, None] - curve[None, :, 1]) ** 2
    return np.sqrt(d2.min(axis=1))


def test_bezier_distance_matches_brute_force_including_straight_curves() -> None:
    rng = np.random.default_rng(0)
    m = 24
    p0, p1, p2 = (rng.uniform(0, 28, (m, 2)) for _ in range(3))
    p1[:5] = (p0[:5] + p2[:5]) / 2  # exactly straight: b = 0
    p1[5:10] = (p0[5:10] + p2[5:10]) / 2 + 1e-7 * rng.standard_normal((5, 2))  # nearly straight
    p1[10:13] = p0[10:13]  # control point on an end point
    p2[13:15] = p0[13:15]  # closed hairpin
    centres = np.arange(28) + 0.5
    py, px = (g.ravel() for g in np.meshgrid(centres, centres, indexing="ij"))
    d = curves._bezier_distance(px, py, p0, p1, p2)
    assert d.shape == (m, 28 * 28) and np.isfinite(d).all()
    for i in range(m):
        sampled = _brute_force_distance(px, py, p0[i], p1[i], p2[i])
        # Sampling can only overestimate the distance, by at most half the sample spacing.
        assert (d[i] <= sampled + 1e-9).all()
        assert (sampled - d[i]).max() < 1e-2


# ---------------------------------------------------------------------------------------------
# CURVES cache
# ---------------------------------------------------------------------------------------------


def test_curves_cache_hit_returns_identical_data_without_regenerating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_curves(size=14, n_train=120, n_test=40, seed=2, cache_dir=cache)
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 2
    assert not list(cache.glob("*.tmp"))  # the temporary files were renamed, not left behind
    mtimes = [f.stat().st_mtime_ns for f in files]

    def fail(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("cache miss: generate_curves was called")

    monkeypatch.setattr(curves, "generate_curves", fail)
    second = load_curves(size=14, n_train=120, n_test=40, seed=2, cache_dir=cache)
    assert torch.equal(first.x_train, second.x_train)
    assert torch.equal(first.x_test, second.x_test)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # A different request is a miss.
    with pytest.raises(AssertionError, match="cache miss"):
        load_curves(size=14, n_train=120, n_test=40, seed=3, cache_dir=cache)


def test_curves_cached_values_equal_fresh_generation(tmp_path: Path) -> None:
    ds = load_curves(size=14, n_train=50, n_test=30, seed=5, cache_dir=tmp_path)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.shape == (50, 196)
    assert ds.image_shape == (14, 14) and ds.loss == "bce"
    fresh = generate_curves(50, size=14, seed=5, stream=0).reshape(50, -1) / 255.0
    np.testing.assert_allclose(ds.x_train.numpy(), fresh, rtol=0, atol=1e-7)
    # Train and test are different draws.
    test_fresh = generate_curves(30, size=14, seed=5, stream=1).reshape(30, -1) / 255.0
    np.testing.assert_allclose(ds.x_test.numpy(), test_fresh, rtol=0, atol=1e-7)
    assert not np.array_equal(ds.x_train.numpy()[:30], ds.x_test.numpy())


def test_corrupt_cache_file_is_regenerated(tmp_path: Path) -> None:
    ds = load_curves(size=14, n_train=20, n_test=10, seed=0, cache_dir=tmp_path)
    train_file, test_file = sorted(tmp_path.glob("*train*.npz")) + sorted(
        tmp_path.glob("*test*.npz")
    )
    train_file.write_bytes(b"not a zip file")
    test_file.write_bytes(test_file.read_bytes()[:200])  # truncated zip
    again = load_curves(size=14, n_train=20, n_test=10, seed=0, cache_dir=tmp_path)
    assert torch.equal(ds.x_train, again.x_train)
    assert torch.equal(ds.x_test, again.x_test)
    with np.load(next(iter(tmp_path.glob("*train*.npz")))) as f:
        assert f["images"].shape == (20, 14, 14)


def test_cache_dir_env_var_and_argument(tmp_path: Path, _isolated_cache: Path) -> None:
    assert datasets.default_cache_dir() == _isolated_cache
    load_dataset("curves-small", n_train=10, n_test=5)
    assert len(list(_isolated_cache.glob("curves-*14px*.npz"))) == 2
    explicit = tmp_path / "explicit"
    load_dataset("curves-small", n_train=10, n_test=5, seed=1, cache_dir=explicit)
    assert len(list(explicit.glob("*.npz"))) == 2
    assert not list(_isolated_cache.glob("*seed1*"))


def test_default_cache_dir_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(datasets.CACHE_ENV_VAR, raising=False)
    assert datasets.default_cache_dir() == Path.home() / ".cache" / "kronoscope"


def test_registry_curves_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []

    def fake(n: int, *, size: int = 28, seed: int = 0, stream: int = 0) -> np.ndarray:
        calls.append((n, size, stream))
        return np.zeros((n, size, size), dtype=np.uint8)

    monkeypatch.setattr(curves, "generate_curves", fake)
    ds = load_dataset("curves")
    assert (ds.name, ds.n_train, ds.n_test, ds.image_shape) == ("curves", 20_000, 10_000, (28, 28))
    assert calls == [(20_000, 28, 0), (10_000, 28, 1)]
    small = load_dataset("curves-small")
    assert (small.n_train, small.n_test, small.image_shape) == (2_000, 1_000, (14, 14))
    assert small.input_dim == 196


# ---------------------------------------------------------------------------------------------
# DIGITS
# ---------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_split() -> None:
    ds = load_dataset("digits")
    assert (ds.n_train, ds.n_test, ds.input_dim, ds.loss) == (1498, 299, 64, "bce")
    x = torch.cat([ds.x_train, ds.x_test])
    assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
    # The split is a permutation of all 1,797 images: nothing lost, nothing duplicated.
    from sklearn.datasets import load_digits as sk

    expected = np.sort((sk().data / 16.0).astype(np.float32).view(np.void(64 * 4)).ravel())
    got = np.sort(np.ascontiguousarray(x.numpy()).view(np.void(64 * 4)).ravel())
    assert np.array_equal(expected, got)


def test_digits_deterministic_per_seed_and_sizes() -> None:
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)
    small = load_digits(n_train=100, n_test=50)
    assert (small.n_train, small.n_test) == (100, 50)
    with pytest.raises(ValueError, match="n_train"):
        load_digits(n_train=1700, n_test=200)


# ---------------------------------------------------------------------------------------------
# IDX / MNIST
# ---------------------------------------------------------------------------------------------


def _idx_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def _write_mnist_dir(directory: Path, n_train: int, n_test: int, gz: bool) -> tuple:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, x in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        raw = _idx_bytes(x)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return train, test


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_directory(tmp_path: Path, gz: bool) -> None:
    train, test = _write_mnist_dir(tmp_path, 7, 3, gz)
    ds = load_dataset("mnist", path=tmp_path)
    assert (ds.n_train, ds.n_test, ds.image_shape, ds.loss) == (7, 3, (28, 28), "bce")
    np.testing.assert_array_equal(ds.x_train.numpy(), train.reshape(7, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test.numpy(), test.reshape(3, 784) / np.float32(255))
    assert load_dataset("mnist", path=tmp_path, n_train=4).n_train == 4


def test_idx_dims_are_big_endian_and_row_major(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    f = tmp_path / "imgs-idx3-ubyte"
    f.write_bytes(_idx_bytes(x))
    assert np.array_equal(load_idx_images(f), x)
    # Name does not matter for gzip detection.
    g = tmp_path / "renamed"
    g.write_bytes(gzip.compress(_idx_bytes(x)))
    assert np.array_equal(load_idx_images(g), x)


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path / "MNIST" / "raw", 2, 2, gz=False)
    assert load_mnist(tmp_path).n_train == 2


def test_idx_wrong_magic(tmp_path: Path) -> None:
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(_idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=1234))
    with pytest.raises(DatasetError) as err:
        load_idx_images(f)
    msg = str(err.value)
    assert str(f) in msg and "1234" in msg and "2051" in msg
    f.write_bytes(struct.pack(">II", 2049, 2) + b"\x01\x02")  # a labels file
    with pytest.raises(DatasetError, match="label file"):
        load_idx_images(f)


def test_idx_truncated_and_trailing(tmp_path: Path) -> None:
    f = tmp_path / "t10k-images-idx3-ubyte"
    raw = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
    f.write_bytes(raw[:-100])
    with pytest.raises(DatasetError) as err:
        load_idx_images(f)
    assert str(f) in str(err.value) and "truncated" in str(err.value)
    assert str(len(raw)) in str(err.value)
    f.write_bytes(raw + b"\x00")
    with pytest.raises(DatasetError, match="trailing"):
        load_idx_images(f)
    f.write_bytes(raw[:10])
    with pytest.raises(DatasetError, match="too short"):
        load_idx_images(f)
    gz = tmp_path / "bad.gz"
    gz.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DatasetError, match="gzip"):
        load_idx_images(gz)


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_mnist(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-images-idx3-ubyte" in msg
    assert "x_train" in msg  # the .npz alternative is offered
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="not found"):
        load_mnist(missing)
    with pytest.raises(DatasetError, match="not found"):
        load_idx_images(missing)


def test_mnist_wrong_image_size_and_single_file(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / stem).write_bytes(_idx_bytes(np.zeros((2, 27, 27), np.uint8)))
    with pytest.raises(DatasetError, match="27×27.*28×28"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetError, match="directory"):
        load_mnist(tmp_path / "train-images-idx3-ubyte")


def test_mnist_from_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)  # Keras' mnist.npz layout
    x_test = rng.random((4, 784)).astype(np.float32)
    f = tmp_path / "mnist.npz"
    np.savez(f, x_train=x_train, x_test=x_test, y_train=np.zeros(6), y_test=np.zeros(4))
    ds = load_dataset("mnist", path=f)
    np.testing.assert_array_equal(ds.x_train.numpy(), x_train.reshape(6, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test.numpy(), x_test)


def test_npz_malformed(tmp_path: Path) -> None:
    f = tmp_path / "bad.npz"
    np.savez(f, images_train=np.zeros((3, 784)), labels=np.zeros(3))
    with pytest.raises(DatasetError) as err:
        load_mnist(f)
    msg = str(err.value)
    assert str(f) in msg and "images_train" in msg and "x_train" in msg and "x_test" in msg

    np.savez(f, x_train=np.full((3, 784), 2.0), x_test=np.zeros((3, 784)))
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        load_mnist(f)

    np.savez(f, x_train=np.zeros((3, 780)), x_test=np.zeros((3, 784)))
    with pytest.raises(DatasetError, match="780"):
        load_mnist(f)

    f.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_mnist(f)
    with pytest.raises(DatasetError, match="not found"):
        load_mnist(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------------------
# FACES
# ---------------------------------------------------------------------------------------------


def test_faces_from_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_train = rng.normal(size=(8, 25, 25))  # real-valued: linear outputs need no [0, 1]
    x_test = rng.normal(size=(3, 625))
    f = tmp_path / "faces.npz"
    np.savez(f, x_train=x_train, x_test=x_test)
    ds = load_dataset("faces", path=f)
    assert (ds.loss, ds.image_shape, ds.input_dim, ds.n_train, ds.n_test) == (
        "mse",
        (25, 25),
        625,
        8,
        3,
    )
    np.testing.assert_allclose(ds.x_train.numpy(), x_train.reshape(8, 625), rtol=1e-6)


def test_faces_single_array_is_split_by_seed(tmp_path: Path) -> None:
    x = np.arange(60, dtype=np.uint8)[:, None, None] * np.ones((1, 25, 25), np.uint8)
    f = tmp_path / "faces.npz"
    np.savez(f, images=x)
    a = load_faces(f, seed=0)
    assert (a.n_train, a.n_test) == (50, 10)
    ids = torch.cat([a.x_train[:, 0], a.x_test[:, 0]]) * 255
    assert sorted(ids.round().int().tolist()) == list(range(60))
    assert torch.equal(a.x_test, load_faces(f, seed=0).x_test)
    assert not torch.equal(a.x_test, load_faces(f, seed=1).x_test)


def test_faces_wrong_image_size(tmp_path: Path) -> None:
    f = tmp_path / "faces.npz"
    np.savez(f, x_train=np.zeros((4, 28, 28)), x_test=np.zeros((2, 28, 28)))
    with pytest.raises(DatasetError) as err:
        load_dataset("faces", path=f)
    msg = str(err.value)
    assert str(f) in msg and "(4, 28, 28)" in msg and "625" in msg and "25, 25" in msg


def test_faces_nan_rejected(tmp_path: Path) -> None:
    f = tmp_path / "faces.npz"
    bad = np.zeros((2, 625))
    bad[0, 0] = np.nan
    np.savez(f, x_train=bad, x_test=np.zeros((2, 625)))
    with pytest.raises(DatasetError, match="NaN"):
        load_faces(f)


# ---------------------------------------------------------------------------------------------
# Registry and Dataset
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_errors(tmp_path: Path) -> None:
    assert set(DATASETS) == set(DATASET_SPECS)
    assert {"curves", "curves-small", "digits", "mnist", "faces"} <= set(DATASETS)
    assert all(isinstance(v, str) and v for v in DATASETS.values())
    with pytest.raises(ValueError) as err:
        load_dataset("cifar")
    assert "cifar" in str(err.value)
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(DatasetError, match="path"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="x_train"):
        load_dataset("faces")
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("digits", path=tmp_path)
    assert issubclass(DatasetError, ValueError)


def test_dataset_validates_its_fields() -> None:
    ok = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="float32"):
        Dataset("t", ok.double(), ok, (2, 2), "bce")
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        Dataset("t", torch.zeros(2, 5), ok, (2, 2), "bce")
    with pytest.raises(ValueError, match="loss"):
        Dataset("t", ok, ok, (2, 2), "l1")  # type: ignore[arg-type]
    ds = Dataset("t", ok, ok, (2, 2), "mse")
    with pytest.raises(AttributeError):
        ds.name = "u"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# The paper's original files (fixtures written here, never downloaded)
# ---------------------------------------------------------------------------------------------


def _savemat(path: Path, **arrays: np.ndarray) -> Path:
    import scipy.io

    scipy.io.savemat(path, arrays)  # MATLAB v5, as the published files
    return path


def test_original_curves_mat_is_read_with_its_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    bdata, bdatatest = rng.random((30, 784)), rng.random((10, 784))
    f = _savemat(tmp_path / "digs3pts_1.mat", bdata=bdata, bdatatest=bdatatest, other=np.ones(3))
    ds = load_dataset("curves", path=f)
    assert (ds.name, ds.n_train, ds.n_test, ds.image_shape, ds.loss) == (
        "curves",
        30,
        10,
        (28, 28),
        "bce",
    )
    np.testing.assert_array_equal(ds.x_train.numpy(), bdata.astype(np.float32))
    np.testing.assert_array_equal(ds.x_test.numpy(), bdatatest.astype(np.float32))
    assert "original" in ds.label and "digs3pts_1.mat" in ds.label
    assert load_dataset("curves", path=f, n_train=4, n_test=2).x_train.shape == (4, 784)
    # without a path the same name is the generated set, and says so
    assert load_dataset("curves", n_train=3, n_test=2).label == "CURVES-like (generated)"
    assert "generated" in DATASET_SPECS["curves"].label
    assert "generated" in load_dataset("curves-small", n_train=3, n_test=2).label


def test_original_curves_mat_errors_name_what_was_expected(tmp_path: Path) -> None:
    f = _savemat(tmp_path / "c.mat", bdata=np.zeros((3, 784)))
    with pytest.raises(DatasetError, match="bdatatest.*digs3pts_1.mat"):
        load_dataset("curves", path=f)
    _savemat(f, bdata=np.zeros((3, 780)), bdatatest=np.zeros((3, 784)))
    with pytest.raises(DatasetError, match=r"\(3, 780\)"):
        load_dataset("curves", path=f)
    _savemat(f, bdata=np.full((3, 784), 2.0), bdatatest=np.zeros((3, 784)))
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        load_dataset("curves", path=f)
    f.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" "))
    with pytest.raises(DatasetError, match="v7.3"):
        load_dataset("curves", path=f)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("curves", path=tmp_path / "absent.mat")
    with pytest.raises(DatasetError, match="MATLAB"):
        load_mnist(f)


def test_original_faces_mat_split_is_martens(tmp_path: Path) -> None:
    assert readers.faces_split(165_600) == (103_500, 41_400)  # the published file
    x = np.random.default_rng(6).normal(size=(625, 80)).astype(np.float32)  # one image a column
    f = _savemat(tmp_path / "newfaces_rot_single.mat", newfaces_single=x)
    ds = load_dataset("faces", path=f)
    assert (ds.n_train, ds.n_test, ds.loss) == (50, 20, "mse")
    np.testing.assert_array_equal(ds.x_train.numpy(), x.T[:50])
    np.testing.assert_array_equal(ds.x_test.numpy(), x.T[-20:])
    _savemat(f, newfaces_single=x[:, :39])
    with pytest.raises(DatasetError, match="at least 40"):
        load_faces(f)
    _savemat(f, newfaces_single=x[:624])
    with pytest.raises(DatasetError, match=r"\(625, n\)"):
        load_faces(f)


# ---------------------------------------------------------------------------------------------
# Archives and size caps: checked before anything is loaded
# ---------------------------------------------------------------------------------------------


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_zip_bomb_is_refused_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    monkeypatch.setenv(readers.MAX_DATA_BYTES_ENV, str(8 << 20))
    f = tmp_path / "bomb.npz"
    zeros = np.zeros(((64 << 20) // 784, 28, 28), dtype=np.uint8)  # 64 MiB of zeros
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_train.npy", _npy_bytes(zeros))
        zf.writestr("x_test.npy", _npy_bytes(zeros[:2]))
    assert f.stat().st_size < 1 << 20
    inflated = [0]  # bytes decompressed: refused from the declared size, not after inflating
    read = zipfile.ZipExtFile.read

    def counted(self, n=-1):
        out = read(self, n)
        inflated[0] += len(out)
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    with pytest.raises(DatasetError) as err:
        load_mnist(f)
    assert inflated[0] <= 8 << 20, inflated[0]
    assert "limit" in str(err.value) and readers.MAX_DATA_BYTES_ENV in str(err.value)


def test_zip_of_many_members_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    f = tmp_path / "many.npz"
    with zipfile.ZipFile(f, "w") as zf:
        for i in range(10_000):
            zf.writestr(f"a{i}.npy", b"")

    def parsed(*args, **kwargs):
        raise AssertionError("the archive's directory was parsed")

    monkeypatch.setattr(readers.zipfile, "ZipFile", parsed)  # refused before any parsing
    with pytest.raises(DatasetError) as err:
        load_mnist(f)
    msg = str(err.value)
    assert "10000 members" in msg and len(msg) < 600


def test_npz_members_and_headers_are_checked(tmp_path: Path) -> None:
    import zipfile

    f = tmp_path / "m.npz"
    good = _npy_bytes(np.zeros((2, 784), np.uint8))
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("../x_train.npy", good)
        zf.writestr("x_test.npy", good)
    with pytest.raises(DatasetError, match="unexpected archive members"):
        load_mnist(f)
    # a header declaring far more data than the member holds is refused before allocating
    header = good[: good.index(b"}") + 1].replace(b"(2, 784)", b"(10000000000, 784)")
    huge = header + b" " * (64 - len(header) % 64 - 1) + b"\n"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("x_train.npy", huge)
        zf.writestr("x_test.npy", good)
    with pytest.raises(DatasetError, match="declares"):
        load_mnist(f)
    # object arrays are never unpickled
    np.savez(f, x_train=np.array([{"a": 1}, None], dtype=object), x_test=np.zeros((2, 784)))
    with pytest.raises(DatasetError, match="Python objects"):
        load_mnist(f)


def test_gz_idx_and_mat_sizes_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.zeros((2_000, 28, 28), np.uint8)  # 1.5 MB decompressed, a few kB gzipped
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(_idx_bytes(images)))
    assert load_idx_images(f).shape == (2_000, 28, 28)
    with pytest.raises(DatasetError, match="limit"):
        load_idx_images(f, max_bytes=1 << 20)
    m = _savemat(tmp_path / "c.mat", bdata=np.zeros((300, 784)), bdatatest=np.zeros((3, 784)))
    monkeypatch.setenv(readers.MAX_DATA_BYTES_ENV, str(1 << 20))
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("curves", path=m)
    monkeypatch.setenv(readers.MAX_DATA_BYTES_ENV, "lots")
    with pytest.raises(DatasetError, match=readers.MAX_DATA_BYTES_ENV):
        readers.max_data_bytes()


# ---------------------------------------------------------------------------------------------
# Files chosen by web visitors (core.training.datafiles)
# ---------------------------------------------------------------------------------------------


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from core.training.datafiles import DATA_DIR_ENV, data_dir

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path


def test_list_data_files_finds_candidates_inside_only(tmp_path: Path) -> None:
    from core.training.datafiles import list_data_files

    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _write_mnist_dir(root / "mnist-idx", 2, 2, gz=True)
    (root / "empty-dir").mkdir()
    for name in ("keras-mnist.npz", "faces.mat", "digs3pts_1.mat", "notes.txt", ".hidden.npz"):
        (root / name).write_bytes(b"x")
    (outside / "secret.npz").write_bytes(b"x")
    (root / "escape.npz").symlink_to(outside / "secret.npz")
    (root / "inside.npz").symlink_to(root / "keras-mnist.npz")
    assert list_data_files("mnist", root) == ["inside.npz", "keras-mnist.npz", "mnist-idx"]
    assert list_data_files("faces", root) == [
        "digs3pts_1.mat",
        "faces.mat",
        "inside.npz",
        "keras-mnist.npz",
    ]
    assert list_data_files("digits", root) == []
    assert list_data_files("mnist", tmp_path / "absent") == []
    _write_mnist_dir(outside, 1, 1, gz=False)
    assert list_data_files("mnist", outside)[0] == "."
    with pytest.raises(ValueError, match="unknown dataset"):
        list_data_files("cifar", root)


def test_resolve_in_dir_refuses_every_escape(tmp_path: Path) -> None:
    from core.training.datafiles import resolve_in_dir

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.npz").write_bytes(b"x")
    (root / "up").symlink_to(tmp_path)
    (root / "ok.npz").symlink_to(root / "sub" / "a.npz")
    assert resolve_in_dir("sub/a.npz", root) == (root / "sub" / "a.npz").resolve()
    assert resolve_in_dir("ok.npz", root) == (root / "sub" / "a.npz").resolve()
    assert resolve_in_dir("absent.npz", root).parent == root.resolve()
    for bad, why in [
        ("/etc/passwd", "Absolute"),
        ("../data/sub/a.npz", "'..'"),
        ("sub/../../x", "'..'"),
        ("a\x00b", "NUL"),
        ("x" * 300, "too long"),
        ("up/x.npz", "outside"),
        ("up", "outside"),
        ("", "No data file"),
    ]:
        with pytest.raises(DatasetError, match=why) as err:
            resolve_in_dir(bad, root)
        assert str(tmp_path) not in str(err.value)


def test_visitor_files_get_one_message_that_reveals_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    from core.training.datafiles import load_visitor_dataset

    monkeypatch.setenv(readers.MAX_DATA_BYTES_ENV, str(4 << 20))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x_train=np.array([None], dtype=object), x_test=np.zeros((1, 784)))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x_train.npy", _npy_bytes(np.zeros((16 << 20) // 784 * 784, np.uint8)))
        zf.writestr("x_test.npy", _npy_bytes(np.zeros(784, np.uint8)))
    garbage = tmp_path / "passwd"
    garbage.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cases = [tmp_path / "absent", tmp_path, garbage, pickled, bomb]
    messages = set()
    for path in cases:
        with pytest.raises(DatasetError) as err:
            load_visitor_dataset("mnist", path, display_name="upload.npz")
        msg = str(err.value)
        assert msg.startswith("upload.npz is not a readable MNIST dataset: expected ")
        assert str(tmp_path) not in msg and len(msg) < 400 and "\n" not in msg
        for internal in ("pickle", "numpy", "zip", "Error", "/tmp"):
            assert internal not in msg
        messages.add(msg)
    assert len(messages) == 1  # missing, a directory, unreadable, not a dataset: one message
    hostile = "**Session expired** [log in](http://x)\n" + "a" * 500
    with pytest.raises(DatasetError) as err:
        load_visitor_dataset("faces", garbage, display_name=hostile)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((3, 784), np.uint8), x_test=np.zeros((2, 784), np.uint8))
    assert load_visitor_dataset("mnist", good, display_name="good.npz").n_train == 3
    with pytest.raises(ValueError, match="not read from files"):
        load_visitor_dataset("digits", good, display_name="x")
