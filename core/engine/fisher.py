"""The exact Fisher block of a layer and the metrics that compare approximations with it.

``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ) = (1/m) JᵀJ`` with rows ``J_i = ā_i ⊗ g_i`` (the
per-sample gradients in column-major vec(W) order). Everything here except
:func:`exact_fisher` works without forming F, through the m × m Gram matrices
``ĀĀᵀ`` and ``ΓΓᵀ`` (all in float64: errors are differences of squares):

* ``‖F‖²_F = (1/m²) Σ_ij (ā_iᵀā_j)² (g_iᵀg_j)²``;
* ``JJᵀ = (ĀĀᵀ)∘(ΓΓᵀ)``, so the nonzero eigenvalues of F are those of ``(1/m) JJᵀ``;
* Woodbury: ``(F + λI)⁻¹ v = (v − Jᵀ(mλI + JJᵀ)⁻¹ J v) / λ`` with ``(J vec V)_i = g_iᵀ V ā_i``.

A weight-sharing layer (T > 1 positions per sample: ``a`` (m, T, da), ``g`` (m, T, dg)) has
per-sample gradients D_n = Γ_nᵀ A_n of any rank, F = (1/m) JᵀJ with rows J_n = vec(D_n), and
the same formulas with the Gram ``JJᵀ = [⟨D_i, D_j⟩]``, ``(J vec V)_n = ⟨D_n, V⟩`` and
``Jᵀ y = Σ_n y_n D_n``; :class:`LayerFisher` then holds D (m × dg × da, float64; refused above
the dense memory limit with a message saying so), :mod:`core.engine.shared_batch`.

:class:`LayerFisher` is the exact block behind the same :class:`~core.engine.approx.Approximation`
interface as every approximation (method ``"exact"`` in the registry), so an optimizer, a view
or a metric treats it like any other block; it is also the reference the metrics compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .approx import Approximation
from .inverses import DampedInverse, SafeguardStats, WoodburyInverse
from .shared_batch import SharedBatch, check_gradients_size, per_sample_gradients
from .validation import check_dense_size, check_gradient_matrix, check_layer_batch


def exact_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The dense Fisher block (1/m) Σ_i kron(ā_i ā_iᵀ, g_i g_iᵀ), shape (da·dg, da·dg); on T > 1
    positions (1/m) Σ_n vec(D_n) vec(D_n)ᵀ.

    Refused with :class:`~core.engine.validation.DenseTooLargeError` above the memory limit.
    """
    a, g = check_layer_batch(a, g)
    m, da, dg = a.shape[0], a.shape[-1], g.shape[-1]
    check_dense_size(da * dg, a.dtype, "Fisher block", "relative_error / eigvals / LayerFisher")
    if a.ndim == 3:
        jac = per_sample_gradients(a, g).transpose(1, 2).reshape(m, da * dg)
    else:
        jac = (a[:, :, None] * g[:, None, :]).reshape(m, da * dg)
    return jac.T @ jac / m


