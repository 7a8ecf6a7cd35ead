"""The spectrum of a sum of Kronecker products, through the factors' joint ranges.

F̃ = Σ_k R_k ⊗ S_k (R_k da × da, S_k dg × dg, symmetric) acts only on ran(Q_a) ⊗ ran(Q_g),
where Q_a (da × r_a) is an orthonormal basis of the joint column space of the R_k and Q_g
(dg × r_g) that of the S_k: with P = Q_a Q_aᵀ ⊗ Q_g Q_gᵀ, F̃ = P F̃ P, so

    F̃ = (Q_a ⊗ Q_g) M (Q_a ⊗ Q_g)ᵀ,   M = Σ_k (Q_aᵀ R_k Q_a) ⊗ (Q_gᵀ S_k Q_g),

and F̃'s eigenvalues are M's r_a·r_g eigenvalues and n − r_a·r_g zeros (Q_a ⊗ Q_g has
orthonormal columns, so this is a similarity on its range). The KPSVD family's factors are
combinations of the minibatch's outer products, Āᵀ diag(c) Ā and Γᵀ diag(d) Γ (the left and
right singular vectors of ℛ(F) lie in the span of vec(ā_i ā_iᵀ) and vec(g_i g_iᵀ)), so
r_a, r_g ≤ m: for a Fisher minibatch of m = 64 on a 785 × 1000 layer, M is at most
4096 × 4096 where F̃ is 785,000 × 785,000, and the whole spectrum is one dense ``eigvalsh``.

The ranges come from a randomized range finder; directions below the factors' round-off are
dropped, and the projection's Frobenius residual ‖F̃ − P F̃ P‖_F = (‖F̃‖² − ‖M‖²)^½ is
measured. By Weyl's inequality each eigenvalue then moves by at most that residual, so a
projection is used only when the residual is below :data:`RESIDUAL_TOLERANCE` ‖F̃‖_F.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce

import torch

from .kron import sum_frobenius_sq, sym

#: Columns of the first random sketch in :func:`joint_range` (above a Fisher minibatch of 64).
SKETCH_COLUMNS = 96

#: Largest relative Frobenius residual ‖F̃ − P F̃ P‖_F / ‖F̃‖_F accepted for a projection.
RESIDUAL_TOLERANCE = 1e-6

Terms = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ProjectedSum:
    """M = Σ_k (Q_aᵀ R_k Q_a) ⊗ (Q_gᵀ S_k Q_g) in float64, for a sum of size ``n``, with the
    projection's relative Frobenius residual (an upper bound on every eigenvalue's move,
    relative to ‖F̃‖_F)."""

    terms: Terms
    n: int
    residual: float

    @property
    def size(self) -> int:
        """r_a · r_g, the order of M."""
        return self.terms[0][0].shape[0] * self.terms[0][1].shape[0]

    def dense(self) -> torch.Tensor:
        """M as a dense (size × size) float64 matrix."""
        return sym(reduce(operator.add, (torch.kron(r, s) for r, s in self.terms)))

    def with_zeros(self, lam: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """F̃'s eigenvalues (the top ``k``, or all n), descending, from M's eigenvalues ``lam``:
        the n − size zeros are inserted among them (an indefinite M has negative ones)."""
        zeros = self.n - self.size if k is None else min(k, self.n - self.size)
        lam = torch.cat([lam, lam.new_zeros(zeros)])
        lam = torch.sort(lam, descending=True).values
        return lam if k is None else lam[:k]


def joint_range(mats: list[torch.Tensor]) -> torch.Tensor:
    """An orthonormal basis (d × r, float64) of the joint column space of ``mats`` (d × d).

    A randomized range finder (Halko, Martinsson & Tropp 2011, §4): the left singular
    vectors of Y = [M_1 Ω, …, M_K Ω] for a Gaussian Ω with s columns, keeping singular values
    above the inputs' round-off. When fewer than s are kept, every M_k has rank below s and
    Ω (almost surely) sees all of its range; otherwise s doubles, up to d (Y then spans the
    whole joint range). The sketch is seeded, so the basis is reproducible; the caller's
    residual check (:func:`project_sum`) guards the result.
    """
    d = mats[0].shape[0]
    tol = 100 * torch.finfo(mats[0].dtype).eps
    m64 = [m.to(torch.float64) for m in mats]
    generator = torch.Generator(device=m64[0].device).manual_seed(0)
    s = min(d, SKETCH_COLUMNS)
    while True:
        omega = torch.randn(d, s, dtype=torch.float64, device=m64[0].device, generator=generator)
        u: torch.Tensor
        u, sigma, _ = torch.linalg.svd(torch.cat([m @ omega for m in m64], 1), full_matrices=False)
        rank = int((sigma > tol * sigma[0]).sum())
        if rank < s or s == d:
            return u[:, :rank]
        s = min(2 * s, d)


def project_sum(terms: Terms) -> ProjectedSum:
    """The compressed sum M of ``terms`` on their factors' joint ranges (see the module
    docstring), with its measured residual."""
    q_a = joint_range([r for r, _ in terms])
    q_g = joint_range([s for _, s in terms])
    small = [
        (sym(q_a.T @ r.to(torch.float64) @ q_a), sym(q_g.T @ s.to(torch.float64) @ q_g))
        for r, s in terms
    ]
    full_sq = sum_frobenius_sq(terms)
    kept_sq = sum_frobenius_sq(small)
    residual = max(full_sq - kept_sq, 0.0) ** 0.5 / max(full_sq, 1e-300) ** 0.5
    n = terms[0][0].shape[0] * terms[0][1].shape[0]
    return ProjectedSum(small, n, residual)
