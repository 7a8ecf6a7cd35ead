"""Fisher explorer: one layer's Fisher block next to its Kronecker-factored approximations."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import streamlit as st

from core import METHODS, OPTIMIZERS, check_layer_size, describe_layers, explorer, figures
from pages import ui as sh

sh.ensure_navigation()
started = time.perf_counter()
DEFAULT_RANK, MAX_RANK = 2, 10  # the Kronecker rank slider: its default, its widest range

st.title("Fisher explorer")
settings = sh.UrlSettings("explorer")
sh.compute.start_view()  # this view's compute budget (see pages/ui/compute.py)

# -- model -------------------------------------------------------------------------------
data, ds, preset, seed = sh.model_and_data(settings, "Model")
with st.sidebar:
    state = settings.radio(
        "Parameters",
        ["init", "trained"],
        "model",
        "init",
        format_func={"init": "at initialization", "trained": "after training"}.get,
        horizontal=True,
    )
    if state == "trained":
        opt_name = settings.select(
            "Optimizer", OPTIMIZERS, "opt", "adam", format_func=sh.OPTIMIZER_LABELS.get
        )
        steps = settings.number("Training steps", "steps", 200, min_value=1, max_value=20_000)
        hyper = sh.optimizer_controls(settings, opt_name, preset)

if state == "trained":
    choice = sh.trained_model(data, ds, preset, int(seed), opt_name, hyper, int(steps))
else:
    init = sh.initial_model(data.key, preset, int(seed), ds)
    choice = sh.ModelChoice(f"{data.key}|{preset}|seed={seed}|init", init, "at initialization")

# -- layer and methods -------------------------------------------------------------------
layers = sh.layer_options(choice.model)
with st.sidebar:
    st.header("Fisher block")
    layer = settings.select(
        "Linear layer",
        list(layers),
        "layer",
        sh.default_layer(choice.model),
        format_func=layers.get,
        help="W has shape (outputs, inputs + 1): the bias is the last column.",
    )
    methods = settings.multiselect(
        "Approximations", METHODS, "methods", METHODS, format_func=explorer.method_label
    )
    m = settings.select(
        "Fisher minibatch m", [1, 8, 32, 64, 128, 256, 512, 1024], "m", 256,
        help="Samples in the estimate F = (1/m) Σ (ā ā^T) ⊗ (g g^T); rank F ≤ m.",
    )  # fmt: skip
    fisher_kind = settings.radio(
        "Fisher",
        ["true", "empirical"],
        "fisher",
        "true",
        format_func={"true": "true (sampled targets)", "empirical": "empirical"}.get,
        horizontal=True,
    )
    damping = settings.select(
        "Damping λ (natural gradient)", [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], "damping", 1e-3,
        format_func=lambda v: f"{v:g}",
    )  # fmt: skip

settings.show_notices()
info = next(i for i in describe_layers(choice.model) if i.name == layer)
with sh.friendly_errors("Layer size"):
    check_layer_size(info.n_params, f"layer {layer}")

batch = sh.fisher_batch(ds, int(m), int(seed))
m_used = batch.shape[0]
fisher_key = sh.compute.FisherKey(choice.key, layer, fisher_kind, m_used)
with sh.friendly_errors("Capturing the layer's gradients"):
    fisher = sh.compute.layer_fisher(
        fisher_key, model=choice.model, x=batch, loss=ds.loss, seed=int(seed)
    )
    explorer.check_fisher(fisher, layer)
m_note = "" if m_used == m else f" (the dataset has {ds.n_train:,} training images)"
st.caption(
    f"{data.name} · {preset} · {choice.description} · {info.label} · "
    f"m = {m_used}{m_note} · {fisher_kind} Fisher · training device: {sh.device_label()}, "
    "Fisher numerics: CPU, float64, in the server's worker processes"
)

slow = settings.toggle(
    "Compute slow metrics (spectrum and natural gradient of 2-term sums on large layers)",
    "slow",
    False,
)
results: dict[str, explorer.MethodResult] = {}
for method, outcome in sh.compute.method_results(
    fisher_key, methods, damping=float(damping), slow=slow, fisher=fisher
).items():
    if isinstance(outcome, Exception):  # one failed method is a message, not a blank page
        st.error(f"**Approximating ({explorer.method_label(method)}):** {sh.plain(outcome)}")
    else:
        results[method] = outcome
methods = [mt for mt in methods if mt in results]  # a failed method is a message, not a blank
analysis = explorer.LayerAnalysis(fisher, results)

# -- metrics -----------------------------------------------------------------------------
st.subheader("How close is each approximation?")
table = analysis.table()
if len(table):
    shown = table.assign(
        method=table["method"].map(explorer.method_label),
        terms=["eigenbasis diagonal" if pd.isna(t) else f"{t:.0f}" for t in table["terms"]],
    )
    st.dataframe(
        shown.drop(columns=["deferred"]),
        hide_index=True,
        column_config={
            "method": "Method",
            "relative_error": st.column_config.NumberColumn(
                "Relative Frobenius error", format="%.4f", help="‖F − F̃‖_F / ‖F‖_F"
            ),
            "spectrum_error": st.column_config.NumberColumn(
                "Spectrum error", format="%.4f", help="‖λ(F) − λ(F̃)‖₂ / ‖λ(F)‖₂"
            ),
            "spectrum_exact": st.column_config.CheckboxColumn(
                "Full spectrum", help="unticked: top min(m, 64) eigenvalues compared"
            ),
            "ng_cosine": st.column_config.NumberColumn(
                "Natural-gradient cosine",
                format="%.4f",
                help=f"cos∠((F + λI)⁻¹∇, (F̃ + λI)⁻¹∇), λ = {damping:g}",
            ),
            "seconds": st.column_config.NumberColumn("Compute time (s)", format="%.4f"),
            "terms": st.column_config.TextColumn(
                "Kronecker terms", help="EKFAC is a diagonal in KFAC's Kronecker eigenbasis"
            ),
            "note": st.column_config.TextColumn("Note", help="why a value is missing"),
        },
    )
    if table["deferred"].any():
        st.info(
            "Spectrum error and natural-gradient cosine of the 2-term sums are not computed on "
            f"this layer ({info.n_params:,} weights): they need Lanczos and MINRES on the "
            "full operator (seconds to minutes). Switch on *Compute slow metrics* above."
        )
    st.download_button(
        "Metrics (CSV)", table.to_csv(index=False), f"metrics-{layer}.csv", "text/csv"
    )
else:
    st.info("Choose at least one approximation in the sidebar.")

# -- pictures ----------------------------------------------------------------------------
arrays: dict[str, np.ndarray] = {}
show = None
col_show, col_contrast = st.columns(2)
if methods:
    with col_show:
        show = settings.select(
            "Approximation shown in the block and factor views",
            methods,
            "show",
            "kpsvd" if "kpsvd" in methods else methods[0],
            format_func=explorer.method_label,
        )
with col_contrast:
    contrast = settings.select(
        "Heatmap colour range",
        [1.0, 0.999, 0.99, 0.95],
        "contrast",
        0.99,
        format_func=lambda q: "full range" if q == 1.0 else f"saturate the top {1 - q:.1%}",
        help="The scale stays linear, symmetric and shared by the three panels; hover for values.",
    )

settings.sync(final=False)  # the URL follows the widgets before the figures are drawn
tabs = settings.tabs(
    {
        "block": "Fisher block",
        "factors": "Kronecker factors",
        "spectra": "Spectra",
        "rank": "Kronecker rank",
    },
    "tab",
)

# Only the open tab runs: each view computes and sends its own figures alone.
with tabs["block"]:
    if tabs["block"].open is not False and show is not None:
        view_key = sh.compute.BlockKey(sh.compute.MethodKey(fisher_key, show, damping, slow))
        with sh.friendly_errors("Block view"):
            view = sh.compute.block_view(view_key, fisher, results[show].approx)
        st.plotly_chart(
            sh.compute.figure(
                sh.compute.FigureKey(view_key, contrast),
                lambda: figures.block_heatmaps(
                    view.exact,
                    view.approx,
                    view.pooling.labels(),
                    method=explorer.method_label(show),
                    note=view.pooling.describe(),
                    group=view.pooling.dg_out,
                    saturate=contrast,
                ),
            ),
            key="block",
        )
        arrays.update(explorer.view_arrays(method=show, view=view))
    elif show is None:
        st.info("Choose an approximation to compare with F.")

with tabs["factors"]:
    if tabs["factors"].open is not False and show is not None:
        factors = explorer.factor_views(results[show].approx)
        pooled = [f for f in factors if f.block > 1]
        note = f"pooled in blocks of {pooled[0].block}" if pooled else ""
        st.plotly_chart(
            figures.factor_heatmaps(
                [(f.label, f.matrix) for f in factors],
                title=f"Kronecker factors of {explorer.method_label(show)}",
                note=note,
            ),
            key="factors",
        )
        arrays.update(explorer.view_arrays(method=show, factors=factors))

with tabs["spectra"]:
    if tabs["spectra"].open is not False:
        spectra_key = sh.compute.SpectraKey(fisher_key, damping, slow, tuple(sorted(results)))
        with sh.friendly_errors("Spectra"):
            spec = sh.compute.spectra(spectra_key, analysis)
        n = fisher.da * fisher.dg
        note = (
            f"F has at most m = {fisher.m} nonzero eigenvalues (of n = {n:,}); "
            f"each curve shows at most the top {explorer.SPECTRUM_POINTS}"
        )
        st.plotly_chart(
            sh.compute.figure(
                sh.compute.FigureKey(spectra_key),
                lambda: figures.spectra_figure(spec.curves, notes=spec.notes, note=note),
            ),
            key="spectra",
        )
        for method, why in spec.notes.items():
            st.caption(f"{explorer.method_label(method)}: {sh.plain(why)}")
        arrays.update(explorer.view_arrays(method=show or "none", spectra=spec))

with tabs["rank"]:
    if tabs["rank"].open is not False:
        max_rank = min(MAX_RANK, fisher.m)
        with sh.friendly_errors("Kronecker rank"):
            curve = sh.compute.rank_curve(fisher_key, max_rank, fisher)
        if curve.max_rank > 1:
            rank = settings.slider(
                "Kronecker rank r", "rank", DEFAULT_RANK, min_value=1, max_value=curve.max_rank
            )
        else:  # ℛ(F) has rank 1 (e.g. m = 1): F is one Kronecker product, nothing to slide
            rank = 1
            settings.hidden_slider("rank", rank, min_value=1, max_value=1)
            st.caption("ℛ(F) has rank 1 here: F is exactly one Kronecker product.")
        refs = {
            explorer.method_label(mt): results[mt].relative_error
            for mt in ("kfac", "kfac_corrected")
            if mt in results
        }
        st.plotly_chart(
            figures.rank_curve_figure(curve.ranks, curve.errors, selected=rank, references=refs),
            key="rank_curve",
        )
        ranked = curve.approximation(rank)
        rank_key = sh.compute.BlockKey(sh.compute.RankKey(fisher_key, rank))
        with sh.friendly_errors("Block view"):
            rview = sh.compute.block_view(rank_key, fisher, ranked)
        st.plotly_chart(
            sh.compute.figure(
                sh.compute.FigureKey(rank_key, contrast),
                lambda: figures.block_heatmaps(
                    rview.exact,
                    rview.approx,
                    rview.pooling.labels(),
                    method=f"best rank-{rank} sum",
                    note=rview.pooling.describe(),
                    group=rview.pooling.dg_out,
                    saturate=contrast,
                ),
            ),
            key="rank_block",
        )
        arrays.update(explorer.view_arrays(method=show or "none", curve=curve))
    else:  # a link's rank waits in the URL for the tab to open (if it can be a rank at all)
        settings.hidden_slider("rank", DEFAULT_RANK, min_value=1, max_value=MAX_RANK)


def figure_data() -> bytes:
    """The NPZ, made only when asked for (not on every rerun of every student's view)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


st.download_button(
    "Figure data (NPZ)", figure_data, f"fisher-{layer}.npz", "application/octet-stream"
)
settings.sync()
st.caption(f"Server time for this view: {time.perf_counter() - started:.2f} s")
