"""Fisher explorer: one layer's Fisher block next to its Kronecker-factored approximations.

The page is :func:`main`, a sequence of named steps: the model, the block's controls, the
Fisher block, each method's result, the metrics table, then the tabs (a fragment,
:func:`views`, so that changing what they show reruns them alone; only the open one
computes; "Damped step" compares each method's damped natural-gradient step with the exact
one over λ, issue 21; "Compress", "Prune" and "Power iterations" are issue 19's,
:mod:`pages.ui.downstream_tabs`) and the figure data. Widgets, their keys and the URL
parameters they keep (``dataset``, ``preset``, ``seed``, ``model``, ``opt``, ``steps``,
``layer``, ``methods``, ``m``, ``fisher``, ``damping``, ``slow``, ``show``, ``contrast``,
``heatmap``,
``tab``, ``rank``, ``step_damping``, ``factor_order``, ``compress_k``, ``prune_sparsity``,
``prune_kind``, ``power_k``, …) are a public interface: shared links carry them.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from core import (
    METHODS,
    OPTIMIZERS,
    check_layer_size,
    describe_layers,
    direction,
    explorer,
    figures,
    heatmap_image,
    model_loss,
    spectra_image,
)
from pages import ui as sh
from pages.ui import downstream_tabs

DEFAULT_RANK, MAX_RANK = 2, 10  # the Kronecker rank slider: its default, its widest range
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class BlockChoice:
    """The sidebar's choice of Fisher block and what to compare it with."""

    layer: str
    methods: list[str]
    m: int
    kind: str
    damping: float


@dataclass(frozen=True)
class Block:
    """The Fisher block being explored, the key naming it, the layer it belongs to, and the
    capture it came from: the model's likelihood (``loss``), the Fisher minibatch and its class
    labels (``None`` for an autoencoder)."""

    fisher: Any
    key: sh.compute.FisherKey
    info: Any
    loss: str
    batch: Any
    labels: Any


def model_choice(settings: sh.UrlSettings) -> tuple[Any, Any, str, int, sh.ModelChoice]:
    """The dataset and the model (at initialization or trained): (data, dataset, preset,
    seed, model choice)."""
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
        choice = sh.trained_model(
            data, ds, preset, int(seed), optimizer=opt_name, settings=hyper, steps=int(steps)
        )
    else:
        init = sh.initial_model(data.key, preset=preset, seed=int(seed), ds=ds)
        choice = sh.ModelChoice(f"{data.key}|{preset}|seed={seed}|init", init, "at initialization")
    return data, ds, preset, seed, choice


