"""Leading singular triplets of the rearranged Fisher block ℛ(F), without forming it.

With Ā (m × da) the layer inputs and Γ (m × dg) the output gradients,

    ℛ(F) = (1/m) P W Qᵀ,   P = [vec(ā_i ā_iᵀ)]_i,   Q = [vec(g_i g_iᵀ)]_i,

where W = I for F itself and W = C = I − 11ᵀ/m for F − A⊗G (KFAC-corrected; ℛ(A⊗G) is
vec(A) vec(G)ᵀ = (1/m²) P 11ᵀ Qᵀ). Two routes find its leading singular triplets (σ, U, V),
which give the Kronecker terms σ U ⊗ V (Van Loan & Pitsianis 1993; Koroko et al. 2022):

* ``"gram"`` (default, fast): singular vectors lie in the spans, u = P c and v = Q d, and all
  inner products are Gram forms cᵀ K_a c' with K_a = PᵀP = (ĀĀᵀ)∘(ĀĀᵀ), K_g = (ΓΓᵀ)∘(ΓΓᵀ).
  Golub–Kahan–Lanczos bidiagonalisation then runs on m-vectors at O(m²) per step, and each
  factor is U = Āᵀ diag(c) Ā — as cheap to form as KFAC's A.
* ``"matrix_free"`` (the seed paper's algorithms): the same iterations on da × da and dg × dg
  factor matrices, applying ℛ(F) through ℛ(F) vec(S) = vec((1/m) Āᵀ diag(g_iᵀ S g_i) Ā):
  deflated power SVD, or Golub–Kahan–Lanczos with full reorthogonalisation.

Both iterate in float64 and stop on the residual ‖ℛ(F)ᵀu − σ v‖ ≤ tol · σ₁.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

SOLVERS = ("gram", "matrix_free")


@dataclass
class Space:
    """An inner-product space of stacked vectors: ``inner(X, y)`` gives ⟨X_k, y⟩ for each k.

    The Gram route uses coefficient vectors with ⟨c, c'⟩ = cᵀ K c'; the matrix-free route uses
    matrices with the Frobenius product.
    """

    inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def norm(self, y: torch.Tensor) -> float:
        return float(self.inner(y.unsqueeze(0), y)[0].clamp_min(0.0).sqrt())


@dataclass
class Triplets:
    """Leading singular triplets in the representation of their space, plus diagnostics."""

    sigma: torch.Tensor  # (r,) descending
    left: torch.Tensor  # (r, …) unit vectors of the left space
    right: torch.Tensor  # (r, …) unit vectors of the right space
    iterations: int
    converged: bool
    info: dict = field(default_factory=dict)


def _orthogonalize(space: Space, basis: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Two passes of classical Gram–Schmidt of y against an orthonormal basis."""
    if not basis:
        return y
    stack = torch.stack(basis)
    for _ in range(2):
        coeffs = space.inner(stack, y)
        y = y - torch.tensordot(coeffs, stack, dims=1)
    return y


def golub_kahan_lanczos(
    op: Callable[[torch.Tensor], torch.Tensor],
    op_t: Callable[[torch.Tensor], torch.Tensor],
    left: Space,
    right: Space,
    start: torch.Tensor,
    rank: int,
    *,
    tol: float,
    max_steps: int,
    fresh_start: Callable[[], torch.Tensor],
) -> Triplets:
    """Top-``rank`` singular triplets of an operator M by Golub–Kahan–Lanczos bidiagonalisation.

    ``op(v) = M v`` and ``op_t(u) = Mᵀ u``. With full reorthogonalisation,
    M V_k = U_k B_k and Mᵀ U_k = V_k B_kᵀ + β_k v_{k+1} e_kᵀ (B_k upper bidiagonal), so the SVD
    B_k = X Σ Yᵀ gives Ritz triplets (Σ, U_k X, V_k Y) whose residual ‖Mᵀu − σv‖ equals
    β_k |X_{k,i}| (Golub & Van Loan, §10.4). On breakdown (an invariant subspace), the
    recurrence restarts from a fresh vector orthogonal to the basis (β = 0), so repeated and
    zero singular values are found too; when no fresh direction is left the whole space has
    been spanned and the result is exact. ``max_steps`` bounds the Krylov dimension.
    """
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    v = start / right.norm(start)
    u_prev: torch.Tensor | None = None
    restarts = 0
    while len(alphas) < max_steps:
        vs.append(v)
        u = op(v)
        if u_prev is not None:
            u = u - betas[-1] * u_prev
        u = _orthogonalize(left, us, u)
        alpha = left.norm(u)
        scale = max(alphas[0] if alphas else alpha, 1e-300)
        if alpha <= 1e-13 * scale:  # M v lies in the span already: a zero pivot
            alpha, u = 0.0, torch.zeros_like(u)
        else:
            u = u / alpha
        us.append(u)
        alphas.append(alpha)
        w = _orthogonalize(right, vs, op_t(u) - alpha * v)
        beta = right.norm(w)
        if beta <= 1e-13 * scale:
            # Invariant subspace: continue from a fresh direction orthogonal to the basis.
            restarts += 1
            fresh = fresh_start()
            w = _orthogonalize(right, vs, fresh)
            beta, fresh_norm = 0.0, right.norm(w)
            if fresh_norm <= 1e-10 * right.norm(fresh):
                betas.append(0.0)
                break
            betas.append(0.0)
            v = w / fresh_norm
        else:
            betas.append(beta)
            v = w / beta
        u_prev = u
        k = len(alphas)
        if k >= rank and (k % 4 == 0) and _ritz(us, vs, alphas, betas, rank, tol).converged:
            break
    result = _ritz(us, vs, alphas, betas, rank, tol)
    result.info["restarts"] = restarts
    return result


