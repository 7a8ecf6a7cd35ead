"""Stated answers for the views (issue 22): heatmap colour scales whose largest magnitude is a
negative entry, compared with the value computed here from the matrices. The verdict ties of
the paper reproductions are tests/paper/test_stated_verdicts.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.views.figures import block_heatmaps, factor_heatmaps

# -- (h) heatmaps: the colour range is symmetric around 0 and reaches the largest |entry| -------


def _block(seed: int, n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.0, 1.0, (n, n))
    return m + m.T


def test_block_heatmaps_scale_reaches_a_negative_extreme():
    exact = _block(0)
    approx = _block(1)
    exact[1, 2] = exact[2, 1] = -9.0  # the largest magnitude, negative
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac")
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-9.0, 9.0, 0.0)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, float), exact, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[1].z, float), approx, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[2].z, float), approx - exact, rtol=1e-6)


def test_block_heatmaps_scale_when_the_approximation_holds_the_extreme():
    exact = _block(2)
    approx = _block(3)
    approx[0, 0] = -4.5
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac")
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-4.5, 4.5)


def test_block_heatmaps_saturated_scale_is_a_quantile_of_magnitudes():
    exact = -_block(4)  # every entry negative
    approx = _block(5)
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac", saturate=0.5)
    want = float(np.quantile(np.abs(np.concatenate([exact.ravel(), approx.ravel()])), 0.5))
    assert fig.layout.coloraxis.cmax == pytest.approx(want, rel=1e-12)
    assert fig.layout.coloraxis.cmin == pytest.approx(-want, rel=1e-12)


def test_factor_heatmaps_each_on_its_own_symmetric_scale():
    neg = np.array([[1.0, -7.0], [-7.0, 2.0]])  # extreme negative
    pos = np.array([[0.5, 0.1], [0.1, 3.0]])
    fig = factor_heatmaps([("R", neg), ("S", pos)])
    assert (fig.data[0].zmin, fig.data[0].zmax, fig.data[0].zmid) == (-7.0, 7.0, 0.0)
    assert (fig.data[1].zmin, fig.data[1].zmax) == (-3.0, 3.0)
