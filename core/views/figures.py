"""Plotly figures of the Fisher explorer: plain functions, arrays in, ``go.Figure`` out.

Conventions shared by every figure here:

* Matrices of a layer's Fisher block are indexed in ``vec(W)`` order, ``(i, p) ↦ i·dg + p``
  with ``i`` an input (column of W, ``ā_i``) and ``p`` an output (row of W, ``g_p``); the axis
  labels passed in name both, so hovering a cell gives (input, output) for its row and column.
* Signed matrices are drawn on a symmetric diverging scale centred on zero (blue < 0 < red);
  the exact block, an approximation and their difference share ONE scale so that colours
  compare across the three panels.
* Spectra are drawn on a log axis; numerically zero eigenvalues are left out, and negative
  ones (an indefinite second Kronecker term can produce them), which cannot appear there, are
  counted in the legend instead.
* Methods are named by their labels (``kfac_corrected`` → "KFAC-corrected",
  :func:`core.views.labels.method_label`) in legends, axes and annotations; a caller's ``labels``
  mapping overrides them. Colours stay keyed by the method id.

Training curves (loss against step or wall time, errors over training) live in
:mod:`core.views.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..engine.direction import DIRECTION_MODES
from ..engine.methods import SHOWN
from .direction import DirectionCurve, labelled
from .labels import method_label

__all__ = [
    "METHOD_COLORS",
    "block_heatmaps",
    "colour_range",
    "factor_heatmaps",
    "spectra_figure",
    "spectrum_curves",
    "rank_curve_figure",
    "metrics_figure",
    "direction_figure",
]

DIVERGING = "RdBu_r"
# One colour per method in the engine registry's order (core/engine/methods.py): the exact block
# black.
METHOD_COLORS = {
    name: color for name, color in zip(SHOWN, ["#222222", *qualitative.Plotly], strict=False)
}
_TEMPLATE = "plotly_white"


def _color(method: str) -> str:
    return METHOD_COLORS.get(method, "#7f7f7f")


def _labeller(labels: Mapping[str, str] | None):
    """Method id → display label: the caller's ``labels`` first, then the method labels."""
    labels = dict(labels or {})
    return lambda name: labels.get(name, method_label(name))


def _sparse_ticks(labels: Sequence[str], every: int, max_ticks: int = 12) -> dict:
    """Category ticks at the first cell of every ``every``-th group, at most ``max_ticks``."""
    n = len(labels)
    if n == 0:
        return {}
    step = max(every, int(np.ceil(n / max_ticks / max(every, 1))) * max(every, 1))
    vals = [labels[k] for k in range(0, n, step)]
    return {"tickmode": "array", "tickvals": vals, "ticktext": [v.split(",")[0] for v in vals]}


