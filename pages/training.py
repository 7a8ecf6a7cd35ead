"""Approximation over training: each method's error on one layer while a model trains."""

from __future__ import annotations

import streamlit as st

from core import (
    METHODS,
    OPTIMIZERS,
    TrainingRun,
    check_layer_size,
    describe_layers,
    explorer,
    report,
)
from pages import ui as sh

sh.ensure_navigation()

PAGE = "training"
settings, data, ds, preset, seed = sh.training_page(
    PAGE,
    "Approximation over training",
    "The seed paper's experiment, live: a model trains in the background, and every few steps "
    "the chosen layer's Fisher block is captured on a fresh minibatch and each approximation "
    "is measured against it (relative Frobenius error and spectrum error).",
)
with st.sidebar:
    opt_name = settings.select(
        "Optimizer", OPTIMIZERS, "opt", "kfac", format_func=sh.OPTIMIZER_LABELS.get
    )
    hyper = sh.optimizer_controls(settings, opt_name, preset)
    steps, batch = sh.run_length_controls(settings, 300)

init = sh.initial_model(data.key, preset=preset, seed=seed, ds=ds)
layers = sh.layer_options(init)
col_layer, col_every, col_m = st.columns([3, 1, 1])
with col_layer:
    layer = settings.select(
        "Layer tracked", list(layers), "layer", sh.default_layer(init), format_func=layers.get
    )
with col_every:
    every = settings.number("Measure every … steps", "every", 10, min_value=1, max_value=1000)
with col_m:
    m = settings.select("Fisher minibatch m", [64, 128, 256, 512, 1024], "m", 256)
methods = settings.multiselect(
    "Approximations", METHODS, "methods", METHODS, format_func=explorer.method_label
)
info = next(i for i in describe_layers(init) if i.name == layer)


def make_runs() -> list[TrainingRun]:
    check_layer_size(info.n_params, f"layer {layer}")
    return sh.training_runs(
        data, ds, preset, seed, {opt_name: {**hyper, "fisher_batch": int(m)}},
        steps=steps, batch_size=batch, eval_every=int(every),
        quality_layer=layer, quality_methods=tuple(methods), quality_every=int(every),
    )  # fmt: skip


def draw(group) -> None:
    run = group.runs[0]
    labels = sh.run_labels([run.config.optimizer])
    sh.run_status_lines(group, labels)
    st.caption(f"Layer {run.config.quality_layer}, measured every {run.config.quality_every} steps")
    df = sh.group_frame(group, labels)
    if len(df):
        left, right = st.columns(2)
        left.plotly_chart(report.error_figure(df, kind="rel_error"), key="training.rel")
        right.plotly_chart(report.error_figure(df, kind="spectrum_error"), key="training.spec")
        st.plotly_chart(report.loss_vs_step(df), key="training.loss")
        st.download_button(
            "Records (CSV)", df.to_csv(index=False), "approximation-over-training.csv",
            "text/csv", key="training.csv",
        )  # fmt: skip


settings.show_notices()
settings.sync()
sh.run_panel(
    PAGE,
    make_runs,
    draw,
    sequential=True,
    label=f"{opt_name} on {layer}",
    ready=bool(methods),
    idle="Choose a layer and the approximations, then press **Start**.",
)
