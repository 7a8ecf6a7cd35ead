"""Two-level KFAC (Koroko et al. 2023): the coarse matrix and the two-level direction against a
dense float64 Fisher built from per-sample gradients of a tiny network, the reduction to KFAC,
bad input, and the optimizers' steps (issue 19)."""

from __future__ import annotations

import math

import pytest
import torch

from core.engine.capture import capture
from core.engine.kron import factored_damping
from core.engine.methods import approximate
from core.training.data import load_dataset
from core.training.models import build_model, per_sample_nll
from core.training.optim import NonFiniteError, OptimizerConfig, build_optimizer
from core.training.two_level import (
    COARSE_SPACES,
    TWO_LEVEL_VARIANTS,
    coarse_basis,
    coarse_correction,
    coarse_matrix,
    coarse_vectors,
    per_sample_projections,
    two_level_directions,
)

LAM = 0.3


def vec(v: torch.Tensor) -> torch.Tensor:
    return v.T.reshape(-1)


def tiny():
    """A float64 6-4-2 autoencoder, a minibatch, its captures on the data's targets (empirical
    Fisher) and the minibatch gradient per layer as (dg, da)."""
    model = build_model([6, 4, 2], input_dim=6, loss="bce", seed=3, dtype=torch.float64)
    x = torch.rand(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    caps = capture(model, x, loss="bce", fisher="empirical", targets=x).layers
    model.zero_grad()
    per_sample_nll(model(x), x, "bce").mean().backward()
    layers = dict(model.named_modules())
    grads = {
        name: torch.cat([layers[name].weight.grad, layers[name].bias.grad[:, None]], dim=1)
        for name in caps
    }
    return model, x, caps, grads


def dense_per_sample_gradients(model, x) -> tuple[torch.Tensor, list[str], list[tuple]]:
    """Rows vec([∇W|∇b]) of each sample's NLL by a loop of autograd (the oracle's J)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    layers = dict(model.named_modules())
    rows = []
    for n in range(x.shape[0]):
        model.zero_grad()
        per_sample_nll(model(x[n : n + 1]), x[n : n + 1], "bce").sum().backward()
        rows.append(
            torch.cat(
                [
                    vec(torch.cat([layers[k].weight.grad, layers[k].bias.grad[:, None]], dim=1))
                    for k in names
                ]
            )
        )
    shapes = [(layers[k].weight.shape[0], layers[k].weight.shape[1] + 1) for k in names]
    return torch.stack(rows), names, shapes


def embed(basis, names, shapes) -> torch.Tensor:
    """R₀ (k × n) from per-layer coarse vectors."""
    rows = []
    for name in basis:
        parts = [
            vec(basis[k]) if k == name else torch.zeros(s[0] * s[1], dtype=torch.float64)
            for k, s in zip(names, shapes, strict=True)
        ]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def kfac_dense_inverse(caps, names) -> torch.Tensor:
    """M⁻¹ = blockdiag(((A + π√λ) ⊗ (G + √λ/π))⁻¹) densely (KFAC's factored damping)."""
    blocks = []
    for k in names:
        a, g = caps[k].a, caps[k].g
        r, s = factored_damping(a.T @ a / a.shape[0], g.T @ g / g.shape[0], LAM)
        blocks.append(torch.linalg.inv(torch.kron(r, s)))
    return torch.block_diag(*blocks)


def test_coarse_matrix_is_r0_f_r0t_of_the_dense_fisher():
    model, x, caps, grads = tiny()
    j, names, shapes = dense_per_sample_gradients(model, x)
    f = j.T @ j / x.shape[0]  # whole-network Fisher, cross-layer blocks included
    assert torch.linalg.norm(f[:30, 30:]) > 1e-3 * torch.linalg.norm(f)  # they are not zero
    basis = coarse_basis(coarse_vectors("gradient", grads, grads))
    r0 = embed(basis, names, shapes)
    assert torch.allclose(r0 @ r0.T, torch.eye(len(basis), dtype=torch.float64), atol=1e-14)
    e = coarse_matrix(per_sample_projections(caps, basis))
    assert torch.allclose(e, r0 @ f @ r0.T, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("space", COARSE_SPACES)
def test_two_level_direction_is_the_dense_formula(space):
    model, x, caps, grads = tiny()
    j, names, shapes = dense_per_sample_gradients(model, x)
    f = j.T @ j / x.shape[0]
    m_inv = kfac_dense_inverse(caps, names)
    g = torch.cat([vec(grads[k]) for k in names])
    kfac = {
        k: approximate("kfac", caps[k].a, caps[k].g).solve(grads[k], LAM, mode="factored")
        for k in names
    }
    assert torch.allclose(torch.cat([vec(kfac[k]) for k in names]), m_inv @ g, rtol=1e-10)
    got = two_level_directions(space, grads, kfac, caps, LAM)
    r0 = embed(coarse_basis(coarse_vectors(space, grads, kfac)), names, shapes)
    eye = torch.eye(r0.shape[0], dtype=torch.float64)
    want = m_inv @ g + r0.T @ torch.linalg.solve(r0 @ f @ r0.T + LAM * eye, r0 @ g)
    assert torch.allclose(torch.cat([vec(got[k]) for k in names]), want, rtol=1e-10)
    assert not torch.allclose(want, m_inv @ g, rtol=1e-3)  # the correction is not nothing


def test_a_coarse_space_that_adds_nothing_gives_kfacs_step():
    """Coarse vectors orthogonal to the gradient (R₀∇ = 0), or all zero, leave M⁻¹∇."""
    _, _, caps, grads = tiny()
    kfac = {k: 2.0 * v for k, v in grads.items()}  # any fine directions
    ortho = {}
    for k, v in grads.items():  # a random matrix minus its component along the gradient
        r = torch.randn(v.shape, generator=torch.Generator().manual_seed(4), dtype=v.dtype)
        ortho[k] = r - (r * v).sum() / (v * v).sum() * v
    basis = coarse_basis(ortho)
    corr = coarse_correction(basis, grads, per_sample_projections(caps, basis), LAM)
    assert all(float(c.abs().max()) < 1e-13 for c in corr.values())
    zero = {k: torch.zeros_like(v) for k, v in grads.items()}
    got = two_level_directions("gradient", zero, kfac, caps, LAM)
    assert all(torch.equal(got[k], kfac[k]) for k in kfac)


def test_bad_input_is_refused_with_clear_messages():
    _, _, caps, grads = tiny()
    with pytest.raises(ValueError, match=r"k = 0"):
        coarse_basis({})
    bad = {k: v.clone() for k, v in grads.items()}
    next(iter(bad.values()))[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        coarse_basis(bad)
    with pytest.raises(ValueError, match="unknown coarse space"):
        coarse_vectors("spectral", grads, grads)
    basis = coarse_basis(grads)
    with pytest.raises(ValueError, match="damping"):
        coarse_correction(basis, grads, per_sample_projections(caps, basis), 0.0)
    name = next(iter(grads))
    with pytest.raises(ValueError, match="shape"):
        per_sample_projections(caps, {name: torch.ones(2, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="no capture"):
        per_sample_projections(caps, {"nowhere": torch.ones(2, 2, dtype=torch.float64)})


def test_the_optimizer_step_is_the_two_level_direction():
    """One step, no momentum or KL-clipping: Δθ = −lr·d, d from the capture the optimizer took."""
    torch.manual_seed(0)
    model = build_model([6, 4, 2], input_dim=6, loss="bce", seed=3)
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(2))
    for name, space in TWO_LEVEL_VARIANTS.items():
        net = build_model([6, 4, 2], input_dim=6, loss="bce", seed=3)
        net.load_state_dict(model.state_dict())
        cfg = OptimizerConfig(name, lr=0.1, damping=LAM, kl_clip=None, momentum=0.0)
        opt = build_optimizer(net, cfg, loss="bce", seed=1)
        before = {k: p.detach().clone() for k, p in net.named_parameters()}
        opt.zero_grad()
        per_sample_nll(net(x), x, "bce").mean().backward()
        layers = dict(net.named_modules())
        grads = {
            k: torch.cat([layers[k].weight.grad, layers[k].bias.grad[:, None]], 1).double()
            for k in opt.layers
        }
        opt.step(x, x)
        caps = opt.preconditioner.last_capture.layers
        kfac = {
            k: approximate("kfac", caps[k].a.double(), caps[k].g.double()).solve(
                grads[k], LAM, mode="factored"
            )
            for k in grads
        }
        want = two_level_directions(space, grads, kfac, caps, LAM)
        for k, d in want.items():
            step = torch.cat(
                [
                    net.get_parameter(f"{k}.weight") - before[f"{k}.weight"],
                    (net.get_parameter(f"{k}.bias") - before[f"{k}.bias"])[:, None],
                ],
                dim=1,
            )
            assert torch.allclose(step.double(), -0.1 * d, rtol=1e-4, atol=1e-6), (name, k)


@pytest.mark.parametrize("name", list(TWO_LEVEL_VARIANTS))
def test_the_two_level_optimizers_train_curves_small(name):
    ds = load_dataset("curves-small", n_train=256, n_test=16)
    x = ds.x_train
    model = build_model("curves-small", input_dim=x.shape[1], loss="bce", seed=0)
    opt = build_optimizer(model, OptimizerConfig(name, lr=0.03, damping=1.0), loss="bce")
    losses = []
    for step in range(12):
        batch = x[(step % 4) * 64 : (step % 4 + 1) * 64]
        opt.zero_grad()
        loss = per_sample_nll(model(batch), batch, "bce").mean()
        loss.backward()
        opt.step(batch, batch)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_a_diverged_coarse_vector_is_a_non_finite_error():
    model = build_model([6, 4, 2], input_dim=6, loss="bce", seed=3)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(2))
    opt = build_optimizer(model, OptimizerConfig("kfac_two_level", lr=0.1), loss="bce")
    opt.zero_grad()
    per_sample_nll(model(x), x, "bce").mean().backward()
    opt._refresh(opt.preconditioner, x, x)
    opt.preconditioner.inverses[next(iter(opt.layers))].solve = lambda v: v * math.inf
    with pytest.raises(NonFiniteError, match="coarse correction"):
        opt._precondition_grads(opt.preconditioner)
