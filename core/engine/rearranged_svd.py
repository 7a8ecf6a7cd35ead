"""Leading singular triplets of the rearranged Fisher block ℛ(F), without forming it.

With Ā (m × da) the layer inputs and Γ (m × dg) the output gradients,

    ℛ(F) = (1/m) P W Qᵀ,   P = [vec(ā_i ā_iᵀ)]_i,   Q = [vec(g_i g_iᵀ)]_i,

where W = I for F itself and W = C = I − 11ᵀ/m for F − A⊗G (KFAC-corrected; ℛ(A⊗G) is
vec(A) vec(G)ᵀ = (1/m²) P 11ᵀ Qᵀ). Two routes find its leading singular triplets (σ, U, V),
which give the Kronecker terms σ U ⊗ V (Van Loan & Pitsianis 1993; Koroko et al. 2022):

* ``"gram"`` (default, fast): singular vectors lie in the spans, u = P c and v = Q d, and all
  inner products are Gram forms cᵀ K_a c' with K_a = PᵀP = (ĀĀᵀ)∘(ĀĀᵀ), K_g = (ΓΓᵀ)∘(ΓΓᵀ).
  A block Krylov iteration then runs on m × b blocks of coefficients (two m × m × b
  products per step; :meth:`RearrangedFisher.triplets_gram`), and each factor is
  U = Āᵀ diag(c) Ā — as cheap to form as KFAC's A.

  Cost against KFAC (A = ĀᵀĀ/m, G = ΓᵀΓ/m: m(da² + dg²) multiply-adds) on the same batch:
  the Grams, m²(da + dg) — computed as symmetric panels, (p + 1)/(2p) of that; every term's
  factors, one KFAC each, formed for all terms by one product per side; and the iteration,
  2 m² b per block step plus small dense algebra. The first two are a floor: on a (1001, 500)
  layer a rank-1 KPSVD needs 1.8× KFAC's multiply-adds and a two-term method 2.8× at
  m = 1024 (1.5× and 2.5× at m = 512) before the first Krylov step. The iteration is made
  cheap by doing little per step (Cholesky QR, stacked updates, no product for the first
  Gram–Schmidt pass) and checking convergence rarely (:class:`_CheckSchedule`). Its step
  count is set by the spectrum: σ₂/σ₁ ≈ 0.05–0.13 on the bench's layers, so the top term
  converges in 3–5 steps from KFAC's G as start vector, but the next singular values form a
  flat tail (σ₃/σ₂ ≈ 0.97; the top two of F − A⊗G are as close), so the two-term methods
  and KFAC-corrected need 14–30 steps (bench/RESULTS-engine.md). Rank-1 KPSVD, whose gap
  is the large one, first runs plain power iteration (two matrix–vector products a step, no
  orthogonalisation or Rayleigh–Ritz; :meth:`RearrangedFisher._power_top`) and falls back
  to the block iteration, from its vector, where the residual does not fall fast. Small
  batches (m ≤ ``DENSE_MAX_M``) do not iterate for the other problems: a Cholesky factor of
  K_g turns them into one dense symmetric m × m eigenproblem, of which ARPACK or LAPACK finds
  only the top pairs (:meth:`RearrangedFisher._dense_top`); the flat tails cost nothing there.
* ``"matrix_free"`` (the seed paper's algorithms): iterations on da × da and dg × dg factor
  matrices, applying ℛ(F) through ℛ(F) vec(S) = vec((1/m) Āᵀ diag(g_iᵀ S g_i) Ā): deflated
  power SVD, or Golub–Kahan–Lanczos with full reorthogonalisation.

Weight-sharing layers (T > 1 positions per sample, :mod:`core.engine.shared_batch`):
ℛ(F) vec(S) = (1/m) Σ_n D_nᵀ S D_n with D_n = Γ_nᵀ A_n, and ℛ(F)ᵀ vec(R) = (1/m) Σ_n D_n R D_nᵀ.
ℛ(vec D vec Dᵀ) = Σ_{t,s} vec(a_t a_sᵀ) vec(γ_t γ_sᵀ)ᵀ has up to T² columns per sample, so there
is no m × m Gram route; the matrix-free route runs on these products. ℛ(F) then maps symmetric
matrices to symmetric ones and skew to skew (D_nᵀ S D_n inherits S's symmetry), so its SVD is
the union of the SVDs of its symmetric and skew blocks — at T = 1 the skew block is 0. A skew
pair (R, S) gives R ⊗ S symmetric but indefinite, with eigenvalues in ± pairs: no curvature
model, and outside every solver here. The iterations start from, and are kept on (each product's
symmetric part), symmetric matrices: they return the best sum of Kronecker products of
symmetric matrices, the truncated SVD of the symmetric block (on a small ReLU conv layer the
skew block's top singular value was the second of the whole ℛ(F); the tests build both).

Both iterate in float64 and stop on the residual ‖ℛ(F)ᵀu − σ v‖ ≤ tol · σ₁. They run on the
inputs' device; their seeded random starts are drawn on the CPU and moved there, so every device
starts from the same vectors and CPU and CUDA results agree to round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

from .kron import sym
from .shared_batch import SharedBatch, kfac_expand_factors

SOLVERS = ("gram", "matrix_free")
# Block size of the Gram route's Krylov iteration: rank + BLOCK_EXTRA. Larger blocks take fewer
# steps (block Krylov converges with the gap to σ_{b+1}) but each step and each Rayleigh–Ritz
# costs more; on the engine bench's layers (flat singular value tails: σ₃/σ₂ ≈ 0.97) 4 was
# fastest overall among 2, 4, 6 and 10 (bench/RESULTS-engine.md).
BLOCK_EXTRA = 4
# The rank-1 uncentered problem first tries power iteration (RearrangedFisher._power_top): it
# gives up when the residual falls by less than POWER_RATE a step, or after POWER_STEPS steps.
POWER_RATE = 0.25
POWER_STEPS = 12
# Batches of at most DENSE_MAX_M samples solve a dense m × m eigenproblem instead of iterating
# (RearrangedFisher._dense_top). Its cost grows as m³, the block iteration's as m² times a step
# count set by the flat tails (14–19 steps on the engine bench's layers). Top two triplets, or the
# centered top one, 1 thread (milliseconds, iteration / dense): m = 256 5.9 / 4.9 (float32) and
# 8.7 / 5.3 (float64); m = 384 9.4–10.5 / 9.6–10.4 and 16.6 / 13.2; m = 512 16–26 / 24–27 and
# 32–34 / 30; m = 768 34 / 66–69 and 58 / 76–79 (bench/RESULTS-engine.md).
DENSE_MAX_M = 384


@dataclass
class Triplets:
    """Leading singular triplets in the representation of their space, plus diagnostics."""

    sigma: torch.Tensor  # (r,) descending
    left: torch.Tensor  # (r, …) unit vectors of the left space
    right: torch.Tensor  # (r, …) unit vectors of the right space
    iterations: int
    converged: bool
    info: dict[str, Any] = field(default_factory=dict)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Frobenius products ⟨x_k, y⟩ for a stack x (k, …)."""
    return x.reshape(x.shape[0], -1) @ y.reshape(-1)


