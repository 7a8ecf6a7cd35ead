"""The Fisher explorer's numerics: one layer's Fisher block next to its approximations.

Given a model, a batch and a layer, :func:`capture_layer` records the layer's per-sample inputs
``ā_i`` and output gradients ``g_i`` (core.engine.capture); :func:`analyse` builds each
approximation (core.engine.approx) and compares it with the exact block through
:class:`core.engine.fisher.LayerFisher`. Every metric here is matrix-free, so it works for layers of
any size:

* relative Frobenius error ``‖F − F̃‖_F / ‖F‖_F``;
* the seed paper's spectrum error ``‖λ(F) − λ(F̃)‖₂ / ‖λ(F)‖₂``;
* the cosine between the exact damped natural gradient ``(F + λI)⁻¹∇`` (Woodbury) and the
  approximate one ``(F̃ + λI)⁻¹∇``;
* the seconds each approximation took to build.

Pictures of dense matrices are a different matter: ``F`` has ``(da·dg)²`` entries. The views
below are *pooled*: inputs are averaged in contiguous groups of ``block_a`` and outputs in
groups of ``block_g`` (matrices ``P_a``, ``P_g`` with rows summing to one), and the picture is
``(P_a ⊗ P_g) X (P_a ⊗ P_g)ᵀ`` — each cell the mean of ``X`` over one (input group × output
group)² block, still in ``vec(W)`` order ``(i, p) ↦ i·dg + p``. Because
``(P_a ⊗ P_g)(ā ⊗ g) = (P_a ā) ⊗ (P_g g)``, the pooled Fisher is the Fisher of the pooled
batch, and a pooled Kronecker product is ``(P_a R P_aᵀ) ⊗ (P_g S P_gᵀ)``: nothing of size
``n × n`` is ever formed. With blocks of 1 the view is the exact dense matrix.

What is sent to the browser is smaller still (issue 20: a block heatmap's three panels at
256 × 256 float32 cells are over 1 MB): :func:`coarsen` merges a view's groups until it has
at most ``DISPLAY_MAX_SIDE`` cells per axis, each cell still the mean of the original entries
of its block, while the colour range is taken from the full view (figures.block_heatmaps'
``range_from``) and the full view is what the figure-data download holds.

The Kronecker-rank view uses Eckart–Young on the rearrangement (Van Loan & Pitsianis 1993): the
best rank-``r`` sum is the first ``r`` terms of the truncated SVD of ℛ(F), and its error curve
is evaluated term by term with the matrix-free relative error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..engine.approx import Approximation, KroneckerSum
from ..engine.capture import LayerCapture, capture
from ..engine.fisher import LayerFisher
from ..engine.methods import METHODS, approximate
from .labels import FACTOR_NAMES, method_label

DEFAULT_MAX_SIDE = 256  # largest side of a computed dense view (cells per axis): the download
DISPLAY_MAX_SIDE = 96  # largest side of a block heatmap sent to the browser (see coarsen)
PICTURE_MAX_SIDE = 192  # the same for the server-drawn picture (PNG bytes grow with cells²)
DEFAULT_DAMPING = 1e-3
SPECTRUM_POINTS = 512  # eigenvalues drawn per spectrum (the largest ones)
SLOW_LIMIT = 2048  # above: spectrum and natural gradient of sums are opt-in (see is_slow)


# -- capture ---------------------------------------------------------------------------------


def capture_layer(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    loss: str,
    fisher: str = "true",
    targets: torch.Tensor | None = None,
    seed: int = 0,
) -> LayerCapture:
    """Per-sample ``ā_i`` and ``g_i`` of one Linear layer on the batch ``x`` (core.engine.capture).

    The true Fisher's targets are drawn with a generator seeded by ``seed``, so one setting
    gives one batch of gradients.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    result = capture(
        model,
        x,
        loss=loss,
        fisher=fisher,
        targets=targets if fisher == "empirical" else None,
        generator=generator if fisher == "true" else None,
        layers=[layer],
    )
    return result.layers[layer]


