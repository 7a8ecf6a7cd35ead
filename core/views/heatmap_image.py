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
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, unlabel_rgb

from .figures import DIVERGING, colour_range
from .labels import method_label

__all__ = ["LEVELS", "block_heatmap_png", "colour_lut", "colour_index"]

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
    t = np.linspace(1.0, 0.0, side)  # the bar's top row is the largest value
    pixels[TITLE_PX : TITLE_PX + side, bar : bar + BAR_PX] = colour_index(2 * t - 1, 1.0)[:, None]
    canvas = Image.fromarray(pixels, "P")
    canvas.putpalette(np.concatenate([colour_lut(), [[255, 255, 255], [0, 0, 0]]]).ravel().tolist())
    draw = ImageDraw.Draw(canvas)
    font = _font(FONT_PX)
    for k, (name, _matrix) in enumerate(panels):
        centre = k * (side + GAP_PX) + side / 2
        draw.text((centre, TITLE_PX / 2), name, fill=BLACK, font=font, anchor="mm")
    _ticks(draw, scale, left=bar, side=side)
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _ticks(draw: ImageDraw.ImageDraw, scale: float, *, left: int, side: int) -> None:
    """Five labelled ticks beside the colour bar: +scale at the top, −scale at the bottom."""
    font = _font(FONT_PX - 2)
    for fraction in (1.0, 0.5, 0.0, -0.5, -1.0):
        y = TITLE_PX + (1.0 - fraction) / 2.0 * (side - 1)
        draw.line([(left + BAR_PX, y), (left + BAR_PX + 4, y)], fill=BLACK)
        draw.text((left + BAR_PX + 7, y), _tick(fraction * scale), fill=BLACK, font=font,
                  anchor="lm")  # fmt: skip