def _ritz(
    us: list[torch.Tensor],
    vs: list[torch.Tensor],
    alphas: list[float],
    betas: list[float],
    rank: int,
    tol: float,
) -> Triplets:
    """Ritz triplets from the bidiagonal matrix; converged when every residual ≤ tol · σ₁.

    Fewer than ``rank`` triplets come back when the operator's rank is smaller.
    """
    k = len(alphas)
    bidiag = torch.zeros(k, k, dtype=torch.float64)
    bidiag[range(k), range(k)] = torch.tensor(alphas, dtype=torch.float64)
    if k > 1:
        bidiag[range(k - 1), range(1, k)] = torch.tensor(betas[: k - 1], dtype=torch.float64)
    x, sig, yt = torch.linalg.svd(bidiag)
    r = min(rank, k)
    residuals = betas[k - 1] * x[k - 1, :r].abs()
    scale = max(float(sig[0]), 1e-300)
    left = torch.tensordot(x[:, :r].T.contiguous(), torch.stack(us), dims=1)
    right = torch.tensordot(yt[:r, :].contiguous(), torch.stack(vs[:k]), dims=1)
    return Triplets(
        sigma=sig[:r].clone(),
        left=left,
        right=right,
        iterations=k,
        converged=bool((residuals <= tol * scale).all()),
        info={"max_residual": float(residuals.max()) / scale},
    )


def power_svd(
    op: Callable[[torch.Tensor], torch.Tensor],
    op_t: Callable[[torch.Tensor], torch.Tensor],
    left: Space,
    right: Space,
    start: torch.Tensor,
    rank: int,
    *,
    tol: float,
    max_iter: int,
) -> Triplets:
    """Top-``rank`` singular triplets by power iteration with deflation (Koroko et al. 2022).

    Triplet k iterates v ← M̃ᵀu/‖·‖, u ← M̃v/‖·‖ on the deflated operator
    M̃ = M − Σ_{j<k} σ_j u_j v_jᵀ and stops when ‖M̃ᵀu − σ v‖ ≤ tol · σ₁ (a relative test, so
    cost does not depend on the units of the data). Convergence is geometric in σ_{k+1}/σ_k.
    """
    sigmas: list[float] = []
    lefts: list[torch.Tensor] = []
    rights: list[torch.Tensor] = []
    total = 0
    converged_all = True

    def deflated_op(v: torch.Tensor) -> torch.Tensor:
        out = op(v)
        for s_j, u_j, v_j in zip(sigmas, lefts, rights, strict=True):
            out = out - s_j * float(right.inner(v_j.unsqueeze(0), v)[0]) * u_j
        return out

    def deflated_op_t(u: torch.Tensor) -> torch.Tensor:
        out = op_t(u)
        for s_j, u_j, v_j in zip(sigmas, lefts, rights, strict=True):
            out = out - s_j * float(left.inner(u_j.unsqueeze(0), u)[0]) * v_j
        return out

    for _ in range(rank):
        v = start / right.norm(start)
        u = deflated_op(v)
        sigma = left.norm(u)
        u = u / max(sigma, 1e-300)
        converged = False
        for _ in range(max_iter):
            total += 1
            w = deflated_op_t(u)
            residual = right.norm(w - sigma * v)
            scale = sigmas[0] if sigmas else sigma
            if residual <= tol * max(scale, 1e-300):
                converged = True
                break
            v = w / max(right.norm(w), 1e-300)
            u = deflated_op(v)
            sigma = left.norm(u)
            u = u / max(sigma, 1e-300)
        converged_all &= converged
        sigmas.append(sigma)
        lefts.append(u)
        rights.append(v)
    return Triplets(
        sigma=torch.tensor(sigmas, dtype=torch.float64),
        left=torch.stack(lefts),
        right=torch.stack(rights),
        iterations=total,
        converged=converged_all,
    )


