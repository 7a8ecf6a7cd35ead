"""Kronecker-factored approximations of one layer's Fisher block, behind one interface.

Every approximation F̃ of ``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)`` (a weight-sharing layer's
``F = (1/m) Σ_n vec(D_n) vec(D_n)ᵀ`` with D_n = Γ_nᵀ A_n over its T positions:
:mod:`core.engine.shared_batch`) offers the same verbs:
``to_dense()``, ``matvec(V)``, ``solve(V, damping)``, ``eigvals()``, and the two scalars the
matrix-free metrics need, ``frobenius_sq()`` = ‖F̃‖²_F and ``inner_fisher(a, g)`` = ⟨F, F̃⟩.

Methods (built by name with :func:`core.engine.methods.approximate`; each is one entry in the
registry, :mod:`core.engine.methods`, that names its builder below):

* ``kfac`` — A ⊗ G with A = ĀᵀĀ/m, G = ΓᵀΓ/m (Martens & Grosse 2015); on T > 1 positions
  KFAC-expand, A = (1/(mT)) Σ_{n,t} a aᵀ, G = (1/m) Σ_{n,t} γ γᵀ (KFC, Grosse & Martens 2016;
  Eschenhagen et al. 2023).
* ``kfac_reduce`` — KFAC-reduce (Eschenhagen et al. 2023): KFAC of â_n = mean_t a_{n,t} and
  ĝ_n = Σ_t γ_{n,t}; equal to ``kfac`` at T = 1.
* ``kpsvd`` — the best sum of ``rank`` Kronecker products: the rank-r truncated SVD of ℛ(F)
  (Van Loan & Pitsianis 1993); rank 1 is the seed paper's KPSVD (Koroko et al. 2022).
* ``deflation`` — the best two terms, the second by power SVD on the deflated ℛ(F) when
  ``solver="matrix_free"`` (the seed paper's Deflation).
* ``lanczos`` — the same two terms, by Golub–Kahan–Lanczos bidiagonalisation of ℛ(F).
* ``kfac_corrected`` — A⊗G + R⊗S with R⊗S the best Kronecker product of F − A⊗G.
* ``ekfac`` — KFAC's eigenbasis U_A ⊗ U_G with the best diagonal in it,
  s_pi = (1/m) Σ_i (u_Gpᵀ g_i)² (u_Aiᵀ ā_i)² (George et al. 2018); on T > 1 positions the
  eigenbasis of KFAC-expand's factors and s = (1/m) Σ_n (U_Gᵀ D_n U_A)^∘2.
* ``shampoo`` — c · L ⊗ R with L = (1/m) Σ ‖g_i‖² ā_i ā_iᵀ, R = (1/m) Σ ‖ā_i‖² g_i g_iᵀ and
  c the Frobenius-optimal scalar (Gupta et al. 2018; Morwani et al. 2024); in general
  L = (1/m) Σ D_nᵀ D_n, R = (1/m) Σ D_n D_nᵀ (the same at T = 1, where D_n = g_n ā_nᵀ).

The KPSVD family (kpsvd, deflation, lanczos, kfac_corrected) takes ``solver="gram"`` (default,
see :mod:`core.engine.rearranged_svd`) or ``solver="matrix_free"`` (the seed paper's algorithms).
On T > 1 positions the Gram route does not exist (ℛ(F) is no longer (1/m) P Qᵀ with m columns),
so ``solver="gram"`` runs matrix-free Lanczos and ``info["solver"]`` says so; and the family
returns the best sum of Kronecker products of *symmetric* matrices (the truncated SVD of ℛ(F) on
symmetric matrices: :mod:`core.engine.rearranged_svd`).

Damping. ``inverse(λ, mode=...)`` is the damped inverse, an object formed once per damping and
mode and kept with the approximation (:mod:`core.engine.inverses`); ``solve(V, λ, mode=...)``
applies it:

* ``mode="exact"`` — ``(F̃ + λI)⁻¹ vec(V)``: closed form for one Kronecker product and for
  EKFAC; for sums of several products, a dense eigendecomposition for small blocks and
  preconditioned MINRES for large ones.
* ``mode="factored"`` (what the optimizers use) — the first term gets Martens–Grosse factored
  damping ``(R₁ + π√λ I) ⊗ (S₁ + √λ/π I)``; a second term is added undamped and the sum is
  inverted in closed form through the generalized eigenproblems R₂x = μR₁x, S₂y = νS₁y:
  ``(·)⁻¹ vec(V) = vec(E_S [(E_Sᵀ V E_R) ⊘ (1 + ν μᵀ)] E_Rᵀ)``.

A solve runs in V's dtype: the decompositions behind it are computed once in the factors'
dtype and rounded once to V's dtype when that differs (the optimizers' float32 route,
:mod:`core.engine.precision`). The exact block answers in float64.

Indefiniteness safeguard. The second term of a two-term sum is indefinite, and so can be the
sum (the engine tests build such a batch). In the factored solve the sum is congruent
to ``diag(1 + μ_i ν_p)``; entries below ``psd_floor`` (default 0.1) are raised to it, i.e. the
correction may cancel at most 90% of the damped first term along any generalized eigendirection.
In the exact dense solve, eigenvalues of F̃ below 0 are raised to 0 (projection onto the PSD
cone) before adding λ. Every engagement is counted in ``approx.safeguard``.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property, reduce
from typing import Any

import scipy.sparse.linalg as sla
import torch

from .inverses import (
    DampedInverse,
    DenseEigInverse,
    EigenbasisInverse,
    InverseKey,
    KronEigInverse,
    MinresInverse,
    PerDtype,
    SafeguardStats,
    TwoTermFactoredInverse,
    kron_sum_operator,
)
from .kron import KronEig, kron_matvec, sum_frobenius_sq, sym, vec
from .rearranged_svd import RearrangedFisher, Triplets
from .shared_batch import (
    SharedBatch,
    kfac_expand_factors,
    kfac_reduce_batch,
    per_sample_gradients,
)
from .sum_spectrum import RESIDUAL_TOLERANCE, ProjectedSum, project_sum
from .validation import (
    check_damping,
    check_dense_size,
    check_gradient_matrix,
    check_layer_batch,
)

SOLVE_MODES = ("exact", "factored")
# Sums of ≥ 2 products: up to DENSE_EIG_LIMIT the dense eigendecomposition (vectors too) serves
# both the spectrum and the exact damped solve; above, one dense eigvalsh of order up to
# DENSE_SPECTRUM_LIMIT (of the sum compressed onto its factors' ranges, or of the sum) gives
# the whole spectrum (much faster than Lanczos there); beyond, Lanczos gives the top k.
DENSE_EIG_LIMIT = 2048
DENSE_SPECTRUM_LIMIT = 4096


class Approximation(ABC):
    """One approximation F̃ of a layer's Fisher block, in vec(W) order, W of shape (dg, da).

    Callers use these verbs and properties only, never the concrete class: the exact block
    (:class:`core.engine.fisher.LayerFisher`) answers them too.
    """

    method: str
    da: int
    dg: int
    info: dict[str, Any]
    safeguard: SafeguardStats
    _inverses: dict[InverseKey, DampedInverse]  # every subclass starts it empty

    @property
    def n(self) -> int:
        return self.da * self.dg

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle holds (the server's worker processes send results and arguments by
        pickle): the approximation and its cheap caches, without its damped inverses and
        dense eigendecomposition, n² numbers each (a two-term result at n = 528 pickled to
        2.3 MB with them, 49 kB without), which whoever solves next forms again."""
        state = self.__dict__.copy()
        state["_inverses"] = {}
        state.pop("_dense_eigh", None)
        return state

    @property
    @abstractmethod
    def n_terms(self) -> int | None:
        """Kronecker products R_k ⊗ S_k in the representation (``None``: not a short sum)."""

    @property
    @abstractmethod
    def full_spectrum(self) -> bool:
        """True when :meth:`eigvals` gives the whole spectrum cheaply; False when only the top
        eigenvalues are affordable (Lanczos on the n × n operator)."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def to(self, device: torch.device | str) -> Approximation:
        """The same approximation with its tensors on ``device`` (``self`` when already there);
        safeguard engagements keep being counted on the original's :class:`SafeguardStats`."""

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F̃ vec(V), returned as a (dg, da) matrix."""

    @abstractmethod
    def frobenius_sq(self) -> float:
        """‖F̃‖²_F in float64, without forming F̃."""

    @abstractmethod
    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, F̃⟩ = tr(F F̃) in float64, without forming F or F̃."""

    @abstractmethod
    def eigvals(self, k: int | None = None) -> torch.Tensor:
        """Eigenvalues of F̃, descending (all of them, or the top ``k``)."""

    def inverse(self, damping: float, *, mode: str = "exact") -> DampedInverse:
        """The damped inverse at ``damping`` (see the module docstring for ``mode``): formed on
        first use, then kept, so the solves at one damping share its decompositions."""
        if mode not in SOLVE_MODES:
            raise ValueError(f"unknown damping mode {mode!r}; choose one of {SOLVE_MODES}")
        key = InverseKey(mode, check_damping(damping))
        inverse = self._inverses.get(key)
        if inverse is None:
            inverse = self._form_inverse(key.damping, mode)
            self._inverses[key] = inverse
        return inverse

    @abstractmethod
    def _form_inverse(self, damping: float, mode: str) -> DampedInverse:
        """A new damped inverse (``mode`` and ``damping`` checked by :meth:`inverse`)."""

    def solve(self, v: torch.Tensor, damping: float, *, mode: str = "exact") -> torch.Tensor:
        """The damped inverse applied to V: ``inverse(damping, mode=mode).apply(V)``."""
        v, damping = self._check(v, damping, mode)
        return self.inverse(damping, mode=mode).apply(v)

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The n × n matrix in vec(W) order (refused above the dense memory limit)."""

    @abstractmethod
    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """``(P_a ⊗ P_g) F̃ (P_a ⊗ P_g)ᵀ`` in float64 without forming F̃, for heatmaps of large
        blocks (``P_a``: (pa_rows, da), ``P_g``: (pg_rows, dg) block-averaging matrices)."""

    def factor_matrices(self) -> list[tuple[str, torch.Tensor]]:
        """The matrices that define F̃, as (side, matrix) with side ``"input"`` (da × da),
        ``"output"`` (dg × dg) or ``"scaling"`` (dg × da); in term order. Default: none."""
        return []

    def _check(self, v: torch.Tensor, damping: float, mode: str) -> tuple[torch.Tensor, float]:
        if mode not in SOLVE_MODES:
            raise ValueError(f"unknown damping mode {mode!r}; choose one of {SOLVE_MODES}")
        return check_gradient_matrix(v, self.da, self.dg), check_damping(damping)


@dataclass(eq=False)
class KroneckerSum(Approximation):
    """F̃ = Σ_k R_k ⊗ S_k with R_k (da × da) and S_k (dg × dg)."""

    method: str
    terms: list[tuple[torch.Tensor, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)
    psd_floor: float = 0.1
    safeguard: SafeguardStats = field(default_factory=SafeguardStats)

    def __post_init__(self) -> None:
        self.da = self.terms[0][0].shape[0]
        self.dg = self.terms[0][1].shape[0]
        self._inverses = {}
        self._spectrum: torch.Tensor | None = None  # all eigenvalues, descending, when cheap
        self._top: dict[int, torch.Tensor] = {}  # k → the top k eigenvalues (Lanczos)

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    @property
    def full_spectrum(self) -> bool:
        if len(self.terms) == 1 or self.n <= DENSE_SPECTRUM_LIMIT:
            return True
        return self._projected is not None and self._projected.size <= DENSE_SPECTRUM_LIMIT

    @property
    def dtype(self) -> torch.dtype:
        return self.terms[0][0].dtype

    @property
    def device(self) -> torch.device:
        return self.terms[0][0].device

    def to(self, device: torch.device | str) -> KroneckerSum:
        if torch.device(device) == self.device:
            return self
        return KroneckerSum(
            self.method,
            [(r.to(device), s.to(device)) for r, s in self.terms],
            info=self.info,
            psd_floor=self.psd_floor,
            safeguard=self.safeguard,
        )

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return reduce(operator.add, (kron_matvec(r, s, v) for r, s in self.terms))

    def to_dense(self) -> torch.Tensor:
        """Σ_k kron(R_k, S_k) (refused above the dense memory limit)."""
        check_dense_size(self.n, self.dtype, f"{self.method} approximation", "matvec/solve")
        return reduce(operator.add, (torch.kron(r, s) for r, s in self.terms))

    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """Σ_k (P_a R_k P_aᵀ) ⊗ (P_g S_k P_gᵀ)."""
        return reduce(
            operator.add,
            (
                torch.kron(pa @ r.to(torch.float64) @ pa.T, pg @ s.to(torch.float64) @ pg.T)
                for r, s in self.terms
            ),
        )

    def factor_matrices(self) -> list[tuple[str, torch.Tensor]]:
        return [(side, m) for r, s in self.terms for side, m in (("input", r), ("output", s))]

    @cached_property
    def _dense_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascending eigenvalues and eigenvectors of the (symmetrised) dense sum, in float64:
        the whole spectrum and every exact damped inverse of a small sum."""
        lam, u = torch.linalg.eigh(sym(self.to_dense().to(torch.float64)))
        self.safeguard.record(int((lam < 0).sum()), lam.numel())
        return lam, u

    def frobenius_sq(self) -> float:
        """‖Σ R_k⊗S_k‖² = Σ_kl ⟨R_k, R_l⟩⟨S_k, S_l⟩."""
        return sum_frobenius_sq(self.terms)

    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, R⊗S⟩ = (1/m) Σ_i (ā_iᵀ R ā_i)(g_iᵀ S g_i); on T > 1 positions
        (1/m) Σ_n tr(D_nᵀ S D_n R) (:meth:`~core.engine.shared_batch.SharedBatch.quadratic`)."""
        a64, g64 = check_layer_batch(a.to(torch.float64), g.to(torch.float64))
        if a64.ndim == 3:
            batch = SharedBatch(a64, g64)
            return sum(
                float(batch.quadratic(r.to(torch.float64), s.to(torch.float64)).mean())
                for r, s in self.terms
            )
        total = 0.0
        for r, s in self.terms:
            qa = ((a64 @ r.to(torch.float64)) * a64).sum(1)
            qg = ((g64 @ s.to(torch.float64)) * g64).sum(1)
            total += float((qa * qg).mean())
        return total

    @cached_property
    def _first_eig(self) -> PerDtype[KronEig]:
        """The eigendecomposition of the first product R₁ ⊗ S₁ (the spectrum and every exact
        damped inverse of a single product)."""
        return PerDtype(KronEig.of(*self.terms[0]))

    @cached_property
    def _projected(self) -> ProjectedSum | None:
        """The sum compressed onto its factors' joint ranges (:mod:`core.engine.sum_spectrum`),
        or None when that projection would move an eigenvalue by more than its tolerance."""
        projected = project_sum(self.terms)
        return projected if projected.residual <= RESIDUAL_TOLERANCE else None

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        """All eigenvalues, descending, when they are cheap: one product (all products
        λ_R,i λ_S,p); a sum with n ≤ DENSE_EIG_LIMIT (dense); a sum whose compression M onto
        its factors' joint ranges has order ≤ DENSE_SPECTRUM_LIMIT (M's eigenvalues and zeros);
        a sum with n ≤ DENSE_SPECTRUM_LIMIT (dense). Otherwise the top ``k`` (default 64) by
        Lanczos, on M when the projection holds. Cached."""
        if self._spectrum is None:
            self._spectrum = self._whole_spectrum()
        if self._spectrum is not None:
            return self._spectrum if k is None else self._spectrum[:k]
        k = min(k or 64, self.n - 1)
        if k not in self._top:
            projected = self._projected
            if projected is None:
                vals = sla.eigsh(
                    kron_sum_operator(self.terms, 0.0), k=k, which="LA", return_eigenvectors=False
                )
                lam = torch.sort(torch.from_numpy(vals), descending=True).values
            else:
                vals = sla.eigsh(
                    kron_sum_operator(projected.terms, 0.0),
                    k=k,
                    which="LA",
                    return_eigenvectors=False,
                )
                lam = projected.with_zeros(torch.from_numpy(vals), k)
            self._top[k] = lam.to(self.device)
        return self._top[k]

    def _whole_spectrum(self) -> torch.Tensor | None:
        """Every eigenvalue, descending, where that is cheap (see :meth:`eigvals`); else None."""
        if len(self.terms) == 1:
            lam = self._first_eig.value.eigvals_grid().reshape(-1)
        elif self.n <= DENSE_EIG_LIMIT:
            lam = self._dense_eigh[0]
        elif self._projected is not None and self._projected.size <= DENSE_SPECTRUM_LIMIT:
            lam = self._projected.with_zeros(torch.linalg.eigvalsh(self._projected.dense()))
        elif self.n <= DENSE_SPECTRUM_LIMIT:
            lam = torch.linalg.eigvalsh(sym(self.to_dense().to(torch.float64)))
        else:
            return None
        return torch.sort(lam, descending=True).values.to(self.device)

    def _form_inverse(self, damping: float, mode: str) -> DampedInverse:
        if len(self.terms) == 1:
            if mode == "exact":
                return KronEigInverse(self._first_eig, damping)
            return KronEigInverse.of_factored(*self.terms[0], damping)
        if mode == "factored":
            if len(self.terms) != 2:
                raise ValueError(
                    f"factored damping is defined for one or two Kronecker terms; this "
                    f"approximation has {len(self.terms)} — use mode='exact'"
                )
            # Keep one two-term factored inverse at a time: each holds two dense eigenbases.
            self._inverses = {k: inv for k, inv in self._inverses.items() if k.mode != mode}
            return TwoTermFactoredInverse(
                self.terms, damping, psd_floor=self.psd_floor, safeguard=self.safeguard
            )
        if self.n <= DENSE_EIG_LIMIT:
            return DenseEigInverse(*self._dense_eigh, damping)
        return MinresInverse(self.terms, damping=damping, info=self.info)


@dataclass(eq=False)
class EigenbasisDiagonal(Approximation):
    """EKFAC: F̃ = (U_A ⊗ U_G) diag(vec(s)) (U_A ⊗ U_G)ᵀ with s of shape (dg, da)."""

    method: str
    _: KW_ONLY
    u_a: torch.Tensor
    u_g: torch.Tensor
    scale: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    safeguard: SafeguardStats = field(default_factory=SafeguardStats)

    def __post_init__(self) -> None:
        self.da = self.u_a.shape[0]
        self.dg = self.u_g.shape[0]
        self._inverses = {}
        self._basis = PerDtype((self.u_a, self.u_g, self.scale))  # shared by every inverse

    @property
    def n_terms(self) -> None:
        return None  # a diagonal in a Kronecker eigenbasis: da·dg rank-one products

    @property
    def full_spectrum(self) -> bool:
        return True  # the diagonal is the spectrum

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def to(self, device: torch.device | str) -> EigenbasisDiagonal:
        if torch.device(device) == self.device:
            return self
        return EigenbasisDiagonal(
            self.method,
            u_a=self.u_a.to(device),
            u_g=self.u_g.to(device),
            scale=self.scale.to(device),
            info=self.info,
            safeguard=self.safeguard,
        )

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.u_g @ ((self.u_g.T @ v @ self.u_a) * self.scale) @ self.u_a.T

    def to_dense(self) -> torch.Tensor:
        check_dense_size(self.n, self.dtype, "ekfac approximation", "matvec/solve")
        basis = torch.kron(self.u_a, self.u_g)
        return (basis * vec(self.scale)) @ basis.T

    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """Σ_ip s_pi (P_a u_Ai)(P_a u_Ai)ᵀ ⊗ (P_g u_Gp)(P_g u_Gp)ᵀ, summed input column by
        input column."""
        ua = pa @ self.u_a.to(torch.float64)
        ug = pg @ self.u_g.to(torch.float64)
        per_input = torch.einsum("ap,bp,pi->abi", ug, ug, self.scale.to(torch.float64))
        block = torch.einsum("xi,yi,abi->xayb", ua, ua, per_input)
        side = pa.shape[0] * pg.shape[0]
        return block.reshape(side, side)

    def factor_matrices(self) -> list[tuple[str, torch.Tensor]]:
        return [("scaling", self.scale)]

    def frobenius_sq(self) -> float:
        return float((self.scale.to(torch.float64) ** 2).sum())

    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, F̃⟩ = (1/m) Σ_i Σ_pi s_pi (u_Gpᵀ g_i)² (u_Aiᵀ ā_i)²; on T > 1 positions
        Σ_pi s_pi s*_pi with s* = (1/m) Σ_n (U_Gᵀ D_n U_A)^∘2 (:func:`eigenbasis_scale`)."""
        a, g = check_layer_batch(a.to(torch.float64), g.to(torch.float64))
        if a.ndim == 3:
            best = eigenbasis_scale(
                a, g, u_a=self.u_a.to(torch.float64), u_g=self.u_g.to(torch.float64)
            )
            return float((best * self.scale.to(torch.float64)).sum())
        at = (a @ self.u_a.to(torch.float64)) ** 2
        gt = (g @ self.u_g.to(torch.float64)) ** 2
        return float(((gt @ self.scale.to(torch.float64)) * at).sum() / a.shape[0])

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        lam = torch.sort(self.scale.reshape(-1), descending=True).values
        return lam if k is None else lam[:k]

    def _form_inverse(self, damping: float, mode: str) -> DampedInverse:
        """``(F̃ + λI)⁻¹`` in both modes (the eigenbasis is orthonormal)."""
        return EigenbasisInverse(self._basis, damping)


