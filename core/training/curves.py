"""The CURVES-like dataset, generated here after Hinton & Salakhutdinov, "Reducing the
dimensionality of data with neural networks", Science 313 (2006). (The paper's original CURVES,
``digs3pts_1.mat``, is read from its file by :mod:`core.training.readers`.)

Each image (:func:`generate_curves`) is a smooth curve through three random points:

* the points ``P₀, P₁, P₂`` are uniform in the central 80 % of the image;
* the curve is the quadratic through them, parametrised by chord length: the Bézier
  ``B(t) = (1 − t)²p₀ + 2t(1 − t)p₁ + t²p₂`` with ``p₀ = P₀``, ``p₂ = P₂`` and
  ``B(τ) = P₁``, ``τ = |P₀P₁| / (|P₀P₁| + |P₁P₂|)`` (clipped to ``[0.05, 0.95]``), so
  ``p₁ = (P₁ − (1 − τ)²P₀ − τ²P₂) / (2τ(1 − τ))``; a curve that overshoots the central 80 % is
  shrunk back into it by its tight bounding box (:func:`_fit_into_box`);
* it is drawn with a soft pen of random width ``w ~ U[1.5, 3]`` px (at 28×28, scaled with the
  size) and a 1 px (scaled) linear edge: intensity ``clip((w/2 − dist)/edge + ½, 0, 1)``, where
  ``dist`` is the exact distance from the pixel centre to the curve, from the roots of a cubic
  (:func:`_bezier_distance`), so the strokes are anti-aliased.

:func:`load_curves` caches the images as ``.npz`` under
:func:`~core.training.datasets.default_cache_dir`, named by :data:`CURVES_VERSION`, size, seed,
split and count.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .datasets import Dataset, default_cache_dir, to_unit_tensor

__all__ = ["CURVES_VERSION", "generate_curves", "load_curves"]

#: Bump when the CURVES generator changes, so that stale cache files are never reused.
CURVES_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def _resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz to ``path`` via a temporary file in the same directory and
    ``os.replace``, so that a concurrent reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, allow_pickle=False, **arrays)  # numeric arrays only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Generator
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
    near = {"ax": ax, "ay": ay, "bx": bx, "by": by, "dx": dx, "dy": dy}
    dist: np.ndarray = np.sqrt(
        np.minimum(_squared_distance(t_hi, **near), _squared_distance(t_lo, **near))
    )
    return dist


def _squared_distance(
    t: np.ndarray,
    *,
    ax: np.ndarray,
    ay: np.ndarray,
    bx: np.ndarray,
    by: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
) -> np.ndarray:
    """``‖B(t) − x‖²`` with ``B(t) − x = d + 2t·a + t²·b`` (see :func:`_bezier_distance`), at
    ``t`` clamped to ``[0, 1]`` in place."""
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
    total: np.ndarray = qx + qy
    return total


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
    fitted: np.ndarray = (
        centre[:, None] + scale[:, None] * (ctrl - centre[:, None]) + shift[:, None]
    )
    return fitted


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
                images: np.ndarray = f["images"]
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
        x_train=to_unit_tensor(x_train),
        x_test=to_unit_tensor(x_test),
        image_shape=(size, size),
        loss="bce",
    )
