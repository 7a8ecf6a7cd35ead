"""The explorer's issue-19 tabs: "Compress", "Prune" and "Power iterations".

* **Compress** — the layer's W replaced by the rank-k matrix closest to it in each curvature's
  norm (plain SVD, FWSVD's diagonal Fisher, every approximation in the sidebar, the exact block
  where it fits), and the held-out loss increase against k (:mod:`core.views.downstream`).
* **Prune** — a fraction of W removed by optimal brain surgeon with each approximation's
  curvature, or by magnitude, and the held-out loss increase against the sparsity.
* **Power iterations** — k steps of the power method on ℛ(F) from the identity: k = 1 is
  Shampoo's pair of factors, many steps KPSVD's (Morwani et al. 2024).

URL parameters (public, like the explorer's others): ``compress_k`` (the largest rank of the
sweep), ``prune_sparsity`` (the largest sparsity), ``prune_kind`` (``unstructured``, ``rows``
or ``columns``), ``power_k`` (the number of power steps). A closed tab keeps its link's value
in the URL (checked, with a notice when it is invalid) for the tab's next opening. The sweeps
run in the worker pool (:func:`pages.ui.compute.compute`, the view's compute budget); each
result is named by a key covering every input, so equal views share one computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from core import (
    COMPRESS_METHODS,
    MAX_POWER_STEPS,
    PRUNE_METHODS,
    PRUNE_STRUCTURES,
    downstream_figures,
    downstream_label,
    downstream_table,
    jobs,
    merge_results,
    power_iterations_caption,
    power_iterations_figure,
    reconstruction_figure,
    reconstructions,
)

from . import compute
from .errors import EXPECTED_ERRORS, plain

__all__ = [
    "COMPRESS_K",
    "POWER_K",
    "PRUNE_KIND",
    "PRUNE_SPARSITY",
    "DownstreamInputs",
    "compress_tab",
    "keep_compress",
    "keep_power",
    "keep_prune",
    "power_tab",
    "prune_tab",
]

COMPRESS_K, PRUNE_SPARSITY, PRUNE_KIND, POWER_K = (
    "compress_k",
    "prune_sparsity",
    "prune_kind",
    "power_k",
)
DEFAULT_COMPRESS_K = 8  # the sweep's largest rank (capped by min(dg, da))
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_SPARSITY = 0.5
DEFAULT_POWER_K, MAX_POWER_K = 10, min(50, MAX_POWER_STEPS)
EVAL_BATCH = 512  # held-out images the loss increase is measured on
IMAGES = 6  # reconstructions drawn per method (autoencoders, compress tab)
RECONSTRUCTED = ("svd", "fwsvd", "kfac", "kpsvd", "exact")  # the rows of the image grid
_KIND_LABELS = {
    "unstructured": "single weights",
    "rows": "whole rows (outputs)",
    "columns": "whole columns (inputs)",
}
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DownstreamInputs:
    """What the downstream sweeps need beyond the Fisher block: the model (a
    :class:`~pages.ui.models.ModelChoice`), the dataset, the seed, and the sidebar's
    approximations and damping (the Fisher minibatch, its labels and the likelihood come with
    the block)."""

    model: Any
    ds: Any
    seed: int
    methods: tuple[str, ...]
    damping: float


@dataclass(frozen=True)
class DownstreamKey:
    """One sweep: the Fisher block's key, the job, its x values (ranks or sparsities), the
    methods (in order), the damping, the prune structure and the Fisher kind used."""

    fisher: compute.FisherKey
    job: str
    values: tuple[float, ...]
    methods: tuple[str, ...]
    damping: float
    structure: str
    kind: str
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class PowerKey:
    """The power-iteration curve of a Fisher block, k = 0 … ``steps``."""

    fisher: compute.FisherKey
    steps: int


def max_rank(block) -> int:
    """The largest rank a sweep can ask for: min(dg, da) of the layer's W."""
    return max(1, min(int(block.fisher.da), int(block.fisher.dg)))


def compress_ranks(k: int) -> tuple[int, ...]:
    """The sweep's ranks: 1, 2, 4, … below ``k``, and ``k``."""
    ranks, r = [], 1
    while r < k:
        ranks.append(r)
        r *= 2
    return (*ranks, k)


