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
* ``"matrix_free"`` (the seed paper's algorithms): iterations on da × da and dg × dg factor
  matrices, applying ℛ(F) through ℛ(F) vec(S) = vec((1/m) Āᵀ diag(g_iᵀ S g_i) Ā): deflated
  power SVD, or Golub–Kahan–Lanczos with full reorthogonalisation.

Both iterate in float64 and stop on the residual ‖ℛ(F)ᵀu − σ v‖ ≤ tol · σ₁. They run on the
inputs' device; their seeded random starts are drawn on the CPU and moved there, so every device
starts from the same vectors and CPU and CUDA results agree to round-off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .kron import sym

SOLVERS = ("gram", "matrix_free")


@dataclass
class Space:
    """An inner-product space ⟨x, y⟩ = vec(x)ᵀ K vec(y), with K applied by ``metric``.

    The Gram route uses coefficient vectors with K = K_a or K_g; the matrix-free route uses
    matrices with the Frobenius product (K = I, ``metric=None``). Iterations carry each
    vector's image K y along with it, so every step applies K once per space.
    """

    metric: Callable[[torch.Tensor], torch.Tensor] | None = None

    def image(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.metric is None else self.metric(y)


@dataclass
class Triplets:
    """Leading singular triplets in the representation of their space, plus diagnostics."""

    sigma: torch.Tensor  # (r,) descending
    left: torch.Tensor  # (r, …) unit vectors of the left space
    right: torch.Tensor  # (r, …) unit vectors of the right space
    iterations: int
    converged: bool
    info: dict = field(default_factory=dict)


def _dot(x: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """⟨x_k, y⟩ for a stack x (k, …) given the image K y."""
    return x.reshape(x.shape[0], -1) @ ky.reshape(-1)


def _norm(y: torch.Tensor, ky: torch.Tensor) -> float:
    return float((y.reshape(-1) @ ky.reshape(-1)).clamp_min(0.0).sqrt())


class _Basis:
    """An orthonormal basis of one space, with the images of its vectors."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.vectors: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []

    def orthogonalize(self, y: torch.Tensor, ky: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two passes of classical Gram–Schmidt; the image is updated, not recomputed."""
        if not self.vectors:
            return y, ky
        stack, images = torch.stack(self.vectors), torch.stack(self.images)
        for _ in range(2):
            coeffs = _dot(stack, ky)
            y = y - torch.tensordot(coeffs, stack, dims=1)
            ky = ky - torch.tensordot(coeffs, images, dims=1)
        return y, ky

    def append(self, y: torch.Tensor, ky: torch.Tensor) -> None:
        self.vectors.append(y)
        self.images.append(ky)


Operator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def golub_kahan_lanczos(
    op: Operator,
    op_t: Operator,
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

    ``op(v, Kv) = M v`` and ``op_t(u, Ku) = Mᵀ u`` (each may use the image of its argument).
    With full reorthogonalisation, M V_k = U_k B_k and Mᵀ U_k = V_k B_kᵀ + β_k v_{k+1} e_kᵀ
    (B_k upper bidiagonal), so the SVD B_k = X Σ Yᵀ gives Ritz triplets (Σ, U_k X, V_k Y)
    whose residual ‖Mᵀu − σv‖ equals β_k |X_{k,i}| (Golub & Van Loan, §10.4). On breakdown
    (an invariant subspace), the recurrence restarts from a fresh vector orthogonal to the
    basis (β = 0), so repeated and zero singular values are found too; when no fresh direction
    is left the whole space has been spanned and the result is exact. ``max_steps`` bounds the
    Krylov dimension.
    """
    us, vs = _Basis(left), _Basis(right)
    alphas: list[float] = []
    betas: list[float] = []
    kv = right.image(start)
    nv = _norm(start, kv)
    v, kv = start / nv, kv / nv
    u_prev: torch.Tensor | None = None
    restarts = 0
    while len(alphas) < max_steps:
        vs.append(v, kv)
        u = op(v, kv)
        if u_prev is not None:
            u = u - betas[-1] * u_prev
        u, ku = us.orthogonalize(u, left.image(u))
        alpha = _norm(u, ku)
        scale = max(alphas[0] if alphas else alpha, 1e-300)
        if alpha <= 1e-12 * scale:  # M v lies in the span already: a zero pivot
            alpha, u, ku = 0.0, torch.zeros_like(u), torch.zeros_like(ku)
        else:
            u, ku = u / alpha, ku / alpha
        us.append(u, ku)
        alphas.append(alpha)
        w = op_t(u, ku) - alpha * v
        w, kw = vs.orthogonalize(w, right.image(w))
        beta = _norm(w, kw)
        if beta <= 1e-12 * scale:
            # Invariant subspace: continue from a fresh direction orthogonal to the basis.
            restarts += 1
            fresh = fresh_start()
            k_fresh = right.image(fresh)
            w, kw = vs.orthogonalize(fresh, k_fresh)
            fresh_norm = _norm(w, kw)
            betas.append(0.0)
            if fresh_norm <= 1e-9 * _norm(fresh, k_fresh):
                break
            v, kv = w / fresh_norm, kw / fresh_norm
        else:
            betas.append(beta)
            v, kv = w / beta, kw / beta
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
        kv = right.image(v)
        out = op(v, kv)
        for s_j, u_j, v_j in zip(sigmas, lefts, rights, strict=True):
            out = out - s_j * float(_dot(v_j.unsqueeze(0), kv)[0]) * u_j
        return out

    def deflated_op_t(u: torch.Tensor) -> torch.Tensor:
        ku = left.image(u)
        out = op_t(u, ku)
        for s_j, u_j, v_j in zip(sigmas, lefts, rights, strict=True):
            out = out - s_j * float(_dot(u_j.unsqueeze(0), ku)[0]) * v_j
        return out

    def normalized(space: Space, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        size = max(_norm(y, space.image(y)), 1e-300)
        return y / size, size

    for _ in range(rank):
        v, _ = normalized(right, start)
        u, sigma = normalized(left, deflated_op(v))
        converged = False
        for _ in range(max_iter):
            total += 1
            w = deflated_op_t(u)
            gap = w - sigma * v
            residual = _norm(gap, right.image(gap))
            scale = sigmas[0] if sigmas else sigma
            if residual <= tol * max(scale, 1e-300):
                converged = True
                break
            v, _ = normalized(right, w)
            u, sigma = normalized(left, deflated_op(v))
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


def _orthonormal_block(
    x: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    kz: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K-orthonormalise a block against a basis Z (with images K Z) and within itself.

    Returns (Z_new, K Z_new, B) with x_⊥ = Z_new B, where x_⊥ is x minus its K-projection on
    the basis (two passes of block classical Gram–Schmidt). The within-block step uses the
    eigendecomposition of x_⊥ᵀ K x_⊥ (twice). K-norms computed as xᵀKx carry round-off of
    order √ε relative to the vectors' scale, so directions of x_⊥ whose K-norm is below
    1e-7 · ``scale`` are dropped as round-off; a block that leaves nothing means span(Z) is
    invariant. The second within-block pass acts on vectors that the first made K-orthonormal,
    so its threshold is 1e-7 relative to 1, not to ``scale``: an absolute threshold of
    1e-7 · ``scale`` there drops every unit vector as soon as ``scale`` (θ₁ = σ₁², the data's
    units to the fourth power) exceeds 1e7, and the iteration would stop after one step with
    wrong triplets reported as converged.
    """
    if z.shape[1]:
        for _ in range(2):
            x = x - z @ (kz.T @ x)  # ⟨z_i, x_j⟩_K = (K z_i)ᵀ x_j
    kx = metric(x)
    coeff = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    for size in (scale, 1.0):
        lam, vecs = torch.linalg.eigh(sym(x.T @ kx))
        keep = lam > (1e-7 * size) ** 2
        lam, vecs = lam[keep], vecs[:, keep]
        rescale = vecs / lam.sqrt()
        x, kx = x @ rescale, kx @ rescale
        coeff = (lam.sqrt()[:, None] * vecs.T) @ coeff
    return x, kx, coeff


class _KrylovBasis:
    """Growing column buffers for Z, K_g Z, C = M Z and K_a C, and H = Cᵀ K_a C (no re-copying
    of the whole basis at every block step)."""

    def __init__(self, m: int, like: torch.Tensor) -> None:
        self.m, self.k, self.like = m, 0, like
        self._alloc(min(m, 16 * like.shape[1]))  # room for 16 block steps before regrowing

    def _alloc(self, cols: int) -> None:
        old = None if not hasattr(self, "buf") else (self.buf, self.h)
        self.buf = self.like.new_zeros(4, self.m, cols)
        self.h = self.like.new_zeros(cols, cols)
        if old is not None:
            self.buf[:, :, : self.k] = old[0][:, :, : self.k]
            self.h[: self.k, : self.k] = old[1][: self.k, : self.k]

    def view(self, i: int) -> torch.Tensor:
        return self.buf[i, :, : self.k]

    def append(self, z: torch.Tensor, kz: torch.Tensor, c: torch.Tensor, kac: torch.Tensor) -> None:
        """Add a block and extend H by its new rows and columns."""
        b = z.shape[1]
        if self.k + b > self.buf.shape[2]:
            self._alloc(max(2 * self.buf.shape[2], self.k + b))
        new = slice(self.k, self.k + b)
        for i, block in enumerate((z, kz, c, kac)):
            self.buf[i, :, new] = block
        self.k += b
        cross = self.view(2).T @ kac  # Cᵀ K_a C_new over the whole basis
        self.h[: self.k, new] = cross
        self.h[new, : self.k] = cross.T


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
    def gram_spaces(self) -> tuple[Space, Space]:
        """K_a = (ĀĀᵀ)∘², K_g = (ΓΓᵀ)∘²: formed in the input dtype, then every product with
        them in float64 (float32 products with K lose up to 1e-5 of the second term's
        accuracy, through sums with cancellation over m samples)."""
        ka = (self.a @ self.a.T).square_().to(torch.float64)
        kg = (self.g @ self.g.T).square_().to(torch.float64)
        return Space(lambda y: ka @ y), Space(lambda y: kg @ y)

    def _center(self, c: torch.Tensor) -> torch.Tensor:
        """W c for W = C = I − 11ᵀ/m (centered) or I; columns of a block independently."""
        return c - c.mean(dim=0, keepdim=True) if self.centered else c

    def triplets_gram(self, rank: int, tol: float) -> Triplets:
        """Top-``rank`` triplets by block Krylov iteration on the m × m Gram matrices.

        In coefficient space M maps d ↦ W K_g d / m and Mᵀ maps c ↦ W K_a c / m, and
        T = MᵀM is self-adjoint in the K_g inner product. A block Krylov basis Z of T
        (K_g-orthonormal, block size rank + 10) is grown block by block; Rayleigh–Ritz on
        H = Zᵀ K_g T Z = Cᵀ K_a C with C = M Z gives θ = σ², right vectors d = Z y and left
        vectors c = C y / σ. Since T Z_j ∈ span(Z_0 … Z_{j+1}), the residual of a Ritz pair
        is ‖B y_last‖ where B is the new block's coefficient (block Lanczos; Golub & Van Loan
        §10.3), and ‖Mᵀu − σv‖ = ‖T v − θ v‖ / σ. Each block step costs two m × m × b
        products (K_a C_j and K_g T Z_j), so the solve reads the Grams a few dozen times.
        """
        left, right = self.gram_spaces()
        ka, kg = left.metric, right.metric
        m = self.m
        width = min(m, rank + 10)
        gen = torch.Generator().manual_seed(0)
        # A positive first column: the top singular vectors of the uncentered problem are
        # nonnegative (Perron–Frobenius: K_a and K_g have nonnegative entries).
        start = torch.rand(m, width, generator=gen, dtype=torch.float64) - 0.5
        start[:, 0] += 1.0
        start = start.to(self.a.device)
        basis = _KrylovBasis(m, start)
        start_scale = float((start * kg(start)).sum(0).clamp_min(0.0).max().sqrt())
        block, kblock, _ = _orthonormal_block(start, kg, basis.view(0), basis.view(1), start_scale)
        steps = 0
        while True:
            steps += 1
            c_block = self._center(kblock) / m  # C_j = M Z_j
            kac_block = ka(c_block)
            basis.append(block, kblock, c_block, kac_block)
            theta, y = torch.linalg.eigh(sym(basis.h[: basis.k, : basis.k]))
            theta, y = theta.flip(0), y.flip(1)
            t_block = self._center(kac_block) / m  # T Z_j = Mᵀ C_j
            # ‖T z‖_K ≤ θ₁ for a K-unit z: θ₁ sets the scale of the new block.
            last = y[-block.shape[1] :]
            block, kblock, coeff = _orthonormal_block(
                t_block, kg, basis.view(0), basis.view(1), float(theta[0])
            )
            r = min(rank, int((theta > 0).sum()))
            sigma = theta[:r].clamp_min(0.0).sqrt()
            residual = torch.linalg.norm(coeff @ last[:, :r], dim=0) / sigma.clamp_min(1e-300)
            scale = float(sigma[0]) if r else 1.0
            done = bool((residual <= tol * scale).all())
            # An empty new block means span(Z) is invariant under T: the Ritz pairs are exact.
            exhausted = block.shape[1] == 0 or steps >= m
            if done or exhausted:
                break
        keep = sigma > 1e-14 * scale
        sigma, y_r = sigma[keep], y[:, :r][:, keep]
        return Triplets(
            sigma=sigma,
            left=(basis.view(2) @ y_r / sigma).T,
            right=(basis.view(0) @ y_r).T,
            iterations=steps,
            converged=done or exhausted,
            info={"max_residual": float(residual.max()) / scale if r else 0.0},
        )

    def factor_a(self, c: torch.Tensor) -> torch.Tensor:
        """Āᵀ diag(c) Ā: the da × da matrix of the coefficient vector c (in the input dtype)."""
        return self.a.T @ (c.to(self.a.dtype)[:, None] * self.a)

    def factor_g(self, d: torch.Tensor) -> torch.Tensor:
        return self.g.T @ (d.to(self.g.dtype)[:, None] * self.g)

    # -- matrix-free route (the seed paper's) --------------------------------------------
    def apply(self, s: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
        """ℛ(F) vec(S) as a da × da matrix: (1/m) Āᵀ diag(g_iᵀ S g_i) Ā (minus centering)."""
        w = ((self.g64 @ s) * self.g64).sum(1)
        return self.a64.T @ (self._center(w)[:, None] * self.a64) / self.m

    def apply_t(self, r: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
        """ℛ(F)ᵀ vec(R) as a dg × dg matrix: (1/m) Γᵀ diag(ā_iᵀ R ā_i) Γ (minus centering)."""
        w = ((self.a64 @ r) * self.a64).sum(1)
        return self.g64.T @ (self._center(w)[:, None] * self.g64) / self.m

    def _start(self) -> torch.Tensor:
        """Start from a positive definite dg × dg matrix (the top factor is PSD)."""
        dg = self.g.shape[1]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
        return (x @ x.T / dg + torch.eye(dg, dtype=torch.float64)).to(self.a.device)

    def triplets_power(self, rank: int, tol: float, max_iter: int) -> Triplets:
        space = Space()
        return power_svd(
            self.apply, self.apply_t, space, space, self._start(), rank, tol=tol, max_iter=max_iter
        )

    def triplets_lanczos(self, rank: int, tol: float) -> Triplets:
        space = Space()
        dg = self.g.shape[1]
        gen = torch.Generator().manual_seed(1)

        def fresh() -> torch.Tensor:
            x = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
            return (x + x.T).to(self.a.device)

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
