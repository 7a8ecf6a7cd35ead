"""The explorer's heavy numerics, run in the server's worker processes.

Every result is named by a key that covers every setting that affects it; :func:`compute`
asks the server-wide :class:`core.server.workers.WorkerPool` for it, so identical work asked by many
sessions is done once (in flight or cached) and none of it holds the server's GIL. While it
waits, :func:`compute` redraws a one-line status every 0.25 s: each redraw is also where
Streamlit interrupts a script whose session reran or closed, and the ``finally`` then releases
the job, which cancels it when no other session waits for it.

A view has a compute budget (:func:`view_budget_s`, a host setting): work past it stops with
a message saying what was skipped and how to get it.

The explorer's results and figures are named by frozen dataclasses, one field per input and
the Fisher block's :class:`FisherKey` a field of every other key: equal inputs give equal keys
(the cached result), any input changed gives another key (never a stale result), and keys of
different kinds of result never meet, since a dataclass only equals one of its own class.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import streamlit as st

from core import (
    BudgetExceeded,
    JobCancelled,
    LimitError,
    QueueFull,
    WorkerDied,
    direction,
    explorer,
    jobs,
    view_budget_s,
)

from .services import services
from .session import visitor_id

__all__ = [
    "BlockKey",
    "DirectionFigureKey",
    "DirectionKey",
    "FigureKey",
    "FisherKey",
    "MethodKey",
    "RankCurveKey",
    "RankKey",
    "SpectraKey",
    "block_view",
    "compute",
    "layer_fisher",
    "compute_all",
    "direction_curves",
    "figure",
    "method_results",
    "rank_curve",
    "spectra",
    "start_view",
]

_view = threading.local()  # the budget of the view this script thread is drawing


def start_view() -> float:
    """Start the compute budget of this script run's view (call at the top of the page);
    every :func:`compute` after it shares the budget. Returns the budget in seconds."""
    _view.seconds = view_budget_s()
    _view.deadline = time.monotonic() + _view.seconds
    return _view.seconds


class BudgetError(LimitError):
    """A view's work ran past the server's compute budget."""


def _budget_message(what: str, seconds: float, how: str) -> str:
    return (
        f"{what} was stopped after {seconds:g} s, this server's compute budget per view, and "
        f"is not shown. To get it: {how}, or ask the host to raise the compute budget per view."
    )


def compute(
    key: Hashable,
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    how: str = "choose a smaller layer",
    lane: str = "view",
) -> Any:
    """``fn(*args)`` from the worker pool, named ``key``; waits with a status line.

    ``what`` names the work for the student (``"KPSVD"``); ``how`` says how to get it when it
    is over budget; ``lane`` is ``"view"`` or ``"heavy"`` (:class:`core.WorkerPool`). Raises
    the job's own error, or :class:`BudgetError`.
    """
    (outcome,) = compute_all([(key, fn, args, what, how)], lane=lane).values()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def compute_all(
    work: Sequence[tuple[Hashable, Callable[..., Any], tuple[Any, ...], str, str]],
    *,
    lane: str = "view",
) -> dict[Hashable, Any]:
    """Several ``(key, fn, args, what, how)`` at once: every job is queued before any is
    waited for, so the pool's workers share one view's work. The jobs are the visitor's
    (:func:`pages.ui.session.visitor_id`: the pool serves visitors in turn) in ``lane``.
    Returns key → result, or the exception (the job's own, :class:`BudgetError`, or a
    :class:`core.LimitError` when the visitor has too much work waiting) for work that
    failed."""
    deadline = getattr(_view, "deadline", None)
    seconds = getattr(_view, "seconds", view_budget_s())
    left = seconds if deadline is None else deadline - time.monotonic()
    out: dict[Hashable, Any] = {}
    if left <= 0:
        return {
            k: BudgetError(_budget_message(what, seconds, how)) for k, _f, _a, what, how in work
        }
    workers = services().pool
    owner = visitor_id()
    held = []
    status = None
    t0 = time.monotonic()
    try:
        for k, fn, args, what, how in work:
            try:
                job = workers.acquire(k, fn, *args, budget_s=max(left, 1.0), owner=owner, lane=lane)
            except QueueFull as err:
                out[k] = LimitError(str(err))
                continue
            held.append((job, what, how))
        for job, what, how in held:
            while not job.wait(0.25):
                if status is None:
                    status = st.empty()
                where = "waiting for a free worker" if job.state == "queued" else "computing"
                done = sum(1 for j, _w, _h in held if j.done)
                count = f" ({done} of {len(held)} done)" if len(held) > 1 else ""
                status.caption(f"{what}: {where}… {time.monotonic() - t0:.0f} s{count}")
                if deadline is not None and time.monotonic() > deadline:
                    break
            out[job.key] = _outcome(job, what, seconds, how)
    finally:
        for job, _what, _how in held:
            workers.release(job)
        if status is not None:
            status.empty()
    return out


def _outcome(job, what: str, seconds: float, how: str) -> Any:
    """The job's result, or the exception a student should read."""
    if not job.done:
        return BudgetError(_budget_message(what, seconds, how))
    try:
        return job.result()
    except BudgetExceeded:
        return BudgetError(_budget_message(what, seconds, how))
    except JobCancelled:
        return LimitError(f"{what} was cancelled; reload the page to compute it.")
    except WorkerDied:
        return LimitError(
            f"{what}: the worker computing it stopped unexpectedly (perhaps out of memory). "
            "Nothing else was affected; choose a smaller layer or m, or reload to retry."
        )
    except Exception as err:
        return err