def colour_range(
    exact: np.ndarray,
    approx: np.ndarray,
    *,
    saturate: float = 1.0,
    range_from: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """The half-width s of the block heatmaps' shared colour scale [−s, s]: the largest |entry|
    of the exact block and the approximation (of ``range_from``, the full matrices, when the
    ones drawn are a coarser picture of them), or, with ``saturate`` < 1, that quantile of
    the |entries|."""
    if not 0 < saturate <= 1:
        raise ValueError(f"saturate must lie in (0, 1], got {saturate}")
    full = (exact, approx) if range_from is None else range_from
    magnitudes = np.abs(np.concatenate([np.asarray(m, dtype=float).ravel() for m in full]))
    scale = float(np.quantile(magnitudes, saturate)) if saturate < 1 else float(magnitudes.max())
    return max(scale, 1e-300)


def block_heatmaps(
    exact: np.ndarray,
    approx: np.ndarray,
    labels: Sequence[str],
    *,
    method: str,
    note: str = "",
    group: int = 1,
    saturate: float = 1.0,
    range_from: tuple[np.ndarray, np.ndarray] | None = None,
) -> go.Figure:
    """Exact block F, approximation F̃ and difference F̃ − F side by side, one colour scale.

    ``labels``: one label per row/column in vec(W) order ("in i, out p"); ``group``: cells per
    input (the number of outputs per input group), for the axis ticks; ``note``: a line under
    the title, e.g. that the view is downsampled. ``saturate`` < 1 sets the colour range to that
    quantile of the entries' magnitudes (a few large entries otherwise wash out the rest); the
    scale stays linear, symmetric and shared. ``range_from``: the (exact, approximation)
    matrices the colour range is computed from, when the ones drawn are a coarser picture of
    them (core.views.explorer.coarsen): colours then mean the same as on the full view.
    """
    exact = np.asarray(exact, dtype=float)
    approx = np.asarray(approx, dtype=float)
    if exact.shape != approx.shape or exact.shape[0] != exact.shape[1]:
        raise ValueError(f"expected two equal square matrices, got {exact.shape}, {approx.shape}")
    if len(labels) != exact.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {exact.shape[0]}-row matrix")
    diff = approx - exact
    scale = colour_range(exact, approx, saturate=saturate, range_from=range_from)
    if saturate < 1:
        clip = f"colours saturate at the {saturate:.1%} quantile of |entries| (hover: true values)"
        note = f"{note}; {clip}" if note else clip
    method = method_label(method)  # an id ("kfac_corrected") is shown by its label
    titles = ("Exact F", method, f"{method} − F")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    labels = list(labels)
    for col, z in enumerate((exact, approx, diff), start=1):
        fig.add_trace(
            go.Heatmap(
                z=z.astype(np.float32),
                x=labels,
                y=labels,
                coloraxis="coloraxis",
                hovertemplate="row: %{y}<br>column: %{x}<br>value: %{z:.4g}<extra>"
                + titles[col - 1]
                + "</extra>",
            ),
            row=1,
            col=col,
        )
    ticks = _sparse_ticks(labels, group)
    fig.update_xaxes(showgrid=False, tickangle=-45, **ticks)
    fig.update_yaxes(showgrid=False, autorange="reversed", scaleanchor=None, **ticks)
    for col in (2, 3):
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    title = "Fisher block, approximation and difference (shared colour scale)"
    fig.update_layout(
        title={"text": title + (f"<br><sup>{note}</sup>" if note else "")},
        coloraxis={"colorscale": DIVERGING, "cmin": -scale, "cmax": scale, "cmid": 0.0},
        template=_TEMPLATE,
        height=460,
        margin={"t": 90, "l": 60, "r": 20, "b": 60},
    )
    return fig


def factor_heatmaps(
    factors: Sequence[tuple[str, np.ndarray]], *, title: str = "Kronecker factors", note: str = ""
) -> go.Figure:
    """Factor matrices two per row (input factor, output factor), each on its own symmetric
    scale centred on zero (their scales are not comparable: R ⊗ S = (cR) ⊗ (S/c))."""
    if not factors:
        fig = go.Figure()
        fig.update_layout(title="no Kronecker factors for this method", template=_TEMPLATE)
        return fig
    cols = 2 if len(factors) > 1 else 1
    rows = int(np.ceil(len(factors) / cols))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[name for name, _ in factors],
        horizontal_spacing=0.12,
        vertical_spacing=0.12 if rows > 1 else 0.0,
    )
    for k, (name, mat) in enumerate(factors):
        mat = np.asarray(mat, dtype=float)
        scale = float(max(np.abs(mat).max(initial=0), 1e-300))
        row, col = k // cols + 1, k % cols + 1
        fig.add_trace(
            go.Heatmap(
                z=mat.astype(np.float32),
                zmin=-scale,
                zmax=scale,
                zmid=0.0,
                colorscale=DIVERGING,
                showscale=False,
                hovertemplate="row %{y}, column %{x}<br>value: %{z:.4g}<extra>" + name + "</extra>",
            ),
            row=row,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", showgrid=False, row=row, col=col)
        fig.update_xaxes(showgrid=False, row=row, col=col)
    sub = "each panel on its own symmetric scale (blue < 0 < red)" + (f"; {note}" if note else "")
    fig.update_layout(
        title={"text": f"{title}<br><sup>{sub}</sup>"},
        template=_TEMPLATE,
        height=320 * rows + 60,
        margin={"t": 90, "l": 40, "r": 20, "b": 30},
    )
    return fig


@dataclass(frozen=True)
class SpectrumCurve:
    """One spectrum as drawn: the indices k and eigenvalues λ_k kept on a log axis."""

    name: str  # method id ("exact" for F)
    label: str  # legend text, with the count of negative eigenvalues left out, if any
    index: np.ndarray  # k = 1, 2, … of the kept eigenvalues
    values: np.ndarray  # those eigenvalues (> the zero floor)
    color: str


def spectrum_curves(
    spectra: Mapping[str, np.ndarray],
    *,
    notes: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    zero_ratio: float = 1e-12,
) -> tuple[list[SpectrumCurve], list[tuple[str, str, str]]]:
    """What :func:`spectra_figure` and the picture (:mod:`core.views.spectra_image`) draw: one
    curve per spectrum, eigenvalues ``|λ| ≤ zero_ratio · λ_max`` (λ_max over all spectra) left
    out as numerically zero and significantly negative ones counted in the label; then
    (name, legend text, colour) of each method named in ``notes`` without a spectrum."""
    label_of = _labeller(labels)
    arrays = {name: np.asarray(lam, dtype=float) for name, lam in spectra.items()}
    top = max((float(lam.max(initial=0.0)) for lam in arrays.values()), default=0.0)
    floor = zero_ratio * top if top > 0 else 0.0
    curves = []
    for name, lam in arrays.items():
        keep = lam > floor
        negative = int((lam < -floor).sum())
        label = label_of(name) + (f" ({negative} < 0)" if negative else "")
        index = np.arange(1, lam.size + 1)
        curves.append(SpectrumCurve(name, label, index[keep], lam[keep], _color(name)))
    missing = [
        (name, f"{label_of(name)}: not computed (slow metrics off)", _color(name))
        for name in notes or {}
        if name not in arrays
    ]
    return curves, missing


def spectra_figure(
    spectra: Mapping[str, np.ndarray],
    *,
    notes: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    note: str = "",
    zero_ratio: float = 1e-12,
) -> go.Figure:
    """Eigenvalues (descending) of F and of each approximation, overlaid, on a log axis.

    Eigenvalues with ``|λ| ≤ zero_ratio · λ_max`` (λ_max over all spectra) are numerically zero
    and not drawn; significantly negative ones cannot appear on a log axis and are counted in
    the legend ("j < 0"). A method named in ``notes`` (method → why, as
    :class:`core.views.explorer.Spectra` holds them) without a curve gets a legend entry that
    says so, so none is left out silently (:func:`spectrum_curves`).
    """
    curves, missing = spectrum_curves(spectra, notes=notes, labels=labels, zero_ratio=zero_ratio)
    fig = go.Figure()
    for curve in curves:
        is_exact = curve.name == "exact"
        fig.add_trace(
            go.Scatter(
                x=curve.index,
                y=curve.values,
                mode="lines",
                name=curve.label,
                line={
                    "color": curve.color,
                    "width": 3 if is_exact else 1.5,
                    "dash": "solid" if is_exact else "dot",
                },
                hovertemplate="λ_%{x}: %{y:.4g}<extra>" + curve.label + "</extra>",
            )
        )
    for _name, label, color in missing:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=label,
                line={"color": color, "width": 1.5, "dash": "dot"},
            )
        )
    sub = f"|λ| ≤ {zero_ratio:g}·λ_max is numerically zero: not drawn"
    sub = f"{note}; {sub}" if note else sub
    fig.update_layout(
        title={"text": f"Eigenvalue spectra<br><sup>{sub}</sup>"},
        xaxis_title="index k (eigenvalues sorted descending)",
        yaxis_title="eigenvalue λ_k",
        yaxis={"type": "log", "exponentformat": "power"},
        xaxis_type="log",
        template=_TEMPLATE,
        height=420,
        margin={"t": 80},
    )
    return fig


