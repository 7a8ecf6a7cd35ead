"""Invariants that hold for any batch (hypothesis), the size guard, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.engine.fisher import LayerFisher, eigvals, exact_fisher, relative_error
from core.engine.kron import rearrange
from core.engine.methods import METHODS, approximate
from core.engine.validation import DenseTooLargeError


def random_batch(m: int, da: int, dg: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=torch.float64)
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64)
    return a, g


shapes = st.tuples(
    st.integers(1, 64), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1)
)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_error_orderings_hold_for_any_batch(shape):
    m, da, dg, seed = shape
    a, g = random_batch(m, da, dg, seed)
    lf = LayerFisher(a, g)
    err = {meth: lf.relative_error(approximate(meth, a, g)) for meth in METHODS}
    slack = 1e-7  # the floor of a difference-of-squares error in float64
    assert err["kpsvd"] <= err["kfac"] + slack
    assert err["kfac_corrected"] <= err["kfac"] + slack
    assert err["deflation"] <= err["kpsvd"] + slack
    assert err["ekfac"] <= err["kfac"] + slack  # the best diagonal in KFAC's own eigenbasis
    assert abs(err["deflation"] - err["lanczos"]) <= 1e-6
    # Projections (and the optimally scaled Shampoo product) never do worse than F̃ = 0;
    # KFAC itself can, when the per-sample gradient norms vary a lot.
    optimal = ("kpsvd", "deflation", "lanczos", "shampoo")
    assert all(0.0 <= err[meth] <= 1.0 + slack for meth in optimal)


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_error_decreases_with_rank_and_vanishes_at_full_rank(shape):
    m, da, dg, seed = shape
    a, g = random_batch(m, da, dg, seed)
    lf = LayerFisher(a, g)
    full = int(torch.linalg.matrix_rank(rearrange(exact_fisher(a, g), da, dg)))
    errors = [lf.relative_error(approximate("kpsvd", a, g, rank=r)) for r in range(1, full + 1)]
    assert all(e2 <= e1 + 1e-7 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6
    # asking for more terms than ℛ(F) has returns the exact block too
    assert lf.relative_error(approximate("kpsvd", a, g, rank=full + 2)) < 1e-6


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_top_factors_are_symmetric_psd(shape):
    m, da, dg, seed = shape
    a, g = random_batch(m, da, dg, seed)
    for method in ("kpsvd", "deflation", "lanczos"):
        r, s = approximate(method, a, g).terms[0]
        for factor in (r, s):
            assert torch.allclose(factor, factor.T, atol=1e-12 * float(factor.abs().max()))
            lam = torch.linalg.eigvalsh(factor)
            assert float(lam[0]) >= -1e-10 * float(lam[-1])


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_one_sample_makes_every_single_product_exact(da, dg, seed):
    a, g = random_batch(1, da, dg, seed)
    f = exact_fisher(a, g)
    for method in ("kfac", "kpsvd"):
        dense = approximate(method, a, g).to_dense()
        assert torch.allclose(dense, f, atol=1e-12 * float(f.abs().max()))


def test_float32_agrees_with_the_float64_oracle():
    a, g = random_batch(128, 30, 20, 7)
    f = exact_fisher(a, g)
    for method in ("kpsvd", "deflation", "kfac_corrected"):
        dense32 = approximate(method, a.float(), g.float()).to_dense().double()
        dense64 = approximate(method, a, g).to_dense()
        assert float(torch.linalg.norm(dense32 - dense64) / torch.linalg.norm(f)) < 1e-5


def test_metrics_work_for_a_layer_too_big_to_form():
    a, g = random_batch(64, 1001, 500, 0)
    with pytest.raises(DenseTooLargeError, match=r"needs .*TiB.*relative_error"):
        exact_fisher(a, g)
    ap = approximate("kfac", a, g)
    with pytest.raises(DenseTooLargeError, match="matvec"):
        ap.to_dense()
    err = relative_error(a, g, ap)
    assert 0.0 < err < 1.0
    lam = eigvals(a, g)
    assert lam.numel() == 64 and bool((lam[:-1] >= lam[1:]).all())


def test_numpy_inputs_are_accepted():
    a, g = random_batch(5, 3, 2, 1)
    ap = approximate("kpsvd", a.numpy(), g.numpy())
    assert relative_error(a.numpy(), g.numpy(), ap) == pytest.approx(relative_error(a, g, ap))


@pytest.mark.parametrize(
    ("a", "g", "message"),
    [
        (torch.randn(5, 3), torch.randn(4, 2), "same number of samples"),
        (torch.randn(0, 3), torch.randn(0, 2), "empty batch"),
        (torch.randn(5), torch.randn(5, 2), "2-D"),
        (torch.tensor([[1.0, float("nan")]]), torch.randn(1, 2), "NaN"),
        (torch.randn(2, 2), torch.tensor([[1.0], [float("inf")]]), "non-finite"),
        (torch.ones(3, 2, dtype=torch.int64), torch.randn(3, 2), "floating-point"),
    ],
)
def test_bad_batches_raise_value_errors_naming_the_problem(a, g, message):
    with pytest.raises(ValueError, match=message):
        approximate("kfac", a, g)
    with pytest.raises(ValueError, match=message):
        eigvals(a, g)


def test_bad_options_raise_value_errors():
    a, g = random_batch(5, 3, 2, 1)
    with pytest.raises(ValueError, match="unknown method 'kfca'.*kfac"):
        approximate("kfca", a, g)
    with pytest.raises(ValueError, match="rank must be an integer"):
        approximate("kpsvd", a, g, rank=0)
    with pytest.raises(ValueError, match="unknown solver"):
        approximate("kpsvd", a, g, solver="svd")
    ap = approximate("deflation", a, g)
    with pytest.raises(ValueError, match=r"shape \(dg, da\) = \(2, 3\)"):
        ap.solve(torch.randn(3, 2, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="damping must be"):
        ap.solve(torch.randn(2, 3, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="damping mode"):
        ap.solve(torch.randn(2, 3, dtype=torch.float64), 0.1, mode="approximate")
    other = LayerFisher(*random_batch(5, 4, 2, 1))
    with pytest.raises(ValueError, match="approximation is for a"):
        other.relative_error(ap)
    big = approximate("kpsvd", a, g, rank=3)
    with pytest.raises(ValueError, match="mode='exact'"):
        big.solve(torch.randn(2, 3, dtype=torch.float64), 0.1, mode="factored")


def test_frobenius_identity_floor_is_small():
    a, g = random_batch(40, 6, 5, 2)
    ap = approximate("kpsvd", a, g, rank=30)
    assert relative_error(a, g, ap) < 1e-6
    assert np.isfinite(relative_error(a, g, approximate("ekfac", a, g)))
