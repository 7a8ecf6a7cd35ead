"""The explorer's block heatmaps as one PNG picture, drawn on the server (issue 20).

A new visitor's browser spends about 1.5 s (2 shared cores, software rendering) loading and
starting plotly.js, 4.7 MB of script, before the first plotly chart appears; a picture needs
none of it. The picture shows what :func:`core.views.figures.block_heatmaps` shows — the exact
block F, the approximation F̃ and F̃ − F side by side, in ``vec(W)`` order, on ONE symmetric
diverging colour scale — and is exact in the same sense:

* every cell is one entry of the matrices it is given (nearest-neighbour upscaling: a cell is a
  square of ``cell`` pixels, never blended with its neighbours);
* a value v is coloured by the same colour scale as the plotly figure (``figures.DIVERGING``,
  interpolated linearly in RGB between its stops, as plotly does) at t = (v/s + 1)/2, clipped to
  [0, 1], with s the colour range of :func:`core.views.figures.colour_range` (the same one the
  interactive figure uses), quantised to ``LEVELS`` colours (a step of 2s/253 in value): the
  PNG is indexed, its palette those colours plus white and black, so no colour is approximated
  by the encoding (the page sends it as PNG: a JPEG would blur cells and shift colours);
* the colour bar on the right is drawn with the same map and labelled at −s, −s/2, 0, s/2, s.

What it cannot do is hover: the interactive figure gives each cell's value and its (input,
output) labels, and the page offers it.

:func:`factor_heatmaps_png` draws the Kronecker factors the same way, as
:func:`core.views.figures.factor_heatmaps` shows them: two panels a row, each factor on its own
symmetric range max |entry| (R ⊗ S = (cR) ⊗ (S/c): the factors' scales are not comparable),
each with its own labelled colour bar.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, unlabel_rgb

from .figures import DIVERGING, colour_range
from .labels import method_label

__all__ = ["LEVELS", "block_heatmap_png", "colour_lut", "colour_index", "factor_heatmaps_png"]

LEVELS = 254  # colours of the map; with white and black they fill an 8-bit palette
WHITE, BLACK = LEVELS, LEVELS + 1  # palette indices of the background and the text
PANEL_PX = 360  # a panel's side is at least this many pixels (cells are whole pixels)
TITLE_PX, GAP_PX, BAR_PX, TICK_PX = 30, 18, 18, 78
FONT_PX = 15


def colour_lut(name: str = DIVERGING, levels: int = LEVELS) -> np.ndarray:
    """(levels, 3) uint8: the plotly colour scale ``name`` sampled at t = k/(levels − 1),
    linear in RGB between its stops (plotly's own interpolation)."""
    stops = get_colorscale(name)
    where = np.array([float(t) for t, _ in stops])
    rgb = np.array([unlabel_rgb(c) for _, c in stops], dtype=float)
    t = np.linspace(0.0, 1.0, levels)
    channels = [np.interp(t, where, rgb[:, k]) for k in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def colour_index(values: np.ndarray, scale: float, levels: int = LEVELS) -> np.ndarray:
    """The LUT index of each value on the symmetric range [−scale, scale] (clipped)."""
    t = np.clip((np.asarray(values, dtype=float) / scale + 1.0) / 2.0, 0.0, 1.0)
    return np.rint(t * (levels - 1)).astype(np.intp)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _tick(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def block_heatmap_png(
    exact: np.ndarray,
    approx: np.ndarray,
    *,
    method: str,
    saturate: float = 1.0,
    range_from: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """PNG of F, F̃ and F̃ − F on one colour scale, with titles and a labelled colour bar.

    Arguments as :func:`core.views.figures.block_heatmaps` (``range_from``: the full matrices
    the colour range comes from when ``exact`` and ``approx`` are a coarser picture of them).
    """
    exact = np.asarray(exact, dtype=float)
    approx = np.asarray(approx, dtype=float)
    if exact.shape != approx.shape or exact.ndim != 2 or exact.shape[0] != exact.shape[1]:
        raise ValueError(f"expected two equal square matrices, got {exact.shape}, {approx.shape}")
    if not (np.isfinite(exact).all() and np.isfinite(approx).all()):
        raise ValueError(
            "the block or its approximation has NaN or infinite entries, so no colour can show "
            "them: choose another approximation, or a model whose training did not diverge"
        )
    scale = colour_range(exact, approx, saturate=saturate, range_from=range_from)
    n = exact.shape[0]
    cell = max(1, math.ceil(PANEL_PX / n))
    side = n * cell
    title = method_label(method)
    # an ASCII minus: the font bundled with Pillow has no U+2212
    panels = (("Exact F", exact), (title, approx), (f"{title} - F", approx - exact))
    width = 3 * side + 3 * GAP_PX + BAR_PX + TICK_PX
    # An indexed image (one byte a pixel, the palette the colour map): about a third of the
    # bytes of RGB once compressed, and every colour exact.
    pixels = np.full((TITLE_PX + side + FONT_PX, width), WHITE, dtype=np.uint8)
    for k, (_name, matrix) in enumerate(panels):
        left = k * (side + GAP_PX)
        index = colour_index(matrix, scale).astype(np.uint8)
        pixels[TITLE_PX : TITLE_PX + side, left : left + side] = index.repeat(cell, 0).repeat(
            cell, 1
        )
    bar = 3 * side + 3 * GAP_PX - GAP_PX // 2
    _colour_bar(pixels, left=bar, top=TITLE_PX, side=side)
    canvas, draw = _canvas(pixels)
    font = _font(FONT_PX)
    for k, (name, _matrix) in enumerate(panels):
        centre = k * (side + GAP_PX) + side / 2
        draw.text((centre, TITLE_PX / 2), name, fill=BLACK, font=font, anchor="mm")
    _ticks(draw, scale, left=bar, top=TITLE_PX, side=side)
    return _png(canvas)


def factor_heatmaps_png(factors: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """PNG of the Kronecker factors (``(name, matrix)`` pairs, as
    :func:`core.views.figures.factor_heatmaps` takes them), two panels a row, each on its own
    symmetric range max |entry| with its own colour bar; a matrix may be rectangular (EKFAC's
    scaling, dg × da). A cell is ``cell`` × ``cell`` pixels with ``cell`` the smallest whole
    number that makes the panel's longer side at least ``PANEL_PX``."""
    if not factors:
        raise ValueError("no factor matrices to draw: this approximation has no Kronecker factors")
    checked = []
    for name, matrix in factors:
        matrix = np.asarray(matrix, dtype=float)
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise ValueError(f"{name}: expected a non-empty 2-D matrix, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(
                f"{name} has NaN or infinite entries, so no colour can show them: choose "
                "another approximation, or a model whose training did not diverge"
            )
        checked.append((name, matrix, max(1, math.ceil(PANEL_PX / max(matrix.shape)))))
    width = max(m.shape[1] * cell for _, m, cell in checked)  # the widest and tallest panels
    height = max(m.shape[0] * cell for _, m, cell in checked)
    cols = 2 if len(checked) > 1 else 1
    slot = width + GAP_PX + BAR_PX + TICK_PX  # a panel, its bar and the bar's labels
    row_px = TITLE_PX + height + FONT_PX
    rows = math.ceil(len(checked) / cols)
    pixels = np.full((rows * row_px, cols * slot), WHITE, dtype=np.uint8)
    places = []
    for k, (_name, matrix, cell) in enumerate(checked):
        left, top = (k % cols) * slot, (k // cols) * row_px + TITLE_PX
        scale = float(max(np.abs(matrix).max(), 1e-300))  # as figures.factor_heatmaps
        index = colour_index(matrix, scale).astype(np.uint8).repeat(cell, 0).repeat(cell, 1)
        pixels[top : top + index.shape[0], left : left + index.shape[1]] = index
        bar = left + width + GAP_PX // 2
        _colour_bar(pixels, left=bar, top=top, side=index.shape[0])
        places.append((left + index.shape[1] / 2, top, bar, index.shape[0], scale))
    canvas, draw = _canvas(pixels)
    font = _font(FONT_PX)
    for (name, _matrix, _cell), (centre, top, bar, side, scale) in zip(
        checked, places, strict=True
    ):
        draw.text((centre, top - TITLE_PX / 2), name, fill=BLACK, font=font, anchor="mm")
        _ticks(draw, scale, left=bar, top=top, side=side)
    return _png(canvas)


def _colour_bar(pixels: np.ndarray, *, left: int, top: int, side: int) -> None:
    """The colour map as a vertical bar ``side`` pixels high: the top colour at the top."""
    t = np.linspace(1.0, 0.0, side)
    pixels[top : top + side, left : left + BAR_PX] = colour_index(2 * t - 1, 1.0)[:, None]


def _canvas(pixels: np.ndarray) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """The indexed image of ``pixels``, its palette the colour map, then white and black."""
    canvas = Image.fromarray(pixels, "P")
    canvas.putpalette(np.concatenate([colour_lut(), [[255, 255, 255], [0, 0, 0]]]).ravel().tolist())
    return canvas, ImageDraw.Draw(canvas)


def _png(canvas: Image.Image) -> bytes:
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _ticks(draw: ImageDraw.ImageDraw, scale: float, *, left: int, top: int, side: int) -> None:
    """Five labelled ticks beside a colour bar: +scale at the top, −scale at the bottom."""
    font = _font(FONT_PX - 2)
    for fraction in (1.0, 0.5, 0.0, -0.5, -1.0):
        y = top + (1.0 - fraction) / 2.0 * (side - 1)
        draw.line([(left + BAR_PX, y), (left + BAR_PX + 4, y)], fill=BLACK)
        draw.text((left + BAR_PX + 7, y), _tick(fraction * scale), fill=BLACK, font=font,
                  anchor="lm")  # fmt: skip
