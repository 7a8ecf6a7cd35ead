"""Plotly figures from training records, and self-contained HTML reports.

Every figure function takes a records ``pandas.DataFrame`` (the rows of
:meth:`core.training.runner.TrainingRun.records`, possibly several runs concatenated) and returns a
``plotly.graph_objects.Figure``; nothing here touches the file system except
:func:`write_html_report`. Runs are told apart by the ``label`` column when present, else by
``optimizer``. Columns used: ``step``, ``epoch``, ``wall_time_s``, ``train_loss``,
``test_loss`` (NaN/None except on evaluation steps), ``rel_error_<method>`` and
``spectrum_error_<method>`` (quality steps only).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from .labels import method_label

__all__ = [
    "loss_figure",
    "loss_vs_step",
    "loss_vs_time",
    "loss_vs_epoch",
    "error_figure",
    "mean_sd_figure",
    "quality_table",
    "summary_table",
    "write_html_report",
    "comparison_report",
    "quality_report",
]

_X_TITLES = {"step": "step", "epoch": "epoch", "wall_time_s": "wall time (s)"}
_PALETTE = qualitative.Plotly + qualitative.D3


def _run_column(df: pd.DataFrame) -> str:
    return "label" if "label" in df.columns else "optimizer"


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def loss_figure(
    df: pd.DataFrame,
    *,
    x: str = "step",
    smooth: int = 1,
    show_test: bool = True,
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Training loss (solid; a rolling mean over ``smooth`` steps) and test loss (dashed,
    markers) of every run against ``x`` ("step", "epoch" or "wall_time_s")."""
    if x not in _X_TITLES:
        raise ValueError(f"x must be one of {tuple(_X_TITLES)}, got {x!r}")
    if smooth < 1:
        raise ValueError(f"smooth must be ≥ 1, got {smooth}")
    fig = go.Figure()
    if df is not None and len(df):
        col = _run_column(df)
        for i, (run, part) in enumerate(df.groupby(col, sort=False)):
            part = part.sort_values("step")
            y = pd.to_numeric(part["train_loss"], errors="coerce")
            if smooth > 1:
                y = y.rolling(smooth, min_periods=1).mean()
            fig.add_trace(
                go.Scatter(
                    x=part[x],
                    y=y,
                    mode="lines",
                    name=f"{run} train",
                    legendgroup=str(run),
                    line={"color": _color(i)},
                )
            )
            if show_test and "test_loss" in part:
                test = part[pd.to_numeric(part["test_loss"], errors="coerce").notna()]
                if len(test):
                    fig.add_trace(
                        go.Scatter(
                            x=test[x],
                            y=test["test_loss"].astype(float),
                            mode="lines+markers",
                            name=f"{run} test",
                            legendgroup=str(run),
                            line={"color": _color(i), "dash": "dash"},
                            marker={"size": 5},
                        )
                    )
    fig.update_layout(
        title=title or f"Loss against {_X_TITLES[x]}",
        xaxis_title=_X_TITLES[x],
        yaxis_title="loss (mean per-sample NLL)",
        yaxis_type="log" if log_y else "linear",
        template="plotly_white",
        legend={"groupclick": "toggleitem"},
    )
    return fig


def loss_vs_step(df: pd.DataFrame, **kwargs) -> go.Figure:
    return loss_figure(df, x="step", **kwargs)


def loss_vs_epoch(df: pd.DataFrame, **kwargs) -> go.Figure:
    return loss_figure(df, x="epoch", **kwargs)


def loss_vs_time(df: pd.DataFrame, **kwargs) -> go.Figure:
    return loss_figure(df, x="wall_time_s", **kwargs)


def _error_methods(df: pd.DataFrame, kind: str) -> list[str]:
    prefix = f"{kind}_"
    return [c[len(prefix) :] for c in df.columns if c.startswith(prefix)]


def error_figure(
    df: pd.DataFrame, *, kind: str = "rel_error", log_y: bool = False, title: str | None = None
) -> go.Figure:
    """Approximation error of every tracked method against step (quality steps only).

    ``kind``: "rel_error" (‖F − F̃‖_F / ‖F‖_F) or "spectrum_error"
    (‖λ(F) − λ(F̃)‖₂ / ‖λ(F)‖₂).
    """
    if kind not in ("rel_error", "spectrum_error"):
        raise ValueError(f"kind must be 'rel_error' or 'spectrum_error', got {kind!r}")
    fig = go.Figure()
    if df is not None and len(df):
        methods = _error_methods(df, kind)
        col = _run_column(df)
        runs = list(dict.fromkeys(df[col]))
        for r_i, run in enumerate(runs):
            part = df[df[col] == run].sort_values("step")
            for i, method in enumerate(methods):
                values = pd.to_numeric(part[f"{kind}_{method}"], errors="coerce")
                keep = values.notna()
                if not keep.any():
                    continue
                label = method_label(method)
                name = label if len(runs) == 1 else f"{label} ({run})"
                fig.add_trace(
                    go.Scatter(
                        x=part.loc[keep, "step"],
                        y=values[keep],
                        mode="lines+markers",
                        name=name,
                        line={"color": _color(i), "dash": ("solid", "dot", "dash")[r_i % 3]},
                    )
                )
    label = "relative Frobenius error" if kind == "rel_error" else "spectrum error"
    fig.update_layout(
        title=title or f"{label} over training",
        xaxis_title="step",
        yaxis_title=label,
        yaxis_type="log" if log_y else "linear",
        template="plotly_white",
    )
    return fig