def rank_curve_figure(
    ranks: np.ndarray,
    errors: np.ndarray,
    *,
    selected: int | None = None,
    references: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """Relative error of the best rank-r Kronecker sum against r, with reference lines (e.g.
    KFAC's error, keyed by method id and annotated with its label) and the selected rank
    marked."""
    label_of = _labeller(labels)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=np.asarray(ranks),
            y=np.asarray(errors, dtype=float),
            mode="lines+markers",
            name="best rank-r sum",
            line={"color": _color("kpsvd")},
            hovertemplate="rank %{x}: %{y:.4f}<extra></extra>",
        )
    )
    if selected is not None and 1 <= selected <= len(errors):
        fig.add_trace(
            go.Scatter(
                x=[selected],
                y=[float(errors[selected - 1])],
                mode="markers",
                marker={"size": 14, "symbol": "circle-open", "line": {"width": 3}},
                name=f"selected r = {selected}",
            )
        )
    for name, value in (references or {}).items():
        fig.add_hline(
            y=value,
            line={"dash": "dash", "color": _color(name)},
            annotation_text=label_of(name),
            annotation_position="top right",
        )
    fig.update_layout(
        title="Error of the best sum of r Kronecker products (truncated SVD of ℛ(F))",
        xaxis_title="Kronecker rank r",
        yaxis_title="‖F − F̃<sub>r</sub>‖<sub>F</sub> / ‖F‖<sub>F</sub>",
        xaxis={"dtick": 1},
        template=_TEMPLATE,
        height=380,
    )
    return fig


