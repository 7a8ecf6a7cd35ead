"""An exponential average of a layer's Fisher block, kept as a few Kronecker terms.

The optimizers' ``ema_mode="fisher"`` (:class:`core.training.averages.FisherAverage`). With ρ
the decay and F_t the Fisher block of the t-th Fisher minibatch, the averaged Fisher is

    F_ema,1 = F_1,   F_ema,t = ρ F_ema,t−1 + (1 − ρ) F_t,

i.e. F_ema,t = ρ^{t−1} F_1 + Σ_{k=2..t} ρ^{t−k} (1 − ρ) F_k (the first capture initialises it,
as KFAC's factor EMA does). It is held in rearranged form (Van Loan & Pitsianis 1993): a state
S_t = Σ_{j ≤ K} vec(R_j) vec(S_j)ᵀ ≈ ℛ(F_ema,t) of K Kronecker terms, refreshed by

    M_t = ρ S_{t−1} + (1 − ρ) ℛ(F_t),     S_t = best rank-K approximation of M_t,

the rank-K truncated SVD of M_t (Eckart–Young). Its leading terms are the best sums of Kronecker
products of the averaged Fisher (up to the truncation error below), which is what the KPSVD
family should precondition with; an EMA of each term's factors (``ema_mode="factors"``) is not.

The Gram route (as in :mod:`core.engine.rearranged_svd`, extended to kept terms). With Ā (m × da)
the inputs and Γ (m × dg) the output gradients of the minibatch, ℛ(F_t) = (1/m) P Qᵀ, P = [vec(ā_i
ā_iᵀ)], Q = [vec(g_i g_iᵀ)]. Then

    M_t = X D Yᵀ,  X = [vec(R_1) … vec(R_K) | P],  Y = [vec(S_1) … vec(S_K) | Q],
    D = diag(ρ, …, ρ, (1 − ρ)/m, …, (1 − ρ)/m),

and every inner product of columns is cheap: ⟨R_j, R_l⟩, ⟨R_j, ā_iā_iᵀ⟩ = ā_iᵀ R_j ā_i (one
KFAC-sized product Ā R_j per kept term) and ⟨ā_iā_iᵀ, ā_kā_kᵀ⟩ = (ā_iᵀ ā_k)², so the Grams
K_X = XᵀX and K_Y = YᵀY are (K + m) × (K + m). With K_X = U_x Λ_x U_xᵀ and K_Y = U_y Λ_y U_yᵀ,
X = Q_x Λ_x^{1/2} U_xᵀ with Q_x orthonormal (and alike for Y), so

    M_t = Q_x B Q_yᵀ,   B = Λ_x^{1/2} U_xᵀ D U_y Λ_y^{1/2} = W Σ Zᵀ,

and the singular triplets of M_t are σ_k, u_k = X c_k, v_k = Y d_k with c = U_x Λ_x^{-1/2} W,
d = U_y Λ_y^{-1/2} Z (eigenvalues of a Gram below 1e-13 of its largest are dropped: those
directions carry at most ~1e-6.5 of ‖X‖ into M). Each new factor is a combination
Σ_j c_j R_j + Āᵀ diag(c_tail) Ā — again one KFAC-sized product per kept term. The cost is
O((K + m)³) for the two eigendecompositions and the SVD of B (dense; fine for Fisher minibatches
of a few hundred rows) plus about 2K KFAC-sized products.

KFAC-corrected. With sample weights p_i = w_k / m_k (w_k the EMA weight of capture k), F_ema is
the Fisher of a weighted sample set, whose KFAC factors are A_ema = Σ_k w_k A_k and
G_ema = Σ_k w_k G_k (the factor EMA, exactly). Its correction is the best Kronecker product of
the residual F_ema − A_ema ⊗ G_ema, computed here as the top term of M_t − vec(A_ema) vec(G_ema)ᵀ
(the same Gram route with one more column, weight −1): the KFAC term is exact and the
correction inherits only the truncation error of the earlier states.

Truncation error. Let E_t = M_t − S_t (‖E_t‖_F = the tail singular values of M_t, returned as
``truncated``). By induction S_t = ℛ(F_ema,t) − Σ_{k ≤ t} ρ^{t−k} E_k, so

    ‖S_t − ℛ(F_ema,t)‖_F ≤ δ_t := Σ_{k ≤ t} ρ^{t−k} ‖E_k‖_F,

(E_1 from the first capture's truncation, at weight ρ^{t−1}), it is 0 while every M_t has rank
≤ K, and the leading r < K terms T_r of S_t satisfy ‖T_r − ℛ(F_ema)‖ ≤ opt_r + 2δ_t, with opt_r
the Eckart–Young error of the best r terms of F_ema (‖T_r − S_t‖ ≤ ‖best_r(F_ema) − S_t‖ ≤
opt_r + δ_t). Keeping a few more terms than the method uses (K = r + 2 by default) keeps E_t to
the small singular values beyond r + 2, so the average is not biased towards its past top-r
subspace (with K = r, directions that are not top-r in one refresh would be dropped for good).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kron import sym
from .validation import check_layer_batch

__all__ = ["EXTRA_TERMS", "FisherEMA", "combined_terms"]

EXTRA_TERMS = 2  # kept terms beyond those the method uses (K = r + EXTRA_TERMS)
_GRAM_CUTOFF = 1e-13  # relative eigenvalue floor of the Grams K_X, K_Y

Terms = list[tuple[torch.Tensor, torch.Tensor]]


def _gram_block(mats: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Gram of [vec(M_1) … vec(M_K) | vec(x_1x_1ᵀ) … vec(x_mx_mᵀ)] for symmetric M_j and the
    rows x_i of ``rows``."""
    k, m = len(mats), rows.shape[0]
    gram = rows.new_empty(k + m, k + m)
    for j, mj in enumerate(mats):
        for l_ in range(j, k):
            gram[j, l_] = gram[l_, j] = (mj * mats[l_]).sum()
        quad = ((rows @ mj) * rows).sum(dim=1)  # x_iᵀ M_j x_i: one KFAC-sized product
        gram[j, k:] = quad
        gram[k:, j] = quad
    gram[k:, k:] = (rows @ rows.T).square()
    return gram


