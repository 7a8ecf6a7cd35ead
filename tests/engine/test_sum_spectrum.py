"""The spectrum of a sum of Kronecker products through its factors' joint ranges
(core/engine/sum_spectrum.py), against dense float64 eigendecompositions."""

from __future__ import annotations

import pytest
import torch

import core.engine.approx as approx_module
from core.engine.approx import KroneckerSum
from core.engine.fisher import LayerFisher
from core.engine.methods import approximate
from core.engine.sum_spectrum import RESIDUAL_TOLERANCE, joint_range, project_sum


def batch(m: int, da: int, dg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, dg)
    return a, g


def dense_spectrum(ap) -> torch.Tensor:
    dense = ap.to_dense().to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (dense + dense.T)).flip(0)


@pytest.mark.parametrize(
    ("method", "options"),
    [("deflation", {}), ("lanczos", {}), ("kfac_corrected", {}), ("kpsvd", {"rank": 3})],
)
def test_a_large_sum_has_its_whole_spectrum_through_the_factor_ranges(method, options):
    a, g = batch(20, 60, 40, seed=1)  # n = 2400 > DENSE_EIG_LIMIT; ranges of order ≤ 20
    ap = approximate(method, a, g, **options)
    assert ap.n > approx_module.DENSE_EIG_LIMIT and ap.n_terms >= 2
    assert ap._projected.size == 20 * 20 and ap._projected.residual < RESIDUAL_TOLERANCE
    assert ap.full_spectrum
    lam = dense_spectrum(ap)
    got = ap.eigvals()
    assert got.shape == lam.shape
    assert torch.allclose(got, lam, atol=1e-10 * float(lam.abs().max()))
    err, exact = LayerFisher(a, g).spectrum_error(ap)
    f_lam = LayerFisher(a, g).eigvals()
    padded = torch.cat([f_lam, f_lam.new_zeros(ap.n - f_lam.numel())])
    assert exact
    assert err == pytest.approx(float(torch.linalg.norm(padded - lam) / torch.linalg.norm(f_lam)))


def test_an_indefinite_sum_keeps_its_negative_eigenvalues_below_the_zeros():
    a, g = batch(8, 60, 40, seed=3)
    ap = approximate("kfac_corrected", a, g)
    lam = dense_spectrum(ap)
    assert float(lam[-1]) < -1e-8 * float(lam[0])  # this batch's sum is indefinite
    assert torch.allclose(ap.eigvals(), lam, atol=1e-10 * float(lam.abs().max()))


def test_lanczos_on_the_compressed_sum_gives_the_top_eigenvalues(monkeypatch):
    monkeypatch.setattr(approx_module, "DENSE_SPECTRUM_LIMIT", 300)
    a, g = batch(20, 60, 40, seed=2)  # compressed order 400 > 300: Lanczos on M
    ap = approximate("deflation", a, g)
    assert not ap.full_spectrum
    lam = dense_spectrum(ap)
    assert torch.allclose(ap.eigvals(10), lam[:10], rtol=1e-8, atol=1e-10 * float(lam[0]))


def test_the_joint_range_spans_every_matrix_and_grows_past_its_first_sketch():
    gen = torch.Generator().manual_seed(4)
    d = 150
    x = torch.randn(d, 70, generator=gen, dtype=torch.float64)
    y = torch.randn(d, 60, generator=gen, dtype=torch.float64)
    r1, r2 = x @ x.T, y @ y.T  # ranks 70 and 60, joint rank 130 > the first sketch's 96
    q = joint_range([r1, r2])
    assert q.shape == (d, 130)
    assert torch.allclose(q.T @ q, torch.eye(130, dtype=torch.float64), atol=1e-12)
    for r in (r1, r2):
        assert torch.linalg.norm(q @ (q.T @ r @ q) @ q.T - r) < 1e-10 * torch.linalg.norm(r)


def test_a_projection_that_would_move_eigenvalues_is_refused():
    """float32 factors with many singular values just under float32's round-off threshold:
    dropping them leaves a residual above the tolerance, so the projection is not used."""
    gen = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(70, 70, generator=gen, dtype=torch.float64))
    sigma = torch.cat([torch.ones(10), torch.full((60,), 5e-6)]).double()
    r = ((u * sigma) @ u.T).float()
    s = torch.eye(50, dtype=torch.float32) + 0.1 * torch.ones(50, 50)
    ap = KroneckerSum("test", [(r, s), (0.5 * r @ r, s @ s)])  # n = 3500
    projected = project_sum(ap.terms)
    assert projected.residual > RESIDUAL_TOLERANCE
    assert ap._projected is None
    lam = dense_spectrum(ap)
    assert torch.allclose(ap.eigvals().double(), lam, atol=1e-6 * float(lam[0]))
