"""The server-drawn block heatmaps (core.views.heatmap_image): every cell has the colour the
interactive plotly figure gives its value, on the same shared range."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from plotly.colors import sample_colorscale

from core.views import figures, heatmap_image
from core.views.heatmap_image import (
    GAP_PX,
    PANEL_PX,
    TITLE_PX,
    block_heatmap_png,
    colour_index,
    colour_lut,
)


def _rgb(text: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r"[\d.]+", text)])


def test_lut_is_plotlys_colour_scale():
    """Oracle: plotly's own sampling of the diverging scale, at every level."""
    lut = colour_lut(figures.DIVERGING)
    t = np.linspace(0.0, 1.0, heatmap_image.LEVELS)
    expected = np.stack([_rgb(c) for c in sample_colorscale(figures.DIVERGING, list(t))])
    assert lut.shape == (heatmap_image.LEVELS, 3)
    assert np.abs(lut.astype(float) - expected).max() <= 0.5 + 1e-9
    assert not np.array_equal(lut[0], lut[-1])  # a scale, not one colour


def test_colour_index_is_symmetric_and_clipped():
    top = heatmap_image.LEVELS - 1  # 253
    idx = colour_index(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), scale=1.0)
    assert idx.tolist() == [0, 0, 126, top, top]  # 0 → 126.5, rounded half to even
    assert colour_index(np.array([0.5]), 1.0)[0] == 190  # (0.5 + 1)/2 · 253 = 189.75


def _decode(png: bytes) -> np.ndarray:
    """RGB pixels of an indexed PNG whose palette is the colour map, then white and black."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "P"
    palette = np.array(image.getpalette()[: 3 * (heatmap_image.LEVELS + 2)]).reshape(-1, 3)
    assert np.array_equal(palette[: heatmap_image.LEVELS], colour_lut())
    assert palette[heatmap_image.WHITE].tolist() == [255, 255, 255]
    assert palette[heatmap_image.BLACK].tolist() == [0, 0, 0]
    return np.asarray(image.convert("RGB"))


def _cell(pixels: np.ndarray, panel: int, row: int, col: int, n: int) -> np.ndarray:
    cell = -(-PANEL_PX // n)
    left = panel * (n * cell + GAP_PX)
    return pixels[TITLE_PX + row * cell + cell // 2, left + col * cell + cell // 2]


def test_every_cell_has_its_values_colour():
    """F, F̃ and F̃ − F: each cell's centre pixel is the LUT colour of its value on the range
    of the full matrices (max |entry| of F and F̃); the difference uses the same range."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 7))
    exact = x @ x.T
    approx = exact + 0.3 * rng.standard_normal((7, 7))
    approx = (approx + approx.T) / 2
    pixels = _decode(block_heatmap_png(exact, approx, method="kfac"))
    scale = max(np.abs(exact).max(), np.abs(approx).max())
    lut = colour_lut()
    for panel, matrix in enumerate((exact, approx, approx - exact)):
        for i in range(7):
            for j in range(7):
                want = lut[colour_index(matrix[i, j], scale)]
                assert np.array_equal(_cell(pixels, panel, i, j, 7), want), (panel, i, j)


def test_range_from_and_saturation_set_the_scale():
    """A coarse picture keeps the full view's colours (``range_from``); saturation clips at
    the quantile, exactly as figures.block_heatmaps does."""
    rng = np.random.default_rng(1)
    coarse = rng.standard_normal((4, 4))
    full = (10 * np.ones((8, 8)), np.zeros((8, 8)))
    pixels = _decode(block_heatmap_png(coarse, coarse, method="kpsvd", range_from=full))
    lut = colour_lut()
    assert np.array_equal(_cell(pixels, 0, 1, 2, 4), lut[colour_index(coarse[1, 2], 10.0)])
    spike = np.eye(5)
    spike[0, 0] = 1e6
    pixels = _decode(block_heatmap_png(spike, spike, method="kfac", saturate=0.9))
    scale = figures.colour_range(spike, spike, saturate=0.9)
    assert scale < 1.5  # the spike does not set the range
    assert np.array_equal(_cell(pixels, 0, 0, 0, 5), lut[-1])  # clipped at the top colour
    assert np.array_equal(_cell(pixels, 0, 1, 1, 5), lut[colour_index(1.0, scale)])


