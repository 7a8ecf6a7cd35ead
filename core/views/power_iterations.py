"""The "power iterations" view: Shampoo (one step) to KPSVD (many) on one layer's block.

Draws :class:`core.engine.power_iterations.PowerIterationCurve` — the relative Frobenius error of
the Frobenius-scaled Kronecker product after k steps of the power method on ℛ(F) from the
identity (Morwani et al. 2024) — with KFAC's and rank-1 KPSVD's errors on the same batch as
reference lines, and says what it shows in a plain-language caption.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ..engine.power_iterations import PowerIterationCurve
from .figures import METHOD_COLORS
from .labels import method_label

__all__ = ["power_iterations_figure", "power_iterations_caption"]

_TEMPLATE = "plotly_white"


def power_iterations_figure(curve: PowerIterationCurve) -> go.Figure:
    """Relative error against the number of power steps k (k = 0: the best multiple of the
    identity; k = 1: Shampoo), with KFAC and KPSVD as dashed reference lines."""
    fig = go.Figure()
    hover = [
        f"k = {k}{' (Shampoo)' if k == 1 else ''}: {e:.4f}"
        for k, e in zip(curve.steps, curve.errors, strict=True)
    ]
    fig.add_trace(
        go.Scatter(
            x=list(curve.steps),
            y=list(curve.errors),
            mode="lines+markers",
            name="power step k",
            line={"color": METHOD_COLORS.get("shampoo", "#7f7f7f")},
            text=hover,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    if len(curve.errors) > 1:
        fig.add_trace(
            go.Scatter(
                x=[1],
                y=[curve.errors[1]],
                mode="markers",
                marker={"size": 14, "symbol": "circle-open", "line": {"width": 3}},
                name=f"{method_label('shampoo')} (k = 1)",
            )
        )
    for name, value in (("kfac", curve.kfac), ("kpsvd", curve.kpsvd)):
        fig.add_hline(
            y=value,
            line={"dash": "dash", "color": METHOD_COLORS.get(name, "#7f7f7f")},
            annotation_text=method_label(name),
            annotation_position="top right",
        )
    fig.update_layout(
        title="Power iterations on ℛ(F) from the identity: Shampoo at k = 1, KPSVD as k grows",
        xaxis_title="power steps k",
        yaxis_title="‖F − F̃<sub>k</sub>‖<sub>F</sub> / ‖F‖<sub>F</sub>",
        xaxis={"dtick": 1 if len(curve.errors) <= 21 else None},
        template=_TEMPLATE,
    )
    return fig


def power_iterations_caption(curve: PowerIterationCurve) -> str:
    """Two plain sentences on what the figure shows, with this layer's numbers."""
    errors = curve.errors
    text = (
        "Each point is the best multiple of one Kronecker product R_k ⊗ S_k, where R_k and S_k "
        "come from k steps of the power method on the rearranged Fisher block started from "
        "the identity: k = 1 is exactly Shampoo's pair of factors, and as k grows the product "
        "turns into KPSVD's, the best single Kronecker product (Morwani et al. 2024)."
    )
    if len(errors) < 2:
        return text
    close = next(
        (k for k, e in enumerate(errors) if e - curve.kpsvd <= 0.01 * max(curve.kpsvd, 1e-12)),
        None,
    )
    reach = (
        f"it comes within 1% of KPSVD's error ({curve.kpsvd:.3f}) after {close} steps"
        if close is not None
        else f"after {len(errors) - 1} steps it is still above KPSVD's ({curve.kpsvd:.3f})"
    )
    return (
        f"{text} Here Shampoo's error is {errors[1]:.3f} against KFAC's {curve.kfac:.3f}; {reach}."
    )
