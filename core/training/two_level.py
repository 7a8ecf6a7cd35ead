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

Coarse spaces (one vector per layer; the ``variant`` of :data:`COARSE_SPACES`):

* ``"kfac_direction"``: layer ``l``'s KFAC direction ``M_l⁻¹ ∇_l`` — the coarse correction then
  re-weights the layers' KFAC steps against each other by the whole Fisher;
* ``"gradient"``: the layer's gradient ``∇_l`` (the "residual" of the fine solve at 0);
* ``"nicolaides"``: the layer's constant vector ``1`` (Nicolaides' coarse space: one constant
  per subdomain).

How these relate to the paper: the paper compares several coarse spaces built per layer —
Nicolaides-type constant vectors, spectral ones (eigenvectors of the blocks) and ones built
from the gradient and the KFAC direction (residual-, Taylor- and Krylov-like), and additive as
well as other combinations of the two levels. From memory of the paper (its full text was not
at hand here): the three coarse spaces above are the simplest of its families and the additive
combination its basic one; the spectral and multi-vector (Krylov) spaces are not implemented.
Its finding, that none of them gains much over KFAC, is what ``reproduce --experiment
two_level`` measures (:mod:`core.paper.study_two_level`).

In the optimizer (:class:`core.training.optim.TrainingOptimizer` with a two-level name), ``M``
is KFAC's factored-damped inverse from the curvature average (:mod:`core.training.curvature`)
and the coarse matrix uses the latest Fisher capture's per-sample gradients (refreshed every
``t_cov`` steps, like KFAC's factors); the coarse space is rebuilt every step from the current
gradient. KL-clipping and momentum act
on the whole two-level direction ``d`` as on KFAC's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from .defaults import TWO_LEVEL_OPTIMIZERS

__all__ = [
    "COARSE_SPACES",
    "TWO_LEVEL_VARIANTS",
    "coarse_basis",
    "coarse_vectors",
    "per_sample_projections",
    "coarse_matrix",
    "coarse_correction",
    "two_level_directions",
]

COARSE_SPACES: tuple[str, ...] = ("kfac_direction", "gradient", "nicolaides")

#: optimizer name → its coarse space
TWO_LEVEL_VARIANTS: dict[str, str] = dict(zip(TWO_LEVEL_OPTIMIZERS, COARSE_SPACES, strict=True))


class _Captured(Protocol):
    """What the projections need of a layer's capture (a
    :class:`core.engine.capture.LayerCapture`)."""

    @property
    def a(self) -> torch.Tensor: ...

    @property
    def g(self) -> torch.Tensor: ...


def _check_variant(variant: str) -> str:
    if variant not in COARSE_SPACES:
        raise ValueError(f"unknown coarse space {variant!r}; choose one of {COARSE_SPACES}")
    return variant


