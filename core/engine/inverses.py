"""Damped inverses: one object per approximation F̃ and damping λ, formed once, applied many times.

An :class:`~core.engine.approx.Approximation` hands out its damped inverse with
``approx.inverse(λ, mode=...)`` (cf. curvlinops' inverse linear operators, Dangel et al.); the
object holds the decompositions behind it, so the optimizers' per-step solves reuse the ones
formed at the last inverse refresh. ``apply(V)`` takes and returns a (dg, da) matrix, vec(W) order.

* :class:`KronEigInverse` — from the eigendecompositions R = U_R Λ_R U_Rᵀ, S = U_S Λ_S U_Sᵀ,
  ``(R ⊗ S + λI)⁻¹ vec(V) = vec(U_S [(U_Sᵀ V U_R) ⊘ (λ_S λ_Rᵀ + λ)] U_Rᵀ)``; with λ = 0 on the
  factored-damped product ``(R + π√λ I) ⊗ (S + √λ/π I)`` (Martens & Grosse 2015, §6.3).
* :class:`TwoTermFactoredInverse` — ``((R₁+π√λI)⊗(S₁+√λ/πI) + R₂⊗S₂)⁻¹`` through the generalized
  eigenproblems R₂x = μR̃₁x, S₂y = νS̃₁y (E_Rᵀ R̃₁ E_R = I, E_Rᵀ R₂ E_R = diag μ):
  ``vec(E_S [(E_Sᵀ V E_R) ⊘ (1 + ν μᵀ)] E_Rᵀ)``, entries of 1 + νμᵀ below ``psd_floor`` raised
  to it.
* :class:`DenseEigInverse` — ``U diag(1 / (max(λ_i, 0) + λ)) Uᵀ`` from the dense eigendecomposition
  of a small sum (negative eigenvalues projected to 0).
* :class:`MinresInverse` — preconditioned MINRES on the operator F̃ + λI, for sums too large to
  decompose densely.
* :class:`EigenbasisInverse` — EKFAC's ``(U_A ⊗ U_G) diag(1 / (s + λ)) (U_A ⊗ U_G)ᵀ``.
* :class:`WoodburyInverse` — the exact block F = JᵀJ/m:
  ``(F + λI)⁻¹ v = (v − Jᵀ (JJᵀ + mλI)⁻¹ J v) / λ``.

Precision: a decomposition is kept in the dtype it was computed in and rounded once to each other
dtype a solve asks for (:class:`PerDtype`): the optimizers keep float64 decompositions and solve in
float32 (:mod:`core.engine.precision`); rounding a decomposition costs ~1e-7 relative, rounding the
factors before decomposing them would cost cond · 1e-7. The exact block answers in float64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import numpy as np
import scipy.sparse.linalg as sla
import torch

from .kron import KronEig, factored_damping, generalized_eigh, kron_matvec, vec

__all__ = [
    "SafeguardStats",
    "InverseKey",
    "PerDtype",
    "DampedInverse",
    "KronEigInverse",
    "TwoTermFactoredInverse",
    "DenseEigInverse",
    "MinresInverse",
    "kron_sum_operator",
    "EigenbasisInverse",
    "WoodburyInverse",
    "psd_part",
]

Decomposition = TypeVar("Decomposition", KronEig, tuple[torch.Tensor, ...])


@dataclass
class SafeguardStats:
    """How often the indefiniteness safeguard engaged in one approximation's damped inverses.

    Counted once per inverse formed (per damping value), not per solve: the inverse is cached.
    """

    inverses: int = 0
    engaged: int = 0  # inverses in which at least one entry was raised
    entries_raised: int = 0  # total entries raised, over all inverses
    entries_total: int = 0

    def record(self, raised: int, total: int) -> None:
        self.inverses += 1
        self.engaged += int(raised > 0)
        self.entries_raised += raised
        self.entries_total += total


@dataclass(frozen=True)
class InverseKey:
    """Which damped inverse of an approximation: the damping λ and how it is applied."""

    mode: str
    damping: float


@overload
def _cast(value: KronEig, dtype: torch.dtype) -> KronEig: ...
@overload
def _cast(value: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]: ...
def _cast(
    value: KronEig | tuple[torch.Tensor, ...], dtype: torch.dtype
) -> KronEig | tuple[torch.Tensor, ...]:
    if isinstance(value, KronEig):
        return KronEig(*_cast((value.u_r, value.lam_r, value.u_s, value.lam_s), dtype))
    return tuple(t.to(dtype) for t in value)


class PerDtype(Generic[Decomposition]):
    """A decomposition in the dtype it was computed in, and its rounding to each other dtype a
    solve asks for, made once."""

    def __init__(self, value: Decomposition) -> None:
        self.value: Decomposition = value
        self.dtype: torch.dtype = (value.u_r if isinstance(value, KronEig) else value[0]).dtype
        self._rounded: dict[torch.dtype, Decomposition] = {}

    def __call__(self, dtype: torch.dtype) -> Decomposition:
        if dtype == self.dtype:
            return self.value
        if dtype not in self._rounded:
            self._rounded[dtype] = _cast(self.value, dtype)
        return self._rounded[dtype]


class DampedInverse(ABC):
    """The damped inverse of one approximation at one damping (see the module docstring)."""

    damping: float

    @abstractmethod
    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """The inverse applied to vec(V), returned as a (dg, da) matrix in V's dtype (the exact
        block's: float64)."""