def _half(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, λ) of the Gram's eigenpairs above the cutoff."""
    lam, u = torch.linalg.eigh(sym(gram))
    top = float(lam[-1]) if lam.numel() else 0.0
    keep = lam > _GRAM_CUTOFF * max(top, 0.0)
    return u[:, keep], lam[keep]


@dataclass
class Combined:
    """Leading terms of a combined operator, and what the truncation dropped."""

    terms: Terms  # (√σ R, √σ S), tr R ≥ 0, descending σ
    sigma: list[float]
    truncated: float  # ‖M − Σ kept‖_F: the tail singular values of M


def combined_terms(
    kept: Terms, weights: list[float], a: torch.Tensor, g: torch.Tensor, batch_weight: float,
    rank: int,
) -> Combined:  # fmt: skip
    """The top-``rank`` Kronecker terms of Σ_j w_j vec(R_j)vec(S_j)ᵀ + β ℛ(F(a, g)).

    ``kept``: symmetric (R_j, S_j); ``weights``: w_j (any sign); ``a`` (m, da), ``g`` (m, dg)
    one minibatch's inputs and output gradients (m may be 0: no batch), ``batch_weight``: β.
    The Gram route of the module docstring. The Grams, their eigendecompositions and the core
    SVD are float64 whatever the inputs' dtype (they are rank-deficient and the route divides
    by the square roots of their eigenvalues: float32 there is off by percents, see
    :mod:`core.engine.precision`); the new factors are formed in the inputs' dtype and device.
    """
    m = a.shape[0]
    k = len(kept)
    wide = torch.float64
    gx = _gram_block([r.to(wide) for r, _ in kept], a.to(wide))
    gy = _gram_block([s.to(wide) for _, s in kept], g.to(wide))
    diag = torch.cat(
        [
            torch.tensor(weights, dtype=wide, device=a.device),
            # β/m in torch's default dtype, as it always was (float64 runs stay bit-identical)
            torch.full((m,), batch_weight / max(m, 1), device=a.device),
        ]
    ).to(wide)
    u_x, l_x = _half(gx)
    u_y, l_y = _half(gy)
    if l_x.numel() == 0 or l_y.numel() == 0:  # the operator is 0
        return Combined([], [], 0.0)
    rx, ry = l_x.sqrt(), l_y.sqrt()
    core = rx[:, None] * ((u_x.T * diag) @ u_y) * ry[None, :]
    w, sig, zt = torch.linalg.svd(core, full_matrices=False)
    r = min(rank, int((sig > 1e-14 * float(sig[0])).sum()) if sig.numel() else 0)
    c = u_x @ (w[:, :r] / rx[:, None])
    d = u_y @ (zt[:r].T / ry[:, None])
    c, d = c.to(a.dtype), d.to(g.dtype)
    terms = []
    for i in range(r):
        left = a.T @ (c[k:, i, None] * a)
        right = g.T @ (d[k:, i, None] * g)
        for j, (rj, sj) in enumerate(kept):
            left = left + c[j, i] * rj
            right = right + d[j, i] * sj
        root = float(sig[i]) ** 0.5
        left, right = sym(root * left), sym(root * right)
        if float(torch.trace(left)) < 0:  # R ⊗ S = (−R) ⊗ (−S): the sign with tr R ≥ 0
            left, right = -left, -right
        terms.append((left, right))
    tail = float(sig[r:].square().sum().sqrt()) if sig.numel() > r else 0.0
    return Combined(terms, sig[:r].tolist(), tail)