def block_controls(settings: sh.UrlSettings, model) -> BlockChoice:
    """The sidebar's Fisher-block section: layer, approximations, m, Fisher kind, damping."""
    layers = sh.layer_options(model)
    with st.sidebar:
        st.header("Fisher block")
        layer = settings.select(
            "Layer",
            list(layers),
            "layer",
            sh.default_layer(model),
            format_func=layers.get,
            help="W has shape (outputs, inputs + 1): the bias is the last column. A "
            "convolution's W is (C_out, C_in·kh·kw + 1), shared by its T output positions.",
        )
        methods = settings.multiselect(
            "Approximations", METHODS, "methods", METHODS, format_func=explorer.method_label
        )
        m = settings.select(
            "Fisher minibatch m", [1, 8, 32, 64, 128, 256, 512, 1024], "m", 256,
            help="Samples in the estimate F = (1/m) Σ (ā ā^T) ⊗ (g g^T); rank F ≤ m.",
        )  # fmt: skip
        kind = settings.radio(
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
    return BlockChoice(layer, methods, m, kind, damping)


def fisher_block(*, data, ds, preset: str, seed: int, choice, block: BlockChoice) -> Block:
    """The layer's Fisher block from the worker pool, after the layer-size check, with the
    caption that says what it is."""
    info = next(i for i in describe_layers(choice.model) if i.name == block.layer)
    with sh.friendly_errors("Layer size"):
        check_layer_size(info.n_params, f"layer {block.layer}")
    with sh.friendly_errors("The model's likelihood"):
        loss = model_loss(choice.model, ds)  # a classifier's softmax, or the pixels' likelihood
    batch, labels = sh.fisher_batch(ds, int(block.m), int(seed), labels=loss == "ce")
    m_used = batch.shape[0]
    key = sh.compute.FisherKey(choice.key, block.layer, block.kind, m_used)
    with sh.friendly_errors("Capturing the layer's gradients"):
        fisher = sh.compute.layer_fisher(
            key, model=choice.model, x=batch, loss=loss, seed=int(seed), targets=labels
        )
        explorer.check_fisher(fisher, block.layer)
    m_note = "" if m_used == block.m else f" (the dataset has {ds.n_train:,} training images)"
    st.caption(
        f"{data.name} · {preset} · {choice.description} · {info.label} · "
        f"m = {m_used}{m_note} · {block.kind} Fisher · training device: {sh.device_label()}, "
        "Fisher numerics: CPU, float64, in the server's worker processes"
    )
    return Block(fisher, key, info, loss, batch, labels)


def method_results(
    block: Block, methods: list[str], *, damping: float, slow: bool
) -> dict[str, explorer.MethodResult]:
    """Each method's result; a method that failed is a message, not a blank page."""
    results: dict[str, explorer.MethodResult] = {}
    for method, outcome in sh.compute.method_results(
        block.key, methods, damping=float(damping), slow=slow, fisher=block.fisher
    ).items():
        if isinstance(outcome, Exception):
            st.error(f"**Approximating ({explorer.method_label(method)}):** {sh.plain(outcome)}")
        else:
            results[method] = outcome
    return results


def metrics_table(analysis: explorer.LayerAnalysis, damping: float, block: Block) -> None:
    """The table of how close each approximation is, its notes and its CSV.

    A markdown table (:func:`explorer.metrics_markdown`), not a data frame or ``st.table``:
    those ship their grid or Arrow script (1.3 MB, ≈ 1 MB) to every new visitor's browser
    before the view is complete (issue 20); the column help is the caption under the table,
    the full-precision numbers are in the CSV."""
    st.subheader("How close is each approximation?")
    table = analysis.table()
    if not len(table):
        st.info("Choose at least one approximation in the sidebar.")
        return
    st.markdown(explorer.metrics_markdown(table))
    st.caption(metric_help(damping))
    if table["deferred"].any():
        st.info(
            "Spectrum error and natural-gradient cosine of the 2-term sums are not computed on "
            f"this layer ({block.info.n_params:,} weights): they need Lanczos and MINRES on the "
            "full operator (seconds to minutes). Switch on *Compute slow metrics* above."
        )
    st.download_button(
        "Metrics (CSV)", table.to_csv(index=False), f"metrics-{block.key.layer}.csv", "text/csv"
    )


def metric_help(damping: float) -> str:
    """What each column of the metrics table measures."""
    return (
        "Relative Frobenius error ‖F − F̃‖_F / ‖F‖_F. Spectrum error ‖λ(F) − λ(F̃)‖₂ / "
        "‖λ(F)‖₂ over the whole spectrum, or over the top min(m, 64) eigenvalues where *Full "
        "spectrum* says so. Natural-gradient cosine: cos∠((F + λI)⁻¹∇, (F̃ + λI)⁻¹∇) at "
        f"λ = {damping:g}. EKFAC's terms are a diagonal in KFAC's Kronecker eigenbasis; the "
        "note says why a value is missing."
    )


STEP_DAMPING = "step_damping"  # the URL parameter of the damped-step tab's λ slider


def step_tab(settings: sh.UrlSettings, block: Block, results, *, slow: bool) -> Arrays:
    """What the step sees: each method's damped natural-gradient direction against the exact
    one at the λ of its slider, next to its Frobenius error, and the "error vs λ" figure."""
    if not results:
        st.info("Choose at least one approximation in the sidebar.")
        settings.hidden_choice(
            STEP_DAMPING, direction.STEP_DAMPINGS, direction.DEFAULT_STEP_DAMPING
        )
        return {}
    lam = settings.select_slider(
        "Damping λ of the step", direction.STEP_DAMPINGS, STEP_DAMPING,
        direction.DEFAULT_STEP_DAMPING, format_func=lambda v: f"{v:g}",
        help="x = (F + λI)⁻¹∇ (exact block, Woodbury) against x̃, the approximation's damped "
        "inverse applied to the batch gradient ∇: with the optimizers' factored damping, and "
        "with exact damping. The table above uses the sidebar's λ.",
    )  # fmt: skip
    curves = {}
    for method, outcome in sh.compute.direction_curves(
        block.key, results, slow=slow, fisher=block.fisher
    ).items():
        if isinstance(outcome, Exception):
            st.error(f"**Damped step ({explorer.method_label(method)}):** {sh.plain(outcome)}")
        else:
            curves[method] = outcome
    if not curves:
        return {}
    frobenius = {method: result.relative_error for method, result in results.items()}
    table = direction.direction_table(curves, frobenius, lam)
    st.dataframe(
        table.assign(method=table["method"].map(explorer.method_label)),
        hide_index=True,
        column_config=direction_columns(lam),
    )
    key = sh.compute.DirectionFigureKey(block.key, tuple(sorted(curves)), slow, lam)
    figure = sh.compute.figure(
        sh.compute.FigureKey(key),
        lambda: figures.direction_figure(list(curves.values()), selected=lam),
    )
    st.plotly_chart(figure, key="direction")
    st.caption(direction.caption(table, lam))
    skipped = [explorer.method_label(m) for m, c in curves.items() if c.skipped]
    if skipped:
        st.caption(
            f"{', '.join(skipped)}: exact damping not computed on this layer (MINRES per λ); "
            "switch on *Compute slow metrics* to draw it."
        )
    return direction.direction_arrays(curves)


def direction_columns(damping: float) -> dict[str, Any]:
    """The damped-step table's headings and help."""
    number = st.column_config.NumberColumn
    return {
        "method": "Method",
        "relative_error": number("Relative Frobenius error", format="%.4f"),
        "step_error": number(
            "Step error", format="%.4f",
            help=f"‖x̃ − x‖/‖x‖ at λ = {damping:g}, x̃ with the optimizers' factored damping",
        ),
        "step_cosine": number("Step cosine", format="%.4f", help="cos∠(x̃, x), factored damping"),
        "step_norm_ratio": number(
            "Step norm ratio", format="%.3f", help="‖x̃‖/‖x‖, factored damping"
        ),
        "exact_step_error": number(
            "Step error (exact damping)", format="%.4f", help="x̃ = (F̃ + λI)⁻¹∇"
        ),
        "exact_step_cosine": number("Step cosine (exact damping)", format="%.4f"),
    }  # fmt: skip


HEATMAP = "heatmap"  # the URL parameter (a stable name): the block and factor heatmaps and the
# spectra as server-drawn pictures or interactive plotly charts
HEATMAP_KINDS = {"picture": "picture (quick)", "interactive": "interactive (hover values)"}


def picture_controls(settings: sh.UrlSettings, methods: list[str]) -> tuple[str | None, float, str]:
    """The approximation the block and factor views show (None: none chosen), the heatmaps'
    colour range, and how the block heatmaps are drawn (a key of ``HEATMAP_KINDS``)."""
    show = None
    col_show, col_contrast, col_kind = st.columns([2, 2, 1.4])
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
            help="The scale stays linear, symmetric and shared by the three panels; hover for "
            "values.",
        )
    with col_kind:
        kind = settings.radio(
            "Charts", list(HEATMAP_KINDS), HEATMAP, "picture",
            format_func=HEATMAP_KINDS.get,
            help="The block and factor heatmaps and the spectra: a picture drawn on the server "
            "appears at once; the interactive chart loads plotly.js (4.7 MB) first and then "
            "shows every value and its labels on hover.",
        )  # fmt: skip
    return show, contrast, kind


