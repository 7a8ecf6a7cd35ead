"""Two-level KFAC: KFAC's block-diagonal preconditioner plus a coarse correction for the
curvature between layers.

Koroko, Anciaux-Sedrakian, Ben Gharbia, Garès, Haddou & Tran, "Analysis and comparison of
two-level KFAC methods for training deep neural networks" (arXiv 2303.18083, 2023), after
two-level domain decomposition (Nicolaides 1987; Tselepidis, Kohler & Orvieto 2020 for KFAC).
KFAC's ``M = blockdiag(M_1, …, M_L)`` (``M_l`` layer ``l``'s damped Kronecker product) ignores
every cross-layer block of the Fisher ``F``. A coarse space ``R₀ᵀ = [r_1 … r_k]`` (``n × k``,
``k`` small) restores the curvature between layers at that coarse scale; the additive two-level
preconditioner is

    P⁻¹ = M⁻¹ + R₀ᵀ (R₀ F R₀ᵀ + λ I)⁻¹ R₀,

and the step direction ``d = P⁻¹ ∇``. Here every coarse vector ``r_i`` lives on one layer
(zero elsewhere) and is scaled to unit norm, so ``R₀ R₀ᵀ = I`` and ``R₀ F R₀ᵀ + λI`` is the
Galerkin coarse matrix ``R₀ (F + λI) R₀ᵀ`` of the damped Fisher. It is ``k × k`` and needs no
``n × n`` matrix: with the per-sample gradients ``D_n`` of the Fisher minibatch (``m``
samples, ``F = (1/m) Σ_n vec(D_n) vec(D_n)ᵀ`` over the WHOLE network, targets sampled once
for all layers),

    Z_{n i} = ⟨r_i, vec(D_n)⟩ = Σ_t γ_{n t}ᵀ V_i ā_{n t}   (V_i: r_i as a dg × da matrix),
    R₀ F R₀ᵀ = Zᵀ Z / m,

with ``ā``, ``γ`` the captured inputs and output gradients (:mod:`core.engine.capture`; ``T``
positions for a convolution), at the cost of one gradient evaluation per coarse vector.

Variants (the ``variant`` of :data:`TWO_LEVEL_VARIANTS`, one optimizer each). Every coarse
vector lives on one layer; a layer's vectors are orthonormalised, so ``R₀R₀ᵀ = I`` always and
the coarse matrix ``E + λI`` is the Galerkin matrix of the damped Fisher (the correction
``R₀ᵀ(R₀F̂R₀ᵀ)⁻¹R₀``, ``F̂ = F + λI``, depends only on the span of the vectors, not on how
they are scaled):

* ``"kfac_direction"``: layer ``l``'s KFAC direction ``M_l⁻¹ ∇_l``;
* ``"gradient"``: the layer's gradient ``∇_l``;
* ``"nicolaides"``: the layer's constant vector ``1`` (Nicolaides' coarse space: one constant
  per subdomain), with the exact ``E = R₀FR₀ᵀ`` above;
* ``"tselepidis"``: the same constant vectors, but ``E`` from Kronecker-factored cross-layer
  blocks ``F_ij ≈ Â_ij ⊗ Ĝ_ij`` (Tselepidis, Kohler & Orvieto 2020, the first two-level KFAC),
  ``Â_ij = (1/m) Σ_n â_{n,i} â_{n,j}ᵀ``, ``Ĝ_ij = (1/m) Σ_n ĝ_{n,i} ĝ_{n,j}ᵀ`` with the per-sample
  ``â_n = (1/T) Σ_t ā_{n t}``, ``ĝ_n = Σ_t γ_{n t}`` (for one position per sample, ``T = 1``, the
  captured vectors themselves and ``Â_ll ⊗ Ĝ_ll`` KFAC's block). Then
  ``E_ij = ⟨V_i, Ĝ_ij V_j Â_ijᵀ⟩ = ⟨B_i, B_j⟩ / m²`` with the m × m matrices
  ``(B_i)_{n n'} = ĝ_{n,i}ᵀ V_i â_{n',i}``;
* ``"residual"``: the preconditioned residual of KFAC's solve, ``V_l = M_l⁻¹ r_l`` with
  ``r = ∇ − (F + λI) M⁻¹∇`` over the whole network (F from the Fisher minibatch's per-sample
  gradients: ``F v = (1/m) Σ_n vec(D_n) ⟨D_n, v⟩``);
* ``"spectral"``: the eigenvector of ``M_l`` with the smallest eigenvalue — for KFAC's
  ``M_l = (A_l + π√λ I) ⊗ (G_l + √λ/π I)`` the product ``q_G q_Aᵀ`` of the eigenvectors of the
  smallest eigenvalues of the factors ``A_l`` and ``G_l`` (the direction that ``M_l⁻¹``
  amplifies most);
* ``"krylov"``: two vectors per layer, ``1`` and ``M_l⁻¹ 1`` (the Nicolaides space enriched by
  one Krylov step of the fine preconditioner); ``"krylov_residual"``: ``M_l⁻¹ r_l`` and
  ``M_l⁻² r_l``;
* ``"nicolaides_layerwise"``: a control, not a variant of the paper — Nicolaides' vectors with
  ``E`` replaced by its diagonal ``diag(1̂_lᵀ F_ll 1̂_l)``: each layer's constant correction
  with its own curvature and none between layers. If it trains like ``"nicolaides"``, the
  gain of the latter does not come from the cross-layer curvature.

Where the variants come from: the paper's text beyond its abstract was not retrievable here
(the stored copy of arXiv 2303.18083 ends after the first page); the coarse spaces above are
those of the authors' public implementation (github.com/Abdoulaye-Koroko/natural-gradients,
``optimizers/twolevel_kfac.py``, read for its ideas): ``nicolaides``, ``residual``,
``spectral`` and ``tpselepedis`` coarse spaces and a ``krylov`` option that adds ``M_l⁻¹ r₁`` to
the first vector ``r₁`` of ``nicolaides`` or ``residual``, one (or two) vectors per layer, all
combined additively as above (right-hand side ``R₀∇``). Differences here: the coarse matrix is
recomputed every step from the latest Fisher capture (there: an exponential average, refreshed
every ``T_cov`` steps), the damping term is the exact Galerkin ``λ R₀R₀ᵀ`` (there ``λ·N_l`` on
the diagonal with vectors scaled to unit max-norm), and the Kronecker cross-layer factors of
``"tselepidis"`` reduce positions by a per-sample sum/mean (there: nearest-neighbour resampling
of the positions to the smaller layer's). ``"kfac_direction"`` and ``"gradient"`` are this
project's own (the span of ``{∇_l, M_l⁻¹∇_l}`` is the ``krylov`` space started from ``∇_l``
instead of ``1``; these two take one vector of it each). The paper's finding, that none of
them gains much over KFAC, is what ``reproduce --experiment two_level`` measures
(:mod:`core.paper.study_two_level`).

In the optimizer (:class:`core.training.optim.TrainingOptimizer` with a two-level name), ``M``
is KFAC's damped inverse from the curvature average (:mod:`core.training.curvature`; its
factors give the ``"spectral"`` vectors, once per inverse refresh) and ``F`` (coarse matrix,
residual) is the latest Fisher capture's (refreshed every ``t_cov`` steps, like KFAC's
factors); the coarse space is rebuilt every step
from the current gradient. KL-clipping and momentum act on the whole two-level direction ``d``
as on KFAC's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from .defaults import TWO_LEVEL_OPTIMIZERS

__all__ = [
    "COARSE_SPACES",
    "VARIANTS",
    "TWO_LEVEL_VARIANTS",
    "coarse_basis",
    "coarse_vectors",
    "spectral_vectors",
    "fisher_products",
    "per_sample_projections",
    "coarse_matrix",
    "kronecker_coarse_matrix",
    "coarse_correction",
    "two_level_directions",
]

#: the coarse spaces of one vector per layer built from ``∇`` and ``M⁻¹∇`` alone (what the
#: network-level view compares, :mod:`core.views.network_fisher`)
COARSE_SPACES: tuple[str, ...] = ("kfac_direction", "gradient", "nicolaides")
#: every variant (module docstring), in the order of :data:`TWO_LEVEL_OPTIMIZERS`
VARIANTS: tuple[str, ...] = (
    *COARSE_SPACES,
    "residual",
    "spectral",
    "krylov",
    "krylov_residual",
    "tselepidis",
    "nicolaides_layerwise",
)

#: optimizer name → its variant
TWO_LEVEL_VARIANTS: dict[str, str] = dict(zip(TWO_LEVEL_OPTIMIZERS, VARIANTS, strict=True))

#: a layer's further coarse vector is dropped when less than this fraction of its norm lies
#: outside the span of the layer's earlier ones (it adds nothing to the coarse space)
_INDEPENDENCE_TOL = 1e-8

Precondition = Callable[[str, torch.Tensor], torch.Tensor]


class _Captured(Protocol):
    """What the projections need of a layer's capture (a
    :class:`core.engine.capture.LayerCapture`)."""

    @property
    def a(self) -> torch.Tensor: ...

    @property
    def g(self) -> torch.Tensor: ...


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown coarse space {variant!r}; choose one of {VARIANTS}")
    return variant


def _check_damping(damping: float) -> float:
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    return float(damping)


def _positions(lc: _Captured, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ā, γ)`` as float64 ``(m, T, d)`` tensors (``T = 1`` for a 2-D capture)."""
    a = lc.a.to(device, torch.float64)
    g = lc.g.to(device, torch.float64)
    if a.dim() == 2:  # one position per sample
        a, g = a[:, None], g[:, None]
    return a, g


