"""Pruning one layer with the optimal brain surgeon (OBS; Hassibi & Stork 1993) on a Kronecker-
factored curvature, as in The LLM Surgeon (van der Ouderaa et al. 2023).

Around trained weights w (gradient ≈ 0) the loss grows by ½ δᵀ M δ for a change δ, with M the
damped curvature of an approximation (:func:`core.engine.weight_metric.weight_metric`). Removing
the set Q of weights (E = the columns of I on Q) at least cost:

    δ = −M⁻¹ E (Eᵀ M⁻¹ E)⁻¹ Eᵀ w,        increase ½ wᵀE (Eᵀ M⁻¹ E)⁻¹ Eᵀw.

For one weight q the increase is its saliency ρ_q = w_q² / (2 [M⁻¹]_qq); for a whole row or
column it is ½ w_Qᵀ ([M⁻¹]_QQ)⁻¹ w_Q. For one product M = R̃ ⊗ S̃, diag(M⁻¹) =
diag(R̃⁻¹) ⊗ diag(S̃⁻¹) and column i's block is [R̃⁻¹]_ii S̃⁻¹; for two products both come from
the generalized eigenbases the solves use (:class:`~core.engine.weight_metric.CongruenceMetric`).

The update is computed as the equivalent constrained minimisation (KKT): δ_Q = −w_Q exactly,
and the kept weights solve M_FF δ_F = M_FQ w_Q (F: the kept set) — densely on small layers,
otherwise by conjugate gradients preconditioned with (M⁻¹)_FF. So the pruned weights are exactly
zero by construction.

Removing many weights (``shots`` > 1: iterative OBS in chunks, as in The LLM Surgeon): the
removed set grows in ``shots`` equal steps; each step ranks the not-yet-removed weights (or rows,
columns) by their saliency at the current, already compensated, weights — with the global
diag(M⁻¹), not the inverse restricted to the kept set, as that paper does — and recomputes the
update for everything removed so far from the original weights (the quadratic model is fixed, so
the final weights depend only on the final set). ``shots=1`` is one-shot OBS: rank once, update
once. Magnitude pruning (smallest |w|, or row/column norms; no update) is the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .approx import Approximation
from .weight_metric import WeightMetric, check_weight, weight_metric

__all__ = [
    "PRUNE_STRUCTURES",
    "Pruned",
    "check_sparsity",
    "saliency",
    "obs_update",
    "prune_with_metric",
    "obs_prune",
    "magnitude_prune",
]

PRUNE_STRUCTURES: tuple[str, ...] = ("unstructured", "rows", "columns")
_F64 = torch.float64


@dataclass(frozen=True)
class Pruned:
    """W after pruning (``weight``, W's dtype) and the ``mask`` of removed weights (True).

    ``sparsity``: fraction of weights removed; ``objective``: vec(δ)ᵀ M vec(δ) in the metric used
    (NaN for magnitude pruning, which has none); ``iterations``: conjugate-gradient iterations,
    summed over shots (0 when solved densely); ``converged``: every solve converged.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    sparsity: float
    structure: str
    objective: float
    shots: int = 1
    iterations: int = 0
    converged: bool = True


def check_sparsity(sparsity: object) -> float:
    """The fraction removed must be a number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"sparsity must lie in [0, 1) (the fraction of weights removed), got {value}"
        )
    return value


def _check_structure(structure: str) -> None:
    if structure not in PRUNE_STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; choose one of {PRUNE_STRUCTURES}")


def _units(w: torch.Tensor, structure: str) -> int:
    """How many removable units W has: weights, rows or columns."""
    return {"unstructured": w.numel(), "rows": w.shape[0], "columns": w.shape[1]}[structure]


def _expand(chosen: torch.Tensor, w: torch.Tensor, structure: str) -> torch.Tensor:
    """A unit mask (weights, rows or columns) as a (dg, da) weight mask."""
    if structure == "unstructured":
        return chosen.reshape(w.shape)
    if structure == "rows":
        return chosen[:, None].expand(w.shape).clone()
    return chosen[None, :].expand(w.shape).clone()


def saliency(metric: WeightMetric, w: torch.Tensor, structure: str) -> torch.Tensor:
    """OBS saliency per unit: w_q² / (2 [M⁻¹]_qq) as a (dg, da) matrix, or one value per row
    (dg,) or column (da,)."""
    _check_structure(structure)
    w64 = check_weight(w, metric.da, metric.dg)
    if structure == "unstructured":
        return w64**2 / (2.0 * metric.inverse_diagonal())
    return metric.group_saliency(w64, structure)


def obs_update(
    metric: WeightMetric, w: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, bool, int]:
    """W + δ for the removed set ``mask`` (True = removed): δ_Q = −w_Q, M_FF δ_F = M_FQ w_Q.
    Returns (new weights in float64, converged, iterations)."""
    w64 = check_weight(w, metric.da, metric.dg)
    if tuple(mask.shape) != tuple(w.shape) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor of W's shape {tuple(w.shape)}")
    kept = ~mask
    if not bool(mask.any()):
        return w64.clone(), True, 0
    if not bool(kept.any()):
        raise ValueError("the mask removes every weight; keep at least one")
    delta, converged, iterations = metric.solve_kept(metric.apply(w64 * mask), kept)
    return (w64 + delta) * kept, converged, iterations


def _select(scores: torch.Tensor, removed: torch.Tensor, count: int) -> torch.Tensor:
    """The units removed after adding the ``count − removed`` lowest scores not yet removed."""
    flat = scores.reshape(-1).clone()
    done = removed.reshape(-1)
    flat[done] = float("inf")
    extra = count - int(done.sum())
    chosen = done.clone()
    if extra > 0:
        chosen[torch.argsort(flat, stable=True)[:extra]] = True
    return chosen.reshape(scores.shape)


def _target(sparsity: float, units: int) -> int:
    """Units to remove: the nearest whole number, keeping at least one."""
    return min(int(round(sparsity * units)), units - 1)


def prune_with_metric(
    metric: WeightMetric,
    w: torch.Tensor,
    sparsity: float,
    *,
    structure: str = "unstructured",
    shots: int = 1,
) -> Pruned:
    """OBS pruning of ``sparsity`` of W's weights, rows or columns in ``shots`` steps (see the
    module docstring)."""
    sparsity = check_sparsity(sparsity)
    _check_structure(structure)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an integer ≥ 1, got {shots!r}")
    w64 = check_weight(w, metric.da, metric.dg)
    units = _units(w64, structure)
    total = _target(sparsity, units)
    removed = torch.zeros(units, dtype=torch.bool)
    current, converged, iterations = w64, True, 0
    for shot in range(1, shots + 1):
        count = round(total * shot / shots)
        if count <= int(removed.sum()):
            continue
        scores = saliency(metric, current, structure).reshape(-1)
        removed = _select(scores, removed, count)
        mask = _expand(removed, w64, structure)
        current, ok, its = obs_update(metric, w64, mask)
        converged, iterations = converged and ok, iterations + its
    mask = _expand(removed, w64, structure)
    return Pruned(
        weight=current.to(w.dtype),
        mask=mask,
        sparsity=float(mask.sum()) / mask.numel(),
        structure=structure,
        objective=metric.quadratic(current - w64),
        shots=shots,
        iterations=iterations,
        converged=converged,
    )


def obs_prune(
    w: torch.Tensor,
    approx: Approximation,
    sparsity: float,
    *,
    structure: str = "unstructured",
    damping: float = 1e-3,
    shots: int = 1,
    psd_floor: float = 0.1,
) -> Pruned:
    """OBS with the damped curvature of ``approx`` (``ValueError`` for a sparsity outside [0, 1),
    an unknown structure, a W of another shape, singular factors at damping 0, or a dense-only
    curvature too large)."""
    check_sparsity(sparsity)
    _check_structure(structure)
    check_weight(w, approx.da, approx.dg)
    metric = weight_metric(approx, damping, psd_floor=psd_floor)
    return prune_with_metric(metric, w, sparsity, structure=structure, shots=shots)


def magnitude_prune(w: torch.Tensor, sparsity: float, *, structure: str = "unstructured") -> Pruned:
    """The baseline: remove the smallest |w| (or the rows / columns of smallest Euclidean
    norm), nothing else changed."""
    sparsity = check_sparsity(sparsity)
    _check_structure(structure)
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise ValueError("W must be a (dg, da) matrix")
    w64 = check_weight(w, w.shape[1], w.shape[0])
    scores = {
        "unstructured": w64.abs().reshape(-1),
        "rows": torch.linalg.norm(w64, dim=1),
        "columns": torch.linalg.norm(w64, dim=0),
    }[structure]
    units = scores.numel()
    removed = _select(scores, torch.zeros(units, dtype=torch.bool), _target(sparsity, units))
    mask = _expand(removed, w64, structure)
    return Pruned(
        weight=(w64 * ~mask).to(w.dtype),
        mask=mask,
        sparsity=float(mask.sum()) / mask.numel(),
        structure=structure,
        objective=float("nan"),
    )