# -- constructors --------------------------------------------------------------------------


def _kfac_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KFAC's (A, G); KFAC-expand's on T > 1 positions."""
    if a.ndim == 3:
        return kfac_expand_factors(a, g)
    m = a.shape[0]
    return a.T @ a / m, g.T @ g / m


def _fix_sign(r: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (R, S) jointly so that tr R ≥ 0; R ⊗ S is unchanged."""
    return (-r, -s) if float(torch.trace(r)) < 0 else (r, s)


Terms = list[tuple[torch.Tensor, torch.Tensor]]


def _terms_from_gram(op: RearrangedFisher, trip: Triplets) -> Terms:
    """σ U ⊗ V with U = Āᵀ diag(c) Ā, V = Γᵀ diag(d) Γ, split as (√σ U, √σ V): the
    coefficients are scaled by √σ, and all terms' factors formed by one product per side."""
    root = trip.sigma.sqrt()[:, None]
    return [_fix_sign(r, s) for r, s in op.factors(root * trip.left, root * trip.right)]


def _terms_from_factors(trip: Triplets, dtype: torch.dtype) -> Terms:
    terms = []
    for sigma, u, v in zip(trip.sigma.tolist(), trip.left, trip.right, strict=True):
        root = sigma**0.5
        terms.append(_fix_sign(sym(root * u).to(dtype), sym(root * v).to(dtype)))
    return terms


