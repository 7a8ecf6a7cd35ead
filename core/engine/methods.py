"""The engine's method registry: every approximation and the exact block, one :class:`MethodSpec`
each, and :func:`approximate`, the one front door that builds a method by its name.

What the engine knows about a method: the builder that constructs it from a layer batch
(ā_i, g_i), how many Kronecker terms it has, and which construction options apply to it (the
KPSVD family's ``solver``; KFAC-corrected's centring on F − A ⊗ G; an ``ema_mode="fisher"`` state;
a diagonal in a refreshed eigenbasis). The math of each method is in :mod:`core.engine.approx`
(the exact block: :mod:`core.engine.fisher`).

Facts that are not the engine's live with their users, keyed by the names below: which
optimizers exist and their default learning rates and dampings in :mod:`core.training.defaults`;
display names, factor names and colours in :mod:`core.views.labels` and
:mod:`core.views.figures`. The README's "Where to add" lists every entry a new method needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from . import fisher
from .approx import (
    Approximation,
    build_ekfac,
    build_kfac,
    build_kfac_reduce,
    build_kronecker_svd,
    build_shampoo,
)
from .eva import build_eva
from .rearranged_svd import SOLVERS
from .validation import check_layer_batch

__all__ = [
    "KINDS",
    "MethodSpec",
    "SPECS",
    "method_spec",
    "canonical_name",
    "approximate",
    "METHODS",
    "EXACT",
    "SHOWN",
    "KPSVD_FAMILY",
    "FISHER_EMA_METHODS",
]

KINDS = ("approximation", "exact")


@dataclass(frozen=True)
class MethodSpec:
    """What the engine knows about one method.

    ``build(method, a, g, *, rank, solver, tol, max_iter, psd_floor, centered)`` returns the
    engine's block (an :class:`~core.engine.approx.Approximation`; the exact block's is
    :class:`~core.engine.fisher.LayerFisher`). ``terms``: Kronecker terms of the result (``None``
    for EKFAC, a diagonal in KFAC's eigenbasis, and for the exact block; kpsvd: its default rank).
    ``kpsvd_family``: takes the ``solver`` option (core/engine/rearranged_svd.py). ``fisher_ema``:
    has an ``ema_mode="fisher"`` state of its own (core/engine/fisher_ema.py). ``centered``: KFAC's
    A ⊗ G plus Kronecker terms of F − A ⊗ G. ``eigenbasis``: a diagonal in the eigenbasis of the
    averaged factors, refreshed with them. ``ema_terms_from``: the method whose minibatch terms an
    average of factors averages (``None``: this one; EKFAC averages KFAC's A and G).
    ``vectors``: its factors are outer products of two vectors, which an average of factors
    averages as vectors (Eva, :mod:`core.engine.eva`).
    """

    name: str
    build: Callable[..., Approximation]
    kind: str = "approximation"
    terms: int | None = None
    kpsvd_family: bool = False
    fisher_ema: bool = False
    centered: bool = False
    eigenbasis: bool = False
    ema_terms_from: str | None = None
    vectors: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


# The order is the order of every list of methods: the views show them in it.
SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("kfac", build_kfac, terms=1),
    MethodSpec("kfac_reduce", build_kfac_reduce, terms=1),
    MethodSpec(
        "kpsvd",
        partial(build_kronecker_svd, svd_terms=None),
        terms=1,
        kpsvd_family=True,
        fisher_ema=True,
    ),
    MethodSpec(
        "deflation",
        partial(build_kronecker_svd, svd_terms=2),
        terms=2,
        kpsvd_family=True,
        fisher_ema=True,
    ),
    MethodSpec(
        "lanczos",
        partial(build_kronecker_svd, svd_terms=2, algorithm="lanczos"),
        terms=2,
        kpsvd_family=True,
        fisher_ema=True,
    ),
    MethodSpec(
        "kfac_corrected",
        partial(build_kronecker_svd, svd_terms=1),
        terms=2,
        kpsvd_family=True,
        fisher_ema=True,
        centered=True,
    ),
    MethodSpec("ekfac", build_ekfac, eigenbasis=True, ema_terms_from="kfac"),
    MethodSpec("shampoo", build_shampoo, terms=1),
    MethodSpec("eva", build_eva, terms=1, vectors=True),
    MethodSpec("exact", fisher.build_exact, kind="exact"),
)
_BY_NAME = {spec.name: spec for spec in SPECS}

# Views over the registry (what other modules and tests import).
METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "approximation")
EXACT: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "exact")
# Every block approximate() builds: the exact block first (the reference), then the approximations.
SHOWN: tuple[str, ...] = EXACT + METHODS
KPSVD_FAMILY: tuple[str, ...] = tuple(s.name for s in SPECS if s.kpsvd_family)
FISHER_EMA_METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.fisher_ema)


def canonical_name(text: str) -> str:
    """A method or optimizer name as the registries spell it: stripped, lower-case, hyphens as
    underscores (``" KFAC-corrected"`` → ``"kfac_corrected"``). Every reader of a name typed by
    a person (the command line, :class:`~core.training.optim.OptimizerConfig`) goes through it."""
    return text.strip().lower().replace("-", "_")


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (``ValueError`` naming the choices if unknown)."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(SHOWN)}")
    return spec


def approximate(
    method: str,
    a: torch.Tensor,
    g: torch.Tensor,
    *,
    rank: int = 1,
    solver: str = "gram",
    tol: float | None = None,
    max_iter: int = 5000,
    psd_floor: float = 0.1,
) -> Approximation:
    """Approximate the Fisher block of one layer from its per-sample inputs and gradients
    (``method="exact"``: the exact block itself, :class:`core.engine.fisher.LayerFisher`).

    ``a`` is (m, da) — inputs with the bias column — and ``g`` is (m, dg); or, for a
    weight-sharing layer (a convolution's patches, a sequence's tokens), ``a`` (m, T, da) and
    ``g`` (m, T, dg) (:mod:`core.engine.shared_batch`). ``rank`` applies to
    ``kpsvd``; ``solver`` ("gram" or "matrix_free") to the KPSVD family (on T > 1 positions
    "gram" runs matrix-free Lanczos, said in ``info["solver"]``); ``tol`` is the relative
    residual at which the singular-vector iterations stop (default 1e-6 for float32 inputs,
    1e-10 for float64); ``max_iter`` caps the matrix-free power iterations; ``psd_floor`` is the
    two-term factored solve's safeguard (:mod:`core.engine.approx`). The seconds the build took
    are in ``info["seconds"]``.
    """
    if method not in SHOWN:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(SHOWN)}")
    spec = method_spec(method)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer ≥ 1, got {rank!r}")
    if not 0.0 < psd_floor <= 1.0:
        raise ValueError(f"psd_floor must lie in (0, 1], got {psd_floor}")
    a, g = check_layer_batch(a, g)
    if tol is None:
        tol = 1e-10 if a.dtype == torch.float64 else 1e-6
    start = time.perf_counter()
    block = spec.build(
        method,
        a,
        g,
        rank=rank,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        psd_floor=psd_floor,
        centered=spec.centered,
    )
    block.info["seconds"] = time.perf_counter() - start
    return block
