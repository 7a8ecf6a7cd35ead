"""Kronecker-factored approximations of one layer's Fisher block, behind one interface.

Every approximation F̃ of ``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)`` offers the same verbs:
``to_dense()``, ``matvec(V)``, ``solve(V, damping)``, ``eigvals()``, and the two scalars the
matrix-free metrics need, ``frobenius_sq()`` = ‖F̃‖²_F and ``inner_fisher(a, g)`` = ⟨F, F̃⟩.

Methods (``approximate(method, a, g, **options)``; each is one entry in the registry,
:mod:`core.engine.methods`, that names its builder below — add a method there and here):

* ``kfac`` — A ⊗ G with A = ĀᵀĀ/m, G = ΓᵀΓ/m (Martens & Grosse 2015).
* ``kpsvd`` — the best sum of ``rank`` Kronecker products: the rank-r truncated SVD of ℛ(F)
  (Van Loan & Pitsianis 1993); rank 1 is the seed paper's KPSVD (Koroko et al. 2022).
* ``deflation`` — the best two terms, the second by power SVD on the deflated ℛ(F) when
  ``solver="matrix_free"`` (the seed paper's Deflation).
* ``lanczos`` — the same two terms, by Golub–Kahan–Lanczos bidiagonalisation of ℛ(F).
* ``kfac_corrected`` — A⊗G + R⊗S with R⊗S the best Kronecker product of F − A⊗G.
* ``ekfac`` — KFAC's eigenbasis U_A ⊗ U_G with the best diagonal in it,
  s_pi = (1/m) Σ_i (u_Gpᵀ g_i)² (u_Aiᵀ ā_i)² (George et al. 2018).
* ``shampoo`` — c · L ⊗ R with L = (1/m) Σ ‖g_i‖² ā_i ā_iᵀ, R = (1/m) Σ ‖ā_i‖² g_i g_iᵀ and
  c the Frobenius-optimal scalar (Gupta et al. 2018; Morwani et al. 2024).

The KPSVD family (kpsvd, deflation, lanczos, kfac_corrected) takes ``solver="gram"`` (default,
see :mod:`core.engine.rearranged_svd`) or ``solver="matrix_free"`` (the seed paper's algorithms).

Damping. ``solve(V, λ, mode=...)`` applies a damped inverse:

* ``mode="exact"`` — ``(F̃ + λI)⁻¹ vec(V)``: closed form for one Kronecker product and for
  EKFAC; for sums of several products, a dense eigendecomposition for small blocks and
  preconditioned MINRES for large ones.
* ``mode="factored"`` (what the optimizers use) — the first term gets Martens–Grosse factored
  damping ``(R₁ + π√λ I) ⊗ (S₁ + √λ/π I)``; a second term is added undamped and the sum is
  inverted in closed form through the generalized eigenproblems R₂x = μR₁x, S₂y = νS₁y:
  ``(·)⁻¹ vec(V) = vec(E_S [(E_Sᵀ V E_R) ⊘ (1 + ν μᵀ)] E_Rᵀ)``.

A solve runs in V's dtype: the decompositions behind it are computed once in the factors'
dtype and cached, then rounded once to V's dtype when that differs (the optimizers' float32
route, :mod:`core.engine.precision`: float64 factors and decompositions, float32 per-step
products; rounding the decomposition costs ~1e-7 relative, while rounding the factors before
decomposing them would cost cond · 1e-7). The exact block answers in float64.

Indefiniteness safeguard. The second term of a two-term sum is indefinite, and so can be the
sum (seen here: min/max eigenvalue down to −0.45). In the factored solve the sum is congruent
to ``diag(1 + μ_i ν_p)``; entries below ``psd_floor`` (default 0.1) are raised to it, i.e. the
correction may cancel at most 90% of the damped first term along any generalized eigendirection.
In the exact dense solve, eigenvalues of F̃ below 0 are raised to 0 (projection onto the PSD
cone) before adding λ. Every engagement is counted in ``approx.safeguard``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg as sla
import torch

from .kron import KronEig, factored_damping, generalized_eigh, kron_matvec, sym, vec
from .rearranged_svd import SOLVERS, RearrangedFisher, Triplets
from .validation import (
    check_damping,
    check_dense_size,
    check_gradient_matrix,
    check_layer_batch,
)

SOLVE_MODES = ("exact", "factored")
# Sums of ≥ 2 products: up to DENSE_EIG_LIMIT the dense eigendecomposition (vectors too) serves
# both the spectrum and the exact damped solve; up to DENSE_SPECTRUM_LIMIT one dense eigvalsh
# gives the whole spectrum (much faster than Lanczos there); above, Lanczos gives the top k.
DENSE_EIG_LIMIT = 2048
DENSE_SPECTRUM_LIMIT = 4096


@dataclass
class SafeguardStats:
    """How often the indefiniteness safeguard engaged in this approximation's damped inverses.

    Counted once per inverse formed (per damping value), not per solve: the inverse is cached.
    """

    inverses: int = 0
    engaged: int = 0  # inverses in which at least one entry was raised
    entries_raised: int = 0  # total entries raised, over all inverses
    entries_total: int = 0

    def record(self, raised: int, total: int) -> None:
        self.inverses += 1
        self.engaged += int(raised > 0)
        self.entries_raised += raised
        self.entries_total += total


class Approximation(ABC):
    """One approximation F̃ of a layer's Fisher block, in vec(W) order, W of shape (dg, da).

    Callers use these verbs and properties only, never the concrete class: the exact block
    (:class:`core.engine.fisher.LayerFisher`) answers them too.
    """

    method: str
    da: int
    dg: int
    info: dict
    safeguard: SafeguardStats

    @property
    def n(self) -> int:
        return self.da * self.dg

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

    @abstractmethod
    def solve(self, v: torch.Tensor, damping: float, *, mode: str = "exact") -> torch.Tensor:
        """The damped inverse applied to V (see the module docstring for ``mode``)."""

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
    info: dict = field(default_factory=dict)
    psd_floor: float = 0.1
    safeguard: SafeguardStats = field(default_factory=SafeguardStats)

    def __post_init__(self) -> None:
        self.da = self.terms[0][0].shape[0]
        self.dg = self.terms[0][1].shape[0]
        self._eig_cache: dict = {}

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    @property
    def full_spectrum(self) -> bool:
        return len(self.terms) == 1 or self.n <= DENSE_SPECTRUM_LIMIT

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
        return sum(kron_matvec(r, s, v) for r, s in self.terms)

    def to_dense(self) -> torch.Tensor:
        """Σ_k kron(R_k, S_k) (refused above the dense memory limit)."""
        check_dense_size(self.n, self.dtype, f"{self.method} approximation", "matvec/solve")
        return sum(torch.kron(r, s) for r, s in self.terms)

    def pooled(self, pa: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
        """Σ_k (P_a R_k P_aᵀ) ⊗ (P_g S_k P_gᵀ)."""
        return sum(
            torch.kron(pa @ r.to(torch.float64) @ pa.T, pg @ s.to(torch.float64) @ pg.T)
            for r, s in self.terms
        )

    def factor_matrices(self) -> list[tuple[str, torch.Tensor]]:
        return [(side, m) for r, s in self.terms for side, m in (("input", r), ("output", s))]

    def _dense_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascending eigenvalues and eigenvectors of the (symmetrised) dense sum, cached."""
        if ("dense",) not in self._eig_cache:
            lam, u = torch.linalg.eigh(sym(self.to_dense().to(torch.float64)))
            self.safeguard.record(int((lam < 0).sum()), lam.numel())
            self._eig_cache[("dense",)] = (lam, u)
        return self._eig_cache[("dense",)]

    def frobenius_sq(self) -> float:
        """‖Σ R_k⊗S_k‖² = Σ_kl ⟨R_k, R_l⟩⟨S_k, S_l⟩."""
        rs = torch.stack([r.reshape(-1) for r, _ in self.terms]).to(torch.float64)
        ss = torch.stack([s.reshape(-1) for _, s in self.terms]).to(torch.float64)
        return float(((rs @ rs.T) * (ss @ ss.T)).sum())

    def inner_fisher(self, a: torch.Tensor, g: torch.Tensor) -> float:
        """⟨F, R⊗S⟩ = (1/m) Σ_i (ā_iᵀ R ā_i)(g_iᵀ S g_i)."""
        a64, g64 = a.to(torch.float64), g.to(torch.float64)
        total = 0.0
        for r, s in self.terms:
            qa = ((a64 @ r.to(torch.float64)) * a64).sum(1)
            qg = ((g64 @ s.to(torch.float64)) * g64).sum(1)
            total += float((qa * qg).mean())
        return total

    def _kron_eig(self, index: int = 0) -> KronEig:
        key = ("eig", index)
        if key not in self._eig_cache:
            self._eig_cache[key] = KronEig.of(*self.terms[index])
        return self._eig_cache[key]

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        """All eigenvalues, descending, when they are cheap: one product (all products
        λ_R,i λ_S,p) or a sum with n ≤ DENSE_SPECTRUM_LIMIT (dense). Above, the top ``k``
        (default 64) by Lanczos. Cached."""
        if ("all",) not in self._eig_cache:
            if len(self.terms) == 1:
                lam = self._kron_eig().eigvals_grid().reshape(-1)
            elif self.n <= DENSE_EIG_LIMIT:
                lam = self._dense_eigh()[0]
            elif self.n <= DENSE_SPECTRUM_LIMIT:
                lam = torch.linalg.eigvalsh(sym(self.to_dense().to(torch.float64)))
            else:
                lam = None
            if lam is not None:
                self._eig_cache[("all",)] = torch.sort(lam, descending=True).values
        if ("all",) in self._eig_cache:
            lam = self._eig_cache[("all",)]
            return lam if k is None else lam[:k]
        k = min(k or 64, self.n - 1)
        if ("top", k) not in self._eig_cache:
            op = self._scipy_operator(0.0)
            vals = sla.eigsh(op, k=k, which="LA", return_eigenvectors=False)
            top = torch.from_numpy(np.sort(vals)[::-1].copy()).to(self.device)
            self._eig_cache[("top", k)] = top
        return self._eig_cache[("top", k)]

    def _scipy_operator(self, shift: float) -> sla.LinearOperator:
        # SciPy works on CPU float64 arrays.
        terms64 = [(r.to("cpu", torch.float64), s.to("cpu", torch.float64)) for r, s in self.terms]
        da, dg = self.da, self.dg

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x).reshape(da, dg).T)
            out = sum(kron_matvec(r, s, v) for r, s in terms64) + shift * v
            return vec(out).numpy()

        return sla.LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)

    def solve(self, v: torch.Tensor, damping: float, *, mode: str = "exact") -> torch.Tensor:
        v, damping = self._check(v, damping, mode)
        if len(self.terms) == 1:
            if mode == "exact":
                self._kron_eig()
                return self._rounded(("eig", 0), v.dtype).solve(v, damping)
            key = ("factored", damping)
            if key not in self._eig_cache:
                self._eig_cache[key] = KronEig.of(*factored_damping(*self.terms[0], damping))
            return self._rounded(key, v.dtype).solve(v, 0.0)
        if mode == "factored":
            if len(self.terms) != 2:
                raise ValueError(
                    f"factored damping is defined for one or two Kronecker terms; this "
                    f"approximation has {len(self.terms)} — use mode='exact'"
                )
            return self._solve_two_factored(v, damping)
        return self._solve_exact_sum(v, damping)

    def _solve_two_factored(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        key = ("gen", damping)
        if key not in self._eig_cache:
            (r1, s1), (r2, s2) = self.terms
            r1d, s1d = factored_damping(r1, s1, damping)
            mu, e_r = generalized_eigh(r2, r1d)
            nu, e_s = generalized_eigh(s2, s1d)
            denom = 1.0 + torch.outer(nu, mu)
            low = denom < self.psd_floor
            self.safeguard.record(int(low.sum()), denom.numel())
            denom = torch.where(low, torch.full_like(denom, self.psd_floor), denom)
            self._eig_cache = {k: val for k, val in self._eig_cache.items() if k[0] != "gen"}
            self._eig_cache[key] = (e_r, e_s, denom)
        e_r, e_s, denom = self._rounded(key, v.dtype)
        return e_s @ ((e_s.T @ v @ e_r) / denom) @ e_r.T

    def _rounded(self, key: tuple, dtype: torch.dtype) -> KronEig | tuple[torch.Tensor, ...]:
        """The cached decomposition ``key`` in ``dtype``: itself, or rounded once and cached
        (dropped with it: the rounded key extends ``key``)."""
        if dtype == self.dtype:
            return self._eig_cache[key]
        rounded = (*key, dtype)
        if rounded not in self._eig_cache:
            self._eig_cache[rounded] = _cast(self._eig_cache[key], dtype)
        return self._eig_cache[rounded]

    def _solve_exact_sum(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        if self.n <= DENSE_EIG_LIMIT:
            lam, u = self._dense_eigh()
            x = u @ ((u.T @ vec(v).to(torch.float64)) / (lam.clamp_min(0.0) + damping))
            return x.reshape(self.da, self.dg).T.to(v.dtype)
        # Large: MINRES (valid for indefinite systems), preconditioned by the first term's
        # exact damped inverse. MINRES needs that preconditioner positive definite, which it is
        # in exact arithmetic: the first term is KFAC's A ⊗ G or the nearest Kronecker product
        # of the PSD F, whose factors are PSD. Their computed eigenvalues can dip below zero by
        # round-off; clamping them at 0 keeps every λ_R λ_S + λ ≥ λ > 0.
        r1, s1 = self.terms[0]
        first64 = _psd_part(KronEig.of(r1.to("cpu", torch.float64), s1.to("cpu", torch.float64)))
        da, dg = self.da, self.dg

        def precondition(x: np.ndarray) -> np.ndarray:
            xm = torch.from_numpy(np.ascontiguousarray(x).reshape(da, dg).T)
            return vec(first64.solve(xm, damping)).numpy()

        op = self._scipy_operator(damping)
        pre = sla.LinearOperator((self.n, self.n), matvec=precondition, dtype=np.float64)
        rhs = vec(v.to("cpu", torch.float64)).numpy()
        x, status = sla.minres(op, rhs, M=pre, rtol=1e-10, maxiter=500)
        self.info["minres_status"] = int(status)
        return torch.from_numpy(x).reshape(da, dg).T.to(v.device, v.dtype)


def _cast(cached: KronEig | tuple, dtype: torch.dtype) -> KronEig | tuple[torch.Tensor, ...]:
    """A cached decomposition (a :class:`KronEig` or a tuple of tensors) in ``dtype``."""
    if isinstance(cached, KronEig):
        return KronEig(*_cast((cached.u_r, cached.lam_r, cached.u_s, cached.lam_s), dtype))
    return tuple(t.to(dtype) for t in cached)


def _psd_part(eig: KronEig) -> KronEig:
    """R ⊗ S with both factors' eigenvalues clamped at 0 (for factors that are PSD in exact
    arithmetic, this removes only round-off)."""
    return KronEig(eig.u_r, eig.lam_r.clamp_min(0.0), eig.u_s, eig.lam_s.clamp_min(0.0))


@dataclass(eq=False)
class EigenbasisDiagonal(Approximation):
    """EKFAC: F̃ = (U_A ⊗ U_G) diag(vec(s)) (U_A ⊗ U_G)ᵀ with s of shape (dg, da)."""

    method: str
    u_a: torch.Tensor
    u_g: torch.Tensor
    scale: torch.Tensor
    info: dict = field(default_factory=dict)
    safeguard: SafeguardStats = field(default_factory=SafeguardStats)

    def __post_init__(self) -> None:
        self.da = self.u_a.shape[0]
        self.dg = self.u_g.shape[0]
        self._rounded: dict[torch.dtype, EigenbasisDiagonal] = {}  # solves in another dtype

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
            self.u_a.to(device),
            self.u_g.to(device),
            self.scale.to(device),
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
        """⟨F, F̃⟩ = (1/m) Σ_i Σ_pi s_pi (u_Gpᵀ g_i)² (u_Aiᵀ ā_i)²."""
        at = (a.to(torch.float64) @ self.u_a.to(torch.float64)) ** 2
        gt = (g.to(torch.float64) @ self.u_g.to(torch.float64)) ** 2
        return float(((gt @ self.scale.to(torch.float64)) * at).sum() / a.shape[0])

    def eigvals(self, k: int | None = None) -> torch.Tensor:
        lam = torch.sort(self.scale.reshape(-1), descending=True).values
        return lam if k is None else lam[:k]

    def solve(self, v: torch.Tensor, damping: float, *, mode: str = "exact") -> torch.Tensor:
        """``(F̃ + λI)⁻¹``; the eigenbasis is orthonormal, so both modes are the exact inverse.
        In V's dtype (basis and diagonal rounded to it when they differ)."""
        v, damping = self._check(v, damping, mode)
        if v.dtype != self.dtype:  # rounded once per dtype, not at every step's solve
            if v.dtype not in self._rounded:
                u_a, u_g, scale = _cast((self.u_a, self.u_g, self.scale), v.dtype)
                self._rounded[v.dtype] = EigenbasisDiagonal(self.method, u_a, u_g, scale)
            return self._rounded[v.dtype].solve(v, damping)
        return self.u_g @ ((self.u_g.T @ v @ self.u_a) / (self.scale + damping)) @ self.u_a.T


# -- constructors --------------------------------------------------------------------------


def _kfac_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    op: RearrangedFisher, rank: int, solver: str, algorithm: str, tol: float, max_iter: int
) -> tuple[Terms, dict]:
    """Top-``rank`` Kronecker terms of ℛ(F) (or of ℛ(F − A⊗G) when the operator is centered)."""
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
    # A zero singular value contributes nothing; keep the terms that carry weight.
    keep = [i for i, s in enumerate(trip.sigma.tolist()) if s > 1e-14 * float(trip.sigma[0])]
    return [terms[i] for i in keep], info


# -- builders: one per kind of construction; core/engine/methods.py names which one each method uses
# --


def build_kfac(method: str, a: torch.Tensor, g: torch.Tensor, **_) -> Approximation:
    """A ⊗ G with A = ĀᵀĀ/m, G = ΓᵀΓ/m."""
    return KroneckerSum(method, [_kfac_factors(a, g)])


def build_shampoo(method: str, a: torch.Tensor, g: torch.Tensor, **_) -> Approximation:
    """c · L ⊗ R, c the Frobenius-optimal scalar ⟨F, L⊗R⟩ / ‖L⊗R‖²_F."""
    m = a.shape[0]
    left = a.T @ (((g * g).sum(1) / m)[:, None] * a)
    right = g.T @ (((a * a).sum(1) / m)[:, None] * g)
    unit = KroneckerSum(method, [(left, right)])
    c = unit.inner_fisher(a, g) / max(unit.frobenius_sq(), 1e-300)
    return KroneckerSum(method, [(c * left, right)])


def eigenbasis_scale(
    a: torch.Tensor, g: torch.Tensor, u_a: torch.Tensor, u_g: torch.Tensor
) -> torch.Tensor:
    """The best diagonal of F in the basis U_A ⊗ U_G (George et al. 2018, eq. 9):
    s_pi = (1/m) Σ_j (u_Gpᵀ g_j)² (u_Aiᵀ ā_j)², shape (dg, da)."""
    return ((g @ u_g) ** 2).T @ ((a @ u_a) ** 2) / a.shape[0]


def build_ekfac(method: str, a: torch.Tensor, g: torch.Tensor, **_) -> Approximation:
    """KFAC's eigenbasis U_A ⊗ U_G with the best diagonal in it."""
    fa, fg = _kfac_factors(a, g)
    u_a = torch.linalg.eigh(sym(fa)).eigenvectors
    u_g = torch.linalg.eigh(sym(fg)).eigenvectors
    return EigenbasisDiagonal(method, u_a, u_g, eigenbasis_scale(a, g, u_a, u_g))


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
    ``psd_floor`` for the two-term solve's safeguard."""
    op = RearrangedFisher(a, g, centered=centered)
    r = rank if svd_terms is None else svd_terms
    terms, info = _svd_terms(op, r, solver, algorithm, tol, max_iter)
    if centered:
        terms = [_kfac_factors(a, g), *terms]
    approx = KroneckerSum(method, terms, psd_floor=psd_floor)
    approx.info.update(info)
    return approx


def approximate(
    method: str,
    a: torch.Tensor,
    g: torch.Tensor,
    *,
    rank: int = 1,
    solver: str = "gram",
    tol: float | None = None,
    max_iter: int = 5000,
    psd_floor: float = 0.1,
) -> Approximation:
    """Approximate the Fisher block of one layer from its per-sample inputs and gradients
    (``method="exact"``: the exact block itself, :class:`core.engine.fisher.LayerFisher`).

    ``a`` is (m, da) — inputs with the bias column — and ``g`` is (m, dg). ``rank`` applies to
    ``kpsvd``; ``solver`` ("gram" or "matrix_free") to the KPSVD family; ``tol`` is the relative
    residual at which the singular-vector iterations stop (default 1e-6 for float32 inputs,
    1e-10 for float64); ``max_iter`` caps the matrix-free power iterations.
    """
    from .methods import SHOWN, method_spec  # the registry imports this module's builders

    if method not in SHOWN:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(SHOWN)}")
    spec = method_spec(method)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer ≥ 1, got {rank!r}")
    if not 0.0 < psd_floor <= 1.0:
        raise ValueError(f"psd_floor must lie in (0, 1], got {psd_floor}")
    a, g = check_layer_batch(a, g)
    if tol is None:
        tol = 1e-10 if a.dtype == torch.float64 else 1e-6
    start = time.perf_counter()
    approx = spec.build(
        method,
        a,
        g,
        rank=rank,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        psd_floor=psd_floor,
        centered=spec.centered,
    )
    approx.info["seconds"] = time.perf_counter() - start
    return approx


def __getattr__(name: str):
    # METHODS and KPSVD_FAMILY are views over the registry, which imports this module.
    if name in ("METHODS", "KPSVD_FAMILY"):
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
