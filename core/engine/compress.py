"""Fisher-weighted low-rank compression of one layer: replace W (dg × da, bias as the last
column) by the rank-k matrix X closest to W in the norm of a damped curvature M,

    X = argmin_{rank X ≤ k} vec(W − X)ᵀ M vec(W − X),

the second-order loss increase ½‖W − X‖²_M of trained weights (gradient ≈ 0). M comes from any
approximation by :func:`core.engine.weight_metric.weight_metric` (the damped curvature its
optimizer inverts). Rows of the comparison:

* ``svd`` — M = I: the truncated SVD (Eckart–Young).
* ``fwsvd`` — Fisher-Weighted SVD (Hsu et al. 2022, "Language model compression with weighted
  low-rank factorization"): every weight of output row p weighted by that row's summed Fisher
  diagonal r_p = Σ_i F_(i,p),(i,p) (+ λ); X = D^{-½} [D^{½} W]_k with D = diag(r).
* one Kronecker product (KFAC, KPSVD, Shampoo): M = R̃ ⊗ S̃ (factored-damped), so
  ‖W − X‖²_M = ‖S̃^{½} (W − X) R̃^{½}‖²_F and the closed form is
  X = S̃^{-½} [S̃^{½} W R̃^{½}]_k R̃^{-½} (the Generalized Fisher-Weighted SVD of Chekalina et al.
  2025, there with the KPSVD factors), computed in the factors' eigenbases.
* two products (Deflation, Lanczos, KFAC-corrected): no closed form. In the generalized
  eigenbases of :class:`~core.engine.weight_metric.CongruenceMetric`, Y = C_gᵀ X C_a, the norm
  is the elementwise weighting Σ_pi d_pi (Y_W − Y)²_pi with d = 1 + ν μᵀ, and rank Y = rank X:
  a weighted low-rank problem (Srebro & Jaakkola 2003), which can have local minima. It is
  solved by alternating least squares on Y = U Vᵀ from two starts, the better kept: the leading
  term's closed form (d ≡ 1 there: the truncated SVD of Y_W) and the top right singular vectors
  of √d ∘ Y_W. Each half-step is exact: row p of U solves (Vᵀ diag(d_p) V) u_p = Vᵀ(d_p ∘ y_p);
  with d = 1 + νμᵀ every such matrix is VᵀV + ν_p Vᵀdiag(μ)V, so one generalized
  eigendecomposition of that k × k pair solves all rows at once. The objective never increases,
  so the result is never worse than the leading term's closed form; iterations stop when it
  falls by less than ``tol`` (relative) or after ``max_iter``. Eva (Zhang et al. 2023), which
  damps its rank-one product as a whole, R ⊗ S + λI, is solved the same way (d = λ_S λ_Rᵀ + λ).
* no short Kronecker form (EKFAC, the exact block): M dense on small layers, the same
  alternating least squares with dense half-steps (vec(UVᵀ) = (V ⊗ I) vec U = (I ⊗ U) vec Vᵀ),
  started from the truncated SVD of W.

All arithmetic is float64; the result has W's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .approx import Approximation
from .validation import check_layer_batch
from .weight_metric import (
    CongruenceMetric,
    DenseMetric,
    WeightMetric,
    check_weight,
    identity_metric,
    row_diagonal_metric,
    weight_metric,
)

__all__ = [
    "COMPRESS_BASELINES",
    "Compressed",
    "check_rank",
    "compress",
    "truncated_svd",
    "fwsvd",
    "fisher_diagonal",
    "low_rank",
]

COMPRESS_BASELINES: tuple[str, ...] = ("svd", "fwsvd")
_F64 = torch.float64
_RIDGE = 1e-13  # relative ridge on the k × k half-step systems (a rank-deficient W)
_CHUNK = 1 << 24  # elements of the (rows, da, k) intermediate of a general weighted half-step


@dataclass(frozen=True)
class Compressed:
    """A rank-``rank`` replacement ``weight`` (dg, da) of W and how it was found.

    ``objective``: vec(W − X)ᵀ M vec(W − X) in the metric used; ``solver``: "closed_form",
    "als" or "dense_als"; ``iterations`` of the alternating least squares (0 for a closed form).
    """

    weight: torch.Tensor
    rank: int
    objective: float
    solver: str
    iterations: int = 0
    converged: bool = True


def check_rank(k: object, da: int, dg: int) -> int:
    """k must be an integer in [1, min(dg, da)]."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(da, dg):
        raise ValueError(
            f"rank k must be an integer from 1 to min(dg, da) = {min(da, dg)} for a layer of "
            f"shape ({dg}, {da}); got {k!r}"
        )
    return k