def block_figure(view, method: str, contrast: float) -> Callable[[], Any]:
    """A builder of the exact/approximate/difference heatmaps of ``view``, drawn coarsened to
    at most ``explorer.DISPLAY_MAX_SIDE`` cells per axis (block means) on the colour range of
    the full view (what is sent stays small: issue 20)."""

    def build():
        shown = explorer.coarsen(view)
        return figures.block_heatmaps(
            shown.exact,
            shown.approx,
            shown.pooling.labels(),
            method=method,
            note=shown.pooling.describe(),
            group=shown.pooling.dg_out,
            saturate=contrast,
            range_from=(view.exact, view.approx),
        )

    return build


def block_caption(view) -> None:
    """What the heatmaps show when they are coarser than the view behind them, and where the
    full one is."""
    shown = explorer.display_pooling(view.pooling)
    if shown == view.pooling:
        return
    full = view.pooling.side
    behind = f" (itself {view.pooling.describe()})" if view.pooling.downsampled else ""
    st.caption(
        f"The heatmaps are drawn with at most {explorer.DISPLAY_MAX_SIDE} cells per axis, so "
        f"the page stays quick to load: {shown.side} × {shown.side} cells, each cell (and its "
        f"hover value) the mean of its block of the {full:,} × {full:,} view{behind}. The "
        "colour scale is computed from that full view, so a colour means the same value as at "
        f"full resolution; the {full:,} × {full:,} matrices are in *Figure data (NPZ)* below."
    )