# -- the explorer's results, by key ----------------------------------------------------------

#: Work above these sizes goes to the pool's heavy lane, so that it never holds every worker
#: while other visitors' cheap views wait (the default DIGITS view: m = 256, 65 × 33 weights).
HEAVY_BATCH = 512
HEAVY_WEIGHTS = 100_000


def lane_of(fisher, slow: bool) -> str:
    """``"heavy"`` for slow metrics, a large batch or a large layer; else ``"view"``."""
    heavy = slow or fisher.m >= HEAVY_BATCH or fisher.da * fisher.dg >= HEAVY_WEIGHTS
    return "heavy" if heavy else "view"


# -- what names each result -----------------------------------------------------------------


@dataclass(frozen=True)
class FisherKey:
    """One layer's Fisher block: the model (its :class:`~pages.ui.models.ModelChoice` key, which
    names every setting it comes from), the layer, the Fisher's kind (``"true"`` or
    ``"empirical"``) and the batch size used."""

    model: str
    layer: str
    kind: str
    m: int


@dataclass(frozen=True)
class MethodKey:
    """One method's result on a Fisher block, with the damping and slow-metrics switch its
    metrics were computed with."""

    fisher: FisherKey
    method: str
    damping: float
    slow: bool


@dataclass(frozen=True)
class RankKey:
    """The best rank-``rank`` Kronecker sum of a Fisher block."""

    fisher: FisherKey
    rank: int


@dataclass(frozen=True)
class RankCurveKey:
    """The error of the best rank-r sums, r = 1 … ``max_rank``."""

    fisher: FisherKey
    max_rank: int


@dataclass(frozen=True)
class BlockKey:
    """The block heatmap view of an approximation: a method's result or a best rank-r sum."""

    source: MethodKey | RankKey


@dataclass(frozen=True)
class SpectraKey:
    """The spectra of F and of the methods shown (sorted), computed with ``damping``/``slow``."""

    fisher: FisherKey
    damping: float
    slow: bool
    methods: tuple[str, ...]