def _norm(y: torch.Tensor) -> float:
    return float(torch.linalg.norm(y))


class _Basis:
    """An orthonormal basis (Frobenius product) of matrices."""

    def __init__(self) -> None:
        self.vectors: list[torch.Tensor] = []

    def orthogonalize(self, y: torch.Tensor) -> torch.Tensor:
        """Two passes of classical Gram–Schmidt."""
        if not self.vectors:
            return y
        stack = torch.stack(self.vectors)
        for _ in range(2):
            y = y - torch.tensordot(_dot(stack, y), stack, dims=1)
        return y

    def append(self, y: torch.Tensor) -> None:
        self.vectors.append(y)


Operator = Callable[[torch.Tensor], torch.Tensor]


def golub_kahan_lanczos(
    op: Operator,
    op_t: Operator,
    start: torch.Tensor,
    rank: int,
    *,
    tol: float,
    max_steps: int,
    fresh_start: Callable[[], torch.Tensor],
) -> Triplets:
    """Top-``rank`` singular triplets of an operator M by Golub–Kahan–Lanczos bidiagonalisation.

    ``op(v) = M v`` and ``op_t(u) = Mᵀ u``. With full reorthogonalisation,
    M V_k = U_k B_k and Mᵀ U_k = V_k B_kᵀ + β_k v_{k+1} e_kᵀ
    (B_k upper bidiagonal), so the SVD B_k = X Σ Yᵀ gives Ritz triplets (Σ, U_k X, V_k Y)
    whose residual ‖Mᵀu − σv‖ equals β_k |X_{k,i}| (Golub & Van Loan, §10.4). On breakdown
    (an invariant subspace), the recurrence restarts from a fresh vector orthogonal to the
    basis (β = 0), so repeated and zero singular values are found too; when no fresh direction
    is left the whole space has been spanned and the result is exact. ``max_steps`` bounds the
    Krylov dimension.
    """
    us, vs = _Basis(), _Basis()
    alphas: list[float] = []
    betas: list[float] = []
    v = start / _norm(start)
    u_prev: torch.Tensor | None = None
    restarts = 0
    while len(alphas) < max_steps:
        vs.append(v)
        u = op(v)
        if u_prev is not None:
            u = u - betas[-1] * u_prev
        u = us.orthogonalize(u)
        alpha = _norm(u)
        scale = max(alphas[0] if alphas else alpha, 1e-300)
        if alpha <= 1e-12 * scale:  # M v lies in the span already: a zero pivot
            alpha, u = 0.0, torch.zeros_like(u)
        else:
            u = u / alpha
        us.append(u)
        alphas.append(alpha)
        w = vs.orthogonalize(op_t(u) - alpha * v)
        beta = _norm(w)
        if beta <= 1e-12 * scale:
            # Invariant subspace: continue from a fresh direction orthogonal to the basis.
            restarts += 1
            fresh = fresh_start()
            w = vs.orthogonalize(fresh)
            fresh_norm = _norm(w)
            betas.append(0.0)
            if fresh_norm <= 1e-9 * _norm(fresh):
                break
            v = w / fresh_norm
        else:
            betas.append(beta)
            v = w / beta
        u_prev = u
        k = len(alphas)
        if k >= rank and k % 4 == 0 and _ritz(us, vs, alphas, betas, rank, tol).converged:
            break
    result = _ritz(us, vs, alphas, betas, rank, tol)
    result.info["restarts"] = restarts
    return result