def _truncate(z: torch.Tensor, k: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    out: torch.Tensor = (u[:, :k] * s[:k]) @ vh[:k]
    return out


def low_rank(
    metric: WeightMetric, w: torch.Tensor, k: int, *, max_iter: int = 100, tol: float = 1e-8
) -> Compressed:
    """The rank-k X minimising vec(W − X)ᵀ M vec(W − X) (see the module docstring)."""
    w64 = check_weight(w, metric.da, metric.dg)
    k = check_rank(k, metric.da, metric.dg)
    if max_iter < 1:
        raise ValueError(f"max_iter must be ≥ 1, got {max_iter}")
    if isinstance(metric, CongruenceMetric):
        y_w = metric.to_basis(w64)
        if metric.separable is not None:
            root_g, root_a = (t.sqrt() for t in metric.separable)
            y = _truncate(root_g[:, None] * y_w * root_a, k) / root_g[:, None] / root_a
            solver, iterations, converged = "closed_form", 0, True
        else:
            y, iterations, converged = _weighted_als(metric, y_w, k, max_iter, tol)
            solver = "als"
        x = metric.from_basis(y)
    elif isinstance(metric, DenseMetric):
        x, iterations, converged = _dense_als(metric, w64, k, max_iter, tol)
        solver = "dense_als"
    else:
        raise ValueError(f"no low-rank solver for a {type(metric).__name__}")
    return Compressed(
        weight=x.to(w.dtype),
        rank=k,
        objective=metric.quadratic(w64 - x),
        solver=solver,
        iterations=iterations,
        converged=converged,
    )


def compress(
    w: torch.Tensor,
    k: int,
    approx: Approximation,
    *,
    damping: float = 1e-3,
    psd_floor: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> Compressed:
    """The rank-k X closest to W in the norm of ``approx`` damped by ``damping``
    (:func:`core.engine.weight_metric.weight_metric`; ``ValueError`` for k out of range, a W of
    another shape, singular factors at damping 0, or a dense-only curvature too large)."""
    check_weight(w, approx.da, approx.dg)
    check_rank(k, approx.da, approx.dg)
    metric = weight_metric(approx, damping, psd_floor=psd_floor)
    return low_rank(metric, w, k, max_iter=max_iter, tol=tol)


def truncated_svd(w: torch.Tensor, k: int) -> Compressed:
    """The plain truncated SVD (M = I)."""
    dg, da = w.shape
    return low_rank(identity_metric(da, dg), w, k)


def fisher_diagonal(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """diag(F) arranged like W, (dg, da): (1/m) Σ_n D_n ∘ D_n with D_n the per-sample gradient
    (g_n ā_nᵀ for (m, d) batches, Γ_nᵀ A_n for (m, T, d) weight-sharing ones)."""
    a, g = check_layer_batch(a, g)
    a64, g64 = a.to(_F64), g.to(_F64)
    if a64.ndim == 2:
        return (g64**2).T @ (a64**2) / a64.shape[0]
    per_sample = torch.einsum("ntp,nti->npi", g64, a64)
    return (per_sample**2).mean(0)


def fwsvd(
    w: torch.Tensor, k: int, a: torch.Tensor, g: torch.Tensor, *, damping: float = 1e-3
) -> Compressed:
    """FWSVD (Hsu et al. 2022): row weights r_p = Σ_i diag(F)_pi + λ from the layer batch."""
    diagonal = fisher_diagonal(a, g)
    if tuple(diagonal.shape) != tuple(w.shape):
        raise ValueError(
            f"the layer batch is for a ({diagonal.shape[0]}, {diagonal.shape[1]}) layer, but W "
            f"has shape {tuple(w.shape)}"
        )
    if not damping >= 0.0:
        raise ValueError(f"damping must be a finite number ≥ 0, got {damping}")
    metric = row_diagonal_metric(diagonal.sum(1) + damping, w.shape[1])
    return low_rank(metric, w, k)


# -- alternating least squares -----------------------------------------------------------------


def _ridge(h: torch.Tensor) -> torch.Tensor:
    k = h.shape[-1]
    scale = torch.diagonal(h, dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    return h + _RIDGE * scale[..., None, None] * eye


def _rows_general(d: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each row p: (Vᵀ diag(d_p) V) u_p = Vᵀ (d_p ∘ y_p), for any positive weights d."""
    rows, da = d.shape
    k = v.shape[1]
    out = torch.empty(rows, k, dtype=_F64)
    step = max(1, _CHUNK // max(da * k, 1))
    for lo in range(0, rows, step):
        dp = d[lo : lo + step]
        h = torch.einsum("pi,ik,il->pkl", dp, v, v)
        b = (dp * y[lo : lo + step]) @ v
        out[lo : lo + step] = torch.linalg.solve(_ridge(h), b.unsqueeze(-1)).squeeze(-1)
    return out


def _rows_rank_two(
    nu: torch.Tensor, mu: torch.Tensor, y: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """The same for d = 1 + ν μᵀ: H_p = G₀ + ν_p G₁ with G₀ = VᵀV, G₁ = Vᵀ diag(μ) V; with
    G₁X = G₀XΘ, XᵀG₀X = I, H_p⁻¹ = X diag(1/(1 + ν_p θ)) Xᵀ for all rows at once."""
    g0 = _ridge(v.T @ v)
    g1 = v.T @ (mu[:, None] * v)
    chol = torch.linalg.cholesky(0.5 * (g0 + g0.T))
    left = torch.linalg.solve_triangular(chol, 0.5 * (g1 + g1.T), upper=False)
    c = torch.linalg.solve_triangular(chol, left.T, upper=False)
    theta, q = torch.linalg.eigh(0.5 * (c + c.T))
    x = torch.linalg.solve_triangular(chol.T, q, upper=True)
    b = y @ v + nu[:, None] * ((y * mu) @ v)
    out: torch.Tensor = ((b @ x) / (1.0 + torch.outer(nu, theta))) @ x.T
    return out


def _weighted_als(
    metric: CongruenceMetric, y_w: torch.Tensor, k: int, max_iter: int, tol: float
) -> tuple[torch.Tensor, int, bool]:
    """Alternating least squares from two starts, the better result kept: the leading term's
    closed form (the truncated SVD of Y_W) and V from the top right singular vectors of
    √d ∘ Y_W (which finds the global optimum where a few weights dominate, e.g. Eva's λI + uuᵀ,
    and the first start stalls in a local one)."""
    u, s, vh = torch.linalg.svd(y_w, full_matrices=False)
    weighted = torch.linalg.svd(metric.d.sqrt() * y_w, full_matrices=False)[2]
    best: tuple[float, torch.Tensor, bool] | None = None
    total = 0
    for right in (vh[:k].T, weighted[:k].T):
        value, y, iterations, converged = _als_from(metric, y_w, right, max_iter, tol)
        total += iterations
        if best is None or value < best[0]:
            best = (value, y, converged)
    assert best is not None
    return best[1], total, best[2]


def _als_from(
    metric: CongruenceMetric, y_w: torch.Tensor, right: torch.Tensor, max_iter: int, tol: float
) -> tuple[float, torch.Tensor, int, bool]:
    """Alternate U and V half-steps from V = ``right``; (objective, Y, iterations, converged)."""
    d = metric.d
    value = float("inf")
    for iteration in range(1, max_iter + 1):
        if metric.rank_two is not None:
            nu, mu = metric.rank_two
            left = _rows_rank_two(nu, mu, y_w, right)
            right = _rows_rank_two(mu, nu, y_w.T, left)
        else:
            left = _rows_general(d, y_w, right)
            right = _rows_general(d.T, y_w.T, left)
        new = float((d * (y_w - left @ right.T) ** 2).sum())
        if value - new <= tol * max(new, 1e-300):
            return new, left @ right.T, iteration, True
        value = new
    return value, left @ right.T, max_iter, False


def _dense_als(
    metric: DenseMetric, w: torch.Tensor, k: int, max_iter: int, tol: float
) -> tuple[torch.Tensor, int, bool]:
    dg, da = w.shape
    mt = metric.matrix.reshape(da, dg, da, dg)  # [i, p, j, q] = M[i·dg + p, j·dg + q]
    mw = metric.apply(w)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    left, right = u[:, :k] * s[:k], vh[:k].T

    def objective() -> float:
        return metric.quadratic(w - left @ right.T)

    value = objective()
    for iteration in range(1, max_iter + 1):
        h_u = torch.einsum("ik,ipjq,jl->kplq", right, mt, right).reshape(k * dg, k * dg)
        sol = torch.linalg.solve(_ridge(h_u), (mw @ right).T.reshape(-1))
        left = sol.reshape(k, dg).T
        h_v = torch.einsum("pl,ipjq,qm->iljm", left, mt, left).reshape(da * k, da * k)
        sol = torch.linalg.solve(_ridge(h_v), (left.T @ mw).T.reshape(-1))
        right = sol.reshape(da, k)
        new = objective()
        if value - new <= tol * max(value, 1e-300):
            return left @ right.T, iteration, True
        value = new
    return left @ right.T, max_iter, False
