"""Tests for core.data: CURVES generation and cache, DIGITS, IDX / .npz loaders, registry."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import core.data as data
from core.data import (
    DATASET_SPECS,
    DATASETS,
    Dataset,
    DatasetError,
    generate_curves,
    load_curves,
    load_dataset,
    load_digits,
    load_faces,
    load_idx_images,
    load_mnist,
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write into the real ~/.cache during tests."""
    cache = tmp_path / "env-cache"
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(cache))
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
    d = data._bezier_distance(px, py, p0, p1, p2)
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

    monkeypatch.setattr(data, "generate_curves", fail)
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
    assert data.default_cache_dir() == _isolated_cache
    load_dataset("curves-small", n_train=10, n_test=5)
    assert len(list(_isolated_cache.glob("curves-*14px*.npz"))) == 2
    explicit = tmp_path / "explicit"
    load_dataset("curves-small", n_train=10, n_test=5, seed=1, cache_dir=explicit)
    assert len(list(explicit.glob("*.npz"))) == 2
    assert not list(_isolated_cache.glob("*seed1*"))


def test_default_cache_dir_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.CACHE_ENV_VAR, raising=False)
    assert data.default_cache_dir() == Path.home() / ".cache" / "kronoscope"


def test_registry_curves_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []

    def fake(n: int, *, size: int = 28, seed: int = 0, stream: int = 0) -> np.ndarray:
        calls.append((n, size, stream))
        return np.zeros((n, size, size), dtype=np.uint8)

    monkeypatch.setattr(data, "generate_curves", fake)
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
