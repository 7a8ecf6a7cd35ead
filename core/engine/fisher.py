"""The exact Fisher block of a layer and the metrics that compare approximations with it.

``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ) = (1/m) JᵀJ`` with rows ``J_i = ā_i ⊗ g_i`` (the
per-sample gradients in column-major vec(W) order). Everything here except
:func:`exact_fisher` works without forming F, through the m × m Gram matrices
``ĀĀᵀ`` and ``ΓΓᵀ`` (all in float64: errors are differences of squares):

* ``‖F‖²_F = (1/m²) Σ_ij (ā_iᵀā_j)² (g_iᵀg_j)²``;
* ``JJᵀ = (ĀĀᵀ)∘(ΓΓᵀ)``, so the nonzero eigenvalues of F are those of ``(1/m) JJᵀ``;
* Woodbury: ``(F + λI)⁻¹ v = (v − Jᵀ(mλI + JJᵀ)⁻¹ J v) / λ`` with ``(J vec V)_i = g_iᵀ V ā_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .approx import DENSE_SPECTRUM_LIMIT, Approximation
from .validation import check_damping, check_dense_size, check_gradient_matrix, check_layer_batch


def exact_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The dense Fisher block (1/m) Σ_i kron(ā_i ā_iᵀ, g_i g_iᵀ), shape (da·dg, da·dg).

    Refused with :class:`~core.engine.validation.DenseTooLargeError` above the memory limit.
    """
    a, g = check_layer_batch(a, g)
    m, da = a.shape
    dg = g.shape[1]
    check_dense_size(da * dg, a.dtype, "Fisher block", "relative_error / eigvals / LayerFisher")
    jac = (a[:, :, None] * g[:, None, :]).reshape(m, da * dg)
    return jac.T @ jac / m


