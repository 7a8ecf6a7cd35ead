"""One interface for every block, the exact one included: each verb of every method in the
registry (approximations and the exact block) against a dense float64 oracle built from the
block's own ``to_dense()`` and from F itself."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import core.engine.approx as approx_module
from core.engine.approx import Approximation
from core.engine.fisher import LayerFisher, exact_fisher
from core.engine.kron import vec
from core.engine.methods import SHOWN, approximate, method_spec
from core.engine.validation import NonFiniteValueError
from core.views.explorer import Pooling


def batch(m: int, da: int, dg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.0, dg)
    return a, g


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


A, G = batch(40, 6, 4)
DENSE_F = exact_fisher(A, G)


@pytest.fixture(params=SHOWN)
def block(request) -> Approximation:
    return approximate(request.param, A, G)


def test_every_shown_method_builds_through_the_registry(block):
    assert isinstance(block, Approximation)
    assert block.method in SHOWN
    assert (block.da, block.dg, block.n) == (6, 4, 24)
    assert block.n_terms == method_spec(block.method).terms
    assert block.dtype == torch.float64 and block.device == torch.device("cpu")


def test_matvec_frobenius_and_inner_product_match_the_dense_matrix(block):
    dense = block.to_dense().to(torch.float64)
    v = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert rel(vec(block.matvec(v)), dense @ vec(v)) < 1e-12
    assert math.isclose(block.frobenius_sq(), float((dense**2).sum()), rel_tol=1e-12)
    assert math.isclose(
        block.inner_fisher(A, G), float((dense * DENSE_F).sum()), rel_tol=1e-10, abs_tol=1e-12
    )


def test_exact_damped_solve_inverts_the_damped_dense_matrix(block):
    """``solve(mode="exact")`` is (F̃ + λI)⁻¹ for a PSD F̃; a two-term sum may be indefinite,
    and then its exact solve projects on the PSD cone first (checked against that projection)."""
    lam = 0.05
    dense = block.to_dense().to(torch.float64)
    evals, evecs = torch.linalg.eigh((dense + dense.T) / 2)
    damped = evecs @ torch.diag(evals.clamp_min(0.0) + lam) @ evecs.T
    v = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = block.solve(v, lam, mode="exact")
    assert rel(vec(x), torch.linalg.solve(damped, vec(v))) < 1e-8


def test_spectrum_matches_the_dense_eigenvalues(block):
    assert block.full_spectrum
    dense = block.to_dense().to(torch.float64)
    want = torch.linalg.eigvalsh((dense + dense.T) / 2).flip(0)
    got = block.eigvals().to(torch.float64)
    # m = 40 > n = 24: F has full rank, so even the exact block's list of nonzero eigenvalues
    # (from its m × m Gram matrix) is the whole spectrum
    assert got.numel() == 24
    assert torch.allclose(got, want, atol=1e-10 * float(want[0]))


@pytest.mark.parametrize("blocks", [(1, 1), (2, 3), (4, 4)])
def test_pooled_view_is_the_pooled_dense_matrix(block, blocks):
    pooling = Pooling(6, 4, *blocks)
    pa, pg = pooling.matrix_a(), pooling.matrix_g()
    big = torch.kron(pa, pg)
    want = big @ block.to_dense().to(torch.float64) @ big.T
    assert rel(block.pooled(pa, pg), want) < 1e-12


def test_moving_to_where_it_is_copies_nothing(block):
    assert block.to("cpu") is block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_moved_to_cuda_it_solves_the_same_and_counts_on_the_original(block):
    moved = block.to("cuda")
    assert moved.device.type == "cuda" and moved.safeguard is block.safeguard
    v = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mode = "factored" if block.n_terms in (1, 2) else "exact"
    want = block.solve(v, 0.05, mode=mode)
    got = moved.solve(v.to("cuda", block.dtype), 0.05, mode=mode).cpu()
    assert rel(got.to(torch.float64), want.to(torch.float64)) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_built_on_cuda_it_answers_like_the_cpu_block(block, dtype):
    """The engine follows its inputs' device: ``approximate`` on CUDA inputs (Gram route,
    Krylov iteration, eigendecompositions and solves on the device) gives the CPU block of the
    same inputs, in both dtypes (float64: round-off; float32: float32 round-off amplified by
    the damped solve's conditioning, see tests/engine/test_precision.py)."""
    a, g = A.to(dtype), G.to(dtype)
    cpu = approximate(block.method, a, g)
    gpu = approximate(block.method, a.cuda(), g.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype
    v = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = v.to(cpu.dtype)
    tol = 1e-10 if cpu.dtype == torch.float64 else 1e-4
    assert rel(gpu.matvec(v.cuda()).cpu(), cpu.matvec(v)) < tol
    modes = ("exact", "factored") if block.n_terms in (1, 2, None) else ("exact",)
    for mode in modes:
        got = gpu.solve(v.cuda(), 0.05, mode=mode)
        assert got.device.type == "cuda"
        assert rel(got.cpu().double(), cpu.solve(v, 0.05, mode=mode).double()) < tol


@pytest.mark.parametrize("dense_limit", [10, 2048], ids=["minres", "dense"])
def test_a_block_with_its_inverses_formed_pickles_and_solves_the_same(
    block, monkeypatch, dense_limit
):
    """A worker process sends blocks back pickled: without their damped inverses and dense
    eigendecomposition (n² numbers each), with their spectrum; the copy forms every kind of
    inverse again (the MINRES one too: a sum above the dense limit) and solves the same."""
    monkeypatch.setattr(approx_module, "DENSE_EIG_LIMIT", dense_limit)  # 10: sums take MINRES
    v = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    modes = ("exact", "factored") if (block.n_terms or 1) <= 2 else ("exact",)
    before = {mode: block.solve(v, 0.05, mode=mode) for mode in modes}
    spectrum = block.eigvals()
    copy = pickle.loads(pickle.dumps(block))
    assert copy._inverses == {} and "_dense_eigh" not in vars(copy)
    assert block._inverses  # the original keeps its own
    assert torch.equal(copy.eigvals(), spectrum)
    for mode in modes:
        assert torch.equal(copy.solve(v, 0.05, mode=mode), before[mode])


def test_a_pickled_two_term_result_is_far_smaller_than_its_eigenbasis():
    """What made a two-term result at n = 528 pickle to 2.3 MB: its n × n eigenbasis, formed by
    the spectrum and the exact solve, no longer travels."""
    a, g = batch(96, 24, 20)
    approx = approximate("deflation", a, g)
    approx.eigvals(), approx.solve(torch.ones(20, 24, dtype=torch.float64), 0.1)
    basis_bytes = approx.n * approx.n * 8
    assert "_dense_eigh" in vars(approx)
    assert len(pickle.dumps(approx)) < basis_bytes / 10


def test_factor_matrices_rebuild_the_block():
    """Σ_k kron(R_k, S_k) for the Kronecker sums; EKFAC's scaling is its spectrum; the exact
    block has none."""
    for method in SHOWN:
        block = approximate(method, A, G)
        mats = block.factor_matrices()
        if block.n_terms:
            pairs = list(zip(mats[::2], mats[1::2], strict=True))
            assert [(x[0], y[0]) for x, y in pairs] == [("input", "output")] * block.n_terms
            rebuilt = sum(torch.kron(r, s) for (_, r), (_, s) in pairs)
            assert rel(rebuilt, block.to_dense()) < 1e-12
        elif method == "ekfac":
            assert [side for side, _ in mats] == ["scaling"]
            scale = mats[0][1]
            assert torch.allclose(
                torch.sort(scale.reshape(-1), descending=True).values, block.eigvals()
            )
        else:
            assert mats == []


def test_the_exact_block_is_f():
    fisher = approximate("exact", A, G)
    assert isinstance(fisher, LayerFisher)
    assert torch.allclose(fisher.to_dense(), DENSE_F, atol=0, rtol=0)
    assert fisher.relative_error(fisher) < 1e-6  # matrix-free: floor about 1e-8
    other_a, other_g = batch(7, 6, 4, seed=3)
    want = float((exact_fisher(other_a, other_g) * DENSE_F).sum())
    assert math.isclose(fisher.inner_fisher(other_a, other_g), want, rel_tol=1e-12)


def test_non_finite_input_has_its_own_type():
    bad = A.clone()
    bad[3, 2] = math.nan
    for method in ("exact", "kfac"):
        with pytest.raises(NonFiniteValueError, match="1 non-finite value"):
            approximate(method, bad, G)
    assert issubclass(NonFiniteValueError, ValueError)


@pytest.mark.parametrize("method", SHOWN)
def test_inputs_too_large_to_square_are_refused_by_name(method):
    """float32 entries of 1e20 over 6 features: ā_iᵀā_j would overflow float32 (and every
    method return inf or fail inside LAPACK); the message names the input, its largest entry
    and both ways out."""
    with pytest.raises(ValueError, match=r"a \(layer inputs\) is too large to square in float32"):
        approximate(method, (A * 1e20).float(), G.float())
    with pytest.raises(ValueError, match="use float64 inputs"):
        approximate(method, A.float(), (G * 1e20).float())


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "kfac_corrected"])
def test_float32_inputs_whose_grams_overflow_float32_still_work(method):
    """Inputs scaled by 1e10 in float32: ā_iᵀā_j ≈ 1e20 fits float32 but its square, an entry
    of the Gram (ĀĀᵀ)∘², does not; the Grams are squared in float64, and the result is the
    unscaled batch's scaled by 1e20 (F is quadratic in ā)."""
    scaled = approximate(method, (A * 1e10).float(), G.float()).to_dense().double() / 1e20
    plain = approximate(method, A, G).to_dense()
    assert float(torch.linalg.norm(scaled - plain) / torch.linalg.norm(plain)) < 1e-5
