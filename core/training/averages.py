"""Curvature averages of the natural-gradient optimizers: one object per ``ema_mode``.

Every curvature refresh captures the rows ``ā_i``, ``g_i`` of each layer on one Fisher
minibatch (m rows) and hands them to the optimizer's average, :meth:`CurvatureAverage.update`;
every inverse refresh asks it for each layer's approximation F̃,
:meth:`CurvatureAverage.approximation`, which :class:`core.training.curvature.Preconditioner`
inverts. The engine's ``approximate`` runs once per refresh on one minibatch. With ρ = ``ema``:

* ``"factors"`` (:class:`FactorAverage`, the default): an EMA of each refresh's Kronecker
  factors, term by term, ``R_k ← ρ R_k + (1 − ρ) R_k,t`` and ``S_k ← ρ S_k + (1 − ρ) S_k,t``,
  where ``F̃_t = Σ_k R_k,t ⊗ S_k,t`` approximates the Fisher of the current minibatch only; the
  preconditioner is ``Σ_k R_k ⊗ S_k``. This is what KFAC does for A and G (Martens & Grosse
  2015), and what the seed paper does for all its methods. It is not the EMA of the F̃_t (a
  product of averages is not an average of products), nor a best approximation of the EMA of F.
* ``"window"`` (:class:`WindowAverage`; always for ``exact``, whose block is not a factored
  object): the method applied to a truncated EMA of the Fisher itself, ``Σ_k w_k F_k`` with
  ``w_k ∝ ρ^k`` over the last captures, seen as the Fisher of one weighted sample set.
* ``"fisher"`` (:class:`FisherAverage`, the KPSVD family): the EMA of the Fisher itself,
  ``F_ema ← ρ F_ema + (1 − ρ) F_t``, kept in rearranged low-rank form
  (:mod:`core.engine.fisher_ema`). ``kfac``, ``shampoo`` and ``ekfac`` keep their factor average
  in this mode (for KFAC it is the KFAC of F_ema).

Each class's docstring gives its math per method. A term the engine drops (a zero singular
value) or a layer with F_t = 0 (all units dead) contributes zero terms. How the three averages
compare in training, and how often the factor average's sign alignment and low-overlap arrivals
happen: bench/RESULTS-training.md ("Curvature averages compared", and its ablation section).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine.approx import Approximation, EigenbasisDiagonal, KroneckerSum, eigenbasis_scale
from ..engine.eva import KroneckerVectors, batch_mean_vectors
from ..engine.fisher_ema import EXTRA_TERMS, FisherEMA
from ..engine.kron import sym
from ..engine.methods import FISHER_EMA_METHODS, METHODS, approximate, method_spec

__all__ = [
    "CurvatureAverage",
    "FactorAverage",
    "WindowAverage",
    "FisherAverage",
    "EMA_MODES",
    "curvature_average",
    "APPROX_TOL",
    "WINDOW_CAPTURES",
    "WINDOW_SAMPLES",
]

# Kronecker terms per refresh in "factors" mode (ekfac: the KFAC factors A, G); "fisher" mode
# keeps EXTRA_TERMS more.
FACTOR_TERMS = {n: method_spec(n).terms or 1 for n in METHODS}
LOW_OVERLAP = 0.5  # |cos(R₂,t, R₂)| below this counts as a low-overlap arrival (diagnostics)
# The window holds at most this many captures and rows (at least one capture): it bounds a
# refresh to a small multiple of KFAC's cost (the Gram route is O(M²) per Lanczos step on M rows).
WINDOW_CAPTURES = 4
WINDOW_SAMPLES = 1024
# Relative residual at which the engine's singular-vector iterations stop for the optimizers:
# far below the sampling noise of a minibatch Fisher (the engine's float64 default is 1e-10).
APPROX_TOL = 1e-6

Terms = list[tuple[torch.Tensor, torch.Tensor]]


class CurvatureAverage(ABC):
    """One ``ema_mode``'s curvature state for every layer of one method (``layers``: name →
    that layer's state). Captures arrive in float64 on the engine's device; approximations are
    fresh float64 engine objects there.

    ``alignment``: the factor average's second-term counters (EMA updates, sign flips,
    ``|cos| < LOW_OVERLAP`` arrivals); zero in the modes that need no alignment.
    """

    name: ClassVar[str]

    def __init__(self, method: str, ema: float) -> None:
        self.method = method
        self.spec = method_spec(method)
        self.ema = ema
        self.layers: dict[str, Any] = {}  # each average's per-layer state
        self.alignment = {"updates": 0, "flipped": 0, "low_overlap": 0}

    @abstractmethod
    def update(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        """Fold one capture of layer ``name`` in: ``a`` (m, da) rows ``ā_iᵀ``, ``g`` (m, dg)."""

    @abstractmethod
    def approximation(self, name: str) -> Approximation:
        """The current approximation F̃ of layer ``name``."""


def _zero_term(da: int, dg: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(da, da, device=device, dtype=torch.float64),
        torch.zeros(dg, dg, device=device, dtype=torch.float64),
    )


def _kronecker_terms(approx: Approximation) -> Terms:
    """The terms of a Kronecker-sum approximation (what every factor-averaged method gives)."""
    if not isinstance(approx, KroneckerSum):
        raise TypeError(f"{type(approx).__name__} is not a sum of Kronecker products")
    return list(approx.terms)


def _dead(a: torch.Tensor, g: torch.Tensor) -> bool:
    """F = 0: no output gradient or no input (e.g. a layer whose units are all dead)."""
    return not bool((g != 0).any()) or not bool((a != 0).any())


# -- "factors" -----------------------------------------------------------------------------


class _FactorEMA:
    """One layer's running Kronecker factors (and, for ekfac, the running diagonal in the
    eigenbasis of the running KFAC factors)."""

    def __init__(self, terms: Terms) -> None:
        self.terms = [(r.clone(), s.clone()) for r, s in terms]
        self.u_a: torch.Tensor | None = None  # ekfac
        self.u_g: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def fold(self, new: Terms, rho: float, alignment: dict[str, int]) -> None:
        """``R_k ← ρ R_k + (1 − ρ) R_k,t`` (same for S), the new term sign-aligned first."""
        out = []
        for k, ((r_old, s_old), (r, s)) in enumerate(zip(self.terms, new, strict=True)):
            inner = float((r * r_old).sum())
            if k >= 1:
                alignment["updates"] += 1
                norms = float(torch.linalg.norm(r)) * float(torch.linalg.norm(r_old))
                if norms > 0 and abs(inner) < LOW_OVERLAP * norms:
                    alignment["low_overlap"] += 1
            if inner < 0:  # R ⊗ S = (−R) ⊗ (−S): take the sign closest to the running term
                r, s = -r, -s
                if k >= 1:
                    alignment["flipped"] += 1
            out.append((rho * r_old + (1.0 - rho) * r, rho * s_old + (1.0 - rho) * s))
        self.terms = out

    def fold_ekfac_scale(self, a: torch.Tensor, g: torch.Tensor, rho: float) -> None:
        """Eigenbasis of the running (A, G); the batch's diagonal in it, folded into the EMA."""
        fa, fg = self.terms[0]
        self.u_a = torch.linalg.eigh(sym(fa)).eigenvectors
        self.u_g = torch.linalg.eigh(sym(fg)).eigenvectors
        s_t = eigenbasis_scale(a, g, u_a=self.u_a, u_g=self.u_g)
        self.scale = s_t if self.scale is None else rho * self.scale + (1.0 - rho) * s_t


