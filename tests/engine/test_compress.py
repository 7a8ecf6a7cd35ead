"""Fisher-weighted low-rank compression (core/engine/compress.py) against dense float64 oracles.

The oracle metric is built here from the approximation's dense matrix and factors with
torch.kron (independently of core/engine/weight_metric.py); the oracle optimum is found by
alternating least squares written with explicit Kronecker design matrices, from many random
starts."""

from __future__ import annotations

import pytest
import torch

from core.engine import weight_metric as wm
from core.engine.approx import KroneckerSum
from core.engine.compress import (
    check_rank,
    compress,
    fisher_diagonal,
    fwsvd,
    low_rank,
    truncated_svd,
)
from core.engine.fisher import exact_fisher
from core.engine.kron import unvec, vec
from core.engine.methods import SHOWN, approximate
from core.engine.validation import check_layer_batch
from tests.engine.downstream_oracles import DAMPING, dense_metric, factored, layer_batch

F64 = torch.float64


def objective(m, w, x):
    e = vec(w - x)
    return float(e @ m @ e)


def fresh(x):
    """x in a new row-major buffer (torch.kron refuses some transposed single-column views)."""
    return x.new_empty(x.shape).copy_(x)


def brute_optimum(m, w, k, starts=12, iters=300, seed=1):
    """min over rank-k X of vec(W − X)ᵀ M vec(W − X) by least squares in U and in V alternately,
    with the design matrices (V ⊗ I) and (I ⊗ U) formed by torch.kron, from random starts."""
    dg, da = w.shape
    chol = torch.linalg.cholesky(m)  # M = L Lᵀ: the objective is ‖Lᵀ(vec W − vec X)‖²
    target = chol.T @ vec(w)
    gen = torch.Generator().manual_seed(seed)
    best = float("inf")
    for _ in range(starts):
        v = torch.randn(da, k, generator=gen, dtype=F64)
        for _ in range(iters):
            design = chol.T @ torch.kron(v, torch.eye(dg, dtype=F64))
            u = fresh(unvec(torch.linalg.lstsq(design, target).solution, dg, k))
            design = chol.T @ torch.kron(torch.eye(da, dtype=F64), u)
            v = fresh(unvec(torch.linalg.lstsq(design, target).solution, k, da).T)
        best = min(best, objective(m, w, u @ v.T))
    return best


def gradient_norm(m, w, x, k):
    """‖∂f/∂U‖ + ‖∂f/∂V‖ at the SVD factors of X, relative to ‖M vec W‖ ‖W‖."""
    u, s, vh = torch.linalg.svd(x)
    left, right = u[:, :k] * s[:k], vh[:k].T
    resid = unvec(m @ vec(w - x), *w.shape)
    grads = torch.linalg.norm(resid @ right) + torch.linalg.norm(resid.T @ left)
    return float(grads / (torch.linalg.norm(m @ vec(w)) * torch.linalg.norm(w)))


@pytest.mark.parametrize("method", SHOWN)
def test_the_metric_is_the_damped_curvature(method):
    a, g, _ = layer_batch()
    approx = approximate(method, a, g)
    metric = wm.weight_metric(approx, DAMPING)
    m = dense_metric(approx, DAMPING)
    v = torch.randn(5, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.allclose(vec(metric.apply(v)), m @ vec(v), rtol=1e-10, atol=1e-12)
    assert torch.allclose(vec(metric.solve(v)), torch.linalg.solve(m, vec(v)), rtol=1e-8)


def test_one_product_metric_is_factored_damping():
    """KFAC's M is (A + π√λ I) ⊗ (G + √λ/π I), π² = (tr A / da)/(tr G / dg), formed here."""
    a, g, w = layer_batch()
    kfac = approximate("kfac", a, g)
    big, small = a.T @ a / a.shape[0], g.T @ g / g.shape[0]
    m = torch.kron(*factored(big, small, DAMPING))
    assert torch.allclose(vec(wm.weight_metric(kfac, DAMPING).apply(w)), m @ vec(w), rtol=1e-12)


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "shampoo"])
def test_one_product_closed_form_is_the_global_optimum(method):
    a, g, w = layer_batch()
    approx = approximate(method, a, g)
    m = dense_metric(approx, DAMPING)
    for k in (1, 3):
        result = compress(w, k, approx, damping=DAMPING)
        assert result.solver == "closed_form"
        assert result.objective == pytest.approx(objective(m, w, result.weight), rel=1e-10)
        assert torch.linalg.matrix_rank(result.weight) == k
        assert result.objective == pytest.approx(brute_optimum(m, w, k), rel=1e-7)
    # the closed form, by hand: S̃^{-½} [S̃^{½} W R̃^{½}]_k R̃^{-½}
    r, s = factored(*(mat.to(F64) for _, mat in approx.factor_matrices()), DAMPING)
    lr, ur = torch.linalg.eigh(r)
    ls, us = torch.linalg.eigh(s)
    root_r, root_s = (ur * lr.sqrt()) @ ur.T, (us * ls.sqrt()) @ us.T
    u, sv, vh = torch.linalg.svd(root_s @ w @ root_r)
    expected = torch.linalg.solve(root_s, (u[:, :2] * sv[:2]) @ vh[:2]) @ torch.linalg.inv(root_r)
    assert torch.allclose(compress(w, 2, approx, damping=DAMPING).weight, expected, atol=1e-10)