def build_exact(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> LayerFisher:
    """The registry's builder for ``"exact"``: the block itself, held implicitly."""
    return LayerFisher(a, g)


class LayerFisher(Approximation):
    """One layer batch's exact Fisher block F, held implicitly as its float64 samples (ā, g)
    (on T > 1 positions: (a, g) of shapes (m, T, ·) and their per-sample gradients D).

    Build it once per captured batch and evaluate every approximation against it; as an
    :class:`~core.engine.approx.Approximation` it answers the same verbs (the damped solve by
    Woodbury, exact in both damping modes). Its m × m Gram matrix is computed once, on first use.
    """

    method = "exact"

    def __init__(self, a: torch.Tensor, g: torch.Tensor) -> None:
        a, g = check_layer_batch(a, g)
        self.a = a.to(torch.float64)
        self.g = g.to(torch.float64)
        self.m, self.da, self.dg = a.shape[0], a.shape[-1], g.shape[-1]
        self.shared = SharedBatch(self.a, self.g) if a.ndim == 3 else None
        if self.shared is not None:  # D is formed on first use; refuse a batch too large now
            check_gradients_size(self.m, self.da, self.dg, torch.float64)
        self.info: dict[str, Any] = {}
        self.safeguard = SafeguardStats()  # F is PSD: the safeguard never engages
        self._cache: dict[str, Any] = {}  # "gram", "fro", "eig"
        self._inverses = {}

    @property
    def n_terms(self) -> None:
        return None  # m rank-one products, not a few Kronecker terms

    @property
    def full_spectrum(self) -> bool:
        return True  # every nonzero eigenvalue, from the m × m Gram matrix

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return self.a.device

    def to(self, device: torch.device | str) -> LayerFisher:
        return (
            self
            if torch.device(device) == self.device
            else LayerFisher(self.a.to(device), self.g.to(device))
        )

    @property
    def positions(self) -> int:
        """T, the positions per sample (1: a plain layer)."""
        return 1 if self.shared is None else self.shared.t

    def _jv(self, v: torch.Tensor) -> torch.Tensor:
        """J vec(V): (g_iᵀ V ā_i)_i, or (⟨D_n, V⟩)_n on T > 1 positions."""
        if self.shared is not None:
            return self.shared.jv(v)
        return ((self.g @ v) * self.a).sum(1)

    def _jt(self, y: torch.Tensor) -> torch.Tensor:
        """Jᵀ y as a (dg, da) matrix: Σ_i y_i g_i ā_iᵀ, or Σ_n y_n D_n."""
        if self.shared is not None:
            return self.shared.jt(y)
        return self.g.T @ (y[:, None] * self.a)

    @property
    def gram(self) -> torch.Tensor:
        """JJᵀ = (ĀĀᵀ)∘(ΓΓᵀ), m × m; [⟨D_i, D_j⟩] on T > 1 positions."""
        if "gram" not in self._cache:
            self._cache["gram"] = (
                self.shared.gram()
                if self.shared is not None
                else (self.a @ self.a.T) * (self.g @ self.g.T)
            )
        gram: torch.Tensor = self._cache["gram"]
        return gram

    def frobenius_sq(self) -> float:
        """‖F‖²_F = (1/m²) Σ_ij (ā_iᵀā_j)² (g_iᵀg_j)²."""
        if "fro" not in self._cache:
            self._cache["fro"] = float((self.gram**2).sum()) / self.m**2
        fro: float = self._cache["fro"]
        return fro

    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, F'⟩ with F' the Fisher of the batch (a, g):
        (1/(m m')) Σ_ij (ā_iᵀā'_j)² (g_iᵀg'_j)², in general (1/(m m')) Σ_ij ⟨D_i, D'_j⟩²."""
        a, g = check_layer_batch(a.to(torch.float64), g.to(torch.float64))
        if self.shared is None and a.ndim == 2:
            cross = (self.a @ a.T) * (self.g @ g.T)
        else:
            mine = per_sample_gradients(self.a, self.g).reshape(self.m, -1)
            cross = mine @ per_sample_gradients(a, g).reshape(a.shape[0], -1).T
        return float((cross**2).sum()) / (self.m * a.shape[0])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F vec(V) = (1/m) Σ_i (g_iᵀ V ā_i) g_i ā_iᵀ, as a (dg, da) matrix."""
        v = check_gradient_matrix(v, self.da, self.dg).to(torch.float64)
        return self._jt(self._jv(v)) / self.m

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        """The nonzero eigenvalues of F, descending (those of JJᵀ/m; the other n − m are 0)."""
        if "eig" not in self._cache:
            lam = torch.linalg.eigvalsh(self.gram / self.m).flip(0)
            cutoff = max(self.m, self.n) * torch.finfo(torch.float64).eps * lam[0]
            self._cache["eig"] = lam[lam > cutoff]
        kept: torch.Tensor = self._cache["eig"]
        return kept if k is None else kept[:k]

    def _form_inverse(self, damping: float, mode: str) -> DampedInverse:
        """(F + λI)⁻¹ by Woodbury on the m × m Gram matrix (both modes: F is exact)."""
        return WoodburyInverse(self._jv, self._jt, gram=self.gram, damping=damping)

    def to_dense(self) -> torch.Tensor:
        return exact_fisher(self.a, self.g)

    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """``(P_a ⊗ P_g) F (P_a ⊗ P_g)ᵀ`` = the Fisher of the pooled batch (ā P_aᵀ, g P_gᵀ)."""
        return exact_fisher(self.a @ pa.T, self.g @ pg.T)

    def relative_error(self, approx: Approximation) -> float:
        """‖F − F̃‖_F / ‖F‖_F from ‖F‖² − 2⟨F, F̃⟩ + ‖F̃‖² (floor about 1e-8)."""
        self._check_shape(approx)
        fro = self.frobenius_sq()
        sq = fro - 2.0 * approx.inner_fisher(self.a, self.g) + approx.frobenius_sq()
        return float(max(sq, 0.0) ** 0.5 / fro**0.5)

    def spectrum_error(self, approx: Approximation) -> tuple[float, bool]:
        """‖λ(F) − λ(F̃)‖₂ / ‖λ(F)‖₂, eigenvalues sorted descending and zero-padded.

        Returns (error, exact). Exact whenever F̃'s whole spectrum is cheap
        (:attr:`~core.engine.approx.Approximation.full_spectrum`); otherwise both spectra are
        truncated to the top min(m, 64, n − 1) eigenvalues and ``exact`` is False.
        """
        self._check_shape(approx)
        lam = self.eigvals()
        n = self.n
        if not approx.full_spectrum:
            k = min(self.m, 64, n - 1)  # Lanczos (ARPACK) finds at most n − 1 eigenvalues
            lam_t = approx.eigvals(k).to(torch.float64)
            lam = _pad(lam, k)[:k]
            return float(torch.linalg.norm(lam - lam_t) / torch.linalg.norm(lam)), False
        lam_t = approx.eigvals().to(torch.float64)
        diff = _pad(lam, n) - _pad(lam_t, n)
        return float(torch.linalg.norm(diff) / torch.linalg.norm(lam)), True

    def mean_gradient(self) -> torch.Tensor:
        """(1/m) Σ g_i ā_iᵀ (in general (1/m) Σ_n D_n), the batch gradient of W (dg, da)."""
        if self.shared is not None:
            return self.shared.mean_gradient()
        return self.g.T @ self.a / self.m

    def natural_gradient_agreement(
        self,
        approx: Approximation,
        damping: float,
        v: torch.Tensor | None = None,
        *,
        mode: str = "exact",
    ) -> NaturalGradientAgreement:
        """Compare x = (F + λI)⁻¹∇ (exact damping) with x̃ = the approximation's damped inverse
        applied to ∇ in ``mode`` (``"exact"``: (F̃ + λI)⁻¹∇; ``"factored"``: the optimizers'
        solve, :mod:`core.engine.approx`).

        ``v`` defaults to the batch gradient :meth:`mean_gradient`.
        """
        self._check_shape(approx)
        v = self.mean_gradient() if v is None else v
        x = self.solve(v, damping)
        x_t = approx.solve(v.to(approx.dtype), damping, mode=mode).to(torch.float64)
        return NaturalGradientAgreement.of(x, x_t)

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

    @classmethod
    def of(cls, x: torch.Tensor, x_t: torch.Tensor) -> NaturalGradientAgreement:
        """The three numbers for the exact direction ``x`` and an approximate one ``x_t``."""
        x, x_t = x.to(torch.float64), x_t.to(torch.float64)
        nx, nt = torch.linalg.norm(x), torch.linalg.norm(x_t)
        return cls(
            cosine=float((x * x_t).sum() / (nx * nt).clamp_min(1e-300)),
            norm_ratio=float(nt / nx.clamp_min(1e-300)),
            relative_difference=float(torch.linalg.norm(x_t - x) / nx.clamp_min(1e-300)),
        )


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(max(n - x.numel(), 0))])


def relative_error(a: torch.Tensor, g: torch.Tensor, approx: Approximation) -> float:
    """‖F − F̃‖_F / ‖F‖_F, computed exactly in float64 without forming F."""
    return LayerFisher(a, g).relative_error(approx)


def eigvals(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The nonzero eigenvalues of F, descending, without forming F."""
    return LayerFisher(a, g).eigvals()


def spectrum_error(a: torch.Tensor, g: torch.Tensor, approx: Approximation) -> float:
    """The seed paper's spectrum error (see :meth:`LayerFisher.spectrum_error`)."""
    return LayerFisher(a, g).spectrum_error(approx)[0]