def block_picture(view, method: str, contrast: float) -> Callable[[], bytes]:
    """A builder of :func:`block_figure`'s heatmaps as one PNG (core.views.heatmap_image),
    drawn at up to ``explorer.PICTURE_MAX_SIDE`` cells per axis on the same colour range."""

    def build():
        shown = explorer.coarsen(view, explorer.PICTURE_MAX_SIDE)
        return heatmap_image.block_heatmap_png(
            shown.exact, shown.approx, method=method, saturate=contrast,
            range_from=(view.exact, view.approx),
        )  # fmt: skip

    return build


def picture_caption(view, contrast: float) -> None:
    """What the picture shows: cells, order, colour range, and where the values are."""
    shown = explorer.display_pooling(view.pooling, explorer.PICTURE_MAX_SIDE)
    cells = (
        f"{shown.side} × {shown.side} cells"
        if shown == view.pooling
        else f"{shown.side} × {shown.side} cells, each the mean of its block of the "
        f"{view.pooling.side:,} × {view.pooling.side:,} view"
    )
    clip = f"; colours saturate at the {contrast:.1%} quantile of |entries|" if contrast < 1 else ""
    st.caption(
        f"A picture drawn on the server ({cells}, rows and columns in vec(W) order{clip}): "
        "one linear colour scale shared by the three panels, the same as the interactive "
        "chart's. Choose *interactive* above for each cell's value on hover; the full "
        "matrices are in *Figure data (NPZ)* below."
    )


def block_tab(
    block: Block, results, *, show: str, damping: float, slow: bool, contrast, kind: str
) -> Arrays:
    """The Fisher block, the shown approximation and their difference: a picture, or (``kind``
    "interactive") a plotly chart."""
    key = sh.compute.BlockKey(sh.compute.MethodKey(block.key, show, damping, slow))
    picture = kind == "picture"
    with sh.friendly_errors("Block view"):
        view = sh.compute.block_view(key, block.fisher, results[show].approx)
        build = (block_picture if picture else block_figure)(
            view, explorer.method_label(show), contrast
        )
        figure = sh.compute.figure(sh.compute.FigureKey(key, contrast, picture=picture), build)
    if picture:
        st.image(figure, width="stretch", output_format="PNG")  # lossless: exact colours
        picture_caption(view, contrast)
    else:
        st.plotly_chart(figure, key="block")
        block_caption(view)
    return explorer.view_arrays(method=show, view=view)