def coarse_vectors(
    variant: str,
    gradients: Mapping[str, torch.Tensor],
    kfac_directions: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """One coarse vector per layer, as a (dg, da) matrix, for coarse space ``variant``
    (module docstring): the KFAC direction ``M_l⁻¹ ∇_l``, the gradient ``∇_l`` or ones."""
    _check_variant(variant)
    if variant == "kfac_direction":
        return dict(kfac_directions)
    if variant == "gradient":
        return dict(gradients)
    return {name: torch.ones_like(v) for name, v in gradients.items()}


def coarse_basis(vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The coarse vectors scaled to unit Frobenius norm (so ``R₀R₀ᵀ = I``: they live on
    distinct layers). A zero vector spans nothing and is left out (a layer whose gradient
    vanishes); ``ValueError`` for no vectors at all (k = 0) or a non-finite entry."""
    if not vectors:
        raise ValueError(
            "the coarse space is empty (k = 0): give at least one layer's coarse vector"
        )
    basis: dict[str, torch.Tensor] = {}
    for name, v in vectors.items():
        if v.ndim != 2:
            raise ValueError(f"coarse vector of layer {name!r} must be a (dg, da) matrix")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"coarse vector of layer {name!r} has non-finite entries; the gradient or "
                "KFAC direction it was built from diverged — lower the learning rate"
            )
        norm = torch.linalg.norm(v)
        if float(norm) > 0:
            basis[name] = v / norm
    return basis


def per_sample_projections(
    captures: Mapping[str, _Captured], basis: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``Z`` (m × k, float64): ``Z_{n i} = ⟨V_i, D_n⟩ = Σ_t γ_{n t}ᵀ V_i ā_{n t}``, the
    projection of sample ``n``'s gradient on coarse vector ``i`` (layer order of ``basis``)."""
    if not basis:
        raise ValueError("the coarse basis is empty (k = 0)")
    columns = []
    for name, v in basis.items():
        if name not in captures:
            raise ValueError(f"no capture of layer {name!r} for its coarse vector")
        lc = captures[name]
        a = lc.a.to(v.device, torch.float64)
        g = lc.g.to(v.device, torch.float64)
        if a.dim() == 2:  # one position per sample
            a, g = a[:, None], g[:, None]
        if v.shape != (g.shape[-1], a.shape[-1]):
            raise ValueError(
                f"coarse vector of layer {name!r} has shape {tuple(v.shape)}, the layer's "
                f"gradient ({g.shape[-1]}, {a.shape[-1]})"
            )
        columns.append(((g @ v.to(torch.float64)) * a).sum(dim=(1, 2)))
    return torch.stack(columns, dim=1)


def coarse_matrix(z: torch.Tensor) -> torch.Tensor:
    """``R₀ F R₀ᵀ = Zᵀ Z / m`` (k × k) from :func:`per_sample_projections`."""
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"Z must be an (m, k) matrix with m, k ≥ 1, got {tuple(z.shape)}")
    return z.T @ z / z.shape[0]


def coarse_correction(
    basis: Mapping[str, torch.Tensor],
    gradients: Mapping[str, torch.Tensor],
    z: torch.Tensor,
    damping: float,
) -> dict[str, torch.Tensor]:
    """``R₀ᵀ (R₀ F R₀ᵀ + λI)⁻¹ R₀ ∇`` per layer of ``basis`` (float64), with
    ``(R₀∇)_i = ⟨V_i, ∇_{l(i)}⟩`` and the coarse matrix from ``z``."""
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    names = list(basis)
    e = coarse_matrix(z)
    if e.shape[0] != len(names):
        raise ValueError(f"Z has {e.shape[0]} columns for {len(names)} coarse vectors")
    r0g = torch.stack(
        [(basis[n].to(torch.float64) * gradients[n].to(torch.float64)).sum() for n in names]
    ).to(e.device)
    eye = torch.eye(len(names), dtype=e.dtype, device=e.device)
    c = torch.linalg.solve(e + damping * eye, r0g)
    return {n: c[i] * basis[n].to(torch.float64) for i, n in enumerate(names)}


def two_level_directions(
    variant: str,
    gradients: Mapping[str, torch.Tensor],
    kfac_directions: Mapping[str, torch.Tensor],
    captures: Mapping[str, _Captured],
    damping: float,
) -> dict[str, torch.Tensor]:
    """``d = M⁻¹∇ + R₀ᵀ(R₀FR₀ᵀ + λI)⁻¹R₀∇`` per layer (float64), given each layer's gradient
    ``∇_l`` and KFAC direction ``M_l⁻¹∇_l`` as (dg, da) matrices and the Fisher minibatch's
    captures (the per-sample gradients of ``F``)."""
    basis = coarse_basis(coarse_vectors(variant, gradients, kfac_directions))
    out = {n: p.to(torch.float64) for n, p in kfac_directions.items()}
    if not basis:  # every coarse vector vanished: nothing to correct
        return out
    z = per_sample_projections(captures, basis)
    for n, c in coarse_correction(basis, gradients, z, damping).items():
        out[n] = out[n] + c.to(out[n].device)
    return out
