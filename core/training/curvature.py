"""Curvature state of the natural-gradient optimizers: per-layer Fisher averages, the
engine's approximations of them and their damped inverses (:class:`Preconditioner`; the
optimizer step that uses them is :mod:`core.training.optim`, the averages, one object per
``ema_mode``, are :mod:`core.training.averages`). How the optimizers compare in training, and
the measurements behind their defaults: bench/RESULTS-training.md.

Damping convention (what "(F̃ + damping)⁻¹" means, per method; the engine's
``solve(V, λ, mode="factored")``, whose eigendecompositions the engine caches per damping until
the next inverse refresh):

* one Kronecker product R ⊗ S (``kfac``, ``kpsvd``, ``shampoo``): Martens–Grosse factored
  damping, ``((R + π√λ I) ⊗ (S + √λ/π I))⁻¹`` with ``π = sqrt((tr R/da)/(tr S/dg))``;
* two products R₁⊗S₁ + R₂⊗S₂ (``deflation``, ``lanczos``, ``kfac_corrected``): the first term
  gets factored damping, the second is added undamped, ``((R₁+π√λI)⊗(S₁+√λ/πI) + R₂⊗S₂)⁻¹``,
  inverted in closed form by the generalized eigenproblems, with the engine's documented
  indefiniteness safeguard (``1 + μν`` floored at ``psd_floor``, counted in ``safeguard``);
* ``ekfac``: ``(F̃ + λI)⁻¹`` exactly (orthonormal eigenbasis);
* ``eva``: ``(F̃ + λI)⁻¹`` exactly, F̃ = (āāᵀ) ⊗ (ḡḡᵀ) rank one, by Sherman–Morrison (Tikhonov
  damping of the whole product, as Zhang et al. 2023; :mod:`core.engine.eva`);
* ``exact``: ``(F_l + λI)⁻¹`` with ``F_l`` the exact Fisher block of layer ``l``, by Woodbury
  (:meth:`core.engine.fisher.LayerFisher.solve`). This is BLOCK-DIAGONAL per layer: the
  cross-layer blocks of the Fisher are ignored, as in every other method here.

``damping_mode="exact"`` (an option of the optimizer, :class:`~core.training.optim.OptimizerConfig`;
``"factored"`` is the default above) replaces factored damping by Tikhonov damping of the whole
approximation, ``(F̃ + λI)⁻¹`` — the engine's ``solve(V, λ, mode="exact")``: for one Kronecker
product R ⊗ S = (Q_R Λ_R Q_Rᵀ) ⊗ (Q_S Λ_S Q_Sᵀ) in closed form,
``vec(Q_S [(Q_Sᵀ V Q_R) ⊘ (λ_S λ_Rᵀ + λ)] Q_Rᵀ)``, from the same eigendecompositions and at the
same cost per step; for two-term sums a dense eigendecomposition of F̃ (small blocks) or
preconditioned MINRES (large ones), far dearer. ``ekfac``, ``eva`` and ``exact`` damp exactly in
both modes. Why: the factored damping term √λ(πI⊗S + R/π⊗I) is an error of its own, the same for
every Kronecker method, that hides their differences in fit (bench/RESULTS-step.md, issue 21).

On the engine's Gram route ``deflation`` and ``lanczos`` compute the same best two-term
approximation (they differ only in the seed paper's matrix-free algorithms), so as optimizers
they give the same updates up to the averages' ``APPROX_TOL``.

Precision and device: the model trains in float32 on its device (CUDA when available), and the
engine follows it (:func:`core.engine.precision.engine_precision`, fixed at the first capture).
Captures are converted to float64 on the engine's device; the curvature averages,
``approximate`` and the eigendecompositions behind the damped inverses run there in float64:
they are amortised over ``t_cov``/``t_inv`` steps, and float32 there would cost accuracy
(:mod:`core.engine.precision` says how much, and why). The per-step solves run in the policy's
dtype (float64 where the device has fast float64, else float32 from the float64
decompositions rounded once; ``KRONOSCOPE_ENGINE_DTYPE`` overrides it). On MPS and other devices
without float64 the engine stays on the CPU. :meth:`Preconditioner.precondition` returns the
gradient's device and dtype. The CPU path is unchanged by the engine following the device, bit
for bit.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
from torch import nn

from ..engine.approx import SOLVE_MODES, Approximation
from ..engine.capture import CaptureResult, capture
from ..engine.inverses import SafeguardStats
from ..engine.precision import EnginePrecision, engine_precision
from .averages import CurvatureAverage

__all__ = ["Preconditioner"]


class _LayerInverse:
    """The damped inverse of one layer's block, fixed until the next inverse refresh."""

    def __init__(self, approx: Approximation, damping: float, mode: str = "factored") -> None:
        self.damping = damping
        self.mode = mode  # the engine's solve mode: "factored" or "exact" (module docstring)
        self.approx = approx  # float64, on the engine's device
        self._solver = approx  # what the per-step solves use (bench/mutation_bench.py names it)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return self._solver.solve(v, self.damping, mode=self.mode)


