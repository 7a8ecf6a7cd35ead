"""The explorer's damped-step view (core/views/direction.py) and its figure: the sweep is the
engine's direction metrics at every damping, the table reads it at the slider's λ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.engine.direction import direction_metrics
from core.engine.fisher import LayerFisher
from core.engine.methods import METHODS, approximate
from core.views import direction, figures


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    fisher = LayerFisher(a, g)
    return fisher, {m: approximate(m, a, g) for m in METHODS}


def test_stops_are_half_decades_with_the_default_among_them():
    grid = direction.STEP_DAMPINGS
    assert grid[0] == 1e-6 and grid[-1] == 100.0 and len(grid) == 17
    assert direction.DEFAULT_STEP_DAMPING in grid and 0.0316 in grid


def test_curve_is_the_engine_metrics_at_every_damping(layer):
    fisher, approxes = layer
    curve = direction.direction_curve(fisher, approxes["deflation"])
    for k in (0, 6, 16):
        lam = curve.dampings[k]
        for mode in ("factored", "exact"):
            want = direction_metrics(fisher, approxes["deflation"], lam, mode=mode)
            got = (curve.error[mode][k], curve.cosine[mode][k], curve.norm_ratio[mode][k])
            assert got == pytest.approx((want.error, want.cosine, want.norm_ratio))
    assert curve.at(curve.dampings[6] * 1.1, "exact")[0] == curve.error["exact"][6]  # nearest


def test_skipped_exact_damping_is_nan_and_named(layer):
    fisher, approxes = layer
    curve = direction.direction_curve(fisher, approxes["kfac"], skip_exact=True)
    assert curve.skipped == ("exact",)
    assert np.isnan(curve.error["exact"]).all() and np.isfinite(curve.error["factored"]).all()
    fig = figures.direction_figure([curve], selected=1e-3)
    assert [t.name for t in fig.data] == ["KFAC (optimizer's damping)"]


def test_table_caption_and_arrays(layer):
    fisher, approxes = layer
    curves = {m: direction.direction_curve(fisher, approxes[m]) for m in ("kfac", "ekfac")}
    frob = {m: fisher.relative_error(approxes[m]) for m in curves}
    table = direction.direction_table(curves, frob, 0.01)
    assert list(table.columns) == list(direction.DIRECTION_COLUMNS)
    row = table.set_index("method").loc["kfac"]
    want = direction_metrics(fisher, approxes["kfac"], 0.01, mode="factored")
    assert row["step_error"] == pytest.approx(want.error)
    assert row["relative_error"] == frob["kfac"]
    # EKFAC's factored damping is exact damping
    ekfac = table.set_index("method").loc["ekfac"]
    assert ekfac["step_error"] == pytest.approx(ekfac["exact_step_error"])
    text = direction.caption(table, 0.01)
    assert "λ = 0.01" in text and f"{row['step_error']:.2f}" in text
    assert text.count(". ") == 1  # two sentences
    arrays = direction.direction_arrays(curves)
    assert arrays["step_dampings"].shape == (17,)
    assert math.isclose(arrays["kfac_step_error_factored"][0], curves["kfac"].error["factored"][0])


def test_figure_draws_both_modes_per_method_with_the_selected_damping(layer):
    fisher, approxes = layer
    curves = [direction.direction_curve(fisher, approxes[m]) for m in ("kfac", "kfac_corrected")]
    fig = figures.direction_figure(curves, selected=0.1)
    assert [t.name for t in fig.data] == [
        "KFAC (optimizer's damping)",
        "KFAC (exact damping)",
        "KFAC-corrected (optimizer's damping)",
        "KFAC-corrected (exact damping)",
    ]
    assert [t.line.dash for t in fig.data] == ["solid", "dash"] * 2
    assert fig.layout.xaxis.type == "log" and fig.layout.shapes[0].x0 == 0.1
    assert "kfac_corrected" not in fig.to_json()
    cosine = figures.direction_figure(curves, metric="cosine")
    assert cosine.layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="unknown metric"):
        figures.direction_figure(curves, metric="angle")
