"""Kronecker-product primitives: products, the Van Loan–Pitsianis rearrangement, damped inverses.

Ordering: a layer's weight ``W`` has shape ``(dg, da)`` and ``vec`` is column-major, so
``(R ⊗ S) vec(V) = vec(S V Rᵀ)`` for ``R`` (da × da) acting on inputs and ``S`` (dg × dg) on
outputs (Van Loan, "The ubiquitous Kronecker product", 2000, eq. (2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def vec(m: torch.Tensor) -> torch.Tensor:
    """Column-major vectorisation of a matrix (stacks its columns)."""
    return m.T.reshape(-1)


def unvec(v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`vec`."""
    return v.reshape(cols, rows).T


def kron_matvec(r: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(R ⊗ S) vec(V)`` returned as a (dg, da) matrix: ``S V Rᵀ``."""
    return s @ v @ r.T


def rearrange(x: torch.Tensor, da: int, dg: int) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement ℛ(X) of a (da·dg)² matrix.

    View X as a da × da grid of dg × dg blocks X_ij; ℛ(X) has one row per block, in
    column-major block order, holding vec(X_ij). Then ℛ(R ⊗ S) = vec(R) vec(S)ᵀ and
    ‖ℛ(X)‖_F = ‖X‖_F, so the best sum of r Kronecker products is the rank-r truncated SVD
    of ℛ(X) (Van Loan & Pitsianis 1993). Used by the dense oracles in tests and small views.
    """
    n = da * dg
    if tuple(x.shape) != (n, n):
        raise ValueError(f"expected a ({n}, {n}) matrix for da={da}, dg={dg}; got {tuple(x.shape)}")
    # x[i*dg + p, j*dg + q] = X_ij[p, q]  ->  row j*da + i, column q*dg + p
    return x.reshape(da, dg, da, dg).permute(2, 0, 3, 1).reshape(da * da, dg * dg)


def sym(m: torch.Tensor) -> torch.Tensor:
    """Symmetric part; removes round-off asymmetry before an eigendecomposition."""
    return 0.5 * (m + m.T)


def sum_frobenius_sq(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """‖Σ_k R_k ⊗ S_k‖²_F = Σ_kl ⟨R_k, R_l⟩⟨S_k, S_l⟩ in float64, without forming the sum
    (⟨R ⊗ S, R' ⊗ S'⟩ = ⟨R, R'⟩⟨S, S'⟩)."""
    rs = torch.stack([r.reshape(-1) for r, _ in terms]).to(torch.float64)
    ss = torch.stack([s.reshape(-1) for _, s in terms]).to(torch.float64)
    return float(((rs @ rs.T) * (ss @ ss.T)).sum())


def pi_factor(r: torch.Tensor, s: torch.Tensor) -> float:
    """Martens & Grosse (2015, §6.3) factored-damping ratio π = sqrt((tr R / da) / (tr S / dg))."""
    tr_r = float(torch.trace(r)) / r.shape[0]
    tr_s = float(torch.trace(s)) / s.shape[0]
    if tr_r <= 0.0 or tr_s <= 0.0:
        return 1.0
    return float((tr_r / tr_s) ** 0.5)  # float ** float is typed Any (a negative base)


def factored_damping(
    r: torch.Tensor, s: torch.Tensor, damping: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factored Tikhonov damping: ``(R + π√λ I) ⊗ (S + √λ/π I)`` (Martens & Grosse 2015)."""
    pi = pi_factor(r, s)
    root = damping**0.5
    eye_r = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    eye_s = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    return r + pi * root * eye_r, s + root / pi * eye_s


@dataclass(frozen=True)
class KronEig:
    """Eigendecomposition of one Kronecker product R ⊗ S = (U_R ⊗ U_S) diag(λ_R ⊗ λ_S) (…)ᵀ."""

    u_r: torch.Tensor
    lam_r: torch.Tensor
    u_s: torch.Tensor
    lam_s: torch.Tensor

    @classmethod
    def of(cls, r: torch.Tensor, s: torch.Tensor) -> KronEig:
        lam_r, u_r = torch.linalg.eigh(sym(r))
        lam_s, u_s = torch.linalg.eigh(sym(s))
        return cls(u_r, lam_r, u_s, lam_s)

    def eigvals_grid(self) -> torch.Tensor:
        """Eigenvalues arranged like V: entry (p, i) is λ_S[p]·λ_R[i]."""
        return torch.outer(self.lam_s, self.lam_r)

    def solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        """``(R⊗S + λI)⁻¹ vec(V) = vec(U_S [(U_Sᵀ V U_R) ⊘ (λ_S λ_Rᵀ + λ)] U_Rᵀ)``."""
        rotated = self.u_s.T @ v @ self.u_r
        return self.u_s @ (rotated / (self.eigvals_grid() + damping)) @ self.u_r.T


def generalized_eigh(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``B x = μ A x`` for symmetric B and symmetric positive definite A.

    Returns (μ, E) with ``Eᵀ A E = I`` and ``Eᵀ B E = diag(μ)``, via the Cholesky factor
    ``A = L Lᵀ``: ``L⁻¹ B L⁻ᵀ = Q diag(μ) Qᵀ`` and ``E = L⁻ᵀ Q`` (Golub & Van Loan, §8.7).
    """
    chol = torch.linalg.cholesky(sym(a))
    left = torch.linalg.solve_triangular(chol, sym(b), upper=False)
    c = torch.linalg.solve_triangular(chol, left.T, upper=False)
    mu, q = torch.linalg.eigh(sym(c))
    e = torch.linalg.solve_triangular(chol.T, q, upper=True)
    return mu, e
