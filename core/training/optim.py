"""Optimizers: SGD, Adam, and natural gradient preconditioned by every engine approximation.

A natural-gradient optimizer here is a :class:`Preconditioner` (per-layer curvature state, the
engine's approximations and their damped inverses) plus ``torch.optim.SGD`` for the final
momentum step. One training step, after ``loss.backward()``:

1. every ``t_cov`` steps: capture ``ā_i`` and ``g_i`` of every ``nn.Linear`` on a Fisher minibatch
   (:func:`core.engine.capture.capture`, true or empirical Fisher, a seeded ``torch.Generator``) and
   fold them into the curvature state (see "Curvature EMA" below);
2. every ``t_inv`` steps: rebuild each layer's approximation F̃ from that state and its damped
   inverse (eigendecompositions, cached until the next refresh);
3. add ``weight_decay · θ`` to the gradient (the natural gradient of the L2-regularised loss);
4. precondition each Linear layer's gradient matrix ``V = [∇W | ∇b]`` of shape (dg, da)
   (bias as the last column, the engine's convention) — ``P = (F̃ + damping)⁻¹ V``;
5. KL-clipping (Martens & Grosse 2015, §10; Ba et al. 2017): scale every update by
   ``ν = min(1, sqrt(kl_clip / (lr² Σ_layers ⟨V, P⟩)))``;
6. ``torch.optim.SGD(lr, momentum)`` on the clipped, preconditioned gradients.

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

Precision and device: the model trains in float32 on its device (CUDA when available). Captures
are converted to float64 and the curvature estimation (``approximate``) runs on the CPU — float64
is slow on many GPUs and the refresh is amortized over ``t_cov``/``t_inv`` steps; this also keeps
one code path on every device. The factors are then moved to the training device, where the
per-step solves run in float64 and the result is cast back to the parameters' dtype.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, fields

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
from ..engine.capture import FISHER_KINDS, capture
from ..engine.fisher_ema import EXTRA_TERMS, FisherEMA
from ..engine.kron import sym
from ..engine.layers import linear_layers
from ..engine.methods import FIRST_ORDER, FISHER_EMA_METHODS, METHODS, OPTIMIZERS, method_spec
from ..engine.validation import NonFiniteValueError
from .models import PRESETS

__all__ = [
    "OPTIMIZERS",
    "NATURAL_OPTIMIZERS",
    "EMA_MODES",
    "FISHER_EMA_METHODS",
    "OptimizerConfig",
    "default_lr",
    "default_damping",
    "Preconditioner",
    "TrainingOptimizer",
    "build_optimizer",
    "NonFiniteError",
]

# Which optimizers exist, their kind and defaults: views over the registry (core/engine/methods.py).
NATURAL_OPTIMIZERS: tuple[str, ...] = tuple(n for n in OPTIMIZERS if n not in FIRST_ORDER)
# Curvature averaging (see the module docstring): an EMA of each refresh's Kronecker factors
# ("factors", the default), an approximation of a truncated EMA of the Fisher ("window"), or the
# EMA of the Fisher itself kept in rearranged low-rank form ("fisher", core/engine/fisher_ema.py).
EMA_MODES: tuple[str, ...] = ("factors", "window", "fisher")
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


class NonFiniteError(FloatingPointError):
    """A gradient or update became NaN/inf (the run has diverged)."""


def _check_name(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return name


def _check_preset(preset: str | None) -> str | None:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def default_lr(name: str, preset: str | None = None) -> float:
    """A sensible learning rate per optimizer (tuned on curves-small, see the benchmark), and
    per model preset where that one diverges (``None``: curves-small's); from the registry
    (core/engine/methods.py: ``lr``, ``preset_lr``)."""
    return method_spec(_check_name(name)).default_lr(_check_preset(preset))


def default_damping(name: str, preset: str | None = None) -> float:
    """The default damping λ per optimizer (tuned on curves-small; 0 for sgd and adam, which
    do not use it), and per model preset where needed; from the registry (core/engine/methods.py:
    ``damping``, ``preset_damping``)."""
    return method_spec(_check_name(name)).default_damping(_check_preset(preset))


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class OptimizerConfig:
    """Options of one optimizer; validated on construction (clear ``ValueError`` messages).

    ``lr``: learning rate (> 0). ``damping``: λ > 0 for the natural-gradient methods (ignored,
    but still ≥ 0, for sgd/adam); ``None`` picks :func:`default_damping`. ``t_cov`` and
    ``t_inv``: curvature refresh and inverse periods, in steps. ``ema``: decay ρ ∈ [0, 1) of
    the curvature estimate. ``kl_clip``: KL-clipping bound (> 0), or ``None`` for none.
    ``momentum`` ∈ [0, 1) (Adam's β₁). ``weight_decay`` ≥ 0. ``fisher_batch``: Fisher
    minibatch size (``None``: the training minibatch). ``fisher``: ``"true"`` (targets sampled
    from the model) or ``"empirical"`` (the data's targets). ``ema_mode``: ``"factors"`` (EMA
    of each refresh's Kronecker factors, as KFAC; the default), ``"window"`` (approximate a
    truncated EMA of the Fisher) or ``"fisher"`` (the EMA of the Fisher in rearranged low-rank
    form, for the KPSVD family; kfac, shampoo and ekfac keep their factor EMA there); see the
    module docstring. ``exact`` uses the window in every mode.
    """

    name: str
    lr: float
    damping: float | None = None  # None: default_damping(name), the tuned per-method default
    t_cov: int = 10
    t_inv: int = 10
    ema: float = 0.95
    kl_clip: float | None = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    fisher_batch: int | None = None
    fisher: str = "true"
    ema_mode: str = "factors"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"optimizer name must be a string, got {self.name!r}")
        self.name = self.name.strip().lower().replace("-", "_")
        _check_name(self.name)
        if self.damping is None:
            self.damping = default_damping(self.name)
        if not _finite(self.lr) or self.lr <= 0:
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not _finite(self.damping) or self.damping < 0:
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        if self.name in NATURAL_OPTIMIZERS and self.damping <= 0:
            raise ValueError(
                f"damping must be > 0 for the natural-gradient optimizer {self.name!r} "
                f"(it keeps (F̃ + damping) invertible), got {self.damping!r}"
            )
        for key in ("t_cov", "t_inv"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer ≥ 1 (steps), got {value!r}")
        if not _finite(self.ema) or not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema!r}")
        if self.kl_clip is not None and (not _finite(self.kl_clip) or self.kl_clip <= 0):
            raise ValueError(f"kl_clip must be a finite number > 0 or None, got {self.kl_clip!r}")
        if not _finite(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay!r}")
        fb = self.fisher_batch
        if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or fb < 1):
            raise ValueError(f"fisher_batch must be an integer ≥ 1 or None, got {fb!r}")
        if self.fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {FISHER_KINDS}, got {self.fisher!r}")
        if isinstance(self.ema_mode, str):
            self.ema_mode = self.ema_mode.strip().lower()
        if self.ema_mode not in EMA_MODES:
            raise ValueError(f"ema_mode must be one of {EMA_MODES}, got {self.ema_mode!r}")

    @property
    def natural(self) -> bool:
        return self.name in NATURAL_OPTIMIZERS

    def to_dict(self) -> dict:
        return asdict(self)


# -- curvature state -----------------------------------------------------------------------


@dataclass
class _Capture:
    a: torch.Tensor  # (m, da) float64, CPU
    g: torch.Tensor  # (m, dg) float64, CPU


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

    def __init__(self, approx: Approximation, damping: float, device: torch.device) -> None:
        self.damping = damping
        self.approx = approx  # on the CPU: what to_dense()/tests/diagnostics look at
        self._solver = approx.to(device)  # shares approx.safeguard: engagements counted there

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
        rho = self.config.ema
        for name, lc in result.layers.items():
            a = lc.a.detach().to("cpu", torch.float64)
            g = lc.g.detach().to("cpu", torch.float64)
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
        """The current approximation of layer ``name`` (a fresh engine object, on the CPU; for
        ``exact``, the exact block of the window's weighted samples)."""
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
        zero = (torch.zeros(da, da, dtype=torch.float64), torch.zeros(dg, dg, dtype=torch.float64))
        terms += [zero] * (n_terms - len(terms))
        info = {"ema_mode": "fisher", "kept_terms": state.keep, "truncation": state.truncation[-1]}
        return KroneckerSum(self.method, terms, info=info)

    def update_inverses(self) -> None:
        names = list(self.windows) if self.windowed else list(self.factors)
        if self.ema_mode == "fisher":
            names = list(self.fisher_states)
        if not names:
            raise RuntimeError("update_inverses() before any update_curvature()")
        device = next(self.model.parameters()).device
        self._retired_safeguard = self.safeguard_counts()
        self.inverses = {
            name: _LayerInverse(self.approximation(name), self.config.damping, device)
            for name in names
        }
        self.inverse_updates += 1

    def precondition(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """``(F̃ + damping)⁻¹ vec(V)`` for layer ``name`` (float64 in, float64 out)."""
        return self.inverses[name].solve(v)

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


# -- the optimizer -------------------------------------------------------------------------


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return dict(linear_layers(model))


class TrainingOptimizer:
    """One optimizer object for every method; ``step(x, y)`` after ``loss.backward()``.

    ``x``, ``y``: the current training minibatch (used as the Fisher minibatch when no
    ``fisher_data`` is given; ``y`` are the data targets, needed for the empirical Fisher).
    ``fisher_data``: ``(x_train, y_train)`` to draw Fisher minibatches of ``fisher_batch`` rows
    from, with the seeded generator. ``loss``: the likelihood kind (``"bce"``, ``"mse"``,
    ``"ce"``), as in :func:`core.engine.capture.capture`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: OptimizerConfig,
        *,
        loss: str,
        seed: int = 0,
        fisher_data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        window_captures: int = WINDOW_CAPTURES,
        window_samples: int = WINDOW_SAMPLES,
    ) -> None:
        self.model = model
        self.config = config
        self.loss = loss
        self.fisher_data = fisher_data
        self.steps = 0
        self.last_kl_scale = 1.0
        self.generator = torch.Generator().manual_seed(int(seed))
        params = [p for p in model.parameters() if p.requires_grad]
        c = config
        self.preconditioner: Preconditioner | None = None
        if c.name == "adam":
            self.base: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay
            )
        elif c.name == "sgd":
            self.base = torch.optim.SGD(
                params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        else:
            self.base = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)
            self.preconditioner = Preconditioner(
                model,
                c,
                loss=loss,
                generator=self.generator,
                window_captures=window_captures,
                window_samples=window_samples,
            )
        self.layers = _linear_modules(model)

    @property
    def name(self) -> str:
        return self.config.name

    def zero_grad(self) -> None:
        self.base.zero_grad(set_to_none=True)

    def _fisher_minibatch(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fb = self.config.fisher_batch
        if self.fisher_data is not None and fb is not None:
            fx, fy = self.fisher_data
            n = fx.shape[0]
            if fb >= n:
                return fx, fy
            idx = torch.randperm(n, generator=self.generator)[:fb].to(fx.device)
            return fx[idx], (None if fy is None else fy[idx])
        if fb is not None and fb < x.shape[0]:
            return x[:fb], (None if y is None else y[:fb])
        return x, y

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Apply one update from the gradients in ``.grad`` (call after ``backward()``)."""
        pre = self.preconditioner
        if pre is None:
            self._check_grads()
            self.base.step()
            self.steps += 1
            return
        c = self.config
        if self.steps % c.t_cov == 0:
            try:
                pre.update_curvature(*self._fisher_minibatch(x, y))
            except NonFiniteValueError as err:  # the engine's finiteness checks
                raise NonFiniteError(
                    f"the Fisher capture became non-finite at step {self.steps}: {err}"
                ) from err
        if self.steps % c.t_inv == 0 or not pre.inverses:
            pre.update_inverses()
        self._check_grads()
        with torch.no_grad():
            if c.weight_decay:
                for p in self.base.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.grad.add_(p, alpha=c.weight_decay)
            vg = 0.0
            handled: set[int] = set()
            for name, layer in self.layers.items():
                if name not in pre.inverses or layer.weight.grad is None:
                    continue
                w = layer.weight
                b = layer.bias
                v = w.grad
                if b is not None:
                    v = torch.cat([v, b.grad[:, None]], dim=1)
                v64 = v.to(torch.float64)
                p64 = pre.precondition(name, v64)
                vg += float((v64 * p64).sum())
                p32 = p64.to(w.dtype)
                if b is not None:
                    w.grad.copy_(p32[:, :-1])
                    b.grad.copy_(p32[:, -1])
                    handled.add(id(b))
                else:
                    w.grad.copy_(p32)
                handled.add(id(w))
            # Parameters outside the Linear layers (none in the autoencoders) keep their
            # gradient and count in the KL sum with the identity metric.
            for p in self.base.param_groups[0]["params"]:
                if id(p) not in handled and p.grad is not None:
                    vg += float((p.grad.to(torch.float64) ** 2).sum())
            if not math.isfinite(vg):
                raise NonFiniteError(
                    f"the preconditioned gradient became non-finite at step {self.steps}"
                )
            nu = 1.0
            if c.kl_clip is not None and vg > 0:
                nu = min(1.0, math.sqrt(c.kl_clip / (c.lr**2 * vg)))
            self.last_kl_scale = nu
            if nu != 1.0:
                for p in self.base.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.grad.mul_(nu)
        self.base.step()
        self.steps += 1

    def _check_grads(self) -> None:
        for p in self.base.param_groups[0]["params"]:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise NonFiniteError(f"the gradient became non-finite at step {self.steps}")

    def diagnostics(self) -> dict:
        """Counters for logs: steps, refreshes, last KL scale, safeguard engagements."""
        out = {"steps": self.steps, "kl_scale": self.last_kl_scale}
        if self.preconditioner is not None:
            out["curvature_updates"] = self.preconditioner.curvature_updates
            out["inverse_updates"] = self.preconditioner.inverse_updates
            out.update(
                {f"safeguard_{k}": v for k, v in self.preconditioner.safeguard_counts().items()}
            )
        return out


def build_optimizer(
    model: nn.Module,
    config: OptimizerConfig,
    *,
    loss: str,
    seed: int = 0,
    fisher_data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> TrainingOptimizer:
    """The optimizer for ``config`` over ``model``'s parameters (see :class:`TrainingOptimizer`)."""
    return TrainingOptimizer(model, config, loss=loss, seed=seed, fisher_data=fisher_data)