FACTOR_ORDER = "factor_order"  # the URL parameter of a conv layer's input-factor order


def factors_tab(settings: sh.UrlSettings, block: Block, results, show: str, *, kind: str) -> Arrays:
    """The Kronecker factors of the shown approximation, a picture or (``kind``
    "interactive") a plotly chart; a convolution's input factors can be grouped by kernel
    position (:func:`core.views.explorer.kernel_position_order`)."""
    info, order = block.info, None
    if info.kind == "conv2d":
        by = settings.radio(
            "Input factor order",
            ["unfolded", "kernel"],
            FACTOR_ORDER,
            "kernel",
            format_func={
                "unfolded": "as unfolded (channel-major)",
                "kernel": "by kernel position",
            }.get,
            horizontal=True,
            help="By kernel position, the input factor reads as kh·kw × kh·kw blocks of "
            "C_in × C_in: how the channels at two positions of the kernel co-vary.",
        )
        if by == "kernel":
            order = explorer.kernel_position_order(info.in_channels, info.kernel, info.bias)
    factors = explorer.factor_views(results[show].approx, input_order=order)
    pooled = [f for f in factors if f.block > 1]
    note = f"pooled in blocks of {pooled[0].block}" if pooled else ""
    if order is not None:
        (kh, kw), c_in = info.kernel, info.in_channels
        grouped = f"inputs grouped by kernel position: {kh * kw} blocks of {c_in} channels"
        note = f"{note}; {grouped}" if note else grouped
    title = f"Kronecker factors of {explorer.method_label(show)}"
    matrices = [(f.label, f.matrix) for f in factors]
    if kind != "picture" or not factors:
        st.plotly_chart(figures.factor_heatmaps(matrices, title=title, note=note), key="factors")
        return explorer.view_arrays(method=show, factors=factors)
    st.markdown(f"**{title}**")
    with sh.friendly_errors("Kronecker factors"):
        st.image(heatmap_image.factor_heatmaps_png(matrices), width="stretch", output_format="PNG")
    st.caption(
        "A picture drawn on the server: each factor on its own symmetric linear colour scale "
        "(blue < 0 < red; R ⊗ S = (cR) ⊗ (S/c), so the factors' scales are not comparable), "
        "the interactive chart's" + (f"; {note}" if note else "") + ". Choose *interactive* "
        "above for each entry's value on hover; the matrices are in *Figure data (NPZ)* below."
    )
    return explorer.view_arrays(method=show, factors=factors)


def spectra_tab(
    block: Block, analysis, *, damping: float, slow: bool, show: str | None, kind: str
) -> Arrays:
    """The spectra of F and of every approximation, with why a curve is missing: a picture,
    or (``kind`` "interactive") a plotly chart."""
    fisher = block.fisher
    key = sh.compute.SpectraKey(block.key, damping, slow, tuple(sorted(analysis.results)))
    with sh.friendly_errors("Spectra"):
        spec = sh.compute.spectra(key, analysis)
    n = fisher.da * fisher.dg
    note = (
        f"F has at most m = {fisher.m} nonzero eigenvalues (of n = {n:,}); "
        f"each curve shows at most the top {explorer.SPECTRUM_POINTS}"
    )
    if kind == "picture":
        st.markdown("**Eigenvalue spectra**")
        with sh.friendly_errors("Spectra"):
            picture = sh.compute.figure(
                sh.compute.FigureKey(key, picture=True),
                lambda: spectra_image.spectra_png(spec.curves, notes=spec.notes),
            )
        st.image(picture, width="stretch", output_format="PNG")
        st.caption(
            f"A picture drawn on the server, both axes logarithmic: {note}; |λ| ≤ 1e-12·λ_max "
            "is numerically zero and not drawn. Choose *interactive* above for each value on "
            "hover; the eigenvalues are in *Figure data (NPZ)* below."
        )
    else:
        st.plotly_chart(
            sh.compute.figure(
                sh.compute.FigureKey(key),
                lambda: figures.spectra_figure(spec.curves, notes=spec.notes, note=note),
            ),
            key="spectra",
        )
    for method, why in spec.notes.items():
        st.caption(f"{explorer.method_label(method)}: {sh.plain(why)}")
    return explorer.view_arrays(method=show or "none", spectra=spec)