def _linear_only(block) -> bool:
    if block.info.kind == "linear":
        return True
    st.info(
        "Compress and prune work on fully connected layers here (W is one matrix): choose a "
        "linear layer in the sidebar."
    )
    return False


def _sweep(block, inputs: DownstreamInputs, job: str, values, methods, structure: str, keep=()):
    """Run one sweep in the worker pool, one job per method (the status line counts the
    methods done; each method's points are cached on their own), and merge the results
    (:func:`core.views.downstream.merge_results`; ``keep``: methods whose W at the last value
    comes back too). A method that failed is a message; ``None`` when none succeeded."""
    model, loss = inputs.model.model, block.loss
    classifier = loss == "ce"
    x_eval = inputs.ds.x_test[:EVAL_BATCH]
    eval_labels = inputs.ds.y_test[:EVAL_BATCH] if classifier else None
    kind = block.key.kind
    what = "Compressing the layer" if job == "compress" else "Pruning the layer"
    work = []
    for method in methods:
        mine = (method,) if method in keep else ()
        key = DownstreamKey(
            block.key, job, tuple(values), (method,), float(inputs.damping), structure, kind,
            mine,
        )  # fmt: skip
        args = (
            job, model, block.key.layer, block.batch, x_eval, loss, kind, int(inputs.seed),
            tuple(values), (method,), float(inputs.damping), structure, eval_labels,
            block.labels, mine,
        )  # fmt: skip
        work.append((key, jobs.downstream_sweep, args, what, "choose a smaller layer"))
    outcomes = compute.compute_all(work, lane=compute.lane_of(block.fisher, False))
    parts = []
    for key, _fn, _args, _what, _how in work:
        outcome = outcomes[key]
        if isinstance(outcome, EXPECTED_ERRORS):  # the job's own error, or the budget's
            st.error(f"**{what} ({downstream_label(key.methods[0])}):** {plain(outcome)}")
        elif isinstance(outcome, Exception):
            raise outcome
        else:
            parts.append(outcome)
    return merge_results(parts) if parts else None


def _show(result, name: str) -> Arrays:
    """The figure, its caption, the table and the arrays of one sweep."""
    figs, caption = downstream_figures(result)
    for i, fig in enumerate(figs):
        st.plotly_chart(fig, key=f"{name}_{i}")
    st.caption(caption)
    table = downstream_table(result)
    st.dataframe(table, hide_index=True)
    st.download_button(
        f"{name.capitalize()} table (CSV)",
        table.to_csv(index=False),
        f"{name}-{result.layer}.csv",
        "text/csv",
    )
    arrays: Arrays = {}
    for method in result.methods:
        xs, ys = result.series(method)
        arrays[f"{name}_{method}_x"] = np.asarray(xs)
        arrays[f"{name}_{method}_loss_increase"] = np.asarray(ys)
        arrays[f"{name}_{method}_fisher_increase"] = np.asarray(
            result.series(method, "fisher_increase")[1]
        )
    return arrays


def compress_tab(settings, block, inputs: DownstreamInputs) -> Arrays:
    """The rank slider (``compress_k``), the loss-increase figure against k, its caption and
    table."""
    top = max_rank(block)
    k = settings.slider(
        "Largest rank k of the sweep", COMPRESS_K, min(DEFAULT_COMPRESS_K, top),
        min_value=1, max_value=top,
        help="W (outputs × inputs + 1, the bias as the last column) is replaced by its best "
        "rank-k approximation in each curvature's norm, for k = 1, 2, 4, … up to this value.",
    )  # fmt: skip
    if not _linear_only(block):
        return {}
    methods = [m for m in COMPRESS_METHODS if m in ("svd", "fwsvd", "exact", *inputs.methods)]
    autoencoder = hasattr(inputs.model.model, "reconstruct")
    keep = tuple(m for m in RECONSTRUCTED if m in methods) if autoencoder else ()
    ranks = compress_ranks(int(k))
    result = _sweep(block, inputs, "compress", ranks, methods, "unstructured", keep)
    if result is None:
        return {}
    arrays = _show(result, "compress")
    if result.weights:
        _reconstruction_images(result, inputs, block.key.layer, ranks[-1])
    return arrays