class Preconditioner:
    """Per-layer curvature state and damped inverses for one natural-gradient method.

    ``average``: the curvature average (:func:`core.training.averages.curvature_average`), which
    names the method. ``loss``, ``fisher``: the likelihood and Fisher kind of the captures
    (:func:`core.engine.capture.capture`); ``generator`` draws the true Fisher's targets.

    ``update_curvature(x, y)`` captures on a Fisher minibatch and folds it into the average;
    ``update_inverses()`` rebuilds the approximations and their inverses;
    ``precondition(name, V)`` applies the inverse to a (dg, da) gradient matrix.
    ``damping_mode``: ``"factored"`` (default) or ``"exact"``, the engine's solve mode; see the
    module docstring for the damping convention of each.
    """

    def __init__(
        self,
        model: nn.Module,
        average: CurvatureAverage,
        *,
        loss: str,
        fisher: str,
        damping: float,
        generator: torch.Generator,
        damping_mode: str = "factored",
    ) -> None:
        if damping_mode not in SOLVE_MODES:
            raise ValueError(
                f"damping_mode must be one of {SOLVE_MODES} (the engine's solve modes), "
                f"got {damping_mode!r}"
            )
        self.model = model
        self.damping_mode = damping_mode
        self.average = average
        self.method = average.method
        self.loss = loss
        self.fisher = fisher
        self.damping = damping
        self.generator = generator
        self.last_capture: CaptureResult | None = None  # the latest (diagnostics, tests)
        # the engine's device and per-step dtype, fixed by the first capture (model's device)
        self.precision: EnginePrecision | None = None
        self.inverses: dict[str, _LayerInverse] = {}
        self.curvature_updates = 0
        self.inverse_updates = 0
        # the engine's SafeguardStats counters (inverses formed, engaged, entries raised, …)
        self._retired_safeguard = {f.name: 0 for f in fields(SafeguardStats)}

    @property
    def ema_mode(self) -> str:
        """The curvature average in use (``exact`` and some methods fall back, see
        :func:`core.training.averages.curvature_average`)."""
        return self.average.name

    @property
    def alignment(self) -> dict[str, int]:
        """The factor average's second-term counters (zero in the other modes)."""
        return self.average.alignment

    def update_curvature(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        result = capture(
            self.model,
            x,
            loss=self.loss,
            fisher=self.fisher,
            targets=y,
            generator=self.generator,
            strict=False,
        )
        self.last_capture = result
        if self.precision is None:
            self.precision = engine_precision(next(self.model.parameters()).device)
        device = self.precision.device
        for name, lc in result.layers.items():
            a = lc.a.detach().to(device, torch.float64)
            g = lc.g.detach().to(device, torch.float64)
            self.average.update(name, a, g)
        self.curvature_updates += 1

    def update_inverses(self) -> None:
        names = list(self.average.layers)
        if not names:
            raise RuntimeError("update_inverses() before any update_curvature()")
        self._retired_safeguard = self.safeguard_counts()
        self.inverses = {
            name: _LayerInverse(self.average.approximation(name), self.damping, self.damping_mode)
            for name in names
        }
        self.inverse_updates += 1

    def precondition(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """``(F̃ + damping)⁻¹ vec(V)`` for layer ``name``: solved on the engine's device in its
        per-step dtype (the exact block answers in float64), returned on ``V``'s device and in
        its dtype (float64 from the optimizer)."""
        where = self.precision
        if where is None:
            raise RuntimeError("precondition() before any update_curvature()")
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