class KronEigInverse(DampedInverse):
    """``(R ⊗ S + λI)⁻¹`` from R ⊗ S's eigendecomposition, which dampings share; or, ``factored``,
    ``((R + π√λ I) ⊗ (S + √λ/π I))⁻¹`` from the damped factors' own (see :meth:`of_factored`)."""

    def __init__(self, eig: PerDtype[KronEig], damping: float, *, factored: bool = False) -> None:
        self.eig = eig
        self.damping = damping
        self.factored = factored

    @classmethod
    def of_factored(cls, r: torch.Tensor, s: torch.Tensor, damping: float) -> KronEigInverse:
        return cls(PerDtype(KronEig.of(*factored_damping(r, s, damping))), damping, factored=True)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return self.eig(v.dtype).solve(v, 0.0 if self.factored else self.damping)


class TwoTermFactoredInverse(DampedInverse):
    """``((R₁+π√λI)⊗(S₁+√λ/πI) + R₂⊗S₂)⁻¹`` by the generalized eigenproblems of the two terms.

    In the generalized eigenbases the sum is congruent to ``diag(1 + μ_i ν_p)``; entries below
    ``psd_floor`` are raised to it (the correction may cancel at most 1 − psd_floor of the damped
    first term along any generalized eigendirection), and every engagement is counted in
    ``safeguard``.
    """

    def __init__(
        self,
        terms: list[tuple[torch.Tensor, torch.Tensor]],
        damping: float,
        *,
        psd_floor: float,
        safeguard: SafeguardStats,
    ) -> None:
        (r1, s1), (r2, s2) = terms
        r1d, s1d = factored_damping(r1, s1, damping)
        mu, e_r = generalized_eigh(r2, r1d)
        nu, e_s = generalized_eigh(s2, s1d)
        denom = 1.0 + torch.outer(nu, mu)
        low = denom < psd_floor
        safeguard.record(int(low.sum()), denom.numel())
        denom = torch.where(low, torch.full_like(denom, psd_floor), denom)
        self.damping = damping
        self.bases = PerDtype((e_r, e_s, denom))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        e_r, e_s, denom = self.bases(v.dtype)
        return e_s @ ((e_s.T @ v @ e_r) / denom) @ e_r.T


class DenseEigInverse(DampedInverse):
    """``(F̃₊ + λI)⁻¹`` with F̃₊ = U diag(max(λ_i, 0)) Uᵀ, F̃'s projection onto the PSD cone, from
    its dense float64 eigendecomposition (shared between dampings)."""

    def __init__(self, lam: torch.Tensor, u: torch.Tensor, damping: float) -> None:
        self.lam, self.u = lam, u
        self.damping = damping

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        lam, u, damping = self.lam, self.u, self.damping
        x = u @ ((u.T @ vec(v).to(torch.float64)) / (lam.clamp_min(0.0) + damping))
        return x.reshape(v.shape[1], v.shape[0]).T.to(v.dtype)


def kron_sum_operator(
    terms: list[tuple[torch.Tensor, torch.Tensor]], shift: float
) -> sla.LinearOperator:
    """``Σ_k R_k ⊗ S_k + shift · I`` as a SciPy operator on CPU float64 vectors (SciPy's Krylov
    solvers work there), vec(W) order."""
    terms64 = [(r.to("cpu", torch.float64), s.to("cpu", torch.float64)) for r, s in terms]
    da, dg = terms64[0][0].shape[0], terms64[0][1].shape[0]

    def mv(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x).reshape(da, dg).T)
        out = sum(kron_matvec(r, s, v) for r, s in terms64) + shift * v
        return vec(out).numpy()

    return sla.LinearOperator((da * dg, da * dg), matvec=mv, dtype=np.float64)