def _svd_terms(
    op: RearrangedFisher, rank: int, *, solver: str, algorithm: str, tol: float, max_iter: int
) -> tuple[Terms, dict[str, Any]]:
    """Top-``rank`` Kronecker terms of ℛ(F) (or of ℛ(F − A⊗G) when the operator is centered)."""
    gram_unavailable = solver == "gram" and op.shared is not None
    if gram_unavailable:
        solver, algorithm = "matrix_free", "lanczos"
    if solver == "gram":
        trip = op.triplets_gram(rank, tol)
        terms = _terms_from_gram(op, trip)
    elif algorithm == "lanczos":
        trip = op.triplets_lanczos(rank, tol)
        terms = _terms_from_factors(trip, op.a.dtype)
    else:
        trip = op.triplets_power(rank, tol, max_iter)
        terms = _terms_from_factors(trip, op.a.dtype)
    info = {
        "singular_values": trip.sigma.tolist(),
        "iterations": trip.iterations,
        "converged": trip.converged,
        "solver": solver if solver == "gram" else f"matrix_free/{algorithm}",
        **trip.info,
    }
    if gram_unavailable:
        info["solver_note"] = (
            "solver='gram' asked for, but the Gram route needs one position per sample (T = 1): "
            "ran matrix-free Lanczos on ℛ(F)"
        )
    # A zero singular value contributes nothing; keep the terms that carry weight.
    keep = [i for i, s in enumerate(trip.sigma.tolist()) if s > 1e-14 * float(trip.sigma[0])]
    return [terms[i] for i in keep], info


