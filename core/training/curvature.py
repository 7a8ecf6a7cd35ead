"""Curvature state of the natural-gradient optimizers: per-layer Fisher averages, the
engine's approximations of them and their damped inverses (:class:`Preconditioner`; the
optimizer step that uses them is :mod:`core.training.optim`).

Damping convention (what "(F̃ + damping)⁻¹" means, per method; the engine's
``solve(V, λ, mode="factored")``):

* one Kronecker product R ⊗ S (``kfac``, ``kpsvd``, ``shampoo``): Martens–Grosse factored
  damping, ``((R + π√λ I) ⊗ (S + √λ/π I))⁻¹`` with ``π = sqrt((tr R/da)/(tr S/dg))``;
* two products R₁⊗S₁ + R₂⊗S₂ (``deflation``, ``lanczos``, ``kfac_corrected``): the first term
  gets factored damping, the second is added undamped, ``((R₁+π√λI)⊗(S₁+√λ/πI) + R₂⊗S₂)⁻¹``,
  inverted in closed form by the generalized eigenproblems, with the engine's documented
  indefiniteness safeguard (``1 + μν`` floored at ``psd_floor``, counted in ``safeguard``);
* ``ekfac``: ``(F̃ + λI)⁻¹`` exactly (orthonormal eigenbasis);
* ``exact``: ``(F_l + λI)⁻¹`` with ``F_l`` the exact Fisher block of layer ``l``, by Woodbury
  (:meth:`core.engine.fisher.LayerFisher.solve`). This is BLOCK-DIAGONAL per layer: the
  cross-layer blocks of the Fisher are ignored, as in every other method here.

Curvature EMA (``ema`` = ρ, ``ema_mode``):

* ``ema_mode="factors"`` (the default, for every method except ``exact``): each curvature
  refresh approximates the Fisher of the CURRENT Fisher minibatch only,
  ``F̃_t = Σ_k R_k,t ⊗ S_k,t``, and keeps an exponential moving average of its Kronecker factors,
  term by term: ``R_k ← ρ R_k + (1 − ρ) R_k,t``, ``S_k ← ρ S_k + (1 − ρ) S_k,t`` (the first
  capture initialises them). The preconditioner is ``F̃_ema = Σ_k R_k ⊗ S_k``. This is exactly
  what KFAC does for A and G (Martens & Grosse 2015), and what the seed paper does for all its
  methods (EMA 0.95 of the curvature estimates). It is NOT the EMA of the F̃_t (a product of
  averages is not an average of products), nor a best approximation of the EMA of F.

  - ``kfac``: A and G. ``shampoo``: its two (scaled) factors.
  - ``kpsvd`` (rank 1), ``deflation``, ``lanczos`` (2 terms): the engine's terms, with balanced
    scaling ``‖R_k‖_F = ‖S_k‖_F = √σ_k`` and ``tr R_k ≥ 0``. The first term's factors are
    positive semidefinite (the nearest Kronecker product of a PSD matrix; Van Loan & Pitsianis
    1993), so ``⟨R₁,t, R₁⟩ ≥ 0`` always. The second term is indefinite and its sign is not
    determined by the data (its trace can be ≈ 0): before averaging, the new term is flipped
    jointly (``−R, −S``; R ⊗ S is unchanged) when ``⟨R₂,t, R₂⟩ < 0``, so that it cannot cancel
    the running average (the rule is applied to every term; only the second one can trigger
    it). Caveat: the second singular pair can swap with the third from one refresh to the next
    when σ₂ ≈ σ₃; the new R₂,t is then nearly orthogonal to the average, and the EMA blends the
    two directions (including cross products R_a ⊗ S_b) — it smooths such a swap rather than
    tracking it exactly. :attr:`Preconditioner.alignment` counts the second-term updates, the
    sign flips and the low-overlap arrivals (``|cos(R₂,t, R₂)| < 0.5``); how often they happen
    is measured in bench/RESULTS-training.md (the reason for ``ema_mode="fisher"``).
  - ``kfac_corrected``: the EMA of A and G (as KFAC) plus the EMA of the correction (R, S), the
    best Kronecker product of ``F_t − A_t ⊗ G_t`` on the current minibatch, sign-aligned as
    above.
  - ``ekfac``: the EMA of KFAC's A and G; at every curvature refresh the eigenbasis
    ``U_A ⊗ U_G`` of these running factors, the diagonal ``s_t`` refitted in that basis on the
    current minibatch (``s_t,pi = (1/m) Σ_j (u_Gpᵀ g_j)² (u_Aiᵀ ā_j)²``), and its running
    average ``s ← ρ s + (1 − ρ) s_t``, continued across basis changes (George et al. 2018: the
    eigenbasis from the running factors, the second moments in it as a running average).
  - ``exact``: the exact block is not a factored object, so "factors" has no meaning for it: it
    uses the window below in both modes.

  A term the engine drops (a zero singular value) or a layer with F_t = 0 (all units dead)
  contributes zero factors to the average. The engine's ``approximate`` runs once per curvature
  refresh on one minibatch (m rows).
* ``ema_mode="window"`` (the ablation; every natural method, ``kfac`` and ``shampoo`` included):
  the method approximates the EMA of the Fisher itself, ``F_ema = Σ_k w_k F_k`` with
  ``w_k ∝ ρ^k`` over the last ``window`` captures (k = 0 the newest), which is again a Fisher of
  a weighted sample set: the captured rows are concatenated, those of capture k scaled by
  ``(w_k M / m_k)^{1/4}`` (M rows in all), so that ``(1/M) Σ_i (ā_iā_iᵀ) ⊗ (g_ig_iᵀ) = F_ema``
  exactly, and the engine approximates that at every inverse refresh. The window holds at most
  ``WINDOW_CAPTURES`` = 4 captures and ``WINDOW_SAMPLES`` = 1024 rows (at least one capture; one
  when ρ = 0), i.e. a TRUNCATED EMA: with ρ = 0.95 its 4 weights are nearly equal (0.27, 0.26,
  0.24, 0.23). The bound keeps a refresh within a small multiple of KFAC's cost (the engine's
  Gram route costs O(M²) per Lanczos step on M rows). For ``kfac``, ``shampoo`` and ``ekfac``
  the factors are those of the weighted rows (each row's weight enters them as √w); for
  ``ekfac`` the diagonal is the exact best one for F_ema in that basis. (Before ``ema_mode``
  existed, kpsvd/deflation/lanczos/kfac_corrected/ekfac used this mode and kfac/shampoo the
  factor EMA; bench/RESULTS-training.md keeps those numbers as the ablation.)
* ``ema_mode="fisher"`` (the KPSVD family: ``kpsvd``, ``deflation``, ``lanczos``,
  ``kfac_corrected``): the EMA of the Fisher itself, ``F_ema ← ρ F_ema + (1 − ρ) F_t`` (the
  first capture initialises it), kept in rearranged low-rank form: K = (terms the method uses)
  + ``EXTRA_TERMS`` (2) Kronecker terms, refreshed at every capture as the best rank-K
  approximation of ``ρ ℛ(kept terms) + (1 − ρ) ℛ(F_t)`` by a Gram route over [kept terms |
  new captures] (:mod:`core.engine.fisher_ema`, with the math, the truncation-error bound and
  sources). The preconditioner is the leading 1 (kpsvd) or 2 (deflation, lanczos) of those
  terms: the best sums of Kronecker products of F_ema up to the truncation error, with no sign
  alignment needed (a sum of outer products has no sign ambiguity). ``kfac_corrected``:
  ``A_ema ⊗ G_ema`` (the factor EMA, which is exactly KFAC of F_ema seen as the Fisher of a
  weighted sample set) plus the best Kronecker product of ``F_ema − A_ema ⊗ G_ema`` (from the
  kept terms and the new capture, before truncation). ``kfac``, ``shampoo`` and ``ekfac`` keep
  their "factors" state in this mode (one product; for kfac it is the KFAC of F_ema), ``exact``
  its window. Cost per refresh and layer: O((K + m)³) for the (K + m)-sized Grams plus about
  2K KFAC-sized products; the first term of the truncated average is nearly, not exactly, PSD
  (its deviation is of the order of the truncation error; factored damping covers it).

Engine options: the KPSVD family uses the engine's Gram route with a relative residual
tolerance of 1e-6 (``APPROX_TOL``; the engine's float64 default, 1e-10, buys nothing against a
minibatch Fisher's sampling noise). On that route ``deflation`` and ``lanczos`` compute the same
best two-term approximation (they differ only in the seed paper's matrix-free algorithms), so
as optimizers they give the same updates up to that tolerance. Every damped inverse is the
engine's ``solve(V, λ, mode="factored")`` on the approximation rebuilt at each inverse refresh;
the engine caches the eigendecompositions behind it (per damping) for the ``t_inv`` period.

Precision and device: the model trains in float32 on its device (CUDA when available), and the
engine follows it (:func:`core.engine.precision.engine_precision`, fixed at the first capture).
Captures are converted to float64 on the engine's device; the curvature state (factor EMA,
windows, ``FisherEMA``), ``approximate`` and the eigendecompositions behind the damped inverses
run there in float64: they are amortised over ``t_cov``/``t_inv`` steps, and float32 there costs
up to 1e-4 of the preconditioned gradient (1e-2 for EKFAC; :mod:`core.engine.precision`). The
per-step solves run in the policy's dtype: float64 on the CPU and on CUDA parts with fast
float64 (compute capability 6.0, 7.0, 8.0, 9.0), float32 on other CUDA parts, from the float64
decompositions rounded once (≈ 5e-7 relative); ``KRONOSCOPE_ENGINE_DTYPE`` overrides it. On MPS
and other devices without float64 the engine stays on the CPU. :meth:`Preconditioner.precondition`
returns the gradient's device and dtype (float64 from the optimizer, which casts the update to
the parameters'). The CPU path is unchanged by the engine following the device, bit for bit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..engine.approx import (
    Approximation,
    EigenbasisDiagonal,
    KroneckerSum,
    SafeguardStats,
    approximate,
    eigenbasis_scale,
)
from ..engine.capture import capture
from ..engine.fisher_ema import EXTRA_TERMS, FisherEMA
from ..engine.kron import sym
from ..engine.methods import FISHER_EMA_METHODS, METHODS, OPTIMIZERS, method_spec
from ..engine.precision import EnginePrecision, engine_precision

if TYPE_CHECKING:
    from .optim import OptimizerConfig

__all__ = ["Preconditioner", "APPROX_TOL", "WINDOW_CAPTURES", "WINDOW_SAMPLES"]

# Methods that use the window whatever ema_mode says (the exact block is not a factored object).
WINDOW_ONLY: tuple[str, ...] = tuple(n for n in OPTIMIZERS if method_spec(n).kind == "exact")
# FISHER_EMA_METHODS (registry): methods with an ema_mode="fisher" state of their own; the
# single-product methods (kfac, shampoo, ekfac) keep their factor EMA in that mode (for KFAC it
# is the KFAC of F_ema).
# Kronecker terms per refresh in "factors" mode (ekfac: the KFAC factors A, G).
FACTOR_TERMS = {n: method_spec(n).terms or 1 for n in METHODS}
LOW_OVERLAP = 0.5  # |cos(R₂,t, R₂)| below this counts as a low-overlap arrival (diagnostics)
WINDOW_CAPTURES = 4  # captures kept in the curvature window ("window" mode, and exact) …
WINDOW_SAMPLES = 1024  # … and rows at most (at least one capture is always kept)
# Relative residual at which the engine's singular-vector iterations stop for the optimizers:
# far below the sampling noise of a minibatch Fisher (the engine's float64 default is 1e-10).
APPROX_TOL = 1e-6


# -- curvature state -----------------------------------------------------------------------


@dataclass
class _Capture:
    a: torch.Tensor  # (m, da) float64, on the engine's device
    g: torch.Tensor  # (m, dg)


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


class _LayerInverse:
    """The damped inverse of one layer's block, fixed until the next inverse refresh."""

    def __init__(self, approx: Approximation, damping: float) -> None:
        self.damping = damping
        self.approx = approx  # float64, on the engine's device
        self._solver = approx  # what the per-step solves use (bench/mutation_bench.py names it)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return self._solver.solve(v, self.damping, mode="factored")


