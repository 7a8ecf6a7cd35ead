"""The server-drawn spectra (core.views.spectra_image): the interactive figure's curves, each
point where the log–log axes put it, in its method's colour."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageColor

from core.views import figures
from core.views.spectra_image import LEFT, PLOT_H, PLOT_W, TOP, LogLog, spectra_png


def _pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_the_frame_spans_whole_decades_and_maps_them_to_its_corners():
    curves, _ = figures.spectrum_curves({"exact": np.array([3e2, 2.0, 5e-3])})
    frame = LogLog.around(curves)
    assert (frame.kx, frame.lo, frame.hi) == (1, -3, 3)  # k ≤ 3 → 10; 5e-3 → 1e-3; 300 → 1e3
    x, y = frame.pixel(np.array([1.0, 10.0]), np.array([1e3, 1e-3]))
    assert np.allclose(x, [LEFT, LEFT + PLOT_W]) and np.allclose(y, [TOP, TOP + PLOT_H])
    x, y = frame.pixel(np.array([10**0.5]), np.array([1.0]))  # halfway in log on both axes
    assert np.allclose(x, LEFT + PLOT_W / 2) and np.allclose(y, TOP + PLOT_H / 2)


def test_every_point_is_drawn_in_its_curves_colour():
    """Two curves far apart (F over four decades, KFAC two decades below): the pixel at each
    kept eigenvalue has the curve's colour; a numerically zero eigenvalue is not a point."""
    spectra = {"exact": np.array([1e4, 1e3, 1e2, 1e1]), "kfac": np.array([1e-2, 1e-3, 0.0])}
    pixels = _pixels(spectra_png(spectra))
    curves, _ = figures.spectrum_curves(spectra)
    frame = LogLog.around(curves)
    for curve in curves:
        want = ImageColor.getrgb(curve.color)
        x, y = frame.pixel(curve.index, curve.values)
        for col, row in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
            assert tuple(pixels[row, col]) == want, (curve.name, col, row)
    assert [c.values.size for c in curves] == [4, 2]  # the zero is left out


def test_the_picture_and_the_chart_draw_the_same_points():
    """Both come from figures.spectrum_curves: the plotly traces hold exactly its points."""
    spectra = {"exact": np.array([5.0, 1.0, 1e-20, -2.0]), "kpsvd": np.array([4.0, 0.5])}
    curves, missing = figures.spectrum_curves(spectra, notes={"deflation": "off"})
    figure = figures.spectra_figure(spectra, notes={"deflation": "off"})
    assert [t.name for t in figure.data] == [c.label for c in curves] + [m[1] for m in missing]
    assert curves[0].label == "Exact F (1 < 0)"
    for trace, curve in zip(figure.data, curves, strict=False):
        assert np.array_equal(trace.x, curve.index) and np.array_equal(trace.y, curve.values)


def test_bad_spectra_are_named():
    with pytest.raises(ValueError, match="spectrum of kfac has NaN"):
        spectra_png({"exact": np.ones(3), "kfac": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match="no spectra to draw"):
        spectra_png({})
    # only a note (a method without a spectrum): a legend entry, axes of one decade
    assert _pixels(spectra_png({}, notes={"deflation": "slow metrics off"})).shape[0] > PLOT_H