@dataclass(frozen=True)
class DirectionKey:
    """One method's damped-step measures over the swept dampings ``dampings``
    (:mod:`core.views.direction`); ``slow``: exact damping of large two-term sums included."""

    fisher: FisherKey
    method: str
    slow: bool
    dampings: tuple[float, ...]


@dataclass(frozen=True)
class DirectionFigureKey:
    """The "error vs λ" figure of the methods shown (sorted), with ``damping`` marked."""

    fisher: FisherKey
    methods: tuple[str, ...]
    slow: bool
    damping: float


@dataclass(frozen=True)
class FigureKey:
    """A figure drawn from one view (``contrast``: the heatmaps' colour range, None where the
    figure has none)."""

    view: BlockKey | SpectraKey | DirectionFigureKey
    contrast: float | None = None
    picture: bool = False  # a PNG (core.views.heatmap_image, spectra_image), not a plotly figure


# -- the explorer's results ------------------------------------------------------------------


def layer_fisher(key: FisherKey, *, model, x, loss: str, seed: int, targets=None):
    """The Fisher block named ``key`` of ``model`` on batch ``x`` (``targets``: a classifier's
    labels for the empirical Fisher; ``None``: ``x``)."""
    return compute(
        key, jobs.layer_fisher, model, x, key.layer, loss, key.kind, seed, targets,
        what="Capturing the layer's gradients", how="choose a smaller m or layer",
    )  # fmt: skip


def method_results(
    key: FisherKey, methods: list[str], *, damping: float, slow: bool, fisher
) -> dict[str, Any]:
    """Each method's :class:`core.views.explorer.MethodResult`, or the exception it raised."""
    how = "switch off the slow metrics, or run `python -m core quality` on your own machine"
    work = [
        (
            MethodKey(key, method, damping, slow),
            partial(explorer.analyse_method, damping=damping, compute_slow=slow),
            (fisher, method),
            explorer.method_label(method),
            how,
        )
        for method in methods
    ]
    outcomes = compute_all(work, lane=lane_of(fisher, slow))
    return {method: outcomes[item[0]] for method, item in zip(methods, work, strict=True)}


def direction_curves(key: FisherKey, results: dict[str, Any], *, slow: bool, fisher) -> dict:
    """Each method's :class:`core.views.direction.DirectionCurve`, or the exception it raised
    (``results``: method → its :class:`core.views.explorer.MethodResult`). Exact damping of a
    slow sum (:func:`core.views.explorer.is_slow`) waits for ``slow``."""
    grid = direction.STEP_DAMPINGS
    how = "switch off the slow metrics, or choose a smaller layer"
    work = []
    for method, result in results.items():
        skip = explorer.is_slow(result.approx) and not slow
        work.append(
            (
                DirectionKey(key, method, slow, grid),
                partial(direction.direction_curve, skip_exact=skip),
                (fisher, result.approx, grid),
                f"{explorer.method_label(method)}: damped step",
                how,
            )
        )
    outcomes = compute_all(work, lane=lane_of(fisher, slow))
    return {method: outcomes[item[0]] for method, item in zip(results, work, strict=True)}


def rank_curve(key: FisherKey, max_rank: int, fisher):
    return compute(
        RankCurveKey(key, max_rank), explorer.rank_curve, fisher, max_rank,
        what="The Kronecker-rank curve", lane=lane_of(fisher, False),
    )  # fmt: skip


def block_view(key: BlockKey, fisher, approx):
    return compute(key, explorer.block_view, fisher, approx, what="The block heatmap view")


def figure(key: FigureKey, build: Callable[[], Any]) -> Any:
    """The figure named ``key`` (every setting it is drawn from: a plotly figure, or a PNG's
    bytes), built once by ``build()`` for every session and never mutated
    (``st.plotly_chart`` copies it)."""
    return services().figures.get(key, build)


def spectra(key: SpectraKey, analysis):
    return compute(
        key, explorer.spectra, analysis, what="The spectra", how="show fewer methods"
    )  # fmt: skip
