"""The training pages name a run by pages/ui/runs.py's ``run_labels`` (the race's legends, status
lines and summary table; the approximation-over-training page; the explorer's "Training …"
progress text): a run that preconditions with exact damping ``(F̃ + λI)⁻¹`` must say so, since
its curves differ from the same optimizer's with the default factored damping (issue 21)."""

from __future__ import annotations

import pandas as pd

from core import OptimizerConfig
from core.views import report
from pages.ui.runs import run_labels


def test_exact_damping_is_named_and_factored_is_not() -> None:
    labels = run_labels(
        [
            OptimizerConfig("kfac", lr=0.03, damping_mode="exact"),
            OptimizerConfig("adam", lr=1e-3),
            OptimizerConfig("ekfac", lr=0.03),
        ]
    )
    assert labels == ["KFAC (exact damping)", "Adam", "EKFAC"]


def test_same_optimizer_twice_keeps_its_lr_and_the_mode() -> None:
    labels = run_labels(
        [
            OptimizerConfig("kfac", lr=0.03),
            OptimizerConfig("kfac", lr=0.03, damping_mode="exact"),
            OptimizerConfig("kfac", lr=0.1, damping_mode="exact"),
        ]
    )
    assert labels == [
        "KFAC (lr=0.03)",
        "KFAC (lr=0.03, exact damping)",
        "KFAC (lr=0.1, exact damping)",
    ]
    assert len(set(labels)) == 3


def test_the_loss_legend_carries_the_label() -> None:
    """The race's frame has the label column (``group_frame``); the loss figure names its
    traces by it."""
    labels = run_labels(
        [OptimizerConfig("kfac", lr=0.03), OptimizerConfig("kfac", lr=0.03, damping_mode="exact")]
    )
    rows = [
        {"label": label, "optimizer": "kfac", "step": s, "epoch": s / 10, "wall_time_s": s,
         "train_loss": 1.0 / (s + 1), "test_loss": None}
        for label in labels
        for s in range(3)
    ]  # fmt: skip
    fig = report.loss_vs_step(pd.DataFrame(rows))
    names = {trace.name for trace in fig.data}
    assert any("KFAC (lr=0.03, exact damping)" in str(n) for n in names), names
    assert any(n is not None and "exact" not in str(n) for n in names), names
