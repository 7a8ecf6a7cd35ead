"""Optimizer race: several optimizers train the same model from the same start, live."""

from __future__ import annotations

import streamlit as st

from core import OPTIMIZERS, RunConfig, TrainingRun, report
from pages import ui as sh

sh.ensure_navigation()

PAGE = "race"
st.title("Optimizer race")
st.markdown(
    "Every optimizer trains the same autoencoder from the same initialization on the same "
    "minibatches. Curves grow while the runs train in the background; wall time counts "
    "training only (evaluation is paused out)."
)
settings = sh.UrlSettings(PAGE)

data, ds, preset, seed = sh.model_and_data(settings)
with st.sidebar:
    st.header("Training")
    steps = settings.number("Steps", "steps", 200, min_value=1, max_value=20_000)
    batch = settings.select("Batch size", [32, 64, 128, 256, 512], "batch", 128)
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
    configs = [sh.optimizer_config(name, **hyper[name]) for name in chosen]
    init = sh.initial_model(data.key, preset, seed, ds)
    return [
        TrainingRun(
            RunConfig(
                dataset=data.name,
                optimizer=cfg,
                preset=preset,
                steps=int(steps),
                batch_size=int(batch),
                seed=seed,
                eval_every=int(eval_every),
                data_path=data.path,
            ),
            dataset=ds,
            model=init,
        )
        for cfg in configs
    ]


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