def check_fisher(fisher: LayerFisher, layer: str = "this layer") -> None:
    """Refuse a Fisher block that is zero (every output gradient vanished: e.g. all ReLUs after
    the layer are dead, typical after a too large learning rate): there is nothing to
    approximate, and every relative metric would divide by zero."""
    if not fisher.frobenius_sq() > 0.0:
        raise ValueError(
            f"the Fisher block of {layer} is zero on this batch: every output gradient (or every "
            "input) vanished, e.g. because the units after it are dead ReLUs. Nothing to "
            "approximate; pick another layer, or train with a smaller learning rate."
        )


# -- metrics ---------------------------------------------------------------------------------


@dataclass
class MethodResult:
    """One approximation of a layer's Fisher block and how well it matches the exact one.

    ``spectrum_error`` and ``ng_cosine`` are NaN when they were deferred (``deferred``): for a
    sum of several Kronecker products on a layer above ``slow_limit`` weights they need an
    iterative eigensolver and an iterative solve (see :func:`analyse_method`).
    """

    method: str
    approx: Approximation
    relative_error: float
    spectrum_error: float
    spectrum_exact: bool  # False: both spectra truncated to their top eigenvalues
    ng_cosine: float
    seconds: float  # time to build the approximation
    metric_seconds: float  # time to evaluate the metrics
    deferred: bool = False

    @property
    def note(self) -> str:
        """Why a metric is missing, approximate or surprising, in words for the page ("" when
        none). A relative error above 1 is genuine, not a bug: ``‖F − F̃‖ > ‖F‖`` exactly when
        ``‖F̃‖² > 2⟨F, F̃⟩``; for KFAC's ``A ⊗ G`` that happens when the sizes of inputs and
        output gradients anti-correlate across samples (``A ⊗ G`` pairs one sample's large
        input with another's large gradient, products ``F`` never contains)."""
        return " ".join(part for part in (self._missing(), self._overshoot()) if part)

    def _missing(self) -> str:
        label, n = method_label(self.method), self.approx.n
        if self.deferred:
            return (
                f"{label}: spectrum error and natural-gradient cosine not computed on this layer "
                f"({n:,} weights): a sum of Kronecker products needs Lanczos and MINRES on the "
                "full operator (seconds to minutes); switch on slow metrics to compute them."
            )
        status = self.approx.info.get("minres_status", 0)
        if status:
            return (
                f"{label}: the natural-gradient cosine is unreliable: MINRES stopped after "
                f"{status} iterations without reaching its tolerance (the damped sum is nearly "
                "singular or indefinite); try a larger damping λ."
            )
        if not self.spectrum_exact:
            return f"{label}: spectrum error over the top min(m, 64) eigenvalues of both spectra."
        return ""

    def _overshoot(self) -> str:
        if not self.relative_error > 1:
            return ""
        return (
            f"{method_label(self.method)}: error above 1 — its scale overshoots F, so it is "
            "farther from F than the zero matrix (genuine: inputs and output gradients whose "
            "sizes anti-correlate across samples)."
        )


METRIC_HEADINGS = {  # headings of LayerAnalysis.table's columns, as the page shows them
    "method": "Method",
    "relative_error": "Relative Frobenius error",
    "spectrum_error": "Spectrum error",
    "spectrum_exact": "Full spectrum",
    "ng_cosine": "Natural-gradient cosine",
    "seconds": "Compute time (s)",
    "terms": "Kronecker terms",
    "note": "Note",
}
# The table's numeric columns, shown to 4 decimals; a missing value (a deferred metric) as "—".
METRIC_NUMBERS = ("relative_error", "spectrum_error", "ng_cosine", "seconds")
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|$~#"})


def markdown_cell(value: object) -> str:
    """``value`` as the text of one markdown table cell: Markdown's and Streamlit's special
    characters (``|`` ends a cell, ``$`` opens LaTeX) escaped, line breaks as spaces."""
    return " ".join(str(value).split()).translate(_MARKDOWN_SPECIAL)


