"""Eva's Kronecker-vectorized approximation and its Sherman–Morrison damped inverse.

Eva (Zhang, Shi & Li, "Eva: practical second-order optimization with Kronecker-vectorized
approximation", ICLR 2023) replaces KFAC's factors A = E[ā āᵀ] and G = E[g gᵀ] by the outer
products of the batch-mean vectors (the "Kronecker vectors"):

    F̃ = (ā āᵀ) ⊗ (ḡ ḡᵀ) = u uᵀ,   u = ā ⊗ ḡ = vec(ḡ āᵀ),
    ā = (1/m) Σ_i ā_i,   ḡ = (1/m) Σ_i g_i,

with ā_i the layer inputs (bias column included) and g_i the per-sample output gradients, so
F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ) is the exact block. F̃ has rank one; āāᵀ ⪯ A and ḡḡᵀ ⪯ G
(the differences are covariances). For a weight-sharing batch, a (m, T, da) and g (m, T, dg),
the vectors are the means of KFAC-reduce's per-sample â_n = mean_t a_{n,t} and ĝ_n = Σ_t γ_{n,t}
(equal to the above at T = 1).

Damping (both modes): Tikhonov damping of the whole product, as the paper's update, inverted by
Sherman–Morrison in O(n) per solve and O(da + dg) to form, with no eigendecomposition:

    (F̃ + λI)⁻¹ vec(V) = vec( (V − c ḡ āᵀ) / λ ),   c = (ḡᵀ V ā) / (λ + ‖ā‖² ‖ḡ‖²).

(Martens–Grosse factored damping would leave ā ⊗ x and x ⊗ ḡ directions half-damped; the rank-one
form is what the paper preconditions with.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .approx import Approximation
from .inverses import DampedInverse, SafeguardStats
from .validation import check_dense_size

__all__ = ["KroneckerVectors", "ShermanMorrisonInverse", "batch_mean_vectors", "build_eva"]


def _per_sample(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, T, d) views of a layer batch (T = 1 for the (m, d) form)."""
    return (a[:, None, :], g[:, None, :]) if a.ndim == 2 else (a, g)


def batch_mean_vectors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eva's Kronecker vectors (ā, ḡ): ā = (1/m) Σ_n mean_t a_{n,t}, ḡ = (1/m) Σ_n Σ_t γ_{n,t}
    (for a (m, d) batch the plain batch means)."""
    a3, g3 = _per_sample(a, g)
    return a3.mean(dim=(0, 1)), g3.sum(1).mean(0)


@dataclass(eq=False)
class ShermanMorrisonInverse(DampedInverse):
    """``(u uᵀ + λI)⁻¹`` with u = ā ⊗ ḡ, applied as ``(V − c ḡ āᵀ) / λ`` (module docstring)."""

    a_mean: torch.Tensor
    g_mean: torch.Tensor
    damping: float

    def __post_init__(self) -> None:
        norm_sq = float((self.a_mean.to(torch.float64) ** 2).sum()) * float(
            (self.g_mean.to(torch.float64) ** 2).sum()
        )
        self._denominator = self.damping + norm_sq  # λ + ‖u‖²

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        a, g = self.a_mean.to(v.dtype), self.g_mean.to(v.dtype)
        c = (g @ v @ a) / self._denominator
        return (v - c * torch.outer(g, a)) / self.damping


@dataclass(eq=False)
class KroneckerVectors(Approximation):
    """F̃ = (ā āᵀ) ⊗ (ḡ ḡᵀ), held as the two vectors ā (da,) and ḡ (dg,)."""

    method: str
    a_mean: torch.Tensor
    g_mean: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    safeguard: SafeguardStats = field(default_factory=SafeguardStats)  # never engages: F̃ ⪰ 0

    def __post_init__(self) -> None:
        self.da = self.a_mean.shape[0]
        self.dg = self.g_mean.shape[0]
        self._inverses = {}

    @property
    def n_terms(self) -> int:
        return 1

    @property
    def full_spectrum(self) -> bool:
        return True  # ‖ā‖²‖ḡ‖² and n − 1 zeros

    @property
    def dtype(self) -> torch.dtype:
        return self.a_mean.dtype

    @property
    def device(self) -> torch.device:
        return self.a_mean.device

    def to(self, device: torch.device | str) -> KroneckerVectors:
        if torch.device(device) == self.device:
            return self
        return KroneckerVectors(
            self.method,
            self.a_mean.to(device),
            self.g_mean.to(device),
            info=self.info,
            safeguard=self.safeguard,
        )

    @property
    def norm_sq(self) -> float:
        """‖u‖² = ‖ā‖² ‖ḡ‖², the one nonzero eigenvalue, in float64."""
        a, g = self.a_mean.to(torch.float64), self.g_mean.to(torch.float64)
        return float((a @ a) * (g @ g))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """(ḡᵀ V ā) ḡ āᵀ."""
        return (self.g_mean @ v @ self.a_mean) * torch.outer(self.g_mean, self.a_mean)

    def frobenius_sq(self) -> float:
        return self.norm_sq**2

    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, u uᵀ⟩ = (1/m) Σ_n (ḡᵀ D_n ā)², D_n = Σ_t γ_{n,t} a_{n,t}ᵀ the per-sample
        gradient (T = 1: (1/m) Σ_i (āᵀā_i)² (ḡᵀg_i)²)."""
        a3, g3 = _per_sample(a.to(torch.float64), g.to(torch.float64))
        qa = a3 @ self.a_mean.to(torch.float64)  # (m, T)
        qg = g3 @ self.g_mean.to(torch.float64)
        return float(((qa * qg).sum(1) ** 2).mean())

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        lam = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        lam[0] = self.norm_sq
        return lam if k is None else lam[:k]

    def _form_inverse(self, damping: float, mode: str) -> DampedInverse:
        """Sherman–Morrison, the same in both modes (module docstring)."""
        return ShermanMorrisonInverse(self.a_mean, self.g_mean, damping)

    def to_dense(self) -> torch.Tensor:
        check_dense_size(self.n, self.dtype, f"{self.method} approximation", "matvec/solve")
        u = torch.kron(self.a_mean, self.g_mean)
        return torch.outer(u, u)

    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """(P_a ā ⊗ P_g ḡ)(P_a ā ⊗ P_g ḡ)ᵀ."""
        u = torch.kron(pa @ self.a_mean.to(torch.float64), pg @ self.g_mean.to(torch.float64))
        return torch.outer(u, u)

    def factor_matrices(self) -> list[tuple[str, torch.Tensor]]:
        return [
            ("input", torch.outer(self.a_mean, self.a_mean)),
            ("output", torch.outer(self.g_mean, self.g_mean)),
        ]


def build_eva(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> Approximation:
    """The registry's builder for ``"eva"``: the Kronecker vectors of the batch."""
    return KroneckerVectors(method, *batch_mean_vectors(a, g))