class FisherEMA:
    """One layer's averaged Fisher in rearranged low-rank form (``keep`` = K terms).

    ``fold(a, g, rho)`` folds one minibatch in (the first call initialises the average);
    ``terms`` are the kept terms, descending; ``truncation`` lists ‖E_t‖_F per fold. With
    ``centered`` (KFAC-corrected) it also holds A_ema, G_ema and the best Kronecker product of
    the residual ``correction`` (see the module docstring).
    """

    def __init__(self, keep: int, *, centered: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"keep must be ≥ 1 term, got {keep}")
        self.keep = keep
        self.centered = centered
        self.terms: Terms = []
        self.dims: tuple[int, int] | None = None  # (da, dg), set by the first fold
        self.folds = 0
        self.truncation: list[float] = []
        self.kfac: tuple[torch.Tensor, torch.Tensor] | None = None
        self.correction: Terms = []

    def fold(self, a: torch.Tensor, g: torch.Tensor, rho: float) -> None:
        """Fold one minibatch (a (m, da), g (m, dg)) in with decay ``rho``."""
        if a.ndim == 3:
            a, g = check_layer_batch(a, g)  # T = 1 is squeezed to the one-position form
        if a.ndim == 3:
            # ℛ(F_t) of T > 1 positions has up to m·T² columns: no (K + m)-sized Gram route
            raise ValueError(
                f"ema_mode='fisher' averages layers with one position per sample; this batch has "
                f"T = {a.shape[1]} positions (a convolution or a sequence layer) — use "
                "ema_mode='factors' or 'window' for it"
            )
        first = self.folds == 0
        self.dims = (a.shape[1], g.shape[1])
        rho = 0.0 if first else rho
        weights = [rho] * len(self.terms)
        out = combined_terms(self.terms, weights, a, g, 1.0 - rho, self.keep)
        if self.centered:
            m = a.shape[0]
            a_t, g_t = a.T @ a / m, g.T @ g / m
            if self.kfac is None:  # the first fold
                self.kfac = (a_t, g_t)
            else:
                fa, fg = self.kfac
                self.kfac = (rho * fa + (1.0 - rho) * a_t, rho * fg + (1.0 - rho) * g_t)
            # the residual of the (untruncated) M_t after the KFAC term of F_ema
            resid = combined_terms(
                [*self.terms, self.kfac], [*weights, -1.0], a, g, 1.0 - rho, 1
            )  # fmt: skip
            self.correction = resid.terms
        self.terms = out.terms
        self.folds += 1
        self.truncation.append(out.truncated)
