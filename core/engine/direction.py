"""What the optimizer's step sees of an approximation: its damped natural-gradient direction.

A natural-gradient step never uses F̃ itself, only its damped inverse applied to the gradient,
``x̃ = (F̃ + λ)⁻¹∇``. Two approximations equally close to F in Frobenius norm can give very
different steps: ‖F − F̃‖_F is dominated by F's few large eigenvalues, while (F + λI)⁻¹ is
dominated by the directions with eigenvalues at or below λ, where the gradient lives and where a
Frobenius-optimal fit may put too little, or negative, curvature (Koroko et al. 2022 fit F; the
damping's role is Martens & Grosse 2015, §6). The measures here compare x̃ with the exact damped
natural gradient ``x = (F + λI)⁻¹∇`` of the same block (Woodbury,
:class:`~core.engine.fisher.LayerFisher`), at damping λ:

* ``error`` = ‖x̃ − x‖ / ‖x‖, the relative error of the damped inverse applied to ∇;
* ``cosine`` = cos∠(x̃, x): whether the step points the right way;
* ``norm_ratio`` = ‖x̃‖ / ‖x‖: whether it has the right length (the learning rate and the
  KL-clip see this);

each in two solve modes: ``"factored"``, the damped inverse the optimizers really apply
(Martens–Grosse factored damping on the first Kronecker term, a second term added undamped with
the ``psd_floor`` safeguard; :mod:`core.engine.approx`), and ``"exact"``, ``(F̃ + λI)⁻¹``. The
reference x always uses exact damping. ∇ defaults to the block's batch gradient (1/m) Σ g_i ā_iᵀ.

As λ → ∞ both sides tend to ∇/λ, so every method's error tends to 0 and every ranking ties;
:func:`damping_sweep` measures where, as λ shrinks, the methods separate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .approx import SOLVE_MODES, Approximation
from .fisher import LayerFisher
from .validation import check_damping

__all__ = ["DIRECTION_MODES", "DirectionMetrics", "direction_metrics", "damping_sweep", "log_grid"]

#: The solve modes measured: the optimizers' first, then exact damping.
DIRECTION_MODES: tuple[str, ...] = ("factored", "exact")


@dataclass(frozen=True)
class DirectionMetrics:
    """How one approximation's damped step compares with the exact one, at ``damping`` in
    ``mode`` (see the module docstring)."""

    damping: float
    mode: str
    error: float
    cosine: float
    norm_ratio: float


def direction_metrics(
    fisher: LayerFisher,
    approx: Approximation,
    damping: float,
    *,
    mode: str = "factored",
    v: torch.Tensor | None = None,
) -> DirectionMetrics:
    """``approx``'s damped direction against the exact block's at ``damping`` (float64).

    ``v``: the gradient matrix (dg, da) to precondition (default: the batch gradient).
    """
    if mode not in SOLVE_MODES:
        raise ValueError(f"unknown solve mode {mode!r}; choose one of {SOLVE_MODES}")
    agreement = fisher.natural_gradient_agreement(approx, damping, v, mode=mode)
    return DirectionMetrics(
        damping=float(damping),
        mode=mode,
        error=agreement.relative_difference,
        cosine=agreement.cosine,
        norm_ratio=agreement.norm_ratio,
    )


def log_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """``points`` dampings log-spaced from ``low`` to ``high`` (both > 0), rounded to 3
    significant digits so that they are stable names (URL values, cache keys)."""
    check_damping(low)
    check_damping(high)
    if not (isinstance(points, int) and points >= 2) or not low < high:
        raise ValueError(
            f"a damping grid needs low < high and at least 2 points; got low={low:g}, "
            f"high={high:g}, points={points!r}"
        )
    step = (math.log10(high) - math.log10(low)) / (points - 1)
    return tuple(float(f"{10 ** (math.log10(low) + k * step):.3g}") for k in range(points))


def damping_sweep(
    fisher: LayerFisher,
    approx: Approximation,
    dampings: tuple[float, ...] | list[float],
    *,
    modes: tuple[str, ...] = DIRECTION_MODES,
    v: torch.Tensor | None = None,
) -> list[DirectionMetrics]:
    """:func:`direction_metrics` at every damping of ``dampings`` in every mode of ``modes``
    (damping-major order). Each damping forms its own inverses, which the blocks keep."""
    if not dampings:
        raise ValueError("damping_sweep needs at least one damping")
    return [
        direction_metrics(fisher, approx, lam, mode=mode, v=v) for lam in dampings for mode in modes
    ]
