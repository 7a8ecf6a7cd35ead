"""Tests of core.views.figures: plain functions, arrays in, plotly figures out."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from core.views import figures


def sym(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, n))
    return x + x.T


def labels(n: int) -> list[str]:
    return [f"in {i // 2}, out {i % 2}" for i in range(n)]


def test_block_heatmaps_share_one_symmetric_scale():
    exact, approx = sym(6), 3 * sym(6, 1)
    fig = figures.block_heatmaps(exact, approx, labels(6), method="KFAC", note="full")
    assert isinstance(fig, go.Figure)
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 3
    assert all(h.coloraxis == "coloraxis" for h in heatmaps)
    axis = fig.layout.coloraxis
    scale = max(np.abs(exact).max(), np.abs(approx).max())
    assert (
        axis.cmid == 0 and axis.cmin == pytest.approx(-scale) and axis.cmax == pytest.approx(scale)
    )
    np.testing.assert_allclose(np.asarray(heatmaps[2].z), approx - exact, rtol=1e-6, atol=1e-6)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["Exact F", "KFAC", "KFAC − F"]
    assert list(heatmaps[0].x) == labels(6) and "row: %{y}" in heatmaps[0].hovertemplate
    assert "full" in fig.layout.title.text
    assert fig.layout.yaxis.autorange == "reversed"


def test_block_heatmaps_colour_range_comes_from_the_full_matrices():
    """Issue 20: the heatmaps drawn may be a coarser picture; the colour range is still the
    full-precision, full-resolution matrices' max |entry| (and its quantile when saturated)."""
    exact, approx = sym(6), 3 * sym(6, 1)
    coarse_e, coarse_a = exact[::2, ::2] / 4, approx[::2, ::2] / 4
    for saturate in (1.0, 0.9):
        fig = figures.block_heatmaps(
            coarse_e, coarse_a, labels(3), method="KFAC", saturate=saturate,
            range_from=(exact, approx),
        )  # fmt: skip
        want = figures.block_heatmaps(exact, approx, labels(6), method="KFAC", saturate=saturate)
        axis = fig.layout.coloraxis
        assert (axis.cmin, axis.cmax, axis.cmid) == (
            want.layout.coloraxis.cmin, want.layout.coloraxis.cmax, 0.0
        )  # fmt: skip
    assert fig.layout.coloraxis.cmax < max(np.abs(exact).max(), np.abs(approx).max())
    full = figures.block_heatmaps(coarse_e, coarse_a, labels(3), method="KFAC",
                                  range_from=(exact, approx))  # fmt: skip
    assert full.layout.coloraxis.cmax == max(np.abs(exact).max(), np.abs(approx).max())
    assert np.asarray(full.data[0].z).shape == (3, 3)


def test_shipped_block_heatmap_of_a_layer_is_coarse_with_the_full_views_range():
    """The explorer's block figure as the page builds it: at most DISPLAY_MAX_SIDE cells per
    axis, the values those of explorer.coarsen (float32), the colour range that of the full
    view's float64 matrices."""
    import torch

    from core.engine.fisher import LayerFisher
    from core.engine.methods import approximate
    from core.views import explorer

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 17, generator=gen, dtype=torch.float64)
    g = torch.randn(64, 8, generator=gen, dtype=torch.float64) * 0.1
    view = explorer.block_view(LayerFisher(a, g), approximate("kfac", a, g))
    assert view.pooling.side == 136 and not view.pooling.downsampled
    shown = explorer.coarsen(view)
    fig = figures.block_heatmaps(
        shown.exact, shown.approx, shown.pooling.labels(), method="kfac",
        range_from=(view.exact, view.approx),
    )  # fmt: skip
    z = [np.asarray(t.z) for t in fig.data]
    assert all(m.shape[0] <= explorer.DISPLAY_MAX_SIDE for m in z)
    np.testing.assert_array_equal(z[0], shown.exact.astype(np.float32))
    np.testing.assert_array_equal(z[2], (shown.approx - shown.exact).astype(np.float32))
    assert fig.layout.coloraxis.cmax == max(np.abs(view.exact).max(), np.abs(view.approx).max())
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax


def test_block_heatmaps_saturation_keeps_the_scale_symmetric():
    exact = sym(10)
    exact[0, 0] = 1e3  # one outlier
    fig = figures.block_heatmaps(exact, exact, labels(10), method="x", saturate=0.95)
    axis = fig.layout.coloraxis
    assert axis.cmax < 1e3 and axis.cmin == -axis.cmax and axis.cmid == 0
    assert "quantile" in fig.layout.title.text
    with pytest.raises(ValueError, match="saturate"):
        figures.block_heatmaps(exact, exact, labels(10), method="x", saturate=0)