class LayerFisher:
    """One layer batch's Fisher block, held implicitly; caches its Gram matrices.

    Build it once per captured batch and evaluate every approximation against it.
    """

    def __init__(self, a: torch.Tensor, g: torch.Tensor) -> None:
        a, g = check_layer_batch(a, g)
        self.a = a.to(torch.float64)
        self.g = g.to(torch.float64)
        self.m, self.da = a.shape
        self.dg = g.shape[1]

    @cached_property
    def gram(self) -> torch.Tensor:
        """JJᵀ = (ĀĀᵀ)∘(ΓΓᵀ), m × m."""
        return (self.a @ self.a.T) * (self.g @ self.g.T)

    @cached_property
    def frobenius_sq(self) -> float:
        return float((self.gram**2).sum()) / self.m**2

    @cached_property
    def eigvals(self) -> torch.Tensor:
        """Nonzero eigenvalues of F, descending (from the m × m Gram matrix)."""
        lam = torch.linalg.eigvalsh(self.gram / self.m).flip(0)
        cutoff = max(self.m, self.da * self.dg) * torch.finfo(torch.float64).eps * lam[0]
        return lam[lam > cutoff]

    def relative_error(self, approx: Approximation) -> float:
        """‖F − F̃‖_F / ‖F‖_F from ‖F‖² − 2⟨F, F̃⟩ + ‖F̃‖² (floor about 1e-8)."""
        self._check_shape(approx)
        sq = self.frobenius_sq - 2.0 * approx.inner_fisher(self.a, self.g) + approx.frobenius_sq()
        return max(sq, 0.0) ** 0.5 / self.frobenius_sq**0.5

    def spectrum_error(self, approx: Approximation) -> tuple[float, bool]:
        """‖λ(F) − λ(F̃)‖₂ / ‖λ(F)‖₂, eigenvalues sorted descending and zero-padded.

        Returns (error, exact). Exact whenever F̃'s whole spectrum is available (one Kronecker
        product, EKFAC, or a sum with n ≤ DENSE_SPECTRUM_LIMIT); otherwise both spectra are
        truncated to the top min(m, 64, n − 1) eigenvalues and ``exact`` is False.
        """
        self._check_shape(approx)
        lam = self.eigvals
        n = self.da * self.dg
        many_terms = len(getattr(approx, "terms", ())) > 1
        if many_terms and n > DENSE_SPECTRUM_LIMIT:
            k = min(self.m, 64, n - 1)  # Lanczos (ARPACK) finds at most n − 1 eigenvalues
            lam_t = approx.eigvals(k).to(torch.float64)
            lam = _pad(lam, k)[:k]
            return float(torch.linalg.norm(lam - lam_t) / torch.linalg.norm(lam)), False
        lam_t = approx.eigvals().to(torch.float64)
        diff = _pad(lam, n) - _pad(lam_t, n)
        return float(torch.linalg.norm(diff) / torch.linalg.norm(lam)), True

    def mean_gradient(self) -> torch.Tensor:
        """(1/m) Σ g_i ā_iᵀ, the batch gradient of the weights (dg, da)."""
        return self.g.T @ self.a / self.m

    def natural_gradient(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        """(F + λI)⁻¹ vec(V) exactly, by Woodbury on the m × m Gram matrix."""
        damping = check_damping(damping)
        v = check_gradient_matrix(v, self.da, self.dg).to(torch.float64)
        jv = ((self.g @ v) * self.a).sum(1)  # (J vec V)_i = g_iᵀ V ā_i
        eye = torch.eye(self.m, dtype=torch.float64, device=self.a.device)
        system = self.gram + self.m * damping * eye
        y = torch.linalg.solve(system, jv)
        return (v - self.g.T @ (y[:, None] * self.a)) / damping

    def natural_gradient_agreement(
        self, approx: Approximation, damping: float, v: torch.Tensor | None = None
    ) -> NaturalGradientAgreement:
        """Compare x = (F + λI)⁻¹∇ with x̃ = (F̃ + λI)⁻¹∇ (exact damping on both sides).

        ``v`` defaults to the batch gradient :meth:`mean_gradient`.
        """
        self._check_shape(approx)
        v = self.mean_gradient() if v is None else v
        x = self.natural_gradient(v, damping)
        dtype = approx._dtype()
        x_t = approx.solve(v.to(dtype), damping, mode="exact").to(torch.float64)
        nx, nt = torch.linalg.norm(x), torch.linalg.norm(x_t)
        cosine = float((x * x_t).sum() / (nx * nt).clamp_min(1e-300))
        return NaturalGradientAgreement(
            cosine=cosine,
            norm_ratio=float(nt / nx.clamp_min(1e-300)),
            relative_difference=float(torch.linalg.norm(x_t - x) / nx.clamp_min(1e-300)),
        )

    def _check_shape(self, approx: Approximation) -> None:
        if (approx.da, approx.dg) != (self.da, self.dg):
            raise ValueError(
                f"approximation is for a ({approx.da}, {approx.dg}) layer, but this Fisher "
                f"block is for (da, dg) = ({self.da}, {self.dg})"
            )


@dataclass(frozen=True)
class NaturalGradientAgreement:
    """cos∠(x, x̃), ‖x̃‖/‖x‖ and ‖x̃ − x‖/‖x‖ for exact and approximate natural gradients."""

    cosine: float
    norm_ratio: float
    relative_difference: float


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(max(n - x.numel(), 0))])


def relative_error(a: torch.Tensor, g: torch.Tensor, approx: Approximation) -> float:
    """‖F − F̃‖_F / ‖F‖_F, computed exactly in float64 without forming F."""
    return LayerFisher(a, g).relative_error(approx)


def eigvals(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The nonzero eigenvalues of F, descending, without forming F."""
    return LayerFisher(a, g).eigvals


def spectrum_error(a: torch.Tensor, g: torch.Tensor, approx: Approximation) -> float:
    """The seed paper's spectrum error (see :meth:`LayerFisher.spectrum_error`)."""
    return LayerFisher(a, g).spectrum_error(approx)[0]
