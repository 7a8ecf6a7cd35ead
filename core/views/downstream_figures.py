"""Figures, table and caption of the downstream jobs (:mod:`core.views.downstream`): plain
functions, a :class:`~core.views.downstream.DownstreamResult` in, plotly figures out.

Methods are named by their labels and coloured as everywhere else
(:data:`core.views.figures.METHOD_COLORS`); the baselines (plain SVD, FWSVD, magnitude pruning)
are dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .downstream import DownstreamResult
from .figures import METHOD_COLORS
from .labels import method_label

__all__ = [
    "BASELINE_LABELS",
    "downstream_label",
    "downstream_figures",
    "downstream_table",
    "reconstruction_figure",
]

BASELINE_LABELS: dict[str, str] = {
    "svd": "Plain SVD",
    "fwsvd": "FWSVD (diagonal Fisher)",
    "magnitude": "Magnitude",
}
_BASELINE_COLORS = {"svd": "#7f7f7f", "fwsvd": "#bcbd22", "magnitude": "#7f7f7f"}
_TEMPLATE = "plotly_white"


def downstream_label(method: str) -> str:
    """A baseline's or a method's display name."""
    return BASELINE_LABELS.get(method, method_label(method))


def _axis(result: DownstreamResult) -> str:
    if result.job == "compress":
        return "rank k of the layer's weights"
    return {
        "unstructured": "sparsity (fraction of weights removed)",
        "rows": "sparsity (fraction of output rows removed)",
        "columns": "sparsity (fraction of input columns removed)",
    }.get(result.structure or "unstructured", "sparsity")


def _curves(fig: go.Figure, result: DownstreamResult, value: str, **where: int) -> None:
    for method in result.methods:
        xs, ys = result.series(method, value)
        baseline = method in BASELINE_LABELS
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=downstream_label(method),
                legendgroup=method,
                showlegend=not where or where.get("col") == 1,
                line={
                    "color": _BASELINE_COLORS.get(method, METHOD_COLORS.get(method, "#7f7f7f")),
                    "dash": "dash" if baseline else "solid",
                },
                hovertemplate=f"{downstream_label(method)}: %{{x:g}} → %{{y:.4g}}<extra></extra>",
            ),
            **where,
        )


def downstream_figures(result: DownstreamResult) -> tuple[list[go.Figure], str]:
    """Two figures and a plain-language caption: the measured held-out loss increase against
    k (compress) or sparsity (prune), per method; and beside it the second-order prediction
    ½ ΔWᵀ F ΔW in the exact Fisher of the capture batch."""
    title = "Compress" if result.job == "compress" else f"Prune ({result.structure})"
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "measured: held-out loss increase",
            "predicted: ½ ΔWᵀ F ΔW (exact Fisher)",
        ),
    )
    _curves(fig, result, "loss_increase", row=1, col=1)
    _curves(fig, result, "fisher_increase", row=1, col=2)
    fig.update_xaxes(title_text=_axis(result))
    fig.update_yaxes(title_text="loss increase (nats per sample)", col=1)
    predicted = [p.fisher_increase for p in result.points]
    if predicted and min(predicted) > 0:
        fig.update_yaxes(type="log", col=2)
    if result.job == "prune":
        fig.update_xaxes(range=[-0.02, 1.0])
    fig.update_layout(
        title=f"{title}: layer {result.layer} ({result.shape[0]} × {result.shape[1]})",
        template=_TEMPLATE,
        height=420,
    )
    return [fig], _caption(result)


def _caption(result: DownstreamResult) -> str:
    dg, da = result.shape
    if result.job == "compress":
        what = (
            f"Each curve replaces the {dg} × {da} weights of {result.layer} (bias as the last "
            "column) by the rank-k matrix closest to them in one curvature's norm — the plain "
            "SVD ignores curvature, FWSVD weights each output row by its Fisher diagonal, the "
            "others use each approximation's damped Fisher — and measures how much the loss on "
            "held-out data grows. Lower is better; a better curvature should keep the loss "
            "lower at the same rank."
        )
    else:
        what = (
            f"Each curve removes a fraction of {result.layer}'s {dg} × {da} weights "
            f"({result.structure}) — magnitude pruning drops the smallest weights and changes "
            "nothing else; optimal brain surgeon drops the weights each curvature predicts cost "
            "least and moves the remaining ones to compensate — and measures how much the loss "
            "on held-out data grows. Lower is better."
        )
    note = (
        f" Held-out loss before: {result.base_loss:.4g}. Damping λ = {result.damping:g}. "
        "The right panel is the same change measured by the exact Fisher of the capture batch "
        "(a second-order prediction)."
    )
    if result.skipped:
        names = ", ".join(downstream_label(m) for m in result.skipped)
        note += f" Not shown: {names} (no curvature for this layer; see the table)."
    return what + note


def downstream_table(result: DownstreamResult) -> pd.DataFrame:
    """One row per point (method, k or sparsity, losses, seconds) and one per skipped method."""
    x_name = "rank k" if result.job == "compress" else "sparsity"
    rows = [
        {
            "method": downstream_label(p.method),
            x_name: p.x,
            "held-out loss": p.loss,
            "loss increase": p.loss_increase,
            "½ ΔWᵀFΔW": p.fisher_increase,
            "own objective": p.objective,
            "seconds": p.seconds,
            "note": "",
        }
        for p in result.points
    ]
    rows += [{"method": downstream_label(m), "note": why} for m, why in result.skipped.items()]
    return pd.DataFrame(rows)


def reconstruction_figure(
    images: Mapping[str, torch.Tensor | np.ndarray],
    image_shape: Sequence[int],
    *,
    count: int = 6,
    titles: Mapping[str, str] | None = None,
) -> go.Figure:
    """A grid of reconstructions: one row per entry of ``images`` (name → (batch, d) array,
    e.g. :func:`core.views.downstream.reconstructions`), the first ``count`` samples as
    ``image_shape`` greyscale images."""
    if not images:
        raise ValueError("no images to draw")
    height, width = int(image_shape[0]), int(image_shape[1])
    names = list(images)
    fig = make_subplots(
        rows=len(names),
        cols=count,
        horizontal_spacing=0.01,
        vertical_spacing=0.04,
        row_titles=[(titles or {}).get(n, downstream_label(n)) for n in names],
    )
    for row, name in enumerate(names, start=1):
        data = np.asarray(torch.as_tensor(images[name]).detach().cpu(), dtype=float)
        if data.shape[1] != height * width:
            raise ValueError(f"{name}: {data.shape[1]} values per image, not {height} × {width}")
        for col in range(1, min(count, data.shape[0]) + 1):
            fig.add_trace(
                go.Heatmap(
                    z=data[col - 1].reshape(height, width)[::-1],
                    colorscale="gray",
                    showscale=False,
                    hoverinfo="skip",
                ),
                row=row,
                col=col,
            )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(template=_TEMPLATE, height=110 * len(names) + 40, margin={"r": 140})
    return fig
