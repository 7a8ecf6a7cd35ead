"""Direction metrics (core/engine/direction.py) against dense float64 oracles: F built by loops
of Kronecker products, the damped inverses by dense solves, factored damping written out."""

from __future__ import annotations

import math

import pytest
import torch

from core.engine.approx import KroneckerSum
from core.engine.direction import (
    DIRECTION_MODES,
    damping_sweep,
    direction_metrics,
    log_grid,
)
from core.engine.fisher import LayerFisher
from core.engine.methods import METHODS, SHOWN, approximate

M, DA, DG = 24, 6, 5  # m < n = 30: F is singular, so λ decides the step along its null space


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(M, DA, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(M, DG, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, DG)
    return a, g


def dense_fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ), one Kronecker product per sample."""
    out = torch.zeros(DA * DG, DA * DG, dtype=torch.float64)
    for ai, gi in zip(a, g, strict=True):
        out += torch.kron(torch.outer(ai, ai), torch.outer(gi, gi))
    return out / a.shape[0]


def vec(v: torch.Tensor) -> torch.Tensor:
    return v.T.reshape(-1)  # column-major: entry i·dg + p is V[p, i]


def unvec(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(DA, DG).T


def factored_dense(terms: list[tuple[torch.Tensor, torch.Tensor]], lam: float) -> torch.Tensor:
    """(R₁ + π√λI) ⊗ (S₁ + √λ/πI) [+ R₂ ⊗ S₂], π = sqrt((tr R₁/da)/(tr S₁/dg))."""
    r1, s1 = terms[0]
    pi = math.sqrt((float(torch.trace(r1)) / DA) / (float(torch.trace(s1)) / DG))
    out = torch.kron(
        r1 + pi * lam**0.5 * torch.eye(DA, dtype=torch.float64),
        s1 + lam**0.5 / pi * torch.eye(DG, dtype=torch.float64),
    )
    for r, s in terms[1:]:
        out = out + torch.kron(r, s)
    return out


def oracle_direction(approx, f_dense: torch.Tensor, v: torch.Tensor, lam: float, mode: str):
    """(error, cosine, norm ratio) from dense solves."""
    eye = torch.eye(DA * DG, dtype=torch.float64)
    x = torch.linalg.solve(f_dense + lam * eye, vec(v))
    if mode == "factored" and isinstance(approx, KroneckerSum):
        system = factored_dense(approx.terms, lam)
    else:  # EKFAC and the exact block: factored damping is exact damping
        system = approx.to_dense() + lam * eye
    x_t = torch.linalg.solve(system, vec(v))
    nx, nt = torch.linalg.norm(x), torch.linalg.norm(x_t)
    return float(torch.linalg.norm(x_t - x) / nx), float(x @ x_t / (nx * nt)), float(nt / nx)


@pytest.fixture(scope="module")
def layer():
    a, g = batch()
    fisher = LayerFisher(a, g)
    return fisher, dense_fisher(a, g), {m: approximate(m, a, g) for m in SHOWN}


@pytest.mark.parametrize("method", SHOWN)
@pytest.mark.parametrize("mode", DIRECTION_MODES)
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 10.0])
def test_direction_matches_dense_oracle(layer, method, mode, lam):
    fisher, f_dense, approxes = layer
    approx = approxes[method]
    v = fisher.g.T @ fisher.a / M  # the batch gradient, written out
    got = direction_metrics(fisher, approx, lam, mode=mode)
    assert approx.safeguard.engaged == 0  # the oracle has no floor: it must not have engaged
    error, cosine, ratio = oracle_direction(approx, f_dense, v, lam, mode)
    assert got.error == pytest.approx(error, rel=1e-6, abs=1e-9)
    assert got.cosine == pytest.approx(cosine, rel=1e-8, abs=1e-9)
    assert got.norm_ratio == pytest.approx(ratio, rel=1e-8)
    assert (got.damping, got.mode) == (lam, mode)


def test_given_gradient_matches_oracle(layer):
    fisher, f_dense, approxes = layer
    v = torch.randn(DG, DA, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = direction_metrics(fisher, approxes["kfac"], 1e-2, mode="factored", v=v)
    error, cosine, ratio = oracle_direction(approxes["kfac"], f_dense, v, 1e-2, "factored")
    assert (got.error, got.cosine, got.norm_ratio) == pytest.approx((error, cosine, ratio))


def test_exact_block_against_itself_is_exact(layer):
    fisher, _, approxes = layer
    for mode in DIRECTION_MODES:
        got = direction_metrics(fisher, approxes["exact"], 1e-3, mode=mode)
        assert got.error < 1e-10 and got.cosine == pytest.approx(1.0, abs=1e-12)
        assert got.norm_ratio == pytest.approx(1.0, abs=1e-10)


def test_factored_differs_from_exact_damping_for_kfac(layer):
    """The two modes are different inverses (a mix-up of the modes would pass the others)."""
    fisher, _, approxes = layer
    factored = direction_metrics(fisher, approxes["kfac"], 1e-1, mode="factored")
    exact = direction_metrics(fisher, approxes["kfac"], 1e-1, mode="exact")
    assert abs(factored.error - exact.error) > 1e-3


def test_sweep_ties_every_method_at_large_damping(layer):
    """λ → ∞: both directions tend to ∇/λ, so every error tends to 0. Exact damping converges
    like ‖F − F̃‖/λ; factored damping only like 1/√λ, its cross terms
    √λ (π I ⊗ S + R/π ⊗ I) being no multiple of the identity (only sums of Kronecker products
    have them; EKFAC and Eva damp exactly in both modes)."""
    fisher, _, approxes = layer
    grid = log_grid(1e-4, 1e8, 4)  # 1e-4, 1, 1e4, 1e8
    for method in METHODS:
        sweep = damping_sweep(fisher, approxes[method], grid)
        assert [(s.damping, s.mode) for s in sweep] == [
            (lam, mode) for lam in grid for mode in DIRECTION_MODES
        ]
        by = {(s.damping, s.mode): s for s in sweep}
        assert by[1e8, "exact"].error < 1e-6 and by[1e8, "exact"].cosine > 1 - 1e-12, method
        assert by[1e8, "factored"].error < 1e-3, method
        decay = by[1e8, "factored"].error / by[1e4, "factored"].error
        if isinstance(approxes[method], KroneckerSum):
            assert decay == pytest.approx(1e-2, rel=0.2), method  # ∝ 1/√λ over 10⁴
        else:  # EKFAC, Eva: exact damping in both modes
            assert by[1e4, "factored"].error == pytest.approx(by[1e4, "exact"].error)


def test_log_grid():
    assert log_grid(1e-4, 1.0, 5) == (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    grid = log_grid(1e-3, 1.0, 7)
    assert grid[0] == 1e-3 and grid[-1] == 1.0 and list(grid) == sorted(grid)
    assert grid[1] == 0.00316  # three significant digits: stable names


@pytest.mark.parametrize(
    ("args", "match"),
    [((1.0, 1e-3, 4), "low < high"), ((1e-3, 1.0, 1), "at least 2"), ((0.0, 1.0, 3), "> 0")],
)
def test_log_grid_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        log_grid(*args)


def test_refuses_unknown_mode_and_empty_sweep(layer):
    fisher, _, approxes = layer
    with pytest.raises(ValueError, match="solve mode"):
        direction_metrics(fisher, approxes["kfac"], 1e-3, mode="diagonal")
    with pytest.raises(ValueError, match="at least one damping"):
        damping_sweep(fisher, approxes["kfac"], [])