def test_block_heatmaps_reject_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        figures.block_heatmaps(sym(3), sym(4), labels(3), method="x")
    with pytest.raises(ValueError, match="labels"):
        figures.block_heatmaps(sym(3), sym(3), labels(2), method="x")


def test_factor_heatmaps_one_panel_per_factor():
    factors = [("A", sym(4)), ("G", sym(3)), ("R", sym(4, 2)), ("S", sym(3, 3))]
    fig = figures.factor_heatmaps(factors, title="factors", note="pooled")
    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 4
    for h, (_, mat) in zip(heatmaps, factors, strict=True):
        assert h.zmid == 0 and h.zmin == pytest.approx(-np.abs(mat).max()) and h.zmax == -h.zmin
    assert [a.text for a in fig.layout.annotations] == ["A", "G", "R", "S"]
    empty = figures.factor_heatmaps([])
    assert not empty.data and "no Kronecker factors" in empty.layout.title.text


def test_spectra_figure_log_axis_drops_zeros_counts_negatives():
    spectra = {
        "exact": np.array([4.0, 2.0, 1.0, 1e-20]),
        "deflation": np.array([4.2, 1.9, 0.5, -0.3]),
    }
    fig = figures.spectra_figure(spectra, labels={"exact": "Exact F", "deflation": "Deflation"})
    assert fig.layout.yaxis.type == "log"
    exact, deflation = fig.data
    assert list(exact.y) == [4.0, 2.0, 1.0]  # 1e-20 is numerically zero
    assert list(exact.x) == [1, 2, 3]
    assert list(deflation.y) == [4.2, 1.9, 0.5]
    assert deflation.name == "Deflation (1 < 0)" and exact.name == "Exact F"


def test_rank_curve_figure_marks_the_selected_rank_and_references():
    fig = figures.rank_curve_figure(
        np.arange(1, 5), np.array([0.5, 0.3, 0.2, 0.1]), selected=2, references={"kfac": 0.6}
    )
    curve, marker = fig.data
    assert list(curve.y) == [0.5, 0.3, 0.2, 0.1]
    assert list(marker.x) == [2] and list(marker.y) == [0.3]
    assert any(shape.y0 == 0.6 for shape in fig.layout.shapes)
    assert len(figures.rank_curve_figure([1], [0.2], selected=9).data) == 1


def test_metrics_figure():
    fig = figures.metrics_figure(["kfac", "kpsvd"], [0.3, 0.2], labels={"kfac": "KFAC"})
    assert list(fig.data[0].x) == ["KFAC", "KPSVD"] and list(fig.data[0].y) == [0.3, 0.2]
    custom = figures.metrics_figure(["kfac"], [0.3], labels={"kfac": "mine"})
    assert list(custom.data[0].x) == ["mine"]  # the caller's label wins


def test_figures_serialise():
    """What st.plotly_chart sends: the figure JSON."""
    fig = figures.block_heatmaps(sym(4), sym(4, 1), labels(4), method="KPSVD")
    assert '"coloraxis"' in fig.to_json()


def test_every_figure_names_methods_by_label_not_id():
    """A person reads "KFAC-corrected", never the id "kfac_corrected" (issue 9)."""
    ids = {"exact": np.array([3.0, 1.0]), "kfac_corrected": np.array([2.9, 1.1])}
    figs = [
        figures.spectra_figure(ids),
        figures.metrics_figure(["kfac_corrected", "ekfac"], [0.2, 0.3]),
        figures.rank_curve_figure([1, 2], [0.4, 0.2], references={"kfac_corrected": 0.3}),
        figures.block_heatmaps(sym(4), sym(4, 1), labels(4), method="kfac_corrected"),
    ]
    for fig in figs:
        text = fig.to_json()
        assert "kfac_corrected" not in text and "KFAC-corrected" in text
    assert [t.name for t in figs[0].data] == ["Exact F", "KFAC-corrected"]


def test_spectra_figure_says_why_a_method_has_no_curve():
    from core.views.explorer import Spectra

    spec = Spectra({"exact": np.array([3.0, 1.0])}, {"deflation": "Deflation: no curve: slow"})
    fig = figures.spectra_figure(spec.curves, notes=spec.notes)
    names = [t.name for t in fig.data]
    assert names == ["Exact F", "Deflation: not computed (slow metrics off)"]