def _ritz(
    us: _Basis,
    vs: _Basis,
    alphas: list[float],
    betas: list[float],
    rank: int,
    tol: float,
) -> Triplets:
    """Ritz triplets from the bidiagonal matrix; converged when every residual ≤ tol · σ₁.

    Fewer than ``rank`` triplets come back when the operator's rank is smaller.
    """
    k = len(alphas)
    like = us.vectors[0]  # the Krylov vectors' device and dtype (float64)
    bidiag = like.new_zeros(k, k)
    bidiag[range(k), range(k)] = like.new_tensor(alphas)
    if k > 1:
        bidiag[range(k - 1), range(1, k)] = like.new_tensor(betas[: k - 1])
    x, sig, yt = torch.linalg.svd(bidiag)
    r = min(rank, k)
    residuals = betas[k - 1] * x[k - 1, :r].abs()
    scale = max(float(sig[0]), 1e-300)
    left = torch.tensordot(x[:, :r].T.contiguous(), torch.stack(us.vectors), dims=1)
    right = torch.tensordot(yt[:r, :].contiguous(), torch.stack(vs.vectors[:k]), dims=1)
    return Triplets(
        sigma=sig[:r].clone(),
        left=left,
        right=right,
        iterations=k,
        converged=bool((residuals <= tol * scale).all()),
        info={"max_residual": float(residuals.max()) / scale},
    )