def test_bad_input_is_named():
    good = np.eye(3)
    with pytest.raises(ValueError, match="equal square"):
        block_heatmap_png(good, np.eye(4), method="kfac")
    with pytest.raises(ValueError, match="equal square"):
        block_heatmap_png(np.ones((2, 3)), np.ones((2, 3)), method="kfac")
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        block_heatmap_png(good, bad, method="kfac")
    with pytest.raises(ValueError, match="saturate"):
        block_heatmap_png(good, good, method="kfac", saturate=0.0)


def test_colour_bar_runs_from_the_top_colour_to_the_bottom_one():
    n = 9
    pixels = _decode(block_heatmap_png(np.eye(n), np.eye(n), method="kfac"))
    side = n * -(-PANEL_PX // n)
    left = 3 * side + 3 * GAP_PX - GAP_PX // 2 + heatmap_image.BAR_PX // 2
    lut = colour_lut()
    assert np.array_equal(pixels[TITLE_PX, left], lut[-1])  # +scale at the top
    assert np.array_equal(pixels[TITLE_PX + side - 1, left], lut[0])  # −scale at the bottom
    middle = pixels[TITLE_PX + side // 2, left]
    assert np.abs(middle.astype(int) - lut[len(lut) // 2].astype(int)).max() <= 12


def _factor_cells(pixels: np.ndarray, shapes: list[tuple[int, int]]):
    """Yield (k, i, j, centre pixel) of every cell of every factor panel, from the documented
    layout: two panels a row, each in a slot as wide as the widest panel plus its bar."""
    cells = [-(-PANEL_PX // max(shape)) for shape in shapes]
    width = max(shape[1] * c for shape, c in zip(shapes, cells, strict=True))
    height = max(shape[0] * c for shape, c in zip(shapes, cells, strict=True))
    cols = 2 if len(shapes) > 1 else 1
    slot = width + GAP_PX + heatmap_image.BAR_PX + heatmap_image.TICK_PX
    row_px = TITLE_PX + height + heatmap_image.FONT_PX
    for k, ((rows, columns), cell) in enumerate(zip(shapes, cells, strict=True)):
        left, top = (k % cols) * slot, (k // cols) * row_px + TITLE_PX
        for i in range(rows):
            for j in range(columns):
                yield k, i, j, pixels[top + i * cell + cell // 2, left + j * cell + cell // 2]


def test_every_factor_cell_has_its_colour_on_its_own_scale():
    """Three factors, one rectangular (EKFAC's dg × da scaling) and one 1000× larger: each
    cell's centre is the LUT colour of its value on its own factor's range max |entry|."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 5))
    factors = [
        ("A", x @ x.T),
        ("G", 1000 * np.diag([3.0, -1.0, 2.0])),
        ("s", rng.standard_normal((3, 6))),
    ]
    pixels = _decode(heatmap_image.factor_heatmaps_png(factors))
    lut = colour_lut()
    shapes = [m.shape for _, m in factors]
    seen = 0
    for k, i, j, got in _factor_cells(pixels, shapes):
        matrix = factors[k][1]
        want = lut[colour_index(matrix[i, j], np.abs(matrix).max())]
        assert np.array_equal(got, want), (k, i, j)
        seen += 1
    assert seen == 25 + 9 + 18


def test_a_single_factor_fills_one_slot_and_bad_factors_are_named():
    pixels = _decode(heatmap_image.factor_heatmaps_png([("A", np.eye(4))]))
    cell = -(-PANEL_PX // 4)
    assert pixels.shape[1] == 4 * cell + GAP_PX + heatmap_image.BAR_PX + heatmap_image.TICK_PX
    with pytest.raises(ValueError, match="no Kronecker factors"):
        heatmap_image.factor_heatmaps_png([])
    with pytest.raises(ValueError, match="2-D"):
        heatmap_image.factor_heatmaps_png([("v", np.ones(3))])
    bad = np.eye(3)
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="S has NaN or infinite"):
        heatmap_image.factor_heatmaps_png([("R", np.eye(3)), ("S", bad)])
