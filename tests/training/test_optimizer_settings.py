"""Every optimizer setting reaches the update (issue 22): one or two steps of each optimizer
from fixed gradients, compared with the update written out by hand in float64.

Only public behaviour is used: ``build_optimizer(model, OptimizerConfig(...))``, gradients set
on the parameters, ``step``, and the parameters after it. A setting that is dropped on its
way to ``torch.optim`` (momentum, Adam's β₁, weight decay, the learning rate) changes the
parameters by a different amount than the formula, and the test says by how much.
"""

from __future__ import annotations

import pytest
import torch

from core.training.models import Autoencoder
from core.training.optim import OptimizerConfig, build_optimizer

ADAM_BETA2 = 0.999  # torch's default, the second moment's decay (not a setting of ours)
ADAM_EPS = 1e-8  # torch's default


def _model() -> Autoencoder:
    return Autoencoder([6, 3, 2], "bce", seed=0)


def _params64(model) -> list[torch.Tensor]:
    return [p.detach().to(torch.float64).clone() for p in model.parameters()]


def _grads(model, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        scale * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()
    ]


def _step(opt, model, grads, x) -> None:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.to(p.dtype).clone()
    opt.step(x, x)


def _assert_params(model, want: list[torch.Tensor], rtol: float = 1e-5) -> None:
    for p, w in zip(model.parameters(), want, strict=True):
        got = p.detach().to(torch.float64)
        err = float((got - w).abs().max())
        assert err <= rtol * float(w.abs().max()) + 1e-7, err


def _x() -> torch.Tensor:
    return torch.rand(16, 6, generator=torch.Generator().manual_seed(1))


def test_sgd_step_uses_lr_momentum_and_weight_decay():
    lr, mom, wd = 0.05, 0.7, 0.1
    model = _model()
    opt = build_optimizer(
        model, OptimizerConfig("sgd", lr=lr, momentum=mom, weight_decay=wd), loss="bce"
    )
    theta = _params64(model)
    g1, g2 = _grads(model, 1), _grads(model, 2)
    x = _x()
    # torch's SGD: d = g + wd·θ; b₁ = d₁, b₂ = μ·b₁ + d₂; θ ← θ − lr·b
    bufs = []
    for t, g in enumerate((g1, g2)):
        _step(opt, model, g, x)
        for i, (th, gi) in enumerate(zip(theta, g, strict=True)):
            d = gi + wd * th
            if t == 0:
                bufs.append(d)
            else:
                bufs[i] = mom * bufs[i] + d
            theta[i] = th - lr * bufs[i]
        _assert_params(model, theta)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adam_step_uses_momentum_as_beta1_and_weight_decay(wd):
    lr, beta1 = 0.01, 0.6
    model = _model()
    cfg = OptimizerConfig("adam", lr=lr, momentum=beta1, weight_decay=wd)
    opt = build_optimizer(model, cfg, loss="bce")
    theta = _params64(model)
    x = _x()
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for t, seed in enumerate((3, 4, 5), start=1):
        g = _grads(model, seed)
        _step(opt, model, g, x)
        for i, (th, gi) in enumerate(zip(theta, g, strict=True)):
            d = gi + wd * th  # torch.optim.Adam's weight_decay: L2 added to the gradient
            m[i] = beta1 * m[i] + (1 - beta1) * d
            v[i] = ADAM_BETA2 * v[i] + (1 - ADAM_BETA2) * d * d
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - ADAM_BETA2**t)
            theta[i] = th - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
        _assert_params(model, theta)


def test_adam_first_step_with_gradients_near_eps():
    """|g| ≈ ε: the first Adam step is lr·g/(|g| + ε), not lr·sign(g)."""
    lr = 0.01
    model = _model()
    opt = build_optimizer(model, OptimizerConfig("adam", lr=lr, momentum=0.9), loss="bce")
    theta = _params64(model)
    g = _grads(model, 6, scale=ADAM_EPS)
    _step(opt, model, g, _x())
    want = [th - lr * gi / (gi.abs() + ADAM_EPS) for th, gi in zip(theta, g, strict=True)]
    _assert_params(model, want, rtol=1e-4)


@pytest.mark.parametrize("name", ["kfac", "kpsvd"])
@pytest.mark.parametrize("mom", [0.0, 0.8])
def test_natural_gradient_momentum_reaches_the_sgd_step(name, mom):
    """The curvature is refreshed at step 0 only (t_cov = t_inv = 100) and there is no KL
    clip, so the same gradient twice is preconditioned to the same P: the second update is
    lr·(μ·P + P) = (1 + μ) × the first."""
    lr = 0.1
    model = _model()
    cfg = OptimizerConfig(
        name, lr=lr, damping=0.1, momentum=mom, kl_clip=None, t_cov=100, t_inv=100
    )
    opt = build_optimizer(model, cfg, loss="bce", seed=0)
    x = _x()
    g = _grads(model, 7)
    before = _params64(model)
    _step(opt, model, g, x)
    mid = _params64(model)
    _step(opt, model, g, x)
    after = _params64(model)
    for b, mi, a in zip(before, mid, after, strict=True):
        first, second = mi - b, a - mi
        assert float(first.abs().max()) > 1e-4  # a real update, not a no-op
        torch.testing.assert_close(second, (1.0 + mom) * first, rtol=1e-4, atol=1e-7)


def test_natural_gradient_lr_scales_the_update():
    """Same curvature, same gradient, no KL clip, no momentum: the update is linear in lr."""
    updates = []
    for lr in (0.1, 0.3):
        model = _model()
        cfg = OptimizerConfig("kfac", lr=lr, damping=0.1, momentum=0.0, kl_clip=None)
        opt = build_optimizer(model, cfg, loss="bce", seed=0)
        before = _params64(model)
        _step(opt, model, _grads(model, 8), _x())
        updates.append([a - b for a, b in zip(_params64(model), before, strict=True)])
    for u1, u3 in zip(*updates, strict=True):
        torch.testing.assert_close(u3, 3.0 * u1, rtol=1e-4, atol=1e-7)
    assert all(float(u.abs().max()) > 1e-4 for u in updates[0])  # a real update