def power_svd(
    op: Operator,
    op_t: Operator,
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
            out = out - s_j * float(_dot(v_j.unsqueeze(0), v)[0]) * u_j
        return out

    def deflated_op_t(u: torch.Tensor) -> torch.Tensor:
        out = op_t(u)
        for s_j, u_j, v_j in zip(sigmas, lefts, rights, strict=True):
            out = out - s_j * float(_dot(u_j.unsqueeze(0), u)[0]) * v_j
        return out

    def normalized(y: torch.Tensor) -> tuple[torch.Tensor, float]:
        size = max(_norm(y), 1e-300)
        return y / size, size

    for _ in range(rank):
        v, _ = normalized(start)
        u, sigma = normalized(deflated_op(v))
        converged = False
        for _ in range(max_iter):
            total += 1
            w = deflated_op_t(u)
            gap = w - sigma * v
            residual = _norm(gap)
            scale = sigmas[0] if sigmas else sigma
            if residual <= tol * max(scale, 1e-300):
                converged = True
                break
            v, _ = normalized(w)
            u, sigma = normalized(deflated_op(v))
        converged_all &= converged
        sigmas.append(sigma)
        lefts.append(u)
        rights.append(v)
    return Triplets(
        sigma=torch.tensor(sigmas, dtype=torch.float64, device=start.device),
        left=torch.stack(lefts),
        right=torch.stack(rights),
        iterations=total,
        converged=converged_all,
    )


def _k_orthonormal(xk: torch.Tensor, m: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """K-orthonormalise a block within itself; ``xk`` stacks [X; K X] (2m × b).

    Returns ([Z; K Z], B) with X = Z B. Both halves are updated by one product (or triangular
    solve) with the stacked block, so images are carried along, never recomputed.

    Cholesky QR twice (CholeskyQR2; Yamamoto et al. 2015): XᵀKX = L Lᵀ, Z = X L⁻ᵀ, then again
    on Z to restore the orthogonality the first pass loses (ε · cond(X)²). That is three small
    kernels per pass. K-norms computed as xᵀKx carry round-off of order √ε relative to the
    vectors' scale, so when a pivot of L falls below 1e-7 · ``scale`` (a direction that is only
    round-off, or a factorisation that failed) the block goes through :func:`_k_eigh_orthonormal`
    instead, which drops such directions.
    """
    coeff: torch.Tensor | None = None
    thresholds = (1e-7 * scale, 1e-7)  # the second pass sees K-unit vectors
    out = xk
    for threshold in thresholds:
        chol, info = torch.linalg.cholesky_ex(out[:m].T @ out[m:])
        if int(info) != 0 or float(chol.diagonal().min()) <= threshold:
            return _k_eigh_orthonormal(xk, m, scale)
        out = torch.linalg.solve_triangular(chol.T, out, upper=True, left=False)
        coeff = chol.T if coeff is None else chol.T @ coeff
    assert coeff is not None  # set by the first of the two passes
    return out, coeff


def _k_eigh_orthonormal(
    xk: torch.Tensor, m: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_k_orthonormal` through the eigendecomposition of XᵀKX, twice, dropping the
    directions whose K-norm is below 1e-7 · ``scale`` (an empty result means the block adds
    nothing to the span). The second pass acts on vectors that the first made K-orthonormal,
    so its threshold is 1e-7 relative to 1, not to ``scale``: an absolute threshold of
    1e-7 · ``scale`` there drops every unit vector as soon as ``scale`` (θ₁ = σ₁², the data's
    units to the fourth power) exceeds 1e7, and the iteration would stop after one step with
    wrong triplets reported as converged.
    """
    coeff = torch.eye(xk.shape[1], dtype=xk.dtype, device=xk.device)
    for size in (scale, 1.0):
        lam, vecs = torch.linalg.eigh(sym(xk[:m].T @ xk[m:]))
        keep = lam > (1e-7 * size) ** 2
        lam, vecs = lam[keep], vecs[:, keep]
        root = lam.sqrt()
        xk = xk @ (vecs / root)
        coeff = (root[:, None] * vecs.T) @ coeff
    return xk, coeff


def _top_eigenpairs(s: torch.Tensor, r: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``r`` eigenpairs of a symmetric positive semidefinite matrix, eigenvalues
    descending, each with ‖S y − θ y‖ ≤ ``tol`` · θ (or to round-off).

    On the CPU, for a few pairs of a large enough matrix (n ≥ 8 (r + 1)), ARPACK's implicitly
    restarted Lanczos (SciPy's ``eigsh``, from the all-ones vector, so deterministic): one
    n × n matrix–vector product a step, 0.9 ms (tol 1e-6) to 1.4 ms (1e-10) for the top two
    at n = 256, against 1.9–2.2 ms for LAPACK's dsyevr (one tridiagonal reduction, 4/3 n³
    flops, then only the wanted pairs), which takes the other cases; elsewhere torch's full
    eigh on the device (not timed: no GPU was lent)."""
    n = s.shape[0]
    if s.device.type != "cpu":
        theta, y = torch.linalg.eigh(s)
        return theta[n - r :].flip(0), y[:, n - r :].flip(1)
    matrix = s.numpy()
    if n >= 8 * (r + 1):
        theta, y = scipy.sparse.linalg.eigsh(matrix, k=r, which="LA", v0=np.ones(n), tol=tol)
    else:
        theta, y = scipy.linalg.eigh(
            matrix,
            subset_by_index=[n - r, n - 1],
            driver="evr",
            overwrite_a=True,
            check_finite=False,
        )
    order = np.argsort(theta)[::-1]
    return torch.from_numpy(theta[order].copy()), torch.from_numpy(y[:, order].copy())


def _squared_gram(x: torch.Tensor) -> torch.Tensor:
    """(x xᵀ)∘² in float64, the products in x's dtype. The Gram matrix is symmetric, so only
    its lower block triangle is computed, by column panels x[lo:] x[lo:hi]ᵀ and mirrored:
    p panels cost (p + 1)/(2p) of the full product (what BLAS's syrk saves; torch has none).
    p grows with m (one panel per 256 rows, at most 4), where the products outweigh the extra
    kernel calls.

    The squares are taken in x's dtype, unless that overflows (float32 inputs of norm above
    ≈ 4e9): the diagonal, ‖x_i‖⁴, bounds every entry of its row and column (Cauchy–Schwarz),
    so where it comes near the dtype's largest value the panels are squared again in float64
    (squaring in float64 always cost 10–15 % more at m = 1024)."""
    out = _squared_panels(x, x.dtype)
    if x.dtype != torch.float64 and not float(out.diagonal().max()) < torch.finfo(x.dtype).max / 4:
        out = _squared_panels(x, torch.float64)
    return out


def _squared_panels(x: torch.Tensor, square_in: torch.dtype) -> torch.Tensor:
    """:func:`_squared_gram`'s panels, squared in ``square_in``."""
    m = x.shape[0]
    parts = max(1, min(4, m // 256))
    out = torch.empty(m, m, dtype=torch.float64, device=x.device)
    edges = [m * j // parts for j in range(parts + 1)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        panel = (x[lo:] @ x[lo:hi].T).to(square_in).square_()
        out[lo:, lo:hi] = panel
        out[lo:hi, hi:] = panel[hi - lo :].T
    return out


def _weighted_grams(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """xᵀ diag(w_k) x for every row w_k of ``coeffs``, stacked (r, d, d), from one product
    [diag(w_1) x | …]ᵀ x whose row blocks are the results."""
    (m, d), r = x.shape, coeffs.shape[0]
    scaled = (x[:, None, :] * coeffs.T.to(x.dtype)[:, :, None]).reshape(m, r * d)
    return (scaled.T @ x).reshape(r, d, d)


class _KrylovBasis:
    """The block Krylov basis as two stacked column buffers, ZK = [Z; K_g Z] and
    CK = [C; K_a C] (2m × capacity, so one product updates a block and its image together),
    and the upper triangle of H = Cᵀ K_a C, extended by its new columns at every block step."""

    def __init__(self, m: int, width: int, like: torch.Tensor) -> None:
        self.m, self.k = m, 0
        cols = min(m, 16 * width)  # room for 16 block steps before regrowing
        self.zk = like.new_empty(2 * m, cols)
        self.ck = like.new_empty(2 * m, cols)
        self.h = like.new_zeros(cols, cols)

    def _grow(self, cols: int) -> None:
        zk, ck, h, k = self.zk, self.ck, self.h, self.k
        self.zk, self.ck = zk.new_empty(2 * self.m, cols), ck.new_empty(2 * self.m, cols)
        self.h = h.new_zeros(cols, cols)
        self.zk[:, :k], self.ck[:, :k], self.h[:k, :k] = zk[:, :k], ck[:, :k], h[:k, :k]

    def append(self, zk: torch.Tensor, ck: torch.Tensor) -> torch.Tensor:
        """Add a block ([Z_j; K_g Z_j], [C_j; K_a C_j]); return H's new columns Cᵀ K_a C_j."""
        b = zk.shape[1]
        if self.k + b > self.zk.shape[1]:
            self._grow(max(2 * self.zk.shape[1], self.k + b))
        new = slice(self.k, self.k + b)
        self.zk[:, new], self.ck[:, new] = zk, ck
        self.k += b
        cross = self.ck[: self.m, : self.k].T @ ck[self.m :]
        self.h[: self.k, new] = cross
        return cross

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (descending) and vectors of H, from its upper triangle."""
        theta, y = torch.linalg.eigh(self.h[: self.k, : self.k], UPLO="U")
        return theta.flip(0), y.flip(1)


class _CheckSchedule:
    """When to run Rayleigh–Ritz (an eigendecomposition of the k × k matrix H, the largest
    cost of a block step when m is small, and cubic in k): at the first two block steps, then
    where the residuals' geometric decrease between the last two checks predicts convergence,
    but at most twice as many steps as done so far. Krylov convergence accelerates, so a rate
    measured early overestimates the steps left; the cap keeps the overshoot small while the
    number of checks grows only logarithmically in the number of steps."""

    def __init__(self) -> None:
        self.next = 1
        self.last: tuple[int, float] | None = None  # (step, excess) of the last check

    def due(self, step: int) -> bool:
        return step >= self.next

    def record(self, step: int, excess: float) -> None:
        """``excess``: the largest residual over its tolerance (converged when ≤ 1)."""
        ahead = 1
        if self.last is not None:
            last_step, last_excess = self.last
            rate = (excess / last_excess) ** (1.0 / (step - last_step)) if last_excess > 0 else 1.0
            if 0.0 < rate < 1.0:
                needed = math.ceil(math.log(excess) / -math.log(rate))
                ahead = max(1, min(needed, step))
        self.last, self.next = (step, excess), step + ahead


@dataclass
class RearrangedFisher:
    """ℛ(F) (or ℛ(F − A⊗G) when ``centered``) of one layer batch, as an implicit operator.

    A T > 1 batch (``shared``) has only the matrix-free route (module docstring); its centring
    subtracts vec(A) vec(G)ᵀ with KFAC-expand's A and G."""

    a: torch.Tensor  # (m, da), or (m, T, da) for a weight-sharing layer
    g: torch.Tensor  # (m, dg), or (m, T, dg)
    centered: bool = False

    def __post_init__(self) -> None:
        self.m = self.a.shape[0]
        self.shared = SharedBatch(self.a, self.g) if self.a.ndim == 3 else None

    # -- Gram route ---------------------------------------------------------------------
    def grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K_a = (ĀĀᵀ)∘², K_g = (ΓΓᵀ)∘²: formed in the input dtype, then returned in float64
        for every product with them (float32 products with K lose up to 1e-5 of the second
        term's accuracy, through sums with cancellation over m samples)."""
        return _squared_gram(self.a), _squared_gram(self.g)

    def _center(self, c: torch.Tensor) -> torch.Tensor:
        """W c for W = C = I − 11ᵀ/m (centered) or I; columns of a block independently."""
        return c - c.mean(dim=0, keepdim=True) if self.centered else c

    def _gram_start(
        self, width: int, device: torch.device, first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """KFAC's G as the first start vector (d = 𝟙: V = Γᵀ diag(d) Γ ∝ G; the top right
        singular vector of the uncentered problem is nonnegative, by Perron–Frobenius as K_a
        and K_g have nonnegative entries, and close to it when ā and g are near-independent),
        or ``first`` where given (the power iteration's last vector), then seeded uniform random
        columns, drawn on the CPU so every device starts alike."""
        gen = torch.Generator().manual_seed(0)
        start = (torch.rand(self.m, width, generator=gen, dtype=torch.float64) - 0.5).to(device)
        start[:, 0] = 1.0 if first is None else first
        return start

    def _power_top(
        self, ka: torch.Tensor, kg: torch.Tensor, tol: float
    ) -> tuple[Triplets | None, torch.Tensor, int]:
        """The top triplet by power iteration on T = W K_a W K_g (``ka`` already holding the
        1/m²), from d = 𝟙, when the gap makes that fast; else ``None``; then the last vector and the
        number of steps taken.

        A step is two m × m matrix–vector products and a few vector operations, against a
        block step's two m × m × b products and ~20 small kernels plus Rayleigh–Ritz: on the
        uncentered problem σ₂/σ₁ ≈ 0.05–0.13 on the engine bench's layers, so the residual falls
        by (σ₂/σ₁)² ≈ 0.003–0.02 a step and 3–5 steps reach the tolerance. With d K_g-unit,
        θ = dᵀ K_g T d = cᵀ K_a c (c = W K_g d) is the Rayleigh quotient and r = T d − θ d is
        measured exactly, K_g r = K_g T d − θ K_g d with K_g T d the next step's product, so
        the stopping rule is the block iteration's: ‖r‖_K ≤ tol · θ (i.e. ‖Mᵀu − σv‖ ≤ tol·σ).
        Where the residual shrinks by less than ``POWER_RATE`` a step (σ₂/σ₁ ≳ 0.7: a flat top,
        as on most centered problems), or has not converged in ``POWER_STEPS``, it gives up
        and the block Krylov iteration continues from its vector."""
        d = torch.ones(self.m, dtype=ka.dtype, device=ka.device)
        y = kg @ d
        norm = float(d @ y) ** 0.5
        d, y = d / norm, y / norm
        last, step = math.inf, 0
        for step in range(1, POWER_STEPS + 1):
            c = self._center(y)
            kac = ka @ c
            theta = float(c @ kac)
            if not theta > 0.0:
                break
            td = self._center(kac)
            ktd = kg @ td
            residual = max(float((td - theta * d) @ (ktd - theta * y)), 0.0) ** 0.5 / theta
            if residual <= tol:
                sigma = math.sqrt(theta)
                return (
                    Triplets(
                        sigma=torch.tensor([sigma], dtype=torch.float64, device=ka.device),
                        left=(c / (self.m * sigma))[None],
                        right=d[None],
                        iterations=step,
                        converged=True,
                        info={"max_residual": residual, "iteration": "power"},
                    ),
                    d,
                    step,
                )
            if residual > POWER_RATE * last:
                break
            last = residual
            norm = float(td @ ktd) ** 0.5
            d, y = td / norm, ktd / norm
        return None, d, step

    def _dense_top(
        self, ka: torch.Tensor, kg: torch.Tensor, rank: int, tol: float
    ) -> Triplets | None:
        """The top ``rank`` triplets from a dense eigenproblem (``ka`` holding the 1/m²), or
        ``None`` where K_g is not numerically positive definite or the result misses ``tol``.

        With K_g = L Lᵀ (Cholesky), T = W K_a W K_g is similar to the symmetric
        S = (WL)ᵀ K_a (WL): S y = θ y gives T d = θ d for d = L⁻ᵀ y, K_g-unit. No triangular
        solve is needed: the left coefficients are c = W K_g d / (mσ) = W L y / (mσ) and the
        right ones d = Mᵀ-image of c, d = m W K_a c / σ. The eigensolver
        (:func:`_top_eigenpairs`) is backward stable, as is Cholesky, so the residual is of
        the order of m ε σ₁ whatever the gaps. That residual, ‖T d − θ d‖_K / σ = ‖Mᵀu − σv‖, is
        measured against the true K_g (four m × m × r products) and reported; where it
        exceeds ``tol`` · σ₁, or where Cholesky fails (K_g singular to working precision:
        m > dg(dg + 1)/2, repeated or zero gradients), the block iteration runs instead."""
        m = self.m
        lower, info = torch.linalg.cholesky_ex(kg)
        if int(info) != 0:
            return None
        wl = self._center(lower)
        try:
            theta, y = _top_eigenpairs(wl.T @ (ka @ wl), min(rank, m), tol)
        except scipy.sparse.linalg.ArpackError:  # no convergence: rare, the iteration takes over
            return None
        scale = float(theta[0]) ** 0.5 if theta[0] > 0 else 0.0
        keep = theta.clamp_min(0.0).sqrt() > 1e-14 * scale
        if not bool(keep.any()):
            return None
        sigma = theta[keep].sqrt()
        left = wl @ y[:, keep] / (m * sigma)
        right = m * self._center(ka @ left) / sigma
        gap = self._center(ka @ self._center(kg @ right)) - sigma.square() * right
        residual = (gap * (kg @ gap)).sum(0).clamp_min(0.0).sqrt() / sigma
        excess = float(residual.max()) / scale
        if not excess <= tol:
            return None
        return Triplets(
            sigma=sigma,
            left=left.T,
            right=right.T,
            iterations=0,
            converged=True,
            info={"max_residual": excess, "iteration": "dense"},
        )

    def triplets_gram(self, rank: int, tol: float) -> Triplets:
        """Top-``rank`` triplets by block Krylov iteration on the m × m Gram matrices (rank 1
        of the uncentered problem: power iteration first, :meth:`_power_top`; small batches: a
        dense eigenproblem, :meth:`_dense_top`).

        In coefficient space M maps d ↦ W K_g d / m and Mᵀ maps c ↦ W K_a c / m, and
        T = MᵀM is self-adjoint in the K_g inner product. A block Krylov basis Z of T
        (K_g-orthonormal, block size rank + ``BLOCK_EXTRA``) is grown block by block;
        Rayleigh–Ritz on H = Zᵀ K_g T Z = Cᵀ K_a C with C = M Z gives θ = σ², right vectors
        d = Z y and left vectors c = C y / σ. Since T Z_j ∈ span(Z_0 … Z_{j+1}), the residual of
        a Ritz pair is ‖B y_last‖ where B is the new block's coefficient (block Lanczos; Golub &
        Van Loan §10.3), and ‖Mᵀu − σv‖ = ‖T v − θ v‖ / σ. The start block's first column is
        d = 𝟙, KFAC's G (:meth:`_gram_start`).

        A block step is two m × m × b products (K_a C_j, then K_g of the new block) and a few
        thin ones: the first Gram–Schmidt pass of T Z_j against Z needs no product of its own,
        its coefficients Zᵀ K_g T Z_j = Cᵀ K_a C_j being H's new columns; the second pass
        (reorthogonalisation) and every update act on the stacked [X; K X]; the new block is
        orthonormalised by Cholesky QR (:func:`_k_orthonormal`). Rayleigh–Ritz, cubic in the
        basis size, runs only where :class:`_CheckSchedule` expects convergence.
        """
        ka, kg = self.grams()
        m = self.m
        ka /= m * m  # T = W K_a W K_g / m² with C = W K_g Z (the 1/m of M folded into K_a)
        first, power_steps = None, 0
        if rank == 1 and not self.centered:
            found, first, power_steps = self._power_top(ka, kg, tol)
            if found is not None:
                return found
        if m <= DENSE_MAX_M:
            found = self._dense_top(ka, kg, rank, tol)
            if found is not None:
                found.iterations += power_steps
                return found
        width = min(m, rank + BLOCK_EXTRA)
        start = self._gram_start(width, ka.device, first)
        zk = torch.cat([start, kg @ start])
        start_scale = float((start * zk[m:]).sum(0).clamp_min(0.0).max().sqrt())
        zk, _ = _k_orthonormal(zk, m, start_scale)
        basis = _KrylovBasis(m, width, start)
        schedule = _CheckSchedule()
        theta1, steps = start_scale, 0
        while True:
            steps += 1
            c_block = self._center(zk[m:])  # m C_j = m M Z_j
            kac_block = ka @ c_block
            h_new = basis.append(zk, torch.cat([c_block, kac_block]))
            k = basis.k
            # T Z_j minus its K_g-projection on Z, whose coefficients are H's new columns
            x = torch.addmm(self._center(kac_block), basis.zk[:m, :k], h_new, alpha=-1.0)
            xk = torch.cat([x, kg @ x])
            xk = torch.addmm(xk, basis.zk[:, :k], basis.zk[m:, :k].T @ x, alpha=-1.0)  # again
            ritz = basis.ritz() if schedule.due(steps) else None
            if ritz is not None:
                theta1 = max(float(ritz[0][0]), 1e-300)
            # ‖T z‖_K ≤ θ₁ for a K-unit z: θ₁ (the latest Ritz estimate) sets the new block's scale.
            new_zk, coeff = _k_orthonormal(xk, m, theta1)
            # An empty new block means span(Z) is invariant under T: the Ritz pairs are exact.
            exhausted = new_zk.shape[1] == 0 or k >= m
            if exhausted and ritz is None:
                ritz = basis.ritz()
            if ritz is not None:
                theta, y = ritz
                r = min(rank, int((theta > 0).sum()))
                sigma = theta[:r].clamp_min(0.0).sqrt()
                last = y[k - zk.shape[1] : k, :r]
                residual = torch.linalg.norm(coeff @ last, dim=0) / sigma.clamp_min(1e-300)
                scale = float(sigma[0]) if r else 1.0
                excess = float(residual.max()) / (tol * scale) if r else 0.0
                if excess <= 1.0 or exhausted:
                    break
                schedule.record(steps, excess)
            zk = new_zk
        keep = sigma > 1e-14 * scale
        sigma, y_r = sigma[keep], y[:, :r][:, keep]
        return Triplets(
            sigma=sigma,
            left=(basis.ck[:m, :k] @ y_r / (m * sigma)).T,
            right=(basis.zk[:m, :k] @ y_r).T,
            iterations=power_steps + steps,
            converged=True,
            info={"max_residual": excess * tol, "iteration": "block Krylov"},
        )

    def factors(self, left: torch.Tensor, right: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """(Āᵀ diag(c_k) Ā, Γᵀ diag(d_k) Γ) for the rows c_k of ``left`` and d_k of ``right``,
        in the input dtype: one product per side for all k (KFAC's A is c = 𝟙/m). Each pair's
        sign is chosen so that tr(Āᵀ diag(c) Ā) = Σ_i c_i ‖ā_i‖² ≥ 0, in coefficient space
        (the product U ⊗ V does not change; no pass over the matrices)."""
        trace = left @ self.a.square().sum(1).to(left.dtype)
        sign = torch.where(trace < 0, -1.0, 1.0).to(left.dtype)[:, None]
        us = _weighted_grams(self.a, sign * left)
        vs = _weighted_grams(self.g, sign * right)
        return list(zip(us.unbind(0), vs.unbind(0), strict=True))

    # -- matrix-free route (the seed paper's) --------------------------------------------
    @cached_property
    def a64(self) -> torch.Tensor:
        return self.a.to(torch.float64)

    @cached_property
    def g64(self) -> torch.Tensor:
        return self.g.to(torch.float64)

    @cached_property
    def expand_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """KFAC-expand's (A, G) in float64, the term a centered T > 1 operator subtracts."""
        fa, fg = kfac_expand_factors(self.a, self.g)
        return fa.to(torch.float64), fg.to(torch.float64)

    def apply(self, s: torch.Tensor) -> torch.Tensor:
        """ℛ(F) vec(S) as a da × da matrix: (1/m) Āᵀ diag(g_iᵀ S g_i) Ā (minus centering);
        on T > 1 positions (1/m) Σ_n D_nᵀ S D_n (minus vec(A)⟨G, S⟩ centered)."""
        if self.shared is not None:
            out = self.shared.input_side(s.to(self.shared.dtype)).to(torch.float64)
            if self.centered:
                fa, fg = self.expand_factors
                out = out - (fg * s).sum() * fa
            return out
        w = ((self.g64 @ s) * self.g64).sum(1)
        return self.a64.T @ (self._center(w)[:, None] * self.a64) / self.m

    def apply_t(self, r: torch.Tensor) -> torch.Tensor:
        """ℛ(F)ᵀ vec(R) as a dg × dg matrix: (1/m) Γᵀ diag(ā_iᵀ R ā_i) Γ (minus centering);
        on T > 1 positions (1/m) Σ_n D_n R D_nᵀ (minus vec(G)⟨A, R⟩ centered)."""
        if self.shared is not None:
            out = self.shared.output_side(r.to(self.shared.dtype)).to(torch.float64)
            if self.centered:
                fa, fg = self.expand_factors
                out = out - (fa * r).sum() * fg
            return out
        w = ((self.a64 @ r) * self.a64).sum(1)
        return self.g64.T @ (self._center(w)[:, None] * self.g64) / self.m

    def _start(self) -> torch.Tensor:
        """Start from a positive definite dg × dg matrix (the top factor is PSD)."""
        dg = self.g.shape[-1]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
        return (x @ x.T / dg + torch.eye(dg, dtype=torch.float64)).to(self.a.device)

    def triplets_power(self, rank: int, tol: float, max_iter: int) -> Triplets:
        return power_svd(self.apply, self.apply_t, self._start(), rank, tol=tol, max_iter=max_iter)

    def triplets_lanczos(self, rank: int, tol: float) -> Triplets:
        dg, da = self.g.shape[-1], self.a.shape[-1]
        gen = torch.Generator().manual_seed(1)

        def fresh() -> torch.Tensor:
            x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
            return (x + x.T).to(self.a.device)

        # rank of ℛ(F) on symmetric matrices: ≤ T(T + 1)/2 per sample (m at T = 1)
        t = 1 if self.shared is None else self.shared.t
        max_steps = min(dg * (dg + 1) // 2, da * (da + 1) // 2, self.m * t * (t + 1) // 2)
        return golub_kahan_lanczos(
            self.apply,
            self.apply_t,
            self._start(),
            rank,
            tol=tol,
            max_steps=max(max_steps, rank),
            fresh_start=fresh,
        )