class MinresInverse(DampedInverse):
    """``(F̃ + λI)⁻¹`` for F̃ = Σ_k R_k ⊗ S_k by MINRES (valid for indefinite systems), in float64
    on the CPU, preconditioned by the first term's exact damped inverse.

    MINRES needs that preconditioner positive definite, which it is in exact arithmetic: the
    first term is KFAC's A ⊗ G or the nearest Kronecker product of the PSD F, whose factors are
    PSD. Their computed eigenvalues can dip below zero by round-off; clamping them at 0 keeps
    every λ_R λ_S + λ ≥ λ > 0. Each solve's MINRES status goes to ``info["minres_status"]``.
    The SciPy operators are made per solve: an approximation and its inverses stay picklable
    (a worker process sends them back).
    """

    def __init__(
        self,
        terms: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        damping: float,
        info: dict[str, Any],
    ) -> None:
        r1, s1 = terms[0]
        first64 = psd_part(KronEig.of(r1.to("cpu", torch.float64), s1.to("cpu", torch.float64)))
        self.terms = terms
        self.first64 = first64
        self.damping = damping
        self.info = info

    def _preconditioner(self, da: int, dg: int) -> sla.LinearOperator:
        def precondition(x: np.ndarray) -> np.ndarray:
            xm = torch.from_numpy(np.ascontiguousarray(x).reshape(da, dg).T)
            return vec(self.first64.solve(xm, self.damping)).numpy()

        return sla.LinearOperator((da * dg, da * dg), matvec=precondition, dtype=np.float64)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        dg, da = v.shape
        op = kron_sum_operator(self.terms, self.damping)
        rhs = vec(v.to("cpu", torch.float64)).numpy()
        x, status = sla.minres(op, rhs, M=self._preconditioner(da, dg), rtol=1e-10, maxiter=500)
        self.info["minres_status"] = int(status)
        return torch.from_numpy(x).reshape(da, dg).T.to(v.device, v.dtype)


def psd_part(eig: KronEig) -> KronEig:
    """R ⊗ S with both factors' eigenvalues clamped at 0 (for factors that are PSD in exact
    arithmetic, this removes only round-off)."""
    return KronEig(eig.u_r, eig.lam_r.clamp_min(0.0), eig.u_s, eig.lam_s.clamp_min(0.0))


class EigenbasisInverse(DampedInverse):
    """EKFAC's ``(U_A ⊗ U_G) diag(1 / (s + λ)) (U_A ⊗ U_G)ᵀ``: the eigenbasis is orthonormal, so
    this is the exact inverse in both damping modes. ``basis``: (U_A, U_G, s), shared between
    dampings."""

    def __init__(self, basis: PerDtype[tuple[torch.Tensor, ...]], damping: float) -> None:
        self.basis = basis
        self.damping = damping

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        u_a, u_g, scale = self.basis(v.dtype)
        return u_g @ ((u_g.T @ v @ u_a) / (scale + self.damping)) @ u_a.T


class WoodburyInverse(DampedInverse):
    """The exact block's ``(F + λI)⁻¹`` with F = JᵀJ/m, J's rows the per-sample gradients
    vec(D_n), by Woodbury on the m × m Gram matrix JJᵀ: ``(v − Jᵀ (JJᵀ + mλI)⁻¹ J v) / λ``, in
    float64. ``jv(V)`` gives J vec(V) (m,) and ``jt(y)`` gives Jᵀ y as a (dg, da) matrix
    (:class:`core.engine.fisher.LayerFisher`: (J vec V)_i = g_iᵀ V ā_i, or ⟨D_n, V⟩ on T > 1
    positions)."""

    def __init__(
        self,
        jv: Callable[[torch.Tensor], torch.Tensor],
        jt: Callable[[torch.Tensor], torch.Tensor],
        *,
        gram: torch.Tensor,
        damping: float,
    ) -> None:
        m = gram.shape[0]
        self.jv, self.jt = jv, jt
        self.system = gram + m * damping * torch.eye(m, dtype=torch.float64, device=gram.device)
        self.damping = damping

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(torch.float64)
        y: torch.Tensor = torch.linalg.solve(self.system, self.jv(v))
        return (v - self.jt(y)) / self.damping
