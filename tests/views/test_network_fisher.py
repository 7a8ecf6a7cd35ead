"""The network-level view (issue 19): per-sample gradients, the whole Fisher, KFAC and two-level
KFAC as matrices and directions, against dense float64 oracles."""

from __future__ import annotations

import pytest
import torch

from core.training.models import build_model, per_sample_nll
from core.views.network_fisher import (
    DENSE_PARAMETER_LIMIT,
    direction_errors,
    matrix_errors,
    network_curvature,
    network_directions,
    network_heatmaps,
    network_matrices,
)

LAM = 0.2


def setup():
    model = build_model([7, 4, 2], input_dim=7, loss="bce", seed=2, dtype=torch.float64)
    x = torch.rand(12, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x, network_curvature(model, x, x, loss="bce", fisher="empirical")


def test_rows_are_the_per_sample_gradients_and_the_gradient_their_mean():
    model, x, curv = setup()
    params = list(model.parameters())
    for n in range(x.shape[0]):
        nll = per_sample_nll(model(x[n : n + 1]), x[n : n + 1], "bce").sum()
        grads = torch.autograd.grad(nll, params)
        # layer order: weight, bias per layer; vec([∇W | ∇b]) column-major
        want = torch.cat(
            [torch.cat([w, b[:, None]], 1).T.reshape(-1) for w, b in zip(grads[::2], grads[1::2])]
        )
        assert torch.allclose(curv.j[n], want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(curv.gradient(), curv.j.mean(0), rtol=1e-12, atol=1e-14)


def test_directions_match_the_dense_matrices():
    _, _, curv = setup()
    dirs = network_directions(curv, LAM)
    mats = network_matrices(curv, LAM)
    g = curv.gradient()
    f = curv.j.T @ curv.j / curv.m
    eye = torch.eye(curv.n, dtype=torch.float64)
    assert torch.allclose(mats["exact"], f + LAM * eye)
    assert torch.allclose(dirs["exact"], torch.linalg.solve(f + LAM * eye, g), rtol=1e-10)
    for name, matrix in mats.items():
        assert torch.allclose(dirs[name], torch.linalg.solve(matrix, g), rtol=1e-8), name
    errors = direction_errors(dirs).set_index("direction")
    # the exact block diagonal is closer to the whole Fisher than KFAC, as matrices
    merr = matrix_errors(mats).set_index("matrix")["relative_frobenius_error"]
    assert merr["exact_block"] < merr["kfac"]
    assert errors.loc["kfac", "relative_error"] > 0
    assert set(errors.index) == set(mats) - {"exact"}
    fig = network_heatmaps(mats)
    assert len(fig.data) == len(mats)


def test_the_dense_matrices_are_refused_for_large_networks():
    model = build_model([196, 16, 8], input_dim=196, loss="bce", dtype=torch.float64)
    x = torch.rand(4, 196, dtype=torch.float64)
    curv = network_curvature(model, x, x, loss="bce")
    assert curv.n > DENSE_PARAMETER_LIMIT
    with pytest.raises(ValueError, match="at most"):
        network_matrices(curv, LAM)
    assert set(direction_errors(network_directions(curv, LAM))["direction"]) >= {"kfac"}
    with pytest.raises(ValueError, match="damping"):
        network_directions(curv, 0.0)