class FactorAverage(CurvatureAverage):
    """``"factors"``: the EMA of each refresh's Kronecker factors (the first capture
    initialises them). Per method:

    * ``kfac``: A and G. ``shampoo``: its two (scaled) factors.
    * ``kpsvd`` (rank 1), ``deflation``, ``lanczos`` (2 terms): the engine's terms, with
      balanced scaling ``‖R_k‖_F = ‖S_k‖_F = √σ_k`` and ``tr R_k ≥ 0``. The first term's factors
      are PSD (the nearest Kronecker product of a PSD matrix; Van Loan & Pitsianis 1993), so
      ``⟨R₁,t, R₁⟩ ≥ 0`` always. The second term is indefinite and its sign is not fixed by the
      data (its trace can be ≈ 0): before averaging, a new term is flipped jointly (``−R, −S``;
      R ⊗ S is unchanged) when ``⟨R_k,t, R_k⟩ < 0``, so that it cannot cancel the running
      average (only the second term can trigger it). When σ₂ ≈ σ₃ the second singular pair can
      swap with the third between refreshes; the new R₂,t is then nearly orthogonal to the
      average, and the EMA blends the two directions (cross products R_a ⊗ S_b included): it
      smooths such a swap rather than tracking it. ``alignment`` counts these events.
    * ``kfac_corrected``: the EMA of A and G (as KFAC) plus the EMA of the correction (R, S),
      the best Kronecker product of ``F_t − A_t ⊗ G_t`` on the minibatch, sign-aligned as above.
    * ``eva``: the EMA of its Kronecker vectors, ``ā ← ρ ā + (1 − ρ) ā_t`` and the same for
      ``ḡ`` (the paper's running average; F̃ = (āāᵀ) ⊗ (ḡḡᵀ) stays rank one).
    * ``ekfac``: the EMA of KFAC's A and G; at every refresh the eigenbasis ``U_A ⊗ U_G`` of
      these running factors, the diagonal ``s_t,pi = (1/m) Σ_j (u_Gpᵀ g_j)² (u_Aiᵀ ā_j)²``
      refitted in it on the minibatch, and its running average ``s ← ρ s + (1 − ρ) s_t``,
      continued across basis changes (George et al. 2018).
    """

    name = "factors"

    def update(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        if self.spec.vectors:
            self._fold_vectors(name, a, g)
            return
        new = self.batch_terms(a, g)
        state = self.layers.get(name)
        if state is None:
            state = self.layers[name] = _FactorEMA(new)
        else:
            state.fold(new, self.ema, self.alignment)
        if self.spec.eigenbasis:
            state.fold_ekfac_scale(a, g, self.ema)

    def batch_terms(self, a: torch.Tensor, g: torch.Tensor) -> Terms:
        """This method's Kronecker terms on one minibatch's (ā, g), padded with zero terms to
        ``FACTOR_TERMS[method]`` (ekfac: the KFAC factors A, G — the registry's
        ``ema_terms_from``)."""
        method, spec = self.method, self.spec
        if not spec.kpsvd_family:  # closed-form factors (kfac, shampoo; ekfac's A, G)
            return _kronecker_terms(approximate(spec.ema_terms_from or method, a, g))
        zero = (a.new_zeros(a.shape[-1], a.shape[-1]), g.new_zeros(g.shape[-1], g.shape[-1]))
        if _dead(a, g):
            # zero terms (kfac_corrected: A, G as KFAC computes them, and a zero correction)
            terms = _kronecker_terms(approximate("kfac", a, g)) if spec.centered else [zero]
        else:
            terms = _kronecker_terms(approximate(method, a, g, tol=APPROX_TOL))
        return terms + [zero] * (FACTOR_TERMS[method] - len(terms))

    def _fold_vectors(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        """Eva: the running (ā, ḡ), initialised by the first capture."""
        new = batch_mean_vectors(a, g)
        old = self.layers.get(name)
        rho = self.ema
        self.layers[name] = (
            new
            if old is None
            else tuple(rho * o + (1.0 - rho) * n for o, n in zip(old, new, strict=True))
        )

    def approximation(self, name: str) -> Approximation:
        state = self.layers[name]
        if self.spec.vectors:
            a_mean, g_mean = state
            return KroneckerVectors(self.method, a_mean, g_mean, info={"ema_mode": "factors"})
        if self.spec.eigenbasis:
            return EigenbasisDiagonal(self.method, u_a=state.u_a, u_g=state.u_g, scale=state.scale)
        return KroneckerSum(self.method, list(state.terms), info={"ema_mode": "factors"})


# -- "window" ------------------------------------------------------------------------------


@dataclass
class _Capture:
    a: torch.Tensor  # (m, da) or (m, T, da) float64, on the engine's device
    g: torch.Tensor  # (m, dg) or (m, T, dg)


class _Window:
    """The last few captures of one layer; their weighted union has Fisher F_ema."""

    def __init__(self, ema: float, max_captures: int, max_samples: int) -> None:
        self.ema = ema
        self.max_captures = max(1, max_captures if ema > 0 else 1)
        self.max_samples = max_samples
        self.items: deque[_Capture] = deque()

    def push(self, item: _Capture) -> None:
        self.items.appendleft(item)
        while len(self.items) > 1 and (
            len(self.items) > self.max_captures
            or sum(c.a.shape[0] for c in self.items) > self.max_samples
        ):
            self.items.pop()

    def weighted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ā, g) rows whose Fisher (1/M) Σ (āāᵀ)⊗(ggᵀ) is Σ_k w_k F_k, w_k ∝ ρ^k, Σ w_k = 1."""
        if len(self.items) == 1:
            return self.items[0].a, self.items[0].g
        raw = [self.ema**k for k in range(len(self.items))]
        total_w = sum(raw)
        big_m = sum(c.a.shape[0] for c in self.items)
        rows_a, rows_g = [], []
        for w, c in zip(raw, self.items, strict=True):
            scale = (w / total_w * big_m / c.a.shape[0]) ** 0.25
            rows_a.append(c.a * scale)
            rows_g.append(c.g * scale)
        return torch.cat(rows_a), torch.cat(rows_g)


class WindowAverage(CurvatureAverage):
    """``"window"``: the method applied to ``F_ema = Σ_k w_k F_k``, ``w_k ∝ ρ^k`` over the last
    ``max_captures`` captures and ``max_samples`` rows at most (k = 0 the newest; at least one
    capture, one when ρ = 0): a TRUNCATED EMA, whose few weights are nearly equal for ρ near 1.
    It is again the Fisher of a weighted sample set: the captured rows are concatenated, those
    of capture k scaled by ``(w_k M / m_k)^{1/4}`` (M rows in all), so that
    ``(1/M) Σ_i (ā_iā_iᵀ) ⊗ (g_ig_iᵀ) = F_ema`` exactly, and the engine approximates that at
    every inverse refresh. A layer with ``T`` positions per sample (a convolution) is scaled
    the same way, sample by sample: its ``D_n = Γ_nᵀ A_n`` scales by the square root of that
    factor, so ``(1/M) Σ_n vec(D_n) vec(D_n)ᵀ = F_ema`` again. For ``kfac``, ``shampoo`` and
    ``ekfac`` the factors are those of the
    weighted rows (each row's weight enters them as √w); for ``ekfac`` the diagonal is the
    exact best one for F_ema in that basis; for ``exact``, the exact block of the rows.
    """

    name = "window"

    def __init__(
        self,
        method: str,
        ema: float,
        *,
        max_captures: int = WINDOW_CAPTURES,
        max_samples: int = WINDOW_SAMPLES,
    ) -> None:
        super().__init__(method, ema)
        self.max_captures = max_captures
        self.max_samples = max_samples

    def update(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        if name not in self.layers:
            self.layers[name] = _Window(self.ema, self.max_captures, self.max_samples)
        self.layers[name].push(_Capture(a, g))

    def approximation(self, name: str) -> Approximation:
        a, g = self.layers[name].weighted()
        if _dead(a, g):
            # F is exactly the zero Kronecker product, whose damped inverse is V / λ (the KPSVD
            # builders need F ≠ 0).
            zeros = (a.new_zeros(a.shape[-1], a.shape[-1]), g.new_zeros(g.shape[-1], g.shape[-1]))
            return KroneckerSum(self.method, [zeros])
        return approximate(self.method, a, g, tol=APPROX_TOL)


# -- "fisher" ------------------------------------------------------------------------------


class FisherAverage(CurvatureAverage):
    """``"fisher"`` (methods with a state of their own in the registry's
    ``FISHER_EMA_METHODS``): ``F_ema ← ρ F_ema + (1 − ρ) F_t`` (the first capture initialises
    it), kept as K = (terms the method uses) + ``EXTRA_TERMS`` Kronecker terms, refreshed at
    every capture as the best rank-K approximation of ``ρ ℛ(kept terms) + (1 − ρ) ℛ(F_t)`` by a
    Gram route over [kept terms | new captures] (:mod:`core.engine.fisher_ema`: the math, the
    truncation-error bound, the sources; cost per refresh and layer O((K + m)³) plus about 2K
    KFAC-sized products).

    The approximation is the leading 1 (kpsvd) or 2 (deflation, lanczos) kept terms: the best
    sums of Kronecker products of F_ema up to the truncation error, with no sign alignment
    needed (a sum of outer products has no sign ambiguity). ``kfac_corrected``:
    ``A_ema ⊗ G_ema`` (the factor EMA, exactly KFAC of F_ema seen as the Fisher of a weighted
    sample set) plus the best Kronecker product of ``F_ema − A_ema ⊗ G_ema`` (from the kept
    terms and the new capture, before truncation). The first kept term is nearly, not exactly,
    PSD (off by the order of the truncation error; factored damping covers it).
    """

    name = "fisher"
    device: torch.device  # the captures' device (for the zero terms), set by update

    def update(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        if name not in self.layers:
            keep = FACTOR_TERMS[self.method] + EXTRA_TERMS
            self.layers[name] = FisherEMA(keep, centered=self.spec.centered)
        self.layers[name].fold(a, g, self.ema)
        self.device = a.device

    def approximation(self, name: str) -> KroneckerSum:
        """The leading terms of the layer's averaged Fisher (kfac_corrected: A_ema ⊗ G_ema + the
        best product of the averaged residual), padded with zero terms."""
        state: FisherEMA = self.layers[name]
        n_terms = FACTOR_TERMS[self.method]
        if state.dims is None or (self.spec.centered and state.kfac is None):
            raise ValueError(f"layer {name!r} has no update yet")
        if state.kfac is not None and self.spec.centered:
            terms = [state.kfac, *state.correction]
        else:
            terms = list(state.terms[:n_terms])
        terms += [_zero_term(*state.dims, self.device)] * (n_terms - len(terms))
        info = {"ema_mode": "fisher", "kept_terms": state.keep, "truncation": state.truncation[-1]}
        return KroneckerSum(self.method, terms, info=info)


EMA_MODES: tuple[str, ...] = (FactorAverage.name, WindowAverage.name, FisherAverage.name)


def curvature_average(
    method: str,
    ema_mode: str,
    *,
    ema: float,
    window_captures: int = WINDOW_CAPTURES,
    window_samples: int = WINDOW_SAMPLES,
) -> CurvatureAverage:
    """The average ``ema_mode`` names for ``method``, where the method has one: ``exact`` uses
    the window in every mode (its block is not a factored object), and the methods outside
    ``FISHER_EMA_METHODS`` keep their factor average in ``"fisher"`` mode."""
    if ema_mode not in EMA_MODES:
        raise ValueError(f"ema_mode must be one of {EMA_MODES}, got {ema_mode!r}")
    if method_spec(method).kind == "exact" or ema_mode == WindowAverage.name:
        return WindowAverage(method, ema, max_captures=window_captures, max_samples=window_samples)
    if ema_mode == FisherAverage.name and method in FISHER_EMA_METHODS:
        return FisherAverage(method, ema)
    return FactorAverage(method, ema)