def _stack(v: torch.Tensor) -> torch.Tensor:
    """A layer's coarse vectors as a ``(k, dg, da)`` stack (one ``(dg, da)`` matrix: k = 1)."""
    return v[None] if v.ndim == 2 else v


def fisher_products(
    captures: Mapping[str, _Captured], vectors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``F v`` per layer (float64, (dg, da)) for the whole-network Fisher of the captures,
    ``F = (1/m) Σ_n vec(D_n) vec(D_n)ᵀ``: ``w_n = Σ_l ⟨D_{n,l}, V_l⟩`` (one projection of the
    per-sample gradients), then ``(F v)_l = (1/m) Σ_n w_n D_{n,l} = (1/m) Σ_{n,t} w_n γ_{n t}
    ā_{n t}ᵀ``. Layers missing from ``vectors`` count as zero blocks of ``v``."""
    names = list(captures)
    missing = [n for n in vectors if n not in captures]
    if missing:
        raise ValueError(f"no capture of layer(s) {missing} for the Fisher product")
    if not vectors:
        raise ValueError("the Fisher product needs at least one layer's vector")
    device = next(iter(vectors.values())).device
    w: torch.Tensor | None = None
    for name, v in vectors.items():
        a, g = _positions(captures[name], device)
        if v.shape != (g.shape[-1], a.shape[-1]):
            raise ValueError(
                f"vector of layer {name!r} has shape {tuple(v.shape)}, the layer's gradient "
                f"({g.shape[-1]}, {a.shape[-1]})"
            )
        part = ((g @ v.to(torch.float64)) * a).sum(dim=(1, 2))
        w = part if w is None else w + part
    assert w is not None
    out = {}
    for name in names:
        a, g = _positions(captures[name], device)
        out[name] = torch.einsum("n,ntg,nta->ga", w, g, a) / a.shape[0]
    return out


def _residual_vectors(
    gradients: Mapping[str, torch.Tensor],
    kfac_directions: Mapping[str, torch.Tensor],
    captures: Mapping[str, _Captured],
    damping: float,
    precondition: Precondition,
) -> dict[str, torch.Tensor]:
    """``M_l⁻¹ r_l`` with ``r = ∇ − (F + λI) M⁻¹∇`` (whole network)."""
    d = {n: kfac_directions[n].to(torch.float64) for n in gradients}
    fd = fisher_products(captures, d)
    return {
        n: precondition(n, gradients[n].to(torch.float64) - fd[n].to(d[n].device) - damping * d[n])
        for n in gradients
    }


def spectral_vectors(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The ``"spectral"`` coarse vector of each layer from its KFAC factors ``(A, G)``:
    ``q_G q_Aᵀ`` (dg × da, float64), the eigenvector of ``A ⊗ G`` (and of any damping of it by
    multiples of the identity) with the smallest eigenvalue. It changes only when the factors
    do, so an optimizer computes it once per inverse refresh, not at every step."""
    out = {}
    for name, (a, g) in factors.items():
        qa = torch.linalg.eigh(a.to(torch.float64)).eigenvectors[:, 0]
        qg = torch.linalg.eigh(g.to(torch.float64)).eigenvectors[:, 0]
        out[name] = torch.outer(qg, qa)
    return out


def coarse_vectors(
    variant: str,
    gradients: Mapping[str, torch.Tensor],
    kfac_directions: Mapping[str, torch.Tensor],
    *,
    captures: Mapping[str, _Captured] | None = None,
    damping: float | None = None,
    precondition: Precondition | None = None,
    spectral: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The coarse vectors of ``variant`` per layer (module docstring): a (dg, da) matrix, or
    a (k, dg, da) stack for the Krylov spaces. ``"residual"`` and the Krylov spaces need
    ``precondition(name, V) = M_l⁻¹ V`` (and ``"residual"`` the ``captures`` and ``damping``
    of its Fisher product); ``"spectral"`` takes each layer's vector from its KFAC factors,
    :func:`spectral_vectors`."""
    _check_variant(variant)
    if variant == "kfac_direction":
        return dict(kfac_directions)
    if variant == "gradient":
        return dict(gradients)
    if variant in ("nicolaides", "tselepidis", "nicolaides_layerwise"):
        return {name: torch.ones_like(v) for name, v in gradients.items()}
    if variant == "spectral":
        if spectral is None:
            raise ValueError(
                "the spectral coarse space needs each layer's vector from its KFAC factors "
                "(A, G): spectral_vectors(factors)"
            )
        missing = [n for n in gradients if n not in spectral]
        if missing:
            raise ValueError(f"no KFAC factors of layer(s) {missing} for the spectral space")
        return {n: spectral[n].to(v.device) for n, v in gradients.items()}
    if precondition is None:
        raise ValueError(f"the {variant!r} coarse space needs the fine solve M⁻¹ (precondition)")
    if variant == "krylov":
        first = {name: torch.ones_like(v, dtype=torch.float64) for name, v in gradients.items()}
    else:  # residual, krylov_residual
        if captures is None or damping is None:
            raise ValueError(f"the {variant!r} coarse space needs the captures and the damping")
        first = _residual_vectors(
            gradients, kfac_directions, captures, _check_damping(damping), precondition
        )
        if variant == "residual":
            return first
    return {n: torch.stack([v, precondition(n, v).to(v.device)]) for n, v in first.items()}


def coarse_basis(vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's coarse vectors orthonormalised (Frobenius inner product; Gram–Schmidt in
    float64, in the given order), so that ``R₀R₀ᵀ = I`` (layers are disjoint). A (dg, da)
    input gives a unit (dg, da) matrix, a (k, dg, da) stack a stack of its independent
    directions. A zero vector, or one in the span of the layer's earlier ones, spans nothing
    and is left out (a layer whose gradient vanishes); ``ValueError`` for no vectors at all
    (k = 0) or a non-finite entry."""
    if not vectors:
        raise ValueError(
            "the coarse space is empty (k = 0): give at least one layer's coarse vector"
        )
    basis: dict[str, torch.Tensor] = {}
    for name, v in vectors.items():
        if v.ndim not in (2, 3):
            raise ValueError(
                f"coarse vector of layer {name!r} must be a (dg, da) matrix or a (k, dg, da) stack"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"coarse vector of layer {name!r} has non-finite entries; the gradient or "
                "KFAC direction it was built from diverged — lower the learning rate"
            )
        kept: list[torch.Tensor] = []
        for u in _stack(v).to(torch.float64):
            norm0 = torch.linalg.norm(u)
            for q in kept:
                u = u - (q * u).sum() * q
            norm = torch.linalg.norm(u)
            if float(norm) > _INDEPENDENCE_TOL * float(norm0) and float(norm) > 0:
                kept.append(u / norm)
        if kept:
            basis[name] = kept[0] if v.ndim == 2 else torch.stack(kept)
    return basis


def per_sample_projections(
    captures: Mapping[str, _Captured], basis: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``Z`` (m × k, float64): ``Z_{n i} = ⟨V_i, D_n⟩ = Σ_t γ_{n t}ᵀ V_i ā_{n t}``, the
    projection of sample ``n``'s gradient on coarse vector ``i`` (layer order of ``basis``,
    a layer's stack in its order)."""
    if not basis:
        raise ValueError("the coarse basis is empty (k = 0)")
    columns = []
    for name, v in basis.items():
        if name not in captures:
            raise ValueError(f"no capture of layer {name!r} for its coarse vector")
        a, g = _positions(captures[name], v.device)
        if v.shape[-2:] != (g.shape[-1], a.shape[-1]):
            raise ValueError(
                f"coarse vector of layer {name!r} has shape {tuple(v.shape)}, the layer's "
                f"gradient ({g.shape[-1]}, {a.shape[-1]})"
            )
        for u in _stack(v).to(torch.float64):
            columns.append(((g @ u) * a).sum(dim=(1, 2)))
    return torch.stack(columns, dim=1)


def coarse_matrix(z: torch.Tensor) -> torch.Tensor:
    """``R₀ F R₀ᵀ = Zᵀ Z / m`` (k × k) from :func:`per_sample_projections`."""
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"Z must be an (m, k) matrix with m, k ≥ 1, got {tuple(z.shape)}")
    return z.T @ z / z.shape[0]


def kronecker_coarse_matrix(
    captures: Mapping[str, _Captured], basis: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``R₀ F_K R₀ᵀ`` (k × k) for the Kronecker-factored whole-network Fisher ``F_K`` with
    blocks ``Â_ij ⊗ Ĝ_ij`` (module docstring, ``"tselepidis"``): ``⟨B_i, B_j⟩ / m²`` with
    ``(B_i)_{n n'} = ĝ_{n,i}ᵀ V_i â_{n',i}``."""
    if not basis:
        raise ValueError("the coarse basis is empty (k = 0)")
    bs = []
    m: int | None = None
    for name, v in basis.items():
        if name not in captures:
            raise ValueError(f"no capture of layer {name!r} for its coarse vector")
        a, g = _positions(captures[name], v.device)
        if m is not None and a.shape[0] != m:
            raise ValueError("the captures of the layers have different numbers of samples")
        m = a.shape[0]
        a_hat, g_hat = a.mean(dim=1), g.sum(dim=1)  # per-sample â_n, ĝ_n
        for u in _stack(v).to(torch.float64):
            if u.shape != (g_hat.shape[1], a_hat.shape[1]):
                raise ValueError(
                    f"coarse vector of layer {name!r} has shape {tuple(u.shape)}, the layer's "
                    f"gradient ({g_hat.shape[1]}, {a_hat.shape[1]})"
                )
            bs.append((g_hat @ u @ a_hat.T).reshape(-1))
    assert m is not None
    b = torch.stack(bs)
    return b @ b.T / m**2


def coarse_correction(
    basis: Mapping[str, torch.Tensor],
    gradients: Mapping[str, torch.Tensor],
    e: torch.Tensor,
    damping: float,
) -> dict[str, torch.Tensor]:
    """``R₀ᵀ (E + λI)⁻¹ R₀ ∇`` per layer of ``basis`` (float64), with
    ``(R₀∇)_i = ⟨V_i, ∇_{l(i)}⟩`` and the k × k coarse matrix ``E`` (``R₀FR₀ᵀ`` is
    :func:`coarse_matrix` of :func:`per_sample_projections`)."""
    _check_damping(damping)
    stacks = {n: _stack(basis[n]).to(torch.float64) for n in basis}
    k = sum(s.shape[0] for s in stacks.values())
    if e.shape != (k, k):
        raise ValueError(f"the coarse matrix is {tuple(e.shape)} for {k} coarse vectors")
    r0g = torch.cat(
        [(s * gradients[n].to(torch.float64)).sum(dim=(1, 2)) for n, s in stacks.items()]
    ).to(e.device)
    eye = torch.eye(k, dtype=e.dtype, device=e.device)
    c = torch.linalg.solve(e + damping * eye, r0g)
    out, i = {}, 0
    for n, s in stacks.items():
        ci = c[i : i + s.shape[0]].to(s.device)
        out[n] = (ci[:, None, None] * s).sum(dim=0)
        i += s.shape[0]
    return out


def two_level_directions(
    variant: str,
    gradients: Mapping[str, torch.Tensor],
    kfac_directions: Mapping[str, torch.Tensor],
    captures: Mapping[str, _Captured],
    damping: float,
    *,
    precondition: Precondition | None = None,
    spectral: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``d = M⁻¹∇ + R₀ᵀ(E + λI)⁻¹R₀∇`` per layer (float64), given each layer's gradient
    ``∇_l`` and KFAC direction ``M_l⁻¹∇_l`` as (dg, da) matrices and the Fisher minibatch's
    captures (the per-sample gradients of ``F``); ``E = R₀FR₀ᵀ``, its Kronecker-factored
    counterpart for ``"tselepidis"``, its diagonal for ``"nicolaides_layerwise"``.
    ``precondition`` and ``spectral``: as :func:`coarse_vectors` needs them."""
    _check_damping(damping)
    vectors = coarse_vectors(
        variant,
        gradients,
        kfac_directions,
        captures=captures,
        damping=damping,
        precondition=precondition,
        spectral=spectral,
    )
    basis = coarse_basis(vectors)
    out = {n: p.to(torch.float64) for n, p in kfac_directions.items()}
    if not basis:  # every coarse vector vanished: nothing to correct
        return out
    if variant == "tselepidis":
        e = kronecker_coarse_matrix(captures, basis)
    else:
        e = coarse_matrix(per_sample_projections(captures, basis))
        if variant == "nicolaides_layerwise":
            e = torch.diag(torch.diagonal(e))
    for n, c in coarse_correction(basis, gradients, e, damping).items():
        out[n] = out[n] + c.to(out[n].device)
    return out