class _FactorEMA:
    """State of one layer in "factors" mode: the running Kronecker factors (and, for ekfac,
    the running diagonal in the eigenbasis of the running KFAC factors)."""

    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.terms = [(r.clone(), s.clone()) for r, s in terms]
        self.u_a: torch.Tensor | None = None  # ekfac
        self.u_g: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def fold(
        self, new: list[tuple[torch.Tensor, torch.Tensor]], rho: float, alignment: dict[str, int]
    ) -> None:
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
        s_t = eigenbasis_scale(a, g, self.u_a, self.u_g)
        self.scale = s_t if self.scale is None else rho * self.scale + (1.0 - rho) * s_t


class Preconditioner:
    """Per-layer curvature state and damped inverses for one natural-gradient method.

    ``update_curvature(x, y)`` captures on a Fisher minibatch; ``update_inverses()`` rebuilds
    the approximations and their inverses; ``precondition(name, V)`` applies the inverse to a
    (dg, da) gradient matrix. See the module docstring for the EMA and damping conventions.
    """

    def __init__(
        self,
        model: nn.Module,
        config: OptimizerConfig,
        *,
        loss: str,
        generator: torch.Generator,
        window_captures: int = WINDOW_CAPTURES,
        window_samples: int = WINDOW_SAMPLES,
    ) -> None:
        if not config.natural:
            raise ValueError(f"{config.name!r} is a first-order optimizer: no preconditioner")
        self.model = model
        self.config = config
        self.method = config.name
        self.spec = method_spec(config.name)
        self.loss = loss
        self.generator = generator
        # Curvature state: EMA'd Kronecker factors ("factors") or a weighted window of captures
        # ("window"; always for exact).
        self.ema_mode = "window" if self.method in WINDOW_ONLY else config.ema_mode
        if self.ema_mode == "fisher" and self.method not in FISHER_EMA_METHODS:
            self.ema_mode = "factors"
        self.windowed = self.ema_mode == "window"
        self.window_captures = window_captures
        self.window_samples = window_samples
        self.last_capture = None  # the latest CaptureResult (diagnostics, tests)
        # the engine's device and per-step dtype, fixed by the first capture (model's device)
        self.precision: EnginePrecision | None = None
        self.factors: dict[str, _FactorEMA] = {}
        self.windows: dict[str, _Window] = {}
        self.fisher_states: dict[str, FisherEMA] = {}
        self.inverses: dict[str, _LayerInverse] = {}
        self.curvature_updates = 0
        self.inverse_updates = 0
        # "factors" mode, second terms: EMA updates, sign flips, |cos| < LOW_OVERLAP arrivals.
        self.alignment = {"updates": 0, "flipped": 0, "low_overlap": 0}
        # the engine's SafeguardStats counters (inverses formed, engaged, entries raised, …)
        self._retired_safeguard = {f.name: 0 for f in fields(SafeguardStats)}

    # -- curvature ---------------------------------------------------------------------
    def update_curvature(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        result = capture(
            self.model,
            x,
            loss=self.loss,
            fisher=self.config.fisher,
            targets=y,
            generator=self.generator,
            strict=False,
        )
        self.last_capture = result
        if self.precision is None:
            self.precision = engine_precision(next(self.model.parameters()).device)
        device = self.precision.device
        rho = self.config.ema
        for name, lc in result.layers.items():
            a = lc.a.detach().to(device, torch.float64)
            g = lc.g.detach().to(device, torch.float64)
            if self.windowed:
                if name not in self.windows:
                    self.windows[name] = _Window(rho, self.window_captures, self.window_samples)
                self.windows[name].push(_Capture(a, g))
                continue
            if self.ema_mode == "fisher":
                if name not in self.fisher_states:
                    keep = FACTOR_TERMS[self.method] + EXTRA_TERMS
                    self.fisher_states[name] = FisherEMA(keep, centered=self.spec.centered)
                self.fisher_states[name].fold(a, g, rho)
                continue
            new = self.batch_terms(a, g)
            state = self.factors.get(name)
            if state is None:
                state = self.factors[name] = _FactorEMA(new)
            else:
                state.fold(new, rho, self.alignment)
            if self.spec.eigenbasis:
                state.fold_ekfac_scale(a, g, rho)
        self.curvature_updates += 1

    def batch_terms(
        self, a: torch.Tensor, g: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For "factors" mode: this method's Kronecker terms on one minibatch's (ā, g), padded
        with zero terms to ``FACTOR_TERMS[method]`` (ekfac: the KFAC factors A, G — the
        registry's ``ema_terms_from``)."""
        method, spec = self.method, self.spec
        if not spec.kpsvd_family:  # closed-form factors (kfac, shampoo; ekfac's A, G)
            return list(approximate(spec.ema_terms_from or method, a, g).terms)
        n_terms = FACTOR_TERMS[method]
        zero = (a.new_zeros(a.shape[1], a.shape[1]), g.new_zeros(g.shape[1], g.shape[1]))
        if not bool((g != 0).any()) or not bool((a != 0).any()):
            # F_t = 0 (e.g. a layer whose units are all dead): zero terms (kfac_corrected: A, G
            # as KFAC computes them, and a zero correction).
            first = approximate("kfac", a, g).terms if spec.centered else [zero]
            terms = list(first)
        else:
            terms = list(approximate(method, a, g, tol=APPROX_TOL).terms)
        return terms + [zero] * (n_terms - len(terms))

    def approximation(self, name: str) -> Approximation:
        """The current approximation of layer ``name`` (a fresh float64 engine object on the
        engine's device; for ``exact``, the exact block of the window's weighted samples)."""
        if self.ema_mode == "fisher":
            return self._fisher_approximation(name)
        if not self.windowed:
            state = self.factors[name]
            if self.spec.eigenbasis:
                return EigenbasisDiagonal(self.method, state.u_a, state.u_g, state.scale)
            return KroneckerSum(self.method, list(state.terms), info={"ema_mode": "factors"})
        a, g = self.windows[name].weighted()
        if not bool((g != 0).any()) or not bool((a != 0).any()):
            # F = 0 (e.g. a layer whose units are all dead): F is exactly the zero Kronecker
            # product, whose damped inverse is V / λ (the KPSVD builders need F ≠ 0).
            zeros = (a.new_zeros(a.shape[1], a.shape[1]), g.new_zeros(g.shape[1], g.shape[1]))
            return KroneckerSum(self.method, [zeros])
        return approximate(self.method, a, g, tol=APPROX_TOL)

    def _fisher_approximation(self, name: str) -> KroneckerSum:
        """ "fisher" mode: the leading terms of the layer's averaged Fisher (kfac_corrected:
        A_ema ⊗ G_ema + the best product of the averaged residual), padded with zero terms."""
        state = self.fisher_states[name]
        n_terms = FACTOR_TERMS[self.method]
        if self.spec.centered:
            terms = [state.kfac, *state.correction]
        else:
            terms = list(state.terms[:n_terms])
        da, dg = state.dims
        where = {"device": self.precision.device, "dtype": torch.float64}
        zero = (torch.zeros(da, da, **where), torch.zeros(dg, dg, **where))
        terms += [zero] * (n_terms - len(terms))
        info = {"ema_mode": "fisher", "kept_terms": state.keep, "truncation": state.truncation[-1]}
        return KroneckerSum(self.method, terms, info=info)

    def update_inverses(self) -> None:
        names = list(self.windows) if self.windowed else list(self.factors)
        if self.ema_mode == "fisher":
            names = list(self.fisher_states)
        if not names:
            raise RuntimeError("update_inverses() before any update_curvature()")
        self._retired_safeguard = self.safeguard_counts()
        self.inverses = {
            name: _LayerInverse(self.approximation(name), self.config.damping) for name in names
        }
        self.inverse_updates += 1

    def precondition(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """``(F̃ + damping)⁻¹ vec(V)`` for layer ``name``: solved on the engine's device in its
        per-step dtype (the exact block answers in float64), returned on ``V``'s device and in
        its dtype (float64 from the optimizer)."""
        where = self.precision
        x = self.inverses[name].solve(v.to(where.device, where.solve_dtype))
        return x.to(v.device, v.dtype)

    def safeguard_counts(self) -> dict[str, int]:
        """Engagements of the engine's indefiniteness safeguard (the counters of
        :class:`core.engine.approx.SafeguardStats`), summed over layers and over every inverse since
        the start (two-term methods only; zero for the others)."""
        total = dict(self._retired_safeguard)
        for inv in self.inverses.values():
            counted = asdict(inv.approx.safeguard)
            for key in total:
                total[key] += counted[key]
        return total
