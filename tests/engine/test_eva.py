"""Eva's Kronecker-vectorized approximation against dense float64 oracles (issue 19)."""

from __future__ import annotations

import pytest
import torch

from core.engine.fisher import LayerFisher, exact_fisher
from core.engine.kron import unvec, vec
from core.engine.methods import approximate

M, DA, DG = 20, 5, 4


def batch(m: int = M, da: int = DA, dg: int = DG, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=torch.float64) + 0.5
    a[:, -1] = 1.0
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64) + 0.3
    return a, g


def dense_formula(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(āāᵀ) ⊗ (ḡḡᵀ) from explicit loops over the samples, in vec(W) (column-major) order."""
    a_bar = sum(a[i] for i in range(a.shape[0])) / a.shape[0]
    g_bar = sum(g[i] for i in range(g.shape[0])) / g.shape[0]
    return torch.kron(torch.outer(a_bar, a_bar), torch.outer(g_bar, g_bar))


def test_dense_form_is_the_outer_product_of_the_batch_means():
    a, g = batch()
    eva = approximate("eva", a, g)
    assert torch.allclose(eva.to_dense(), dense_formula(a, g), atol=1e-13)
    assert eva.n_terms == 1
    fa, fg = (m for _, m in eva.factor_matrices())
    assert torch.allclose(torch.kron(fa, fg), dense_formula(a, g), atol=1e-13)


def test_verbs_match_the_dense_matrix():
    a, g = batch(seed=1)
    eva = approximate("eva", a, g)
    dense = eva.to_dense()
    v = torch.randn(DG, DA, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(vec(eva.matvec(v)), dense @ vec(v), atol=1e-12)
    assert eva.frobenius_sq() == pytest.approx(float((dense**2).sum()), rel=1e-12)
    f = exact_fisher(a, g)
    assert eva.inner_fisher(a, g) == pytest.approx(float((f * dense).sum()), rel=1e-12)
    lam = torch.linalg.eigvalsh(dense).flip(0)
    assert torch.allclose(eva.eigvals(), lam, atol=1e-10)
    err = torch.linalg.norm(f - dense) / torch.linalg.norm(f)
    assert LayerFisher(a, g).relative_error(eva) == pytest.approx(float(err), rel=1e-9)
    pa = torch.tensor(
        [[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64
    )
    pg = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    pool = torch.kron(pa, pg)
    assert torch.allclose(eva.pooled(pa, pg), pool @ dense @ pool.T, atol=1e-12)


@pytest.mark.parametrize("mode", ["exact", "factored"])
@pytest.mark.parametrize("damping", [1e-3, 0.1, 10.0])
def test_sherman_morrison_solve_equals_a_dense_solve(mode, damping):
    """Both modes are the paper's Tikhonov damping (F̃ + λI)⁻¹, by Sherman–Morrison."""
    a, g = batch(seed=3)
    eva = approximate("eva", a, g)
    v = torch.randn(DG, DA, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dense = dense_formula(a, g) + damping * torch.eye(DA * DG, dtype=torch.float64)
    want = unvec(torch.linalg.solve(dense, vec(v)), DG, DA)
    got = eva.solve(v, damping, mode=mode)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12 / damping)
    # in float32 from the float64 vectors (the optimizers' per-step route)
    got32 = eva.solve(v.float(), damping, mode=mode)
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), want, rtol=1e-4, atol=1e-5 / damping)


def test_means_are_below_kfac_factors():
    """āāᵀ ⪯ A and ḡḡᵀ ⪯ G: the differences are the batch covariances."""
    a, g = batch(seed=5)
    (_, fa), (_, fg) = approximate("eva", a, g).factor_matrices()
    (_, ka), (_, kg) = approximate("kfac", a, g).factor_matrices()
    assert float(torch.linalg.eigvalsh(ka - fa).min()) > -1e-12
    assert float(torch.linalg.eigvalsh(kg - fg).min()) > -1e-12


def test_a_single_sample_is_exact():
    """m = 1: F = (ā₁ā₁ᵀ) ⊗ (g₁g₁ᵀ) is itself rank one, and Eva recovers it."""
    a, g = batch(m=1, seed=6)
    assert LayerFisher(a, g).relative_error(approximate("eva", a, g)) < 1e-7


def test_weight_sharing_batch_uses_the_reduce_vectors():
    """(m, T, d) batches: ā = mean over samples and positions, ḡ = mean over samples of the sum
    over positions (KFAC-reduce's â_n, ĝ_n); T = 1 gives the (m, d) numbers."""
    from core.engine.eva import batch_mean_vectors

    gen = torch.Generator().manual_seed(7)
    a = torch.randn(6, 3, DA, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 3, DG, generator=gen, dtype=torch.float64)
    a_bar, g_bar = batch_mean_vectors(a, g)
    assert torch.allclose(a_bar, a.reshape(-1, DA).mean(0))
    assert torch.allclose(g_bar, g.sum(1).mean(0))
    a2, g2 = batch(seed=8)
    flat = batch_mean_vectors(a2, g2)
    shared = batch_mean_vectors(a2[:, None], g2[:, None])
    assert all(torch.equal(x, y) for x, y in zip(flat, shared, strict=True))