# eva damps its rank-one product as a whole (R ⊗ S + λI): no closed form, solved like a sum.
NO_CLOSED_FORM = [
    m for m in ("deflation", "lanczos", "kfac_corrected", "eva", "ekfac", "exact") if m in SHOWN
]


@pytest.mark.parametrize("method", NO_CLOSED_FORM)
@pytest.mark.parametrize("k", [1, 2])
def test_sums_and_dense_match_the_brute_force_optimum(method, k):
    a, g, w = layer_batch()
    approx = approximate(method, a, g)
    m = dense_metric(approx, DAMPING)
    result = compress(w, k, approx, damping=DAMPING, tol=1e-13, max_iter=2000)
    assert result.solver == ("dense_als" if approx.n_terms is None else "als")
    assert result.converged
    assert result.objective == pytest.approx(objective(m, w, result.weight), rel=1e-10)
    assert gradient_norm(m, w, result.weight, k) < 1e-6  # a stationary point
    assert result.objective <= brute_optimum(m, w, k) * (1 + 1e-6)


@pytest.mark.parametrize("method", ["deflation", "kfac_corrected"])
def test_sum_is_at_least_as_good_as_its_leading_term_closed_form(method):
    """Also where the safeguard engages (m = 12 here): compared in the metric itself."""
    a, g, w = layer_batch(m=12, da=8, dg=7, seed=4)
    approx = approximate(method, a, g)
    metric = wm.weight_metric(approx, DAMPING)
    assert metric.info["safeguard_raised"] > 0
    (_, r1), (_, s1) = approx.factor_matrices()[:2]
    first = KroneckerSum("kfac", [(r1, s1)])
    for k in (1, 3, 5):
        leading = compress(w, k, first, damping=DAMPING)  # the first term's closed form
        result = compress(w, k, approx, damping=DAMPING)
        assert result.objective <= metric.quadratic(w - leading.weight) * (1 + 1e-12)
        assert result.objective <= metric.quadratic(w - truncated_svd(w, k).weight)


def test_safeguarded_sum_uses_the_general_half_steps():
    """With the floor engaged (psd_floor = 1: every 1 + νμ < 1 raised), d is no longer
    1 + νμᵀ; the general row-by-row half-steps still reach a stationary point of that metric."""
    a, g, w = layer_batch(seed=2)
    approx = approximate("kfac_corrected", a, g, psd_floor=1.0)
    with pytest.raises(ValueError, match="pass the psd_floor it was built with"):
        wm.weight_metric(approx, DAMPING)  # the default 0.1 is not this approximation's
    metric = wm.weight_metric(approx, DAMPING, psd_floor=1.0)
    assert metric.info["safeguard_raised"] > 0 and metric.rank_two is None
    v = torch.eye(30, dtype=F64)
    m = torch.stack([vec(metric.apply(unvec(col, 5, 6))) for col in v.T], 1)
    result = low_rank(metric, w, 2, tol=1e-13, max_iter=2000)
    assert result.converged and gradient_norm(m, w, result.weight, 2) < 1e-6
    assert result.objective <= brute_optimum(m, w, 2) * (1 + 1e-6)