def _rgba(color: str, alpha: float) -> str:
    """``#rrggbb`` (plotly's qualitative palettes) as ``rgba(r, g, b, alpha)``."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def mean_sd_figure(
    df: pd.DataFrame,
    *,
    x: str,
    y: str,
    group: str,
    seed: str = "seed",
    smooth: int = 1,
    title: str | None = None,
    y_title: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """Mean ± sd over seeds of ``y`` against ``x``, one line and band per value of ``group``.

    The rows of one group and one seed are one curve, ordered by ``step`` and smoothed by a
    rolling mean over ``smooth`` rows; the curves of a group are aligned on ``step`` (runs of
    one length see the same steps). At each step the line is the mean of ``y`` over the seeds
    that reached it, the band mean ± sd (ddof 1; none where one seed reached it), and the
    abscissa the mean of ``x`` over those seeds — for wall time, the seeds' mean time to reach
    that step. Non-finite values (a diverged run's last loss) are left out.
    """
    if smooth < 1:
        raise ValueError(f"smooth must be ≥ 1, got {smooth}")
    fig = go.Figure()
    if df is not None and len(df):
        for i, (name, part) in enumerate(df.groupby(group, sort=False)):
            curves_x, curves_y = {}, {}
            for s, run in part.groupby(seed, sort=True):
                run = run.sort_values("step")
                steps = run["step"].to_numpy()
                values = pd.to_numeric(run[y], errors="coerce").astype(float)
                values = values.where(values.abs() < float("inf"))
                smoothed = values.rolling(smooth, min_periods=1).mean().to_numpy()
                curves_y[s] = pd.Series(smoothed, index=steps)
                curves_x[s] = pd.Series(
                    pd.to_numeric(run[x], errors="coerce").astype(float).to_numpy(), index=steps
                )
            ys, xs = pd.DataFrame(curves_y), pd.DataFrame(curves_x)
            mean, sd, xm = ys.mean(axis=1), ys.std(axis=1, ddof=1), xs.mean(axis=1)
            keep = mean.notna() & xm.notna()
            mean, sd, xm = mean[keep], sd[keep], xm[keep]
            color = _color(i)
            band = sd.notna()
            if band.any():
                xb = xm[band]
                fig.add_trace(
                    go.Scatter(
                        x=list(xb) + list(xb[::-1]),
                        y=list(mean[band] + sd[band]) + list((mean[band] - sd[band])[::-1]),
                        fill="toself",
                        fillcolor=_rgba(color, 0.2),
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=str(name),
                    )
                )
            fig.add_trace(
                go.Scatter(
                    x=xm,
                    y=mean,
                    mode="lines",
                    name=str(name),
                    legendgroup=str(name),
                    line={"color": color},
                )
            )
    fig.update_layout(
        title=title or f"{y} against {_X_TITLES.get(x, x)}",
        xaxis_title=_X_TITLES.get(x, x),
        yaxis_title=y_title or y,
        yaxis_type="log" if log_y else "linear",
        template="plotly_white",
    )
    return fig


def quality_table(df: pd.DataFrame, kind: str = "rel_error") -> pd.DataFrame:
    """Steps × methods table of one error kind (rows: quality steps)."""
    methods = _error_methods(df, kind)
    cols = [f"{kind}_{m}" for m in methods]
    out = df.dropna(subset=cols, how="all")[["step", *cols]].copy()
    out.columns = ["step", *methods]
    return out.reset_index(drop=True)


def summary_table(df: pd.DataFrame, *, smooth: int = 20) -> pd.DataFrame:
    """Per run: steps, wall time, final smoothed train loss, last and best test loss."""
    col = _run_column(df)
    rows = []
    for run, part in df.groupby(col, sort=False):
        part = part.sort_values("step")
        train = pd.to_numeric(part["train_loss"], errors="coerce")
        test = pd.to_numeric(
            part.get("test_loss", pd.Series(dtype=float)), errors="coerce"
        ).dropna()
        rows.append(
            {
                col: run,
                "steps": int(part["step"].max()) + 1,
                "wall_time_s": float(part["wall_time_s"].max()),
                f"train_loss (last {smooth})": float(train.tail(smooth).mean()),
                "test_loss (last)": float(test.iloc[-1]) if len(test) else float("nan"),
                "test_loss (best)": float(test.min()) if len(test) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def write_html_report(
    path: str | Path,
    *,
    title: str,
    figures: Sequence[go.Figure],
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    notes: Sequence[str] = (),
) -> Path:
    """One self-contained HTML file (plotly.js inlined once, so it works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    for caption, table in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def comparison_report(
    df: pd.DataFrame, path: str | Path, *, title: str = "Optimizer comparison", notes=()
) -> Path:
    """Loss against step and against wall time, plus the summary table."""
    smooth = max(1, min(20, len(df) // max(1, df[_run_column(df)].nunique()) // 20))
    figures = [
        loss_vs_step(df, smooth=smooth),
        loss_vs_time(df, smooth=smooth),
    ]
    tables = [("Summary", summary_table(df))]
    return write_html_report(path, title=title, figures=figures, tables=tables, notes=notes)


def quality_report(
    df: pd.DataFrame, path: str | Path, *, title: str = "Approximation quality", notes=()
) -> Path:
    """Errors over training (both kinds), the loss curve and the two error tables."""
    figures = [
        error_figure(df, kind="rel_error"),
        error_figure(df, kind="spectrum_error"),
        loss_vs_step(df),
    ]
    tables = [
        ("Relative Frobenius error", quality_table(df, "rel_error")),
        ("Spectrum error", quality_table(df, "spectrum_error")),
    ]
    return write_html_report(path, title=title, figures=figures, tables=tables, notes=notes)
