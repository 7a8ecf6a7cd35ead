"""The explorer's eigenvalue spectra as one PNG picture, drawn on the server (issue 20).

The same curves as the interactive :func:`core.views.figures.spectra_figure` — both come from
:func:`core.views.figures.spectrum_curves`, so the same eigenvalues are left out as numerically
zero and the same negative ones are counted in the legend — on the same log–log axes, without
plotly.js (4.7 MB of script a visitor's browser loads and starts before its first plotly chart).

Geometry (:class:`LogLog`): the index k runs from 1 to the first power of ten at or above the
longest curve, the eigenvalues from the power of ten at or below the smallest drawn value to the
one at or above the largest; both axes are logarithmic, a power of ten maps to a pixel
column or row exactly, and every power of ten gets a grid line and a label ("1e-3"). A curve is a
polyline through its points with round joints and ends (F's 3 px wide and drawn first, each
approximation 2 px over it); a curve of one point is a dot. What the picture cannot do is
hover: the interactive chart gives every value.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .figures import SpectrumCurve, spectrum_curves

__all__ = ["LogLog", "spectra_png"]

PLOT_W, PLOT_H = 560, 330  # the plotting area, pixels
LEFT, TOP, BOTTOM = 64, 28, 46  # margins: tick labels left, axis title top, labels below
LEGEND_W = 330
FONT_PX = 14
GRID, AXIS, TEXT = (228, 228, 228), (120, 120, 120), (30, 30, 30)


@dataclass(frozen=True)
class LogLog:
    """Log–log axes over whole decades: k ∈ [1, 10^kx], λ ∈ [10^lo, 10^hi]."""

    kx: int  # decades of the index axis (≥ 1)
    lo: int  # decade of the bottom of the value axis
    hi: int  # decade of its top (> lo)

    @classmethod
    def around(cls, curves: list[SpectrumCurve]) -> LogLog:
        """The smallest whole-decade frame that holds every point of ``curves``."""
        drawn = [c for c in curves if c.values.size]
        if not drawn:
            return cls(1, 0, 1)
        k_max = max(int(c.index.max()) for c in drawn)
        v_min = min(float(c.values.min()) for c in drawn)
        v_max = max(float(c.values.max()) for c in drawn)
        lo, hi = math.floor(math.log10(v_min)), math.ceil(math.log10(v_max))
        return cls(max(1, math.ceil(math.log10(k_max))), lo, hi if hi > lo else lo + 1)

    def pixel(self, k: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel column and row of points (k, λ): k = 1 at ``LEFT``, 10^kx at ``LEFT + PLOT_W``;
        λ = 10^hi at ``TOP``, 10^lo at ``TOP + PLOT_H``."""
        x = LEFT + np.log10(np.asarray(k, dtype=float)) / self.kx * PLOT_W
        depth = (self.hi - np.log10(np.asarray(value, dtype=float))) / (self.hi - self.lo)
        return x, TOP + depth * PLOT_H


def spectra_png(
    spectra: Mapping[str, np.ndarray],
    *,
    notes: Mapping[str, str] | None = None,
    zero_ratio: float = 1e-12,
) -> bytes:
    """PNG of :func:`core.views.figures.spectra_figure`'s curves and legend (module docstring);
    ``spectra`` maps a method id ("exact" for F) to its eigenvalues, largest first."""
    for name, values in spectra.items():
        if not np.isfinite(np.asarray(values, dtype=float)).all():
            raise ValueError(
                f"the spectrum of {name} has NaN or infinite eigenvalues, so it cannot be "
                "drawn: choose another approximation, or a model whose training did not diverge"
            )
    curves, missing = spectrum_curves(spectra, notes=notes, zero_ratio=zero_ratio)
    if not curves and not missing:
        raise ValueError("no spectra to draw: choose at least one approximation")
    frame = LogLog.around(curves)
    canvas = Image.new("RGB", (LEFT + PLOT_W + 24 + LEGEND_W, TOP + PLOT_H + BOTTOM), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_PX)
    _axes(draw, frame, font)
    for curve in sorted(curves, key=lambda c: c.name != "exact"):  # F first, under the others
        x, y = frame.pixel(curve.index, curve.values)
        width = 3 if curve.name == "exact" else 2
        points = list(zip(x.tolist(), y.tolist(), strict=True))
        if len(points) > 1:
            draw.line(points, fill=curve.color, width=width, joint="curve")
        for px, py in points[:1] + points[-1:]:  # round ends (a one-point curve: a dot)
            draw.ellipse([px - width, py - width, px + width, py + width], fill=curve.color)
    entries = [(c.label, c.color, 3 if c.name == "exact" else 2) for c in curves]
    _legend(draw, entries + [(label, color, 1) for _, label, color in missing], font)
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _axes(draw: ImageDraw.ImageDraw, frame: LogLog, font) -> None:
    """Grid lines and labels at every power of ten, the frame, and the axis titles."""
    bottom, right = TOP + PLOT_H, LEFT + PLOT_W
    decades = frame.hi - frame.lo
    label_every = 1 if decades <= 10 else 2
    for d in range(frame.lo, frame.hi + 1):
        _, y = frame.pixel(np.array([1.0]), np.array([10.0**d]))
        row = float(y[0])
        draw.line([(LEFT, row), (right, row)], fill=GRID)
        if (d - frame.lo) % label_every == 0:
            draw.text((LEFT - 6, row), f"1e{d}", fill=TEXT, font=font, anchor="rm")
    for d in range(frame.kx + 1):
        x, _ = frame.pixel(np.array([10.0**d]), np.array([1.0]))
        column = float(x[0])
        draw.line([(column, TOP), (column, bottom)], fill=GRID)
        draw.text((column, bottom + 6), f"{10**d:g}", fill=TEXT, font=font, anchor="mt")
    draw.rectangle([LEFT, TOP, right, bottom], outline=AXIS)
    draw.text((LEFT, TOP / 2), "eigenvalue (log scale)", fill=TEXT, font=font, anchor="lm")
    title = "index k, eigenvalues sorted descending (log scale)"
    draw.text((LEFT + PLOT_W / 2, bottom + 28), title, fill=TEXT, font=font, anchor="mt")


def _legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, str, int]], font) -> None:
    """One line per entry: a sample of the curve (width 1: a method without a curve), then its
    label, right of the plotting area."""
    left, step = LEFT + PLOT_W + 24, FONT_PX + 8
    for i, (label, color, width) in enumerate(entries):
        y = TOP + 6 + i * step
        draw.line([(left, y), (left + 26, y)], fill=color, width=max(width, 1))
        draw.text((left + 34, y), label, fill=TEXT, font=font, anchor="lm")