def _reconstruction_images(result, inputs: DownstreamInputs, layer: str, k: int) -> None:
    """The autoencoder's reconstructions of a few held-out images with the layer compressed
    to rank ``k`` by each of :data:`RECONSTRUCTED` (a forward pass of :data:`IMAGES` images:
    light enough for the page)."""
    weights = {method: w for (method, _x), w in result.weights.items()}
    model = inputs.model.model  # shared by sessions: never moved or changed here
    x = inputs.ds.x_test[:IMAGES].to(next(model.parameters()).device)
    try:
        images = reconstructions(model, layer, weights, x)
    except EXPECTED_ERRORS as err:
        st.caption(f"Reconstruction images: {plain(err)}")
        return
    titles = {"original": "unchanged"} | {m: f"{downstream_label(m)}, k = {k}" for m in weights}
    st.plotly_chart(
        reconstruction_figure(images, inputs.ds.image_shape, count=IMAGES, titles=titles),
        key="compress_images",
    )
    st.caption(
        f"The first {IMAGES} held-out images as the autoencoder reconstructs them with "
        f"{layer} unchanged (top row) and compressed to rank {k} by each method: the "
        "better the curvature, the closer a row should stay to the top one."
    )


def keep_compress(settings, block) -> None:
    """The compress tab is closed: keep a link's ``compress_k`` for its next opening."""
    settings.hidden_slider(
        COMPRESS_K, min(DEFAULT_COMPRESS_K, max_rank(block)), min_value=1,
        max_value=max_rank(block),
    )  # fmt: skip


def prune_tab(settings, block, inputs: DownstreamInputs) -> Arrays:
    """The sparsity slider (``prune_sparsity``), the structure (``prune_kind``), the figure of
    the loss increase against the sparsity, its caption and table."""
    col_s, col_k = st.columns(2)
    with col_s:
        top = settings.select_slider(
            "Largest sparsity of the sweep", SPARSITIES, PRUNE_SPARSITY, DEFAULT_SPARSITY,
            format_func=lambda v: f"{v:.0%}",
            help="The fraction of weights (or rows, or columns) removed, from 10% up to this.",
        )  # fmt: skip
    with col_k:
        kind = settings.radio(
            "Remove", list(PRUNE_STRUCTURES), PRUNE_KIND, "unstructured",
            format_func=_KIND_LABELS.get, horizontal=True,
        )  # fmt: skip
    if not _linear_only(block):
        return {}
    values = tuple(s for s in SPARSITIES if s <= float(top) + 1e-12)
    methods = [m for m in PRUNE_METHODS if m in ("magnitude", "exact", *inputs.methods)]
    result = _sweep(block, inputs, "prune", values, methods, str(kind))
    return {} if result is None else _show(result, "prune")


def keep_prune(settings) -> None:
    """The prune tab is closed: keep a link's ``prune_sparsity`` and ``prune_kind``."""
    settings.hidden_choice(PRUNE_SPARSITY, SPARSITIES, DEFAULT_SPARSITY)
    settings.hidden_choice(PRUNE_KIND, list(PRUNE_STRUCTURES), "unstructured")


def power_tab(settings, block) -> Arrays:
    """The power-steps slider (``power_k``), the error against k with KFAC and KPSVD as
    references, and its caption."""
    steps = settings.slider(
        "Power steps k", POWER_K, DEFAULT_POWER_K, min_value=1, max_value=MAX_POWER_K,
        help="k = 1 is Shampoo's preconditioner (its factors squared); as k grows the product "
        "becomes KPSVD's, the best single Kronecker product.",
    )  # fmt: skip
    key = PowerKey(block.key, int(steps))
    try:
        curve = compute.compute(
            key, jobs.power_iterations, block.fisher, int(steps),
            what="The power iterations", how="choose fewer steps or a smaller layer",
            lane=compute.lane_of(block.fisher, False),
        )  # fmt: skip
    except EXPECTED_ERRORS as err:
        st.error(f"**Power iterations:** {plain(err)}")
        return {}
    st.plotly_chart(power_iterations_figure(curve), key="power_iterations")
    st.caption(power_iterations_caption(curve))
    return {
        "power_errors": np.asarray(curve.errors),
        "power_kfac": np.asarray(curve.kfac),
        "power_kpsvd": np.asarray(curve.kpsvd),
    }


def keep_power(settings) -> None:
    """The power tab is closed: keep a link's ``power_k``."""
    settings.hidden_slider(POWER_K, DEFAULT_POWER_K, min_value=1, max_value=MAX_POWER_K)
