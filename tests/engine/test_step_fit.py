"""The Kronecker product fitted to the damped inverse (core/engine/step_fit.py) against dense
float64 oracles: (F + λI)⁻¹ by a dense solve, each least-squares step by lstsq on the explicit
linear map of the unknown factor."""

from __future__ import annotations

import pytest
import torch

from core.engine.direction import direction_metrics
from core.engine.fisher import LayerFisher
from core.engine.methods import approximate
from core.engine.step_fit import (
    damped_targets,
    fit_step_inverse,
    r_step,
    s_step,
    step_objective,
)

M, DA, DG = 20, 5, 4


@pytest.fixture(scope="module")
def fisher():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(M, DA, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(M, DG, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.0, DG)
    return LayerFisher(a, g)


def dense_fisher(f: LayerFisher) -> torch.Tensor:
    out = torch.zeros(DA * DG, DA * DG, dtype=torch.float64)
    for ai, gi in zip(f.a, f.g, strict=True):
        out += torch.kron(torch.outer(ai, ai), torch.outer(gi, gi))
    return out / f.m


def vec(v: torch.Tensor) -> torch.Tensor:
    return v.T.reshape(-1)


def probes(seed: int = 5, p: int = 9) -> torch.Tensor:
    return torch.randn(
        p, DG, DA, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def test_targets_are_the_dense_damped_inverse(fisher):
    v, lam = probes(), 0.05
    dense = torch.linalg.inv(dense_fisher(fisher) + lam * torch.eye(DA * DG, dtype=torch.float64))
    got = damped_targets(fisher, v, lam)
    for j in range(v.shape[0]):
        torch.testing.assert_close(vec(got[j]), dense @ vec(v[j]))


def test_each_step_is_the_least_squares_solution(fisher):
    """Φ is linear in each factor: build that map column by column (basis matrices) and solve
    the least-squares problem with lstsq."""
    v = probes()
    y = damped_targets(fisher, v, 0.05)
    s = torch.randn(DG, DG, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = torch.randn(DA, DA, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def lstsq(apply, shape):
        cols = []
        for k in range(shape[0] * shape[1]):
            e = torch.zeros(shape[0] * shape[1], dtype=torch.float64)
            e[k] = 1.0
            cols.append(apply(e.reshape(shape)).reshape(-1))
        design = torch.stack(cols, 1)
        return torch.linalg.lstsq(design, y.reshape(-1)).solution.reshape(shape)

    torch.testing.assert_close(r_step(s, v, y), lstsq(lambda x: s @ v @ x.T, (DA, DA)))
    torch.testing.assert_close(s_step(r, v, y), lstsq(lambda x: x @ v @ r.T, (DG, DG)))


def test_fit_never_increases_the_objective_and_beats_kfac_on_the_step(fisher):
    lam = 0.05
    fit = fit_step_inverse(fisher, lam, iters=15)
    history = fit.info["objective"]
    assert all(b <= a * (1 + 1e-10) for a, b in zip(history, history[1:], strict=False))
    assert history[-1] < 0.9 * history[0]
    torch.testing.assert_close(fit.r, fit.r.T)
    torch.testing.assert_close(fit.s, fit.s.T)
    # the default probes: per-sample gradients and the mean gradient
    v = fisher.mean_gradient()
    x = fisher.solve(v, lam)
    got = fit.apply(v)
    fitted = float(torch.linalg.norm(got - x) / torch.linalg.norm(x))
    kfac = direction_metrics(fisher, approximate("kfac", fisher.a, fisher.g), lam, mode="factored")
    assert fitted < kfac.error
    # its objective is that of the dense matrix R ⊗ S on the probes
    dense = torch.kron(fit.r, fit.s)
    v_all = torch.cat([fisher.g[:, :, None] * fisher.a[:, None, :], v[None]])
    y = damped_targets(fisher, v_all, lam)
    direct = sum(float(((dense @ vec(vj) - vec(yj)) ** 2).sum()) for vj, yj in zip(v_all, y))
    assert fit.info["objective_symmetric"] == pytest.approx(direct)
    assert step_objective(fit.r, fit.s, v_all, y) == pytest.approx(direct)


def test_large_damping_fits_identity_over_lambda(fisher):
    fit = fit_step_inverse(fisher, 1e6, iters=3)
    v = fisher.mean_gradient()
    want = v / 1e6
    assert float(torch.linalg.norm(fit.apply(v) - want) / torch.linalg.norm(want)) < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"iters": 0}, "iters"), ({"probes": torch.zeros(3, DA, DG)}, "probes must have shape")],
)
def test_refuses_bad_input(fisher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_step_inverse(fisher, 0.1, **kwargs)
