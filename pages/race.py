"""Optimizer race: several optimizers train the same model from the same start, live."""

from __future__ import annotations

import streamlit as st

from core import OPTIMIZERS, TrainingRun, report
from pages import ui as sh

sh.ensure_navigation()

PAGE = "race"
settings, data, ds, preset, seed = sh.training_page(
    PAGE,
    "Optimizer race",
    "Every optimizer trains the same autoencoder from the same initialization on the same "
    "minibatches. Curves grow while the runs train in the background; wall time counts "
    "training only (evaluation is paused out).",
)
with st.sidebar:
    steps, batch = sh.run_length_controls(settings, 200)
    eval_every = settings.number(
        "Test loss every … steps", "eval", 20, min_value=1, max_value=10_000
    )
    schedule = settings.radio(
        "Schedule",
        ["parallel", "sequential"],
        "schedule",
        "parallel",
        format_func={
            "parallel": "side by side (live race)",
            "sequential": "one after another (fair wall times)",
        }.get,
        help="Side by side, the runs share the CPU cores, so wall times include contention.",
    )

chosen = settings.multiselect(
    "Optimizers",
    OPTIMIZERS,
    "opts",
    ["sgd", "adam", "kfac", "kpsvd"],
    format_func=sh.OPTIMIZER_LABELS.get,
)
hyper: dict[str, dict] = {}
with st.expander("Hyper-parameters", expanded=False):
    columns = st.columns(max(len(chosen), 1))
    for column, name in zip(columns, chosen, strict=False):
        with column:
            hyper[name] = sh.optimizer_controls(settings, name, preset)


def make_runs() -> list[TrainingRun]:
    return sh.training_runs(
        data, ds, preset, seed, {name: hyper[name] for name in chosen},
        steps=steps, batch_size=batch, eval_every=int(eval_every),
    )  # fmt: skip


def draw(group) -> None:
    labels = sh.run_labels([run.config.optimizer for run in group.runs])
    sh.run_status_lines(group, labels)
    df = sh.group_frame(group, labels)
    if len(df):
        left, right = st.columns(2)
        left.plotly_chart(report.loss_vs_step(df), key="race.loss_step")
        right.plotly_chart(report.loss_vs_time(df), key="race.loss_time")
        st.dataframe(report.summary_table(df, smooth=10), hide_index=True)
        st.download_button(
            "Results (CSV)", df.to_csv(index=False), "race.csv", "text/csv", key="race.csv"
        )


settings.show_notices()
settings.sync()
sh.run_panel(
    PAGE,
    make_runs,
    draw,
    sequential=schedule == "sequential",
    label=", ".join(chosen),
    ready=bool(chosen),
    idle="Choose optimizers and press **Start**.",
)
