"""SWAN (Ma et al. 2024): GradNorm and GradWhitening against dense float64 oracles, and the
optimizer's step against a direct implementation (issue 19)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.training.models import per_sample_nll
from core.training.optim import OptimizerConfig, build_optimizer
from core.training.swan import NEWTON_SCHULZ_STEPS, grad_norm, grad_whitening, swan_direction


def matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64) * torch.linspace(
        0.5, 2.0, cols, dtype=torch.float64
    )


def eigh_inverse_sqrt(gram: torch.Tensor, cutoff: float = 1e-10) -> torch.Tensor:
    """(Gram)^{-1/2} on its range, from a dense eigendecomposition."""
    lam, u = torch.linalg.eigh(gram)
    keep = lam > cutoff * lam.max()
    return (u[:, keep] / lam[keep].sqrt()) @ u[:, keep].T


def test_grad_norm_standardises_every_row():
    v = matrix(5, 7)
    out = grad_norm(v)
    for p in range(5):  # loops over rows, the population std
        row = v[p]
        mean = sum(row.tolist()) / 7
        std = (sum((x - mean) ** 2 for x in row.tolist()) / 7) ** 0.5
        assert torch.allclose(out[p], (row - mean) / std, atol=1e-13)
    v[2] = 3.0  # a constant row (e.g. a dead unit's) stays zero instead of 0/0
    assert torch.equal(grad_norm(v)[2], torch.zeros(7, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(4, 9), (9, 4), (6, 6)])
def test_converged_whitening_equals_the_dense_inverse_square_root(shape):
    """Full-rank V: (VVᵀ)^{-1/2} V, from eigh of the Gram matrix on the output side."""
    v = matrix(*shape, seed=1)
    want = eigh_inverse_sqrt(v @ v.T) @ v
    assert torch.allclose(grad_whitening(v, steps=60), want, atol=1e-10)


def test_whitening_of_a_standardised_gradient_is_the_polar_factor_on_its_range():
    """Standardised rows are orthogonal to 1, so ṼṼᵀ is singular when dg ≥ da: the whitening is
    taken on the range (the pseudo-inverse square root), i.e. U Wᵀ over the nonzero σ."""
    v = grad_norm(matrix(8, 5, seed=2))
    assert int(torch.linalg.matrix_rank(v)) == 4
    want = eigh_inverse_sqrt(v @ v.T) @ v
    # 40 steps: the nonzero σ have converged; the round-off null direction (~1e-16) has grown
    # by 1.5⁴⁰ ≈ 1e7 only (it keeps growing: iterate to convergence, not forever)
    got = grad_whitening(v, steps=40)
    assert torch.allclose(got, want, atol=1e-7)
    assert torch.allclose(torch.linalg.svdvals(got)[:4], torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("steps", [0, 3, NEWTON_SCHULZ_STEPS])
def test_each_newton_schulz_count_maps_the_singular_values_by_the_scalar_iteration(steps):
    """X_k = U f_k(Σ/‖V‖_F) Wᵀ with f: x ↦ (3x − x³)/2, from the SVD."""
    v = matrix(6, 10, seed=3)
    u, sigma, wh = torch.linalg.svd(v, full_matrices=False)
    x = sigma / torch.linalg.norm(v)
    for _ in range(steps):
        x = 1.5 * x - 0.5 * x**3
    assert torch.allclose(grad_whitening(v, steps=steps), (u * x) @ wh, atol=1e-12)


def test_bad_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="2-D"):
        grad_norm(torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        grad_whitening(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="steps"):
        grad_whitening(torch.ones(2, 2), steps=-1)
    assert torch.equal(grad_whitening(torch.zeros(2, 3)), torch.zeros(2, 3))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 4, bias=False), nn.Linear(4, 6))


def _x(n: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(n, 6, generator=gen) > 0.5).float() * 0.8 + 0.1


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return per_sample_nll(model(x), x, "bce").mean()


def test_one_step_is_minus_lr_times_the_direction_of_each_layer_with_decoupled_decay():
    model, x = _net(), _x()
    lr, wd = 0.05, 0.1
    opt = build_optimizer(model, OptimizerConfig("swan", lr=lr, weight_decay=wd), loss="bce")
    opt.zero_grad()
    _loss(model, x).backward()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    want = []
    for layer in layers:
        w = layer.weight.detach().double()
        v = layer.weight.grad.double()
        if layer.bias is not None:
            w = torch.cat([w, layer.bias.detach().double()[:, None]], 1)
            v = torch.cat([v, layer.bias.grad.double()[:, None]], 1)
        # the direction in float64 from the definitions: standardise rows, whiten on the range
        vn = (v - v.mean(1, keepdim=True)) / v.std(1, correction=0, keepdim=True)
        u, s, wh = torch.linalg.svd(vn, full_matrices=False)
        x_s = s / torch.linalg.norm(vn)
        for _ in range(NEWTON_SCHULZ_STEPS):
            x_s = 1.5 * x_s - 0.5 * x_s**3
        want.append(w * (1 - lr * wd) - lr * (u * x_s) @ wh)
    opt.step(x, x)
    for layer, w_want in zip(layers, want, strict=True):
        w = layer.weight.detach().double()
        if layer.bias is not None:
            w = torch.cat([w, layer.bias.detach().double()[:, None]], 1)
        assert torch.allclose(w, w_want, atol=1e-6)
    assert not opt.base.state  # stateless: nothing kept between steps


def test_swan_direction_keeps_the_gradient_dtype():
    v = matrix(5, 8).float()
    d = swan_direction(v)
    assert d.dtype == torch.float32
    assert torch.allclose(d.double(), swan_direction(v.double()), atol=1e-5)


def test_a_few_steps_lower_the_loss():
    model, x = _net(), _x(128)
    opt = build_optimizer(model, OptimizerConfig("swan", lr=0.03), loss="bce")
    with torch.no_grad():
        before = float(_loss(model, x))
    for step in range(30):
        xb = x[(step * 32) % 128 :][:32]
        opt.zero_grad()
        _loss(model, xb).backward()
        opt.step(xb, xb)
    with torch.no_grad():
        assert float(_loss(model, x)) < 0.9 * before
