"""A Kronecker product fitted to the damped inverse, for the step (issue 21).

Every approximation of the registry fits F and then inverts the fit with some damping; the step
experiment (:mod:`core.paper.step`) finds that what the optimizer sees, the damped inverse applied
to the gradient, is decided more by the damping than by the fit. This module fits the step
directly: the Kronecker product ``R ⊗ S`` (R: da × da, S: dg × dg) closest to ``(F + λI)⁻¹`` on a
set of probe directions V_j,

    min_{R,S}  Φ(R, S) = Σ_j ‖S V_j Rᵀ − Y_j‖²_F,   Y_j = (F + λI)⁻¹ V_j,

with ``(R ⊗ S) vec(V) = vec(S V Rᵀ)``. The targets come from the exact block's Woodbury solve
(:class:`~core.engine.fisher.LayerFisher`, m ≪ d: ``(v − Jᵀ(JJᵀ + mλI)⁻¹Jv)/λ``), batched over
the probes; the default probes are the block's per-sample gradients ``g_n ā_nᵀ`` (they span the
range of F, where the gradient lives) and its mean gradient. Φ is bilinear: alternating least
squares solves the normal equations of one factor with the other fixed,

    R-step:  (Σ_j B_jᵀ B_j) Rᵀ = Σ_j B_jᵀ Y_j,   B_j = S V_j;
    S-step:  S (Σ_j C_j C_jᵀ) = Σ_j Y_j C_jᵀ,    C_j = V_j Rᵀ,

so Φ never increases; it starts from KFAC's factored-damped inverse
``(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹`` (Martens & Grosse 2015). The fitted factors are then made
symmetric (their symmetric parts) so that the preconditioner is a symmetric matrix; the fit's
Φ before and after that is kept in ``info``. The idea of fitting an inverse, not F, is that of
(Van Loan & Pitsianis 1993)'s nearest Kronecker product applied to ``(F + λI)⁻¹`` restricted to
the probes' directions.
"""

from __future__ import annotations

from typing import Any

import torch

from .fisher import LayerFisher
from .inverses import DampedInverse
from .kron import factored_damping, sym
from .validation import check_damping

__all__ = [
    "StepFitInverse",
    "damped_targets",
    "fit_step_inverse",
    "r_step",
    "s_step",
    "step_objective",
]


class StepFitInverse(DampedInverse):
    """``R ⊗ S`` standing for ``(F + λI)⁻¹``: ``apply(V) = S V Rᵀ`` (float64)."""

    def __init__(self, r: torch.Tensor, s: torch.Tensor, damping: float, info: dict[str, Any]):
        self.r, self.s = r, s
        self.damping = damping
        self.info = info

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return (self.s @ v.to(torch.float64) @ self.r.T).to(v.dtype)


def damped_targets(fisher: LayerFisher, probes: torch.Tensor, damping: float) -> torch.Tensor:
    """``(F + λI)⁻¹ V_j`` for every probe V_j of ``probes`` (p, dg, da), by one batched Woodbury
    solve: ``(V − Σ_n y_n g_n ā_nᵀ)/λ`` with ``(JJᵀ + mλI) y = J V``."""
    a, g, m = fisher.a, fisher.g, fisher.m
    jv = torch.einsum("ng,pgi,ni->np", g, probes, a)  # (J vec V_j)_n = g_nᵀ V_j ā_n
    system = fisher.gram + m * damping * torch.eye(m, dtype=torch.float64, device=a.device)
    y = torch.linalg.solve(system, jv)
    return (probes - torch.einsum("np,ng,ni->pgi", y, g, a)) / damping


def step_objective(
    r: torch.Tensor, s: torch.Tensor, probes: torch.Tensor, targets: torch.Tensor
) -> float:
    """Φ(R, S) = Σ_j ‖S V_j Rᵀ − Y_j‖²_F."""
    return float(((s @ probes @ r.T - targets) ** 2).sum())


def _default_probes(fisher: LayerFisher) -> torch.Tensor:
    per_sample = fisher.g[:, :, None] * fisher.a[:, None, :]  # g_n ā_nᵀ, (m, dg, da)
    return torch.cat([per_sample, fisher.mean_gradient()[None]], dim=0)


def _solve_right(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """X with X·gram = rhs, gram symmetric PSD (a relative ridge of 1e-12 keeps it solvable
    when the probes leave gram singular)."""
    ridge = 1e-12 * float(torch.diagonal(gram).mean().clamp_min(1e-300))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    x: torch.Tensor = torch.linalg.solve(gram + ridge * eye, rhs.T)
    return x.T


def r_step(s: torch.Tensor, probes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """argmin_R Φ(R, S): with B_j = S V_j, ``R = (Σ Y_jᵀ B_j)(Σ B_jᵀ B_j)⁻¹``."""
    b = s @ probes
    return _solve_right(torch.einsum("pgi,pgk->ik", b, b), torch.einsum("pgi,pgk->ik", targets, b))


def s_step(r: torch.Tensor, probes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """argmin_S Φ(R, S): with C_j = V_j Rᵀ, ``S = (Σ Y_j C_jᵀ)(Σ C_j C_jᵀ)⁻¹``."""
    c = probes @ r.T
    return _solve_right(torch.einsum("pgi,phi->gh", c, c), torch.einsum("pgi,phi->gh", targets, c))


def fit_step_inverse(
    fisher: LayerFisher,
    damping: float,
    *,
    probes: torch.Tensor | None = None,
    iters: int = 10,
) -> StepFitInverse:
    """The Kronecker product fitted to ``(F + λI)⁻¹`` on ``probes`` (p, dg, da) (default: the
    per-sample gradients and the mean gradient), by ``iters`` sweeps of alternating least
    squares from KFAC's factored-damped inverse (see the module docstring)."""
    damping = check_damping(damping)
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters must be an integer ≥ 1, got {iters!r}")
    v = _default_probes(fisher) if probes is None else probes.to(torch.float64)
    if v.ndim != 3 or v.shape[1:] != (fisher.dg, fisher.da):
        raise ValueError(
            f"probes must have shape (p, dg, da) = (p, {fisher.dg}, {fisher.da}), got "
            f"{tuple(v.shape)}"
        )
    y = damped_targets(fisher, v, damping)
    a_fac, g_fac = fisher.a.T @ fisher.a / fisher.m, fisher.g.T @ fisher.g / fisher.m
    r_damped, s_damped = factored_damping(a_fac, g_fac, damping)
    r, s = torch.linalg.inv(sym(r_damped)), torch.linalg.inv(sym(s_damped))
    history = [step_objective(r, s, v, y)]
    for _ in range(iters):
        r = r_step(s, v, y)
        s = s_step(r, v, y)
        scale = (torch.linalg.norm(s) / torch.linalg.norm(r)).sqrt()  # balance R and S
        r, s = r * scale, s / scale
        history.append(step_objective(r, s, v, y))
    r_sym, s_sym = sym(r), sym(s)
    if float(torch.trace(r_sym)) < 0:  # R ⊗ S is unchanged by flipping both
        r_sym, s_sym = -r_sym, -s_sym
    info = {"objective": history, "objective_symmetric": step_objective(r_sym, s_sym, v, y)}
    info["target_norm_sq"] = float((y**2).sum())
    return StepFitInverse(r_sym, s_sym, damping, info)