@dataclass
class RearrangedFisher:
    """ℛ(F) (or ℛ(F − A⊗G) when ``centered``) of one layer batch, as an implicit operator."""

    a: torch.Tensor  # (m, da)
    g: torch.Tensor  # (m, dg)
    centered: bool = False

    def __post_init__(self) -> None:
        self.m = self.a.shape[0]
        self.a64 = self.a.to(torch.float64)
        self.g64 = self.g.to(torch.float64)

    # -- Gram route ---------------------------------------------------------------------
    def gram_spaces(self) -> tuple[Space, Space, torch.Tensor, torch.Tensor]:
        """K_a = (ĀĀᵀ)∘², K_g = (ΓΓᵀ)∘² computed in the input dtype, used in float64."""
        ka = ((self.a @ self.a.T) ** 2).to(torch.float64)
        kg = ((self.g @ self.g.T) ** 2).to(torch.float64)
        return Space(lambda x, y: x @ (ka @ y)), Space(lambda x, y: x @ (kg @ y)), ka, kg

    def _center(self, c: torch.Tensor) -> torch.Tensor:
        return c - c.mean() if self.centered else c

    def triplets_gram(self, rank: int, tol: float) -> Triplets:
        left, right, ka, kg = self.gram_spaces()
        m = self.m

        def op(d: torch.Tensor) -> torch.Tensor:  # ℛ(F) Q d = P (W K_g d / m)
            return self._center(kg @ d) / m

        def op_t(c: torch.Tensor) -> torch.Tensor:  # ℛ(F)ᵀ P c = Q (W K_a c / m)
            return self._center(ka @ c) / m

        gen = torch.Generator().manual_seed(0)

        def fresh() -> torch.Tensor:
            return torch.rand(m, generator=gen, dtype=torch.float64) - 0.5

        # A positive start vector: the top singular vectors of the uncentered problem are
        # nonnegative (Perron–Frobenius: K_a, K_g have nonnegative entries).
        start = torch.rand(m, generator=gen, dtype=torch.float64) + 0.5
        return golub_kahan_lanczos(
            op, op_t, left, right, start, rank, tol=tol, max_steps=m, fresh_start=fresh
        )

    def factor_a(self, c: torch.Tensor) -> torch.Tensor:
        """Āᵀ diag(c) Ā: the da × da matrix of the coefficient vector c (in the input dtype)."""
        return self.a.T @ (c.to(self.a.dtype)[:, None] * self.a)

    def factor_g(self, d: torch.Tensor) -> torch.Tensor:
        return self.g.T @ (d.to(self.g.dtype)[:, None] * self.g)

    # -- matrix-free route (the seed paper's) --------------------------------------------
    def _frobenius(self) -> Space:
        return Space(lambda x, y: x.reshape(x.shape[0], -1) @ y.reshape(-1))

    def apply(self, s: torch.Tensor) -> torch.Tensor:
        """ℛ(F) vec(S) as a da × da matrix: (1/m) Āᵀ diag(g_iᵀ S g_i) Ā (minus centering)."""
        w = ((self.g64 @ s) * self.g64).sum(1)
        return self.a64.T @ (self._center(w)[:, None] * self.a64) / self.m

    def apply_t(self, r: torch.Tensor) -> torch.Tensor:
        """ℛ(F)ᵀ vec(R) as a dg × dg matrix: (1/m) Γᵀ diag(ā_iᵀ R ā_i) Γ (minus centering)."""
        w = ((self.a64 @ r) * self.a64).sum(1)
        return self.g64.T @ (self._center(w)[:, None] * self.g64) / self.m

    def _start(self) -> torch.Tensor:
        """Start from a positive definite dg × dg matrix (the top factor is PSD)."""
        dg = self.g.shape[1]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
        return x @ x.T / dg + torch.eye(dg, dtype=torch.float64)

    def triplets_power(self, rank: int, tol: float, max_iter: int) -> Triplets:
        space = self._frobenius()
        return power_svd(
            self.apply, self.apply_t, space, space, self._start(), rank, tol=tol, max_iter=max_iter
        )

    def triplets_lanczos(self, rank: int, tol: float) -> Triplets:
        space = self._frobenius()
        dg = self.g.shape[1]
        gen = torch.Generator().manual_seed(1)

        def fresh() -> torch.Tensor:
            x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
            return x + x.T

        max_steps = min(dg * (dg + 1) // 2, self.a.shape[1] * (self.a.shape[1] + 1) // 2, self.m)
        return golub_kahan_lanczos(
            self.apply,
            self.apply_t,
            space,
            space,
            self._start(),
            rank,
            tol=tol,
            max_steps=max(max_steps, rank),
            fresh_start=fresh,
        )