def rank_tab(settings: sh.UrlSettings, block: Block, *, results, show, contrast) -> Arrays:
    """The error of the best rank-r sums, the rank slider, and that sum's block view."""
    fisher = block.fisher
    with sh.friendly_errors("Kronecker rank"):
        curve = sh.compute.rank_curve(block.key, min(MAX_RANK, fisher.m), fisher)
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
    key = sh.compute.BlockKey(sh.compute.RankKey(block.key, rank))
    with sh.friendly_errors("Block view"):
        view = sh.compute.block_view(key, fisher, curve.approximation(rank))
    figure = sh.compute.figure(
        sh.compute.FigureKey(key, contrast),
        block_figure(view, f"best rank-{rank} sum", contrast),
    )
    st.plotly_chart(figure, key="rank_block")
    block_caption(view)
    return explorer.view_arrays(method=show or "none", curve=curve) | explorer.view_arrays(
        method=f"rank{rank}", view=view
    )


def pictures(
    settings,
    block: Block,
    *,
    analysis,
    choice: BlockChoice,
    slow: bool,
    downstream: downstream_tabs.DownstreamInputs,
) -> Arrays:
    """The tabs; only the open one runs, computing and sending its own figures alone (the
    last three, issue 19, in :mod:`pages.ui.downstream_tabs`). Returns the arrays behind what
    was drawn."""
    results, methods = analysis.results, list(analysis.results)
    show, contrast, kind = picture_controls(settings, methods)
    settings.sync(final=False)  # the URL follows the widgets before the figures are drawn
    tabs = settings.tabs(
        {
            "block": "Fisher block",
            "factors": "Kronecker factors",
            "spectra": "Spectra",
            "rank": "Kronecker rank",
            "step": "Damped step",
            "compress": "Compress",
            "prune": "Prune",
            "power": "Power iterations",
        },
        "tab",
    )
    arrays: Arrays = {}
    with tabs["block"]:
        if tabs["block"].open is not False and show is not None:
            arrays |= block_tab(
                block, results, show=show, damping=choice.damping, slow=slow, contrast=contrast,
                kind=kind,
            )  # fmt: skip
        elif show is None:
            st.info("Choose an approximation to compare with F.")
    with tabs["factors"]:
        if tabs["factors"].open is not False and show is not None:
            arrays |= factors_tab(settings, block, results, show, kind=kind)
    with tabs["spectra"]:
        if tabs["spectra"].open is not False:
            arrays |= spectra_tab(
                block, analysis, damping=choice.damping, slow=slow, show=show, kind=kind
            )
    with tabs["rank"]:
        if tabs["rank"].open is not False:
            arrays |= rank_tab(settings, block, results=results, show=show, contrast=contrast)
        else:  # a link's rank waits in the URL for the tab to open (if it can be a rank at all)
            settings.hidden_slider("rank", DEFAULT_RANK, min_value=1, max_value=MAX_RANK)
    with tabs["step"]:
        if tabs["step"].open is not False:
            arrays |= step_tab(settings, block, results, slow=slow)
        else:  # a link's λ waits in the URL for the tab to open
            settings.hidden_choice(
                STEP_DAMPING, direction.STEP_DAMPINGS, direction.DEFAULT_STEP_DAMPING
            )
    with tabs["compress"]:
        if tabs["compress"].open is not False:
            arrays |= downstream_tabs.compress_tab(settings, block, downstream)
        else:  # a link's values wait in the URL for their tab to open
            downstream_tabs.keep_compress(settings, block)
    with tabs["prune"]:
        if tabs["prune"].open is not False:
            arrays |= downstream_tabs.prune_tab(settings, block, downstream)
        else:
            downstream_tabs.keep_prune(settings)
    with tabs["power"]:
        if tabs["power"].open is not False:
            arrays |= downstream_tabs.power_tab(settings, block)
        else:
            downstream_tabs.keep_power(settings)
    return arrays