def metrics_figure(
    methods: Sequence[str],
    values: Sequence[float],
    *,
    metric: str = "relative Frobenius error",
    labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """One bar per method (named by its label) for one metric."""
    label_of = _labeller(labels)
    fig = go.Figure(
        go.Bar(
            x=[label_of(m) for m in methods],
            y=list(values),
            marker_color=[_color(m) for m in methods],
            hovertemplate="%{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(title=metric, yaxis_title=metric, template=_TEMPLATE, height=320)
    return fig


_DIRECTION_METRICS = {
    "error": "‖x̃ − x‖ / ‖x‖",
    "cosine": "cos∠(x̃, x)",
    "norm_ratio": "‖x̃‖ / ‖x‖",
}


def direction_figure(
    curves: Sequence[DirectionCurve], *, selected: float | None = None, metric: str = "error"
) -> go.Figure:
    """ "Error vs λ": each method's damped step x̃ against the exact damped natural gradient
    x = (F + λI)⁻¹∇ over the swept dampings (:mod:`core.views.direction`), solid with the
    optimizers' factored damping, dashed with exact damping; ``selected`` (a λ) marked by a
    vertical line. ``metric``: ``"error"`` (log axis), ``"cosine"`` or ``"norm_ratio"``."""
    if metric not in _DIRECTION_METRICS:
        raise ValueError(
            f"unknown metric {metric!r}; choose one of {', '.join(_DIRECTION_METRICS)}"
        )
    fig = go.Figure()
    for curve in curves:
        for mode in DIRECTION_MODES:
            if mode in curve.skipped:
                continue
            name = labelled(curve.method, mode)
            fig.add_trace(
                go.Scatter(
                    x=list(curve.dampings),
                    y=np.asarray(getattr(curve, metric)[mode], dtype=float),
                    mode="lines+markers",
                    name=name,
                    legendgroup=method_label(curve.method),
                    marker={"size": 4},
                    line={"color": _color(curve.method), "width": 2 if mode == "factored" else 1.5,
                          "dash": "solid" if mode == "factored" else "dash"},
                    hovertemplate="λ = %{x:.3g}: %{y:.4g}<extra>" + name + "</extra>",
                )
            )  # fmt: skip
    if selected is not None:
        fig.add_vline(x=selected, line={"dash": "dot", "color": "#555555"})
    label = _DIRECTION_METRICS[metric]
    fig.update_layout(
        title={"text": f"Damped step against the exact one: {label} vs λ<br><sup>x = (F + λI)⁻¹∇,"
               " x̃ the approximation's damped inverse applied to the batch gradient ∇</sup>"},
        xaxis={"type": "log", "exponentformat": "power", "title": "damping λ"},
        yaxis={"type": "log" if metric == "error" else "linear", "title": label},
        template=_TEMPLATE,
        height=440,
        margin={"t": 80},
    )  # fmt: skip
    return fig