def test_objective_falls_with_rank_and_full_rank_is_exact():
    a, g, w = layer_batch()
    for method in ("kfac", "kfac_corrected", "exact"):
        approx = approximate(method, a, g)
        values = [compress(w, k, approx).objective for k in range(1, 6)]
        assert all(x >= y - 1e-12 for x, y in zip(values, values[1:]))
        assert values[-1] == pytest.approx(0.0, abs=1e-18)


def test_truncated_svd_and_fwsvd_match_their_formulas():
    a, g, w = layer_batch()
    u, s, vh = torch.linalg.svd(w)
    assert torch.allclose(truncated_svd(w, 2).weight, (u[:, :2] * s[:2]) @ vh[:2], atol=1e-12)
    diagonal = torch.diagonal(exact_fisher(a, g))
    assert torch.allclose(vec(fisher_diagonal(a, g)), diagonal, rtol=1e-12)
    rows = unvec(diagonal, 5, 6).sum(1) + DAMPING  # Hsu et al. 2022: a row's summed Fisher
    u, s, vh = torch.linalg.svd(rows.sqrt()[:, None] * w)
    expected = ((u[:, :2] * s[:2]) @ vh[:2]) / rows.sqrt()[:, None]
    result = fwsvd(w, 2, a, g, damping=DAMPING)
    assert torch.allclose(result.weight, expected, atol=1e-12)
    assert result.objective == pytest.approx(float((rows[:, None] * (w - expected) ** 2).sum()))


def test_fisher_diagonal_of_a_weight_sharing_batch():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(4, 3, 6, generator=gen, dtype=F64)
    g = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    try:
        check_layer_batch(a, g)
    except ValueError:
        pytest.skip("this engine takes (m, d) layer batches only (issue 18 not merged)")
    grads = torch.stack([g[n].T @ a[n] for n in range(4)])  # D_n = Γ_nᵀ A_n
    assert torch.allclose(fisher_diagonal(a, g), (grads**2).mean(0), rtol=1e-12)


def test_dtype_and_inputs_are_kept():
    a, g, w = layer_batch()
    w32 = w.to(torch.float32)
    before = w32.clone()
    result = compress(w32, 2, approximate("kfac", a, g))
    assert result.weight.dtype == torch.float32 and torch.equal(w32, before)


@pytest.mark.parametrize("k", [0, 6, -1, 1.5, True, "2"])
def test_rank_out_of_range_is_refused(k):
    a, g, w = layer_batch()
    with pytest.raises(ValueError, match="rank k must be an integer from 1 to"):
        compress(w, k, approximate("kfac", a, g))
    with pytest.raises(ValueError, match="rank k"):
        check_rank(k, 6, 5)


def test_bad_shapes_damping_and_singular_factors_are_refused():
    a, g, w = layer_batch()
    kfac = approximate("kfac", a, g)
    with pytest.raises(ValueError, match=r"W has shape \(6, 5\).*\(5, 6\)"):
        compress(w.T, 1, kfac)
    with pytest.raises(ValueError, match="damping must be a finite number"):
        compress(w, 1, kfac, damping=-1.0)
    few, gf, _ = layer_batch(m=3)  # 3 samples: A (6 × 6) has rank 3
    with pytest.raises(ValueError, match="singular.*damping > 0"):
        compress(w, 1, approximate("kfac", few, gf), damping=0.0)
    with pytest.raises(ValueError, match="singular.*damping > 0"):
        compress(w, 1, approximate("exact", few, gf), damping=0.0)
    assert compress(w, 1, approximate("kfac", few, gf), damping=1e-3).converged
    with pytest.raises(ValueError, match="zero Fisher weight"):
        fwsvd(w, 1, a, torch.zeros_like(g), damping=0.0)


def test_dense_only_curvature_above_the_limit_is_refused(monkeypatch):
    a, g, w = layer_batch()
    monkeypatch.setattr(wm, "DENSE_LIMIT", 20)
    with pytest.raises(ValueError, match="no short Kronecker form.*30 weights.*above the 20"):
        compress(w, 1, approximate("ekfac", a, g))
    assert compress(w, 1, approximate("deflation", a, g)).converged  # factored: no limit