@dataclass
class PageRun:
    """One full run of the page, handed to :func:`views`: its URL settings and start time.
    A fragment's rerun calls :func:`views` again with the objects of the full run that drew
    it; ``claimed`` tells the two apart (Streamlit offers no public test)."""

    settings: sh.UrlSettings
    started: float
    claimed: bool = False

    def claim(self) -> bool:
        """True the first time: :func:`views` is running inside this full run."""
        first, self.claimed = not self.claimed, True
        return first


@st.fragment
def views(
    run: PageRun,
    block: Block,
    *,
    analysis,
    choice: BlockChoice,
    slow: bool,
    downstream: downstream_tabs.DownstreamInputs,
) -> None:
    """The pictures, their tabs and the figure data, as a fragment: a change of what they show
    (the approximation shown, the colour range, the kind of chart, the tab, a tab's own
    controls) reruns this part alone, against the block and results of the run that drew it;
    the sidebar, the block and the metrics table are not redone and not sent again. A rerun
    has a compute budget of its own and keeps its settings in the URL (adding, never removing:
    the page's full run decides what the URL holds), and reports its own server time."""
    full_run = run.claim()
    if full_run:
        settings, started = run.settings, run.started
    else:
        started = time.perf_counter()
        sh.compute.start_view()
        settings = sh.UrlSettings("explorer")
        settings.show_notices()  # a tab's control drawn for the first time may replace a value
    arrays = pictures(
        settings, block, analysis=analysis, choice=choice, slow=slow, downstream=downstream
    )
    figure_data_button(arrays, choice.layer)
    if not full_run:  # a full run's own sync, in main(), follows
        settings.sync(final=False)
    st.caption(f"Server time for this view: {time.perf_counter() - started:.2f} s")


def figure_data_button(arrays: Arrays, layer: str) -> None:
    """The NPZ of every array drawn, made only when asked for (not on every rerun of every
    student's view)."""

    def figure_data() -> bytes:
        buffer = io.BytesIO()
        # allow_pickle: numpy's default, named so that no array can be taken for it
        np.savez_compressed(buffer, allow_pickle=True, **arrays)
        return buffer.getvalue()

    st.download_button(
        "Figure data (NPZ)", figure_data, f"fisher-{layer}.npz", "application/octet-stream"
    )


def main() -> None:
    sh.ensure_navigation()
    started = time.perf_counter()
    st.title("Fisher explorer")
    settings = sh.UrlSettings("explorer")
    sh.compute.start_view()  # this view's compute budget (see pages/ui/compute.py)
    data, ds, preset, seed, model = model_choice(settings)
    choice = block_controls(settings, model.model)
    settings.show_notices()
    block = fisher_block(data=data, ds=ds, preset=preset, seed=seed, choice=model, block=choice)
    slow = settings.toggle(
        "Compute slow metrics (spectrum and natural gradient of 2-term sums on large layers)",
        "slow",
        False,
    )
    results = method_results(block, choice.methods, damping=choice.damping, slow=slow)
    analysis = explorer.LayerAnalysis(block.fisher, results)
    metrics_table(analysis, choice.damping, block)
    downstream = downstream_tabs.DownstreamInputs(
        model, ds, int(seed), tuple(choice.methods), float(choice.damping)
    )
    run = PageRun(settings, started)
    views(run, block, analysis=analysis, choice=choice, slow=slow, downstream=downstream)
    settings.sync()


main()
