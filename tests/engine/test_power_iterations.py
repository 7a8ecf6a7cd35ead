"""Shampoo ↔ KPSVD power iterations (Morwani et al. 2024) against dense float64 oracles built
from ℛ(F) explicitly (issue 19)."""

from __future__ import annotations

import pytest
import torch

from core.engine.fisher import exact_fisher
from core.engine.kron import rearrange, unvec, vec
from core.engine.methods import approximate
from core.engine.power_iterations import (
    MAX_POWER_STEPS,
    power_iteration_curve,
    power_iteration_errors,
    power_iterations,
)


def batch(m: int, da: int, dg: int, seed: int = 0, positions: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    shape_a = (m, da) if positions is None else (m, positions, da)
    shape_g = (m, dg) if positions is None else (m, positions, dg)
    a = torch.randn(*shape_a, generator=gen, dtype=torch.float64)
    a[..., -1] = 1.0
    g = torch.randn(*shape_g, generator=gen, dtype=torch.float64)
    return a, g * torch.linspace(0.3, 2.0, dg, dtype=torch.float64)


def dense_power(f: torch.Tensor, da: int, dg: int, steps: int) -> list[torch.Tensor]:
    """The dense products c_k R_k ⊗ S_k, with ℛ(F) formed and multiplied as a matrix."""
    rf = rearrange(f, da, dg)
    r, s = vec(torch.eye(da, dtype=torch.float64)), vec(torch.eye(dg, dtype=torch.float64))
    out = []
    for k in range(steps + 1):
        if k:
            r, s = rf @ s, rf.T @ r
        prod = torch.kron(unvec(r, da, da), unvec(s, dg, dg))
        out.append((f * prod).sum() / (prod * prod).sum() * prod)
    return out


@pytest.mark.parametrize("positions", [None, 3])
def test_every_step_matches_the_dense_power_method(positions):
    da, dg = 4, 3
    a, g = batch(15, da, dg, seed=1, positions=positions)
    f = exact_fisher(a, g)
    got = power_iterations(a, g, 6)
    want = dense_power(f, da, dg, 6)
    assert len(got) == 7
    for k, (x, y) in enumerate(zip(got, want, strict=True)):
        assert torch.allclose(x.to_dense(), y, rtol=1e-10, atol=1e-12), k
    norm_f = torch.linalg.norm(f)
    errors = power_iteration_errors(a, g, 6)
    for e, y in zip(errors, want, strict=True):
        assert e == pytest.approx(float(torch.linalg.norm(f - y) / norm_f), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("positions", [None, 4])
def test_one_step_is_shampoo(positions):
    """k = 1: R₁ ∝ (1/m) Σ D_nᵀ D_n and S₁ ∝ (1/m) Σ D_n D_nᵀ (Shampoo's L and R, formed here
    from per-sample gradients in a loop), and with its Frobenius-optimal scale the product is
    the registry's shampoo exactly."""
    a, g = batch(12, 5, 4, seed=2, positions=positions)
    a3 = a if positions else a[:, None]
    g3 = g if positions else g[:, None]
    grads = [g3[n].T @ a3[n] for n in range(a.shape[0])]  # D_n = Γ_nᵀ A_n
    left = sum(d.T @ d for d in grads) / len(grads)
    right = sum(d @ d.T for d in grads) / len(grads)
    ((r1, s1),) = power_iterations(a, g, 1)[1].terms
    assert torch.allclose(r1 / r1.norm(), left / left.norm(), atol=1e-12)
    assert torch.allclose(s1 / s1.norm(), right / right.norm(), atol=1e-12)
    shampoo = approximate("shampoo", a, g).to_dense()
    assert torch.allclose(power_iterations(a, g, 1)[1].to_dense(), shampoo, rtol=1e-10)


def test_many_steps_give_rank_one_kpsvd():
    """Large k: the dense truncated SVD of ℛ(F), σ₁ mat(u₁) ⊗ mat(v₁)."""
    da, dg = 5, 4
    a, g = batch(30, da, dg, seed=3)
    f = exact_fisher(a, g)
    u, sigma, vh = torch.linalg.svd(rearrange(f, da, dg))
    best = sigma[0] * torch.kron(unvec(u[:, 0], da, da), unvec(vh[0], dg, dg))
    last = power_iterations(a, g, 60)[-1].to_dense()
    assert torch.allclose(last, best, rtol=1e-9, atol=1e-12 * float(best.abs().max()))
    curve = power_iteration_curve(a, g, 60)
    assert curve.errors[-1] == pytest.approx(curve.kpsvd, rel=1e-6)
    assert curve.kpsvd == pytest.approx(float(sigma[1:].norm() / sigma.norm()), rel=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_errors_fall_to_kpsvd_and_never_below(seed):
    """Non-increasing on random batches (observed, not a theorem: the module docstring says
    why), never below rank-1 KPSVD's (a theorem), and close to it after 40 steps."""
    gen = torch.Generator().manual_seed(100 + seed)
    m, da, dg = (
        int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((2, 30), (2, 7), (2, 7))
    )
    a, g = batch(m, da, dg, seed=seed)
    a = a * torch.exp(torch.randn(m, 1, generator=gen, dtype=torch.float64))  # uneven samples
    curve = power_iteration_curve(a, g, 40)
    e = curve.errors
    assert all(e[k + 1] <= e[k] + 1e-6 for k in range(len(e) - 1)), e
    assert min(e) >= curve.kpsvd - 1e-6
    assert e[1] <= e[0] + 1e-12 and e[-1] <= curve.kpsvd + 1e-3


def test_bad_input_is_refused_by_name():
    a, g = batch(5, 3, 2)
    for steps in (-1, 1.5, True, MAX_POWER_STEPS + 1):
        with pytest.raises(ValueError, match="steps must be an integer"):
            power_iteration_errors(a, g, steps)
    with pytest.raises(ValueError, match="Fisher block of this batch is zero"):
        power_iterations(a, torch.zeros_like(g), 2)
    with pytest.raises(ValueError, match="same number of samples"):
        power_iterations(a[:4], g, 2)