# -- builders: one per kind of construction; core/engine/methods.py names which one each method uses


def build_kfac(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> Approximation:
    """A ⊗ G with A = ĀᵀĀ/m, G = ΓᵀΓ/m; on T > 1 positions KFAC-expand (Grosse & Martens
    2016, KFC; Eschenhagen et al. 2023): A = (1/(mT)) Σ_{n,t} a aᵀ, G = (1/m) Σ_{n,t} γ γᵀ,
    exact when the positions are independent with A and G the same at every position."""
    return KroneckerSum(method, [_kfac_factors(a, g)])


def build_kfac_reduce(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> Approximation:
    """KFAC-reduce (Eschenhagen et al. 2023): KFAC of the reduced batch â_n = (1/T) Σ_t a_{n,t},
    ĝ_n = Σ_t γ_{n,t}, i.e. A = (1/m) Σ â âᵀ, G = (1/m) Σ ĝ ĝᵀ. Exact when each sample's
    positions see one input (D_n = ĝ_n â_nᵀ); equal to KFAC(-expand) at T = 1."""
    return KroneckerSum(method, [_kfac_factors(*kfac_reduce_batch(a, g))])


def _shampoo_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L = (1/m) Σ D_nᵀ D_n and R = (1/m) Σ D_n D_nᵀ; at T = 1 (D_n = g_n ā_nᵀ)
    L = (1/m) Σ ‖g_n‖² ā_n ā_nᵀ and R = (1/m) Σ ‖ā_n‖² g_n g_nᵀ, computed so."""
    m = a.shape[0]
    if a.ndim == 3:
        d = SharedBatch(a, g).d
        left = d.reshape(-1, d.shape[2]).T @ d.reshape(-1, d.shape[2]) / m
        by_output = d.transpose(0, 1).reshape(d.shape[1], -1)
        return sym(left), sym(by_output @ by_output.T / m)
    left = a.T @ (((g * g).sum(1) / m)[:, None] * a)
    right = g.T @ (((a * a).sum(1) / m)[:, None] * g)
    return left, right


def build_shampoo(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> Approximation:
    """c · L ⊗ R, c the Frobenius-optimal scalar ⟨F, L⊗R⟩ / ‖L⊗R‖²_F."""
    left, right = _shampoo_factors(a, g)
    unit = KroneckerSum(method, [(left, right)])
    c = unit.inner_fisher(a, g) / max(unit.frobenius_sq(), 1e-300)
    return KroneckerSum(method, [(c * left, right)])


def eigenbasis_scale(
    a: torch.Tensor, g: torch.Tensor, *, u_a: torch.Tensor, u_g: torch.Tensor
) -> torch.Tensor:
    """The best diagonal of F in the basis U_A ⊗ U_G (George et al. 2018, eq. 9):
    s_pi = (1/m) Σ_j (u_Gpᵀ g_j)² (u_Aiᵀ ā_j)², shape (dg, da); on T > 1 positions
    s = (1/m) Σ_n (U_Gᵀ D_n U_A)^∘2, the rotated gradients formed by the cheaper of
    Σ_t (U_Gᵀγ_t)(U_Aᵀa_t)ᵀ (rotate the positions: m·T·(da² + dg² + dg·da)) and
    U_Gᵀ D_n U_A (rotate D: m·(T·dg·da + dg·da·(dg + da)))."""
    if a.ndim == 2:
        return ((g @ u_g) ** 2).T @ ((a @ u_a) ** 2) / a.shape[0]
    m, t, da = a.shape
    dg = g.shape[2]
    if t * (da * da + dg * dg) <= dg * da * (dg + da):
        rotated = per_sample_gradients(a @ u_a, g @ u_g)
    else:
        rotated = u_g.T @ per_sample_gradients(a, g) @ u_a
    return (rotated**2).sum(0) / m


def build_ekfac(method: str, a: torch.Tensor, g: torch.Tensor, **_: object) -> Approximation:
    """KFAC's eigenbasis U_A ⊗ U_G with the best diagonal in it."""
    fa, fg = _kfac_factors(a, g)
    u_a = torch.linalg.eigh(sym(fa)).eigenvectors
    u_g = torch.linalg.eigh(sym(fg)).eigenvectors
    scale = eigenbasis_scale(a, g, u_a=u_a, u_g=u_g)
    return EigenbasisDiagonal(method, u_a=u_a, u_g=u_g, scale=scale)


def build_kronecker_svd(
    method: str,
    a: torch.Tensor,
    g: torch.Tensor,
    *,
    svd_terms: int | None,
    rank: int,
    solver: str,
    tol: float,
    max_iter: int,
    psd_floor: float,
    algorithm: str = "power",
    centered: bool = False,
) -> Approximation:
    """The KPSVD family: the top ``svd_terms`` (``None``: ``rank``) Kronecker terms of ℛ(F), or,
    ``centered``, A⊗G plus those of ℛ(F − A⊗G); ``algorithm`` for ``solver="matrix_free"``;
    ``psd_floor`` for the two-term solve's safeguard. On T > 1 positions A⊗G is KFAC-expand's,
    and ``solver="gram"`` runs matrix-free Lanczos (the Gram route needs T = 1)."""
    op = RearrangedFisher(a, g, centered=centered)
    r = rank if svd_terms is None else svd_terms
    terms, info = _svd_terms(op, r, solver=solver, algorithm=algorithm, tol=tol, max_iter=max_iter)
    if centered:
        terms = [_kfac_factors(a, g), *terms]
    approx = KroneckerSum(method, terms, psd_floor=psd_floor)
    approx.info.update(info)
    return approx
