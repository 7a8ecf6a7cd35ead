"""The damped curvature of one layer as a metric on its weight matrices: what the downstream jobs
(:mod:`core.engine.compress`, :mod:`core.engine.prune`) need from any approximation.

A second-order model of the loss around trained weights W (gradient ≈ 0) is
``ΔL ≈ ½ vec(ΔW)ᵀ M vec(ΔW)``, with M a damped curvature: compressing W to X costs
``½ ‖W − X‖²_M`` and removing weights costs the OBS increase. :func:`weight_metric` turns an
:class:`~core.engine.approx.Approximation` F̃ and a damping λ into M — the matrix whose inverse
the engine's ``approx.solve(·, λ, mode="factored")`` applies (what the optimizers use), so a
method is judged by the curvature it trains with:

* one product R ⊗ S: ``M = (R + π√λ I) ⊗ (S + √λ/π I)`` (Martens–Grosse factored damping,
  π = √((tr R / da)/(tr S / dg)));
* two products R₁ ⊗ S₁ + R₂ ⊗ S₂: the first factored-damped, the second added; with the
  generalized eigenproblems R₂x = μ R̃₁x, S₂y = ν S̃₁y (E_Rᵀ R̃₁ E_R = I, E_Rᵀ R₂ E_R = diag μ),
  ``M = (E_R ⊗ E_S)⁻ᵀ diag(1 + ν μᵀ) (E_R ⊗ E_S)⁻¹``, entries of 1 + νμᵀ below ``psd_floor``
  raised to it (the solves' indefiniteness safeguard, counted in ``info``);
* anything else (EKFAC, the exact block, sums of three or more products): the dense
  ``F̃₊ + λI`` (F̃₊: F̃'s projection on the PSD cone) where n = da·dg ≤ :data:`DENSE_LIMIT`;
  larger ones are refused by name.

The first two are one class, :class:`CongruenceMetric`: ``M = (B_a ⊗ B_g)⁻ᵀ diag(vec d)
(B_a ⊗ B_g)⁻¹`` with bases B_a (da × da), B_g (dg × dg) and positive weights d (dg × da), so that
``M⁻¹ vec(V) = vec(B_g [(B_gᵀ V B_a) ⊘ d] B_aᵀ)`` and, with C = B⁻ᵀ,
``M vec(V) = vec(C_g [(C_gᵀ V C_a) ∘ d] C_aᵀ)``. One product: B = the factors' orthonormal
eigenvectors and d = λ_S λ_Rᵀ, a *separable* (rank-one) d. Everything the jobs ask — the
inverse's diagonal, the inverse's blocks on whole rows or columns — is a few matrix products in
this form. Conventions: W is (dg, da), bias last column, column-major vec (:mod:`core.engine.kron`).
All work is in float64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

from .approx import Approximation
from .kron import factored_damping, generalized_eigh, sym, unvec, vec

__all__ = [
    "DENSE_LIMIT",
    "WeightMetric",
    "CongruenceMetric",
    "DenseMetric",
    "weight_metric",
    "identity_metric",
    "row_diagonal_metric",
    "check_weight",
]

# Largest n = da·dg for which a method without a short Kronecker sum (EKFAC, the exact block)
# is formed densely (n² float64 = 128 MiB at 4096).
DENSE_LIMIT = 4096
# Eigenvalues below this fraction of the largest count as zero when damping = 0.
_SINGULAR_RTOL = 1e-12
_F64 = torch.float64


def check_weight(w: torch.Tensor, da: int, dg: int) -> torch.Tensor:
    """W as float64, after checking it is a finite (dg, da) matrix (the approximation's layer)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError("W must be a floating-point torch.Tensor of shape (dg, da)")
    if tuple(w.shape) != (dg, da):
        raise ValueError(
            f"W has shape {tuple(w.shape)}, but the curvature is for a layer of shape "
            f"(dg, da) = ({dg}, {da}) (outputs × inputs, bias as the last column)"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("W contains NaN or inf; the model it came from has diverged")
    return w.detach().to(_F64)


def _check_damping(damping: float) -> float:
    damping = float(damping)
    if not np.isfinite(damping) or damping < 0.0:
        raise ValueError(f"damping must be a finite number ≥ 0, got {damping}")
    return damping


class WeightMetric(ABC):
    """A positive definite n × n matrix M acting on (dg, da) weight matrices in vec order."""

    da: int
    dg: int
    info: dict[str, Any]

    @abstractmethod
    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """M vec(V) as a (dg, da) matrix."""

    @abstractmethod
    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """M⁻¹ vec(V) as a (dg, da) matrix."""

    @abstractmethod
    def inverse_diagonal(self) -> torch.Tensor:
        """diag(M⁻¹) arranged like W, (dg, da)."""

    @abstractmethod
    def group_saliency(self, w: torch.Tensor, axis: str) -> torch.Tensor:
        """½ w_Qᵀ ([M⁻¹]_QQ)⁻¹ w_Q for every whole row (``axis="rows"``, Q = row p: dg values)
        or whole column (``"columns"``, Q = column i: da values) of W: the OBS loss increase of
        removing that group alone."""

    def quadratic(self, v: torch.Tensor) -> float:
        """vec(V)ᵀ M vec(V)."""
        return float((v.to(_F64) * self.apply(v)).sum())

    def solve_kept(self, rhs: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
        """x with x = 0 off ``kept`` and (M x)_kept = rhs_kept: M restricted to the kept entries,
        inverted by conjugate gradients preconditioned with (M⁻¹)_kept,kept (exact when nothing
        is removed; by the Schur complement it errs only through the coupling of kept and
        removed weights). Returns (x, converged, iterations)."""
        idx = torch.nonzero(vec(kept)).squeeze(1)
        shape = (self.dg, self.da)

        def scatter(z: np.ndarray) -> torch.Tensor:
            full = torch.zeros(self.n, dtype=_F64)
            full[idx] = torch.from_numpy(np.asarray(z, dtype=np.float64).reshape(-1))
            return unvec(full, *shape)

        def restrict(v: torch.Tensor) -> np.ndarray:
            return np.asarray(vec(v)[idx].numpy())

        size = idx.numel()
        op = sla.LinearOperator(
            (size, size), matvec=lambda z: restrict(self.apply(scatter(z))), dtype=np.float64
        )
        pre = sla.LinearOperator(
            (size, size), matvec=lambda z: restrict(self.solve(scatter(z))), dtype=np.float64
        )
        count = [0]
        b = restrict(rhs.to(_F64))
        x, status = sla.cg(
            op,
            b,
            M=pre,
            rtol=1e-10,
            maxiter=max(200, 4 * int(size**0.5)),
            callback=lambda _: count.__setitem__(0, count[0] + 1),
        )
        return scatter(x), status == 0, count[0]

    @property
    def n(self) -> int:
        return self.da * self.dg


@dataclass(eq=False)
class CongruenceMetric(WeightMetric):
    """``M = (B_a ⊗ B_g)⁻ᵀ diag(vec d) (B_a ⊗ B_g)⁻¹`` (see the module docstring).

    ``c_a``, ``c_g`` are B⁻ᵀ. ``separable``: d = outer(d_g, d_a) (one product), which the
    closed-form compression needs; ``rank_two``: (ν, μ) with d = 1 + outer(ν, μ) exactly (two
    products, safeguard not engaged), which makes each compression half-step cheap.
    """

    b_a: torch.Tensor
    b_g: torch.Tensor
    c_a: torch.Tensor
    c_g: torch.Tensor
    d: torch.Tensor
    separable: tuple[torch.Tensor, torch.Tensor] | None = None
    rank_two: tuple[torch.Tensor, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dg, self.da = self.d.shape

    def to_basis(self, v: torch.Tensor) -> torch.Tensor:
        """Y = C_gᵀ V C_a: coordinates in which M is the elementwise weighting by d."""
        return self.c_g.T @ v.to(_F64) @ self.c_a

    def from_basis(self, y: torch.Tensor) -> torch.Tensor:
        """V = B_g Y B_aᵀ (inverse of :meth:`to_basis`)."""
        return self.b_g @ y @ self.b_a.T

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return self.c_g @ (self.to_basis(v) * self.d) @ self.c_a.T

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return self.b_g @ ((self.b_g.T @ v.to(_F64) @ self.b_a) / self.d) @ self.b_a.T

    def inverse_diagonal(self) -> torch.Tensor:
        """Σ_qj B_g[p,q]² B_a[i,j]² / d[q,j]; for one product diag(R̃⁻¹) ⊗ diag(S̃⁻¹)."""
        return (self.b_g**2) @ (1.0 / self.d) @ (self.b_a**2).T

    def group_saliency(self, w: torch.Tensor, axis: str) -> torch.Tensor:
        """Column i: [M⁻¹]_QQ = B_g diag(c_i) B_gᵀ with c_i[q] = Σ_j B_a[i,j]²/d[q,j], so the
        saliency is ½ Σ_q (C_gᵀ w_i)_q² / c_i[q]; rows alike with the roles swapped."""
        w = w.to(_F64)
        if axis == "columns":
            c = (1.0 / self.d) @ (self.b_a**2).T  # (dg, da): column i is c_i
            return 0.5 * ((self.c_g.T @ w) ** 2 / c).sum(0)
        c = (self.b_g**2) @ (1.0 / self.d)  # (dg, da): row p is c'_p
        return 0.5 * ((w @ self.c_a) ** 2 / c).sum(1)


@dataclass(eq=False)
class DenseMetric(WeightMetric):
    """M formed densely (n × n, vec order), for small layers; ``inverse`` is M⁻¹."""

    matrix: torch.Tensor
    da: int
    dg: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(self.matrix))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return unvec(self.matrix @ vec(v.to(_F64)), self.dg, self.da)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return unvec(self.inverse @ vec(v.to(_F64)), self.dg, self.da)

    def inverse_diagonal(self) -> torch.Tensor:
        return unvec(torch.diagonal(self.inverse), self.dg, self.da)

    def group_saliency(self, w: torch.Tensor, axis: str) -> torch.Tensor:
        w = w.to(_F64)
        index = torch.arange(self.n).reshape(self.da, self.dg)  # [i, p] → vec position
        groups = index if axis == "columns" else index.T
        values = []
        for q in groups:
            wq = vec(w)[q]
            values.append(0.5 * wq @ torch.linalg.solve(self.inverse[q][:, q], wq))
        return torch.stack(values)

    def solve_kept(self, rhs: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
        """The restricted system solved directly."""
        idx = torch.nonzero(vec(kept)).squeeze(1)
        full = torch.zeros(self.n, dtype=_F64)
        sub = self.matrix[idx][:, idx]
        full[idx] = torch.linalg.solve(sub, vec(rhs.to(_F64))[idx])
        return unvec(full, self.dg, self.da), True, 0


# -- constructors ------------------------------------------------------------------------------


def _positive_eigh(m: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    lam, u = torch.linalg.eigh(sym(m))
    if not float(lam[0]) > _SINGULAR_RTOL * max(float(lam[-1]), 0.0):
        raise ValueError(
            f"the {what} factor is singular or indefinite after damping (smallest eigenvalue "
            f"{float(lam[0]):.3g}, largest {float(lam[-1]):.3g}); pass a damping > 0 (or a larger "
            "one) so that the curvature is positive definite"
        )
    return lam, u


def _one_product(r: torch.Tensor, s: torch.Tensor, damping: float) -> CongruenceMetric:
    rd, sd = factored_damping(r.to(_F64), s.to(_F64), damping)
    lam_r, u_r = _positive_eigh(rd, "input (R)")
    lam_s, u_s = _positive_eigh(sd, "output (S)")
    d = torch.outer(lam_s, lam_r)
    return CongruenceMetric(u_r, u_s, u_r, u_s, d, separable=(lam_s, lam_r))


def _two_products(
    terms: list[tuple[torch.Tensor, torch.Tensor]], damping: float, psd_floor: float
) -> CongruenceMetric:
    (r1, s1), (r2, s2) = [(r.to(_F64), s.to(_F64)) for r, s in terms]
    r1d, s1d = factored_damping(r1, s1, damping)
    _positive_eigh(r1d, "first term's input (R₁)")
    _positive_eigh(s1d, "first term's output (S₁)")
    mu, e_r = generalized_eigh(r2, r1d)
    nu, e_s = generalized_eigh(s2, s1d)
    d = 1.0 + torch.outer(nu, mu)
    low = d < psd_floor
    d = torch.where(low, torch.full_like(d, psd_floor), d)
    info = {"safeguard_raised": int(low.sum()), "safeguard_total": d.numel()}
    rank_two = None if bool(low.any()) else (nu, mu)
    # E⁻ᵀ = R̃₁ E since Eᵀ R̃₁ E = I.
    return CongruenceMetric(
        e_r, e_s, sym(r1d) @ e_r, sym(s1d) @ e_s, d, rank_two=rank_two, info=info
    )


def _dense(approx: Approximation, damping: float) -> DenseMetric:
    if approx.n > DENSE_LIMIT:
        raise ValueError(
            f"the {approx.method} curvature has no short Kronecker form, and its layer has "
            f"{approx.n:,} weights, above the {DENSE_LIMIT:,} for which it is formed densely; "
            "use a smaller layer or a Kronecker-factored method (kfac, kpsvd, deflation, …)"
        )
    lam, u = torch.linalg.eigh(sym(approx.to_dense().to(_F64)))
    raised = int((lam < 0).sum())
    lam = lam.clamp_min(0.0) + damping
    if not float(lam[0]) > _SINGULAR_RTOL * float(lam[-1]):
        raise ValueError(
            f"the {approx.method} curvature is singular (its layer batch spans fewer directions "
            "than the layer has weights); pass a damping > 0"
        )
    matrix = sym((u * lam) @ u.T)
    info = {"safeguard_raised": raised, "safeguard_total": lam.numel()}
    return DenseMetric(matrix, approx.da, approx.dg, info=info)


def _one_product_tikhonov(r: torch.Tensor, s: torch.Tensor, damping: float) -> CongruenceMetric:
    """R ⊗ S + λI = (U_R ⊗ U_S) diag(λ_S λ_Rᵀ + λ) (U_R ⊗ U_S)ᵀ (negative factor eigenvalues,
    round-off of PSD factors, raised to 0): d = λ (1 + (λ_S/λ) λ_Rᵀ)."""
    lam_r, u_r = torch.linalg.eigh(sym(r.to(_F64)))
    lam_s, u_s = torch.linalg.eigh(sym(s.to(_F64)))
    lam_r, lam_s = lam_r.clamp_min(0.0), lam_s.clamp_min(0.0)
    d = torch.outer(lam_s, lam_r) + damping
    if not float(d.min()) > _SINGULAR_RTOL * float(d.max()):
        raise ValueError("the curvature is singular; pass a damping > 0")
    return CongruenceMetric(u_r, u_s, u_r, u_s, d, rank_two=(lam_s / damping, lam_r))


Builder = Callable[[], WeightMetric]


def _candidates(approx: Approximation, damping: float, psd_floor: float) -> list[Builder]:
    """The forms M may take for this approximation, most specific first."""
    mats = approx.factor_matrices()
    sides = [side for side, _ in mats]
    n_terms = approx.n_terms
    if n_terms in (1, 2) and sides == ["input", "output"] * n_terms:
        terms = [(mats[2 * t][1], mats[2 * t + 1][1]) for t in range(n_terms)]
        if n_terms == 2:
            return [lambda: _two_products(terms, damping, psd_floor)]
        r, s = terms[0]
        forms: list[Builder] = [lambda: _one_product(r, s, damping)]
        if damping > 0:
            forms.append(lambda: _one_product_tikhonov(r, s, damping))
        return forms
    return [lambda: _dense(approx, damping)]


def _agrees(metric: WeightMetric, approx: Approximation, damping: float, mode: str) -> bool:
    """M⁻¹ V equals the approximation's own damped solve on a random probe V (to 1e-6, or 1e-2
    for float32 factors, whose decompositions the engine rounds)."""
    probe = torch.randn(approx.dg, approx.da, generator=torch.Generator().manual_seed(0))
    expected = approx.solve(probe.to(_F64).to(approx.dtype), damping, mode=mode).to(_F64).cpu()
    got = metric.solve(probe.to(_F64))
    tol = 1e-6 if approx.dtype == _F64 else 1e-2
    return float(torch.linalg.norm(got - expected)) <= tol * float(torch.linalg.norm(expected))


def weight_metric(approx: Approximation, damping: float, *, psd_floor: float = 0.1) -> WeightMetric:
    """The damped curvature M of ``approx`` (see the module docstring), in float64.

    M is the matrix whose inverse ``approx.solve(·, λ, mode="factored")`` applies (``"exact"``
    for the dense forms): the form is recognised from ``n_terms`` and ``factor_matrices`` and
    checked against that solve on a random probe (one product: factored damping, or — a method
    that damps the whole product, such as Eva — Tikhonov R ⊗ S + λI). ``damping`` λ ≥ 0 (0 only
    when the curvature is positive definite as it is); ``psd_floor`` is the two-product
    safeguard, the one the approximation was built with (the engine's default 0.1). Raises
    ``ValueError`` for singular factors at λ = 0, a bad damping, a dense-only curvature above
    :data:`DENSE_LIMIT`, or a damped inverse of none of these forms.
    """
    damping = _check_damping(damping)
    if not 0.0 < psd_floor <= 1.0:
        raise ValueError(f"psd_floor must lie in (0, 1], got {psd_floor}")
    forms = _candidates(approx, damping, psd_floor)
    mode = "exact" if len(forms) == 1 and approx.n_terms not in (1, 2) else "factored"
    errors: list[str] = []
    for build in forms:
        try:
            metric = build()
        except ValueError as error:
            errors.append(str(error))
            continue
        if damping == 0.0 or _agrees(metric, approx, damping, mode):
            return metric
        errors.append(
            f"this form of M does not reproduce the approximation's own damped solve "
            f"(mode={mode!r}); for a two-term sum, pass the psd_floor it was built with"
        )
    if len(errors) == 1 or errors[0] == errors[-1]:
        raise ValueError(errors[0])
    raise ValueError(f"the {approx.method} curvature: " + "; ".join(errors))


def identity_metric(da: int, dg: int) -> CongruenceMetric:
    """M = I: the plain Frobenius norm (truncated SVD)."""
    eye_a, eye_g = torch.eye(da, dtype=_F64), torch.eye(dg, dtype=_F64)
    ones_a, ones_g = torch.ones(da, dtype=_F64), torch.ones(dg, dtype=_F64)
    return CongruenceMetric(
        eye_a, eye_g, eye_a, eye_g, torch.ones(dg, da, dtype=_F64), separable=(ones_g, ones_a)
    )


def row_diagonal_metric(row_weights: torch.Tensor, da: int) -> CongruenceMetric:
    """M = I_da ⊗ diag(r): every weight of output row p weighted by r_p > 0 (FWSVD's norm)."""
    r = row_weights.to(_F64)
    if not bool((r > 0).all()):
        raise ValueError(
            f"{int((r <= 0).sum())} output row(s) have zero Fisher weight (dead units); pass a "
            "damping > 0"
        )
    eye_a, eye_g = torch.eye(da, dtype=_F64), torch.eye(r.numel(), dtype=_F64)
    ones_a = torch.ones(da, dtype=_F64)
    return CongruenceMetric(
        eye_a, eye_g, eye_a, eye_g, torch.outer(r, ones_a), separable=(r, ones_a)
    )