def metrics_markdown(table: pd.DataFrame) -> str:
    """:meth:`LayerAnalysis.table` as the page shows it: a markdown (GFM) table with the
    :data:`METRIC_HEADINGS`, method labels, numbers to 4 decimals. Markdown, not a data frame
    or ``st.table``: both travel as Apache Arrow, and the browser's Arrow reader (≈ 1 MB of
    script) delayed a new visitor's default view by ≈ 0.2–0.5 s (issue 20)."""
    columns = [c for c in METRIC_HEADINGS if c in table.columns]
    lines = [
        "| " + " | ".join(METRIC_HEADINGS[c] for c in columns) + " |",
        "|" + "".join(" ---: |" if c in METRIC_NUMBERS else " --- |" for c in columns),
    ]
    for row in table.itertuples(index=False):
        cells = []
        for column in columns:
            value = getattr(row, column)
            if column == "method":
                text = method_label(value)
            elif column == "terms":
                text = "eigenbasis diagonal" if pd.isna(value) else f"{value:.0f}"
            elif column == "spectrum_exact":
                text = "yes" if value else "top eigenvalues"
            elif column in METRIC_NUMBERS:
                text = "—" if pd.isna(value) else f"{value:.4f}"
            else:
                text = "" if pd.isna(value) else value
            cells.append(markdown_cell(text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class LayerAnalysis:
    """The exact block (held implicitly) and the chosen approximations of one layer batch."""

    fisher: LayerFisher
    results: dict[str, MethodResult] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.fisher.da, self.fisher.dg

    def table(self) -> pd.DataFrame:
        return metrics_table(self.results.values())


def is_slow(approx: Approximation, slow_limit: int = SLOW_LIMIT) -> bool:
    """True for a sum of ≥ 2 Kronecker products with more than ``slow_limit`` weights: its
    spectrum needs Lanczos on the n × n operator and its exact damped inverse MINRES (seconds
    to minutes on a CPU, against milliseconds for everything else)."""
    return (approx.n_terms or 0) > 1 and approx.n > slow_limit


def analyse_method(
    fisher: LayerFisher,
    method: str,
    *,
    damping: float = DEFAULT_DAMPING,
    rank: int = 1,
    slow_limit: int = SLOW_LIMIT,
    compute_slow: bool = False,
) -> MethodResult:
    """Build ``method`` on the layer batch held by ``fisher`` (float64) and measure it.

    The relative error is always computed (matrix-free, milliseconds). The spectrum error and
    the natural-gradient cosine are deferred (NaN) for slow cases (:func:`is_slow`) unless
    ``compute_slow``.
    """
    approx = approximate(method, fisher.a, fisher.g, rank=rank)
    start = time.perf_counter()
    rel = fisher.relative_error(approx)
    deferred = is_slow(approx, slow_limit) and not compute_slow
    if deferred:
        spec, spec_exact, cosine = math.nan, False, math.nan
    else:
        spec, spec_exact = fisher.spectrum_error(approx)
        cosine = fisher.natural_gradient_agreement(approx, damping).cosine
    return MethodResult(
        method=method,
        approx=approx,
        relative_error=rel,
        spectrum_error=spec,
        spectrum_exact=spec_exact,
        ng_cosine=cosine,
        seconds=float(approx.info["seconds"]),
        metric_seconds=time.perf_counter() - start,
        deferred=deferred,
    )


def analyse(
    a: torch.Tensor,
    g: torch.Tensor,
    methods: tuple[str, ...] | list[str] = METHODS,
    *,
    damping: float = DEFAULT_DAMPING,
    compute_slow: bool = False,
) -> LayerAnalysis:
    """Every method in ``methods`` on one layer batch (``a``: (m, da), ``g``: (m, dg))."""
    unknown = [mt for mt in methods if mt not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    fisher = LayerFisher(a, g)
    analysis = LayerAnalysis(fisher)
    for method in methods:
        analysis.results[method] = analyse_method(
            fisher, method, damping=damping, compute_slow=compute_slow
        )
    return analysis


METRIC_COLUMNS = {
    "method": "Method",
    "relative_error": "Relative Frobenius error",
    "spectrum_error": "Spectrum error",
    "ng_cosine": "Natural-gradient cosine",
    "seconds": "Compute time (s)",
}


def metrics_table(results) -> pd.DataFrame:
    """One row per method: relative error, spectrum error, natural-gradient cosine, time, and
    a ``note`` saying why a NaN metric is missing (:attr:`MethodResult.note`)."""
    rows = [
        {
            "method": r.method,
            "relative_error": r.relative_error,
            "spectrum_error": r.spectrum_error,
            "spectrum_exact": r.spectrum_exact,
            "ng_cosine": r.ng_cosine,
            "seconds": r.seconds,
            "deferred": r.deferred,
            "terms": r.approx.n_terms,
            "note": r.note,
        }
        for r in results
    ]
    columns = ["method", "relative_error", "spectrum_error", "spectrum_exact", "ng_cosine"]
    return pd.DataFrame(rows, columns=[*columns, "seconds", "terms", "deferred", "note"])


# -- pooled dense views ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pooling:
    """Average inputs in contiguous groups of ``block_a`` and outputs in groups of ``block_g``.

    The last group of each side may be shorter; every group is averaged over its own size.
    """

    da: int
    dg: int
    block_a: int = 1
    block_g: int = 1

    @property
    def da_out(self) -> int:
        return math.ceil(self.da / self.block_a)

    @property
    def dg_out(self) -> int:
        return math.ceil(self.dg / self.block_g)

    @property
    def side(self) -> int:
        """Cells per axis of a pooled block view."""
        return self.da_out * self.dg_out

    @property
    def downsampled(self) -> bool:
        return self.block_a > 1 or self.block_g > 1

    def matrix_a(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return _pool_matrix(self.da, self.block_a, dtype)

    def matrix_g(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return _pool_matrix(self.dg, self.block_g, dtype)

    def input_ranges(self) -> list[tuple[int, int]]:
        return _ranges(self.da, self.block_a)

    def output_ranges(self) -> list[tuple[int, int]]:
        return _ranges(self.dg, self.block_g)

    def labels(self) -> list[str]:
        """Axis labels in vec(W) order: entry ``i·dg_out + p`` is (input group i, output p)."""
        ins = [_range_label(lo, hi) for lo, hi in self.input_ranges()]
        outs = [_range_label(lo, hi) for lo, hi in self.output_ranges()]
        return [f"in {i}, out {p}" for i in ins for p in outs]

    def describe(self) -> str:
        if not self.downsampled:
            return f"full resolution: {self.side:,} × {self.side:,} entries"
        return (
            f"downsampled: each cell averages a block of {self.block_a} input(s) × "
            f"{self.block_g} output(s) on both sides ({self.da * self.dg:,} → {self.side:,} "
            "cells per axis)"
        )


def _pool_matrix(d: int, block: int, dtype: torch.dtype) -> torch.Tensor:
    rows = _ranges(d, block)
    p = torch.zeros(len(rows), d, dtype=dtype)
    for k, (lo, hi) in enumerate(rows):
        p[k, lo : hi + 1] = 1.0 / (hi + 1 - lo)
    return p


def _ranges(d: int, block: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + block, d) - 1) for lo in range(0, d, block)]


def _range_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}–{hi}"


def choose_pooling(da: int, dg: int, max_side: int = DEFAULT_MAX_SIDE) -> Pooling:
    """The finest pooling whose view has at most ``max_side`` cells per axis.

    Groups grow on the side with more groups left, so both sides keep similar resolution.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be ≥ 1, got {max_side}")
    block_a = block_g = 1
    while math.ceil(da / block_a) * math.ceil(dg / block_g) > max_side:
        if math.ceil(da / block_a) >= math.ceil(dg / block_g):
            block_a = _next_block(da, block_a)
        else:
            block_g = _next_block(dg, block_g)
    return Pooling(da, dg, block_a, block_g)


def _next_block(d: int, block: int) -> int:
    """Smallest block size larger than ``block`` that reduces the number of groups."""
    groups = math.ceil(d / block)
    return math.ceil(d / (groups - 1)) if groups > 1 else block


def pooled(block: Approximation, pooling: Pooling) -> np.ndarray:
    """``(P_a ⊗ P_g) X (P_a ⊗ P_g)ᵀ`` of the exact block or an approximation, without forming
    X (each block's :meth:`~core.engine.approx.Approximation.pooled`)."""
    return block.pooled(pooling.matrix_a(), pooling.matrix_g()).numpy()


@dataclass
class BlockView:
    """Pooled exact block, approximation and their difference, ready to draw."""

    exact: np.ndarray
    approx: np.ndarray
    pooling: Pooling

    @property
    def difference(self) -> np.ndarray:
        return self.approx - self.exact

    @property
    def scale(self) -> float:
        """One symmetric colour range for the three pictures: max |entry| over all."""
        return float(max(np.abs(self.exact).max(), np.abs(self.approx).max(), 1e-300))


def block_view(
    fisher: LayerFisher, approx: Approximation, max_side: int = DEFAULT_MAX_SIDE
) -> BlockView:
    pooling = choose_pooling(fisher.da, fisher.dg, max_side)
    return BlockView(pooled(fisher, pooling), pooled(approx, pooling), pooling)


def coarsen(view: BlockView, max_side: int = DISPLAY_MAX_SIDE) -> BlockView:
    """``view`` with its groups merged, consecutive ones on each side, until at most
    ``max_side`` cells per axis remain (``view`` itself when it already fits).

    Merging ``k`` consecutive groups of ``block`` inputs (or outputs) gives the regular groups of
    ``k·block``, so the result is the pooled view of that coarser :class:`Pooling`: each cell the
    mean of the original block's entries over its (input group × output group)² block, computed
    exactly from ``view`` as the group-size-weighted mean of the merged cells."""
    fine = view.pooling
    pooling = display_pooling(fine, max_side)
    if pooling == fine:
        return view
    w_a = _merge_weights(fine.input_ranges(), pooling.input_ranges())
    w_g = _merge_weights(fine.output_ranges(), pooling.output_ranges())

    def merged(x: np.ndarray) -> np.ndarray:
        x4 = x.reshape(fine.da_out, fine.dg_out, fine.da_out, fine.dg_out)
        out = np.einsum("ai,bp,ipjq,cj,dq->abcd", w_a, w_g, x4, w_a, w_g, optimize=True)
        return out.reshape(pooling.side, pooling.side)

    return BlockView(merged(view.exact), merged(view.approx), pooling)


def display_pooling(fine: Pooling, max_side: int = DISPLAY_MAX_SIDE) -> Pooling:
    """The pooling :func:`coarsen` draws a view pooled by ``fine`` with: ``fine`` when it has
    at most ``max_side`` cells per axis, else the finest merge of its consecutive groups that
    does (chosen like :func:`choose_pooling`, in units of ``fine``'s groups)."""
    if fine.side <= max_side:
        return fine
    merge = choose_pooling(fine.da_out, fine.dg_out, max_side)
    return Pooling(fine.da, fine.dg, fine.block_a * merge.block_a, fine.block_g * merge.block_g)


def _merge_weights(fine: list[tuple[int, int]], coarse: list[tuple[int, int]]) -> np.ndarray:
    """Row j: the weights (group size ÷ merged size) of the fine groups inside coarse group j."""
    weights = np.zeros((len(coarse), len(fine)))
    for j, (lo, hi) in enumerate(coarse):
        for i, (flo, fhi) in enumerate(fine):
            if lo <= flo and fhi <= hi:
                weights[j, i] = (fhi + 1 - flo) / (hi + 1 - lo)
    return weights


# -- factors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorView:
    """One factor matrix of an approximation, possibly pooled for display."""

    label: str  # e.g. "A (inputs, term 1)"
    side: str  # "input" (da × da) or "output" (dg × dg)
    matrix: np.ndarray
    block: int  # pooling block size (1: full resolution)


def kernel_position_order(in_channels: int, kernel: tuple[int, int], bias: bool) -> np.ndarray:
    """The order that groups a convolution's input factor by kernel position: ``order[j]`` is the
    unfolded input index shown at position ``j``.

    A patch is unfolded channel-major (:func:`core.engine.layers.conv_patches`: index
    ``c·(kh·kw) + p`` for channel ``c`` and kernel position ``p``), so the input factor A
    (``(C_in·kh·kw [+1])²``) interleaves the positions. Reordered to ``p·C_in + c`` it becomes
    ``kh·kw × kh·kw`` blocks of ``C_in × C_in``: block ``(p, q)`` is how the channels seen at
    kernel positions ``p`` and ``q`` co-vary (Grosse & Martens 2016 model exactly this spatial
    structure). The bias input stays last."""
    kh, kw = kernel
    if in_channels < 1 or kh < 1 or kw < 1:
        raise ValueError(f"a convolution needs C_in, kh, kw ≥ 1, got {in_channels}, {kernel}")
    positions = kh * kw
    order = np.arange(in_channels * positions).reshape(in_channels, positions).T.reshape(-1)
    return np.concatenate([order, [in_channels * positions]]) if bias else order


def factor_views(
    approx: Approximation,
    max_side: int = DEFAULT_MAX_SIDE,
    input_order: np.ndarray | None = None,
) -> list[FactorView]:
    """The Kronecker factors of an approximation, each pooled to at most ``max_side`` rows;
    ``input_order`` (e.g. :func:`kernel_position_order`) reorders the input factors' rows and
    columns before pooling.

    KFAC: A, G. KPSVD family: R_k, S_k per term (KFAC-corrected: A, G, then R, S). EKFAC: the
    eigenbasis-diagonal scaling ``s`` (dg × da), shown as one matrix (its columns are A's
    eigenvectors, not inputs: never reordered). Shampoo: L, R. The exact block: none.
    """
    views = []
    # the registry's (input, output) names, term by term, in factor_matrices()'s order
    names = iter([n for pair in _factor_names(approx.method, approx.n_terms or 0) for n in pair])
    for side, mat in approx.factor_matrices():
        mat = mat.to(torch.float64)
        if side == "input" and input_order is not None:
            if sorted(input_order.tolist()) != list(range(mat.shape[0])):
                raise ValueError(
                    f"input_order must be a permutation of the {mat.shape[0]} inputs, "
                    f"got {len(input_order)} indices"
                )
            index = torch.as_tensor(input_order)
            mat = mat[index][:, index]
        if side == "scaling":  # EKFAC's s, dg × da: pooled on each side
            ba = math.ceil(mat.shape[1] / max_side)
            bg = math.ceil(mat.shape[0] / max_side)
            small = _pool_matrix(mat.shape[0], bg, torch.float64) @ mat
            small = small @ _pool_matrix(mat.shape[1], ba, torch.float64).T
            label = "s (eigenbasis scaling, output × input)"
            views.append(FactorView(label, side, small.numpy(), ba))
        else:
            block = math.ceil(mat.shape[0] / max_side)
            p = _pool_matrix(mat.shape[0], block, torch.float64)
            views.append(FactorView(next(names), side, (p @ mat @ p.T).numpy(), block))
    return views


def _factor_names(method: str, n_terms: int) -> list[tuple[str, str]]:
    """The method's factor names (core/views/labels.py), or the generic R_k, S_k."""
    named = FACTOR_NAMES.get(method, ())
    if named:
        return list(named[:n_terms])
    return [
        (f"R{k} (inputs, term {k})", f"S{k} (outputs, term {k})") for k in range(1, n_terms + 1)
    ]


# -- spectra ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spectra:
    """The curves of the spectra figure: ``curves``, name (``"exact"`` or a method) →
    eigenvalues (descending), and ``notes``, method → why its curve is missing or truncated,
    in words for the page."""

    curves: dict[str, np.ndarray]
    notes: dict[str, str] = field(default_factory=dict)


def spectra(analysis: LayerAnalysis, max_points: int = SPECTRUM_POINTS) -> Spectra:
    """Largest eigenvalues (descending) of F and of each approximation.

    F has at most m nonzero eigenvalues (from its m × m Gram matrix). One Kronecker product and
    EKFAC give all their eigenvalues cheaply; a sum of several products is eigendecomposed
    densely up to ``DENSE_SPECTRUM_LIMIT`` and by Lanczos (its top min(m, 64), the ones the
    spectrum error used) above. A method whose slow metrics were deferred has no curve (that
    Lanczos run is the slow part of its metrics): ``notes`` says so, as it says when a curve
    holds only the top eigenvalues.
    """
    n = analysis.fisher.da * analysis.fisher.dg
    out = Spectra({"exact": analysis.fisher.eigvals(max_points).numpy()})
    for method, result in analysis.results.items():
        label = method_label(method)
        if result.deferred:
            out.notes[method] = (
                f"{label}: no curve: the eigenvalues of a sum of Kronecker products on this "
                f"layer ({n:,} weights) need Lanczos on the full operator (seconds to "
                "minutes); switch on slow metrics to draw it."
            )
            continue
        approx = result.approx
        lanczos = not approx.full_spectrum
        k = min(analysis.fisher.m, 64) if lanczos else min(max_points, n)
        out.curves[method] = approx.eigvals(k).to(torch.float64).numpy()[:max_points]
        if lanczos:
            out.notes[method] = f"{label}: the top {k} eigenvalues only (Lanczos)."
    return out


# -- Kronecker rank --------------------------------------------------------------------------


@dataclass
class RankCurve:
    """Relative error of the best rank-r Kronecker sum, r = 1 … len(errors)."""

    ranks: np.ndarray
    errors: np.ndarray
    singular_values: np.ndarray
    terms: list[tuple[torch.Tensor, torch.Tensor]]

    def approximation(self, rank: int) -> KroneckerSum:
        """The best rank-``rank`` sum (clipped to the terms that carry weight)."""
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        return KroneckerSum("kpsvd", self.terms[: min(rank, len(self.terms))])

    @property
    def max_rank(self) -> int:
        return len(self.terms)


def rank_curve(fisher: LayerFisher, max_rank: int = 10) -> RankCurve:
    """Error of the best rank-r sum for r = 1 … max_rank, from one truncated SVD of ℛ(F).

    The rank of ℛ(F) is at most min(m, da², dg²); beyond it the error is 0 and no further
    terms exist.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be ≥ 1, got {max_rank}")
    full = min(max_rank, fisher.m, fisher.da**2, fisher.dg**2)
    approx = approximate("kpsvd", fisher.a, fisher.g, rank=full)
    if not isinstance(approx, KroneckerSum):
        raise TypeError(f"kpsvd gave a {type(approx).__name__}, not a sum of Kronecker products")
    errors = [
        fisher.relative_error(KroneckerSum("kpsvd", approx.terms[:r]))
        for r in range(1, len(approx.terms) + 1)
    ]
    return RankCurve(
        ranks=np.arange(1, len(errors) + 1),
        errors=np.asarray(errors),
        singular_values=np.asarray(approx.info["singular_values"][: len(errors)]),
        terms=approx.terms,
    )


# -- downloads -------------------------------------------------------------------------------


def view_arrays(
    *,
    method: str,
    view: BlockView | None = None,
    factors: Sequence[FactorView] = (),
    spectra: Spectra | None = None,
    curve: RankCurve | None = None,
) -> dict[str, np.ndarray]:
    """The arrays behind the explorer's figures, named for an ``.npz`` download (``method``:
    the approximation the block and factor views show)."""
    arrays: dict[str, np.ndarray] = {}
    if view is not None:
        arrays["exact_block"] = view.exact
        arrays[f"{method}_block"] = view.approx
        arrays[f"{method}_difference"] = view.difference
        arrays["pool_blocks"] = np.array([view.pooling.block_a, view.pooling.block_g])
    for k, fv in enumerate(factors):
        arrays[f"{method}_factor{k}_{fv.side}"] = fv.matrix
    for name, lam in (spectra.curves if spectra is not None else {}).items():
        arrays[f"eigvals_{name}"] = lam
    if curve is not None:
        arrays["rank_curve_ranks"] = curve.ranks
        arrays["rank_curve_errors"] = curve.errors
        arrays["rank_curve_singular_values"] = curve.singular_values
    return arrays
