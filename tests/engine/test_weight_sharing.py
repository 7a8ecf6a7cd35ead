"""Weight-sharing layer batches (issue 18): a (m, T, da), g (m, T, dg) through every method.

Every check compares with a dense float64 oracle built independently: per-sample gradients
D_n = Σ_t γ_t a_tᵀ by a Python loop (and once by torch.func on a real nn.Conv2d), the dense
F = (1/m) Σ vec(D_n) vec(D_n)ᵀ, its Van Loan–Pitsianis rearrangement and dense SVDs/solves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tnf
from torch.func import functional_call, grad, vmap

from core.engine import fisher_ema
from core.engine.approx import eigenbasis_scale
from core.engine.fisher import LayerFisher, exact_fisher, relative_error, spectrum_error
from core.engine.kron import rearrange, vec
from core.engine.methods import KPSVD_FAMILY, METHODS, SHOWN, approximate
from core.engine.shared_batch import SharedBatch, kfac_expand_factors, product_route
from core.engine.validation import DenseTooLargeError, NonFiniteValueError, check_layer_batch

F64 = torch.float64
M, T, DA, DG = 6, 5, 7, 4


def _sequence_batch(seed: int = 0, m: int = M, t: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, t, DA, generator=gen, dtype=F64)
    a[:, :, -1] = 1.0  # the bias input
    return a, torch.randn(m, t, DG, generator=gen, dtype=F64)


def _conv_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A real Conv2d (2 → 3 channels, 3 × 3, stride 2, padding 1, dilation 1, bias) on m = 5
    images, a nonlinear per-sample loss; returns its unfolded patches a (m, T, 19), the output
    gradients g (m, T, 3), and the per-sample weight gradients from torch.func (m, 3, 19)."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1).to(F64)
    x = torch.randn(5, 2, 7, 7, dtype=F64)
    target = torch.randn(5, 3, 4, 4, dtype=F64)
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        out = functional_call(conv, p, (xi[None],))[0]
        return (torch.tanh(out) - ti).square().sum()

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    weight_grads = torch.cat([grads["weight"].reshape(5, 3, -1), grads["bias"][:, :, None]], 2)
    patches = tnf.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # (m, T, C_in·kh·kw)
    a = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=F64)], 2)
    out = conv(x).detach().requires_grad_(True)
    (torch.tanh(out) - target).square().sum().backward()
    assert out.grad is not None
    g = out.grad.flatten(2).transpose(1, 2)  # (m, T, C_out): per-sample, loss summed
    return a, g, weight_grads


def _gradients_by_loop(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    m, t = a.shape[:2]
    out = torch.zeros(m, g.shape[2], a.shape[2], dtype=F64)
    for n in range(m):
        for s in range(t):
            out[n] += torch.outer(g[n, s], a[n, s])
    return out


def _dense_fisher(d: torch.Tensor) -> torch.Tensor:
    jac = torch.stack([vec(dn) for dn in d])
    return jac.T @ jac / d.shape[0]


@pytest.fixture(params=["sequence", "conv"])
def batch(request: pytest.FixtureRequest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, g, dense F) for a random sequence batch and a real convolution's batch."""
    if request.param == "sequence":
        a, g = _sequence_batch()
    else:
        a, g, _ = _conv_batch()
    return a, g, _dense_fisher(_gradients_by_loop(a, g))


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


def _sym_basis(d: int) -> torch.Tensor:
    """Orthonormal basis (d², d(d+1)/2) of vec(symmetric d × d matrices)."""
    cols = []
    for i in range(d):
        for j in range(i, d):
            e = torch.zeros(d, d, dtype=F64)
            e[i, j] = e[j, i] = 1.0 if i == j else 2**-0.5
            cols.append(vec(e))
    return torch.stack(cols, 1)


def _best_symmetric_sum(f: torch.Tensor, da: int, dg: int, rank: int) -> torch.Tensor:
    """The rank-r truncated SVD of ℛ(f) on symmetric matrices, as a dense Σ σ U ⊗ V."""
    pa, pg = _sym_basis(da), _sym_basis(dg)
    u, s, vt = torch.linalg.svd(pa.T @ rearrange(f, da, dg) @ pg)
    out = torch.zeros_like(f)
    for k in range(rank):
        left = (pa @ u[:, k]).reshape(da, da).T
        right = (pg @ vt[k]).reshape(dg, dg).T
        out += s[k] * torch.kron(left, right)
    return out


# -- the convention: capture's layout against torch.func ---------------------------------------


def test_conv_patches_give_autograd_per_sample_weight_gradients():
    a, g, weight_grads = _conv_batch()
    assert torch.allclose(_gradients_by_loop(a, g), weight_grads, rtol=1e-12, atol=1e-12)
    assert torch.allclose(SharedBatch(a, g).d, weight_grads, rtol=1e-12, atol=1e-12)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_shape", "g_shape", "match"),
    [
        ((6, 5, 7), (6, 4), "must both be 2-D .*both 3-D"),
        ((6, 5, 7, 1), (6, 5, 4, 1), "must both be 2-D .*both 3-D"),
        ((6, 5, 7), (5, 5, 4), "same number of samples: a has 6, g has 5"),
        ((6, 5, 7), (6, 3, 4), "same number of positions T per sample: a has 5, g has 3"),
        ((0, 5, 7), (0, 5, 4), "empty batch"),
        ((6, 0, 7), (6, 0, 4), "0 positions per sample"),
        ((6, 5, 0), (6, 5, 4), "at least one feature"),
    ],
)
def test_bad_batches_get_one_clear_error(a_shape, g_shape, match):
    a, g = torch.zeros(a_shape, dtype=F64), torch.zeros(g_shape, dtype=F64)
    with pytest.raises(ValueError, match=match):
        check_layer_batch(a, g)
    with pytest.raises(ValueError, match=match):
        approximate("kfac", a, g)


def test_non_finite_positions_are_refused():
    a, g = _sequence_batch()
    a[2, 3, 1] = float("nan")
    with pytest.raises(NonFiniteValueError, match="a \\(layer inputs\\) contains 1 non-finite"):
        approximate("kpsvd", a, g)
    with pytest.raises(NonFiniteValueError, match="g \\(output gradients\\)"):
        LayerFisher(*_sequence_batch()[:1], g.clone().fill_(float("inf")))


@pytest.mark.parametrize("method", SHOWN)
def test_one_position_is_the_two_dimensional_case_exactly(method):
    a, g = _sequence_batch(t=1)
    flat = approximate(method, a[:, 0], g[:, 0])
    shared = approximate(method, a, g)
    assert torch.equal(shared.to_dense(), flat.to_dense())
    lf2, lf3 = LayerFisher(a[:, 0], g[:, 0]), LayerFisher(a, g)
    assert lf3.relative_error(shared) == lf2.relative_error(flat)
    assert lf3.spectrum_error(shared) == lf2.spectrum_error(flat)
    assert torch.equal(lf3.eigvals(), lf2.eigvals())


# -- the exact block ----------------------------------------------------------------------------


def test_exact_block_against_the_dense_oracle(batch):
    a, g, f = batch
    assert _rel(exact_fisher(a, g), f) < 1e-13
    lf = LayerFisher(a, g)
    assert lf.positions == a.shape[1]
    assert lf.frobenius_sq() == pytest.approx(float((f**2).sum()), rel=1e-12)
    lam = torch.linalg.eigvalsh(f).flip(0)
    got = lf.eigvals()
    assert got.numel() <= a.shape[0]
    assert torch.allclose(got, lam[: got.numel()], atol=1e-11 * float(lam[0]))
    assert float(lam[got.numel() :].abs().max()) < 1e-10 * float(lam[0])
    v = torch.randn(g.shape[2], a.shape[2], dtype=F64)
    assert _rel(vec(lf.matvec(v)), f @ vec(v)) < 1e-13
    for damping in (1e-3, 1.0):
        want = torch.linalg.solve(f + damping * torch.eye(f.shape[0], dtype=F64), vec(v))
        assert _rel(vec(lf.solve(v, damping)), want) < 1e-9
        assert _rel(vec(lf.solve(v, damping, mode="factored")), want) < 1e-9
    grad_mean = _gradients_by_loop(a, g).mean(0)
    assert torch.allclose(lf.mean_gradient(), grad_mean, rtol=1e-13, atol=1e-13)


def test_exact_inner_products_and_pooling(batch):
    a, g, f = batch
    a2, g2 = a[:3] * 1.5, g[:3]
    f2 = _dense_fisher(_gradients_by_loop(a2, g2))
    lf = LayerFisher(a, g)
    assert lf.inner_fisher(a2, g2) == pytest.approx(float((f * f2).sum()), rel=1e-12)
    # a one-position batch against a weight-sharing block
    a1, g1 = a[:, 0], g[:, 0]
    f1 = _dense_fisher(g1[:, :, None] * a1[:, None, :])
    assert lf.inner_fisher(a1, g1) == pytest.approx(float((f * f1).sum()), rel=1e-12)
    assert LayerFisher(a1, g1).inner_fisher(a, g) == pytest.approx(float((f * f1).sum()), rel=1e-12)
    da, dg = a.shape[2], g.shape[2]
    pa = torch.rand(2, da, dtype=F64)
    pg = torch.rand(3, dg, dtype=F64)
    proj = torch.kron(pa, pg)
    assert _rel(lf.pooled(pa, pg), proj @ f @ proj.T) < 1e-12


def test_gradients_above_the_memory_limit_are_refused(monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_MAX_DENSE_BYTES", "1000")
    a, g = _sequence_batch()
    with pytest.raises(DenseTooLargeError, match="per-sample gradients .* smaller Fisher batch"):
        LayerFisher(a, g)


# -- the two routes of the rearranged products ---------------------------------------------------


def test_both_product_routes_agree_with_the_dense_rearrangement(batch):
    a, g, f = batch
    da, dg = a.shape[2], g.shape[2]
    rf = rearrange(f, da, dg)
    x = torch.randn(dg, dg, dtype=F64)
    y = torch.randn(da, da, dtype=F64)
    s, r = x + x.T, y + y.T
    for route in ("gradients", "positions"):
        sb = SharedBatch(a, g, route=route)
        assert _rel(vec(sb.input_side(s)), rf @ vec(s)) < 1e-12, route
        assert _rel(vec(sb.output_side(r)), rf.T @ vec(r)) < 1e-12, route
        assert float(sb.quadratic(r, s).mean()) == pytest.approx(
            float((f * torch.kron(r, s)).sum()), rel=1e-12
        )


def test_the_cheaper_route_is_chosen_by_flop_count():
    assert product_route(2, 100, 100) == "positions"  # T² small against the layer's width
    assert product_route(196, 289, 64) == "gradients"  # the MNIST-sized convolution


# -- KFAC expand and reduce -----------------------------------------------------------------------


def test_kfac_expand_and_reduce_formulas(batch):
    a, g, _ = batch
    m, t = a.shape[:2]
    want_a = sum(torch.outer(a[n, s], a[n, s]) for n in range(m) for s in range(t)) / (m * t)
    want_g = sum(torch.outer(g[n, s], g[n, s]) for n in range(m) for s in range(t)) / m
    ((fa, fg),) = approximate("kfac", a, g).terms  # type: ignore[attr-defined]
    assert torch.allclose(fa, want_a, rtol=1e-13) and torch.allclose(fg, want_g, rtol=1e-13)
    ea, eg = kfac_expand_factors(a, g)
    assert torch.equal(ea, fa) and torch.equal(eg, fg)
    a_hat = [a[n].mean(0) for n in range(m)]
    g_hat = [g[n].sum(0) for n in range(m)]
    want_ra = sum(torch.outer(x, x) for x in a_hat) / m
    want_rg = sum(torch.outer(x, x) for x in g_hat) / m
    ((ra, rg),) = approximate("kfac_reduce", a, g).terms  # type: ignore[attr-defined]
    assert torch.allclose(ra, want_ra, rtol=1e-13) and torch.allclose(rg, want_rg, rtol=1e-13)


def test_kfac_reduce_is_exact_when_every_position_sees_one_input():
    """Then D_n = ĝ_n â_nᵀ: F is the one-position Fisher of (â, ĝ), KFAC-reduce is KFAC of
    that batch, and with one sample it is F exactly."""
    a, g = _sequence_batch()
    a = a[:, :1].expand(-1, T, -1).contiguous()
    a_hat, g_hat = a[:, 0], g.sum(1)
    assert _rel(exact_fisher(a, g), exact_fisher(a_hat, g_hat)) < 1e-13
    reduce = approximate("kfac_reduce", a, g).to_dense()
    assert _rel(reduce, approximate("kfac", a_hat, g_hat).to_dense()) < 1e-13
    one = LayerFisher(a[:1], g[:1])
    assert one.relative_error(approximate("kfac_reduce", a[:1], g[:1])) < 1e-7
    assert one.relative_error(approximate("kfac", a[:1], g[:1])) > 0.1  # expand is not exact


# -- the KPSVD family ------------------------------------------------------------------------------


def test_rearranged_fisher_splits_into_symmetric_and_skew_blocks(batch):
    """The fact the KPSVD family's restriction rests on: the singular values of ℛ(F) are those
    of its symmetric block and of its skew block together; at T = 1 the skew block is 0."""
    a, g, f = batch
    da, dg = a.shape[2], g.shape[2]
    rf = rearrange(f, da, dg)
    pa, pg = _sym_basis(da), _sym_basis(dg)
    qa = torch.linalg.svd(torch.eye(da * da, dtype=F64) - pa @ pa.T)[0][:, : da * (da - 1) // 2]
    qg = torch.linalg.svd(torch.eye(dg * dg, dtype=F64) - pg @ pg.T)[0][:, : dg * (dg - 1) // 2]
    both = (
        torch.cat([torch.linalg.svdvals(pa.T @ rf @ pg), torch.linalg.svdvals(qa.T @ rf @ qg)])
        .sort(descending=True)
        .values
    )
    full = torch.linalg.svdvals(rf)
    assert torch.allclose(both, full[: both.numel()], atol=1e-10 * float(full[0]))
    one = _dense_fisher(g[:, 0, :, None] * a[:, 0, None, :])
    assert float(torch.linalg.norm(qa.T @ rearrange(one, da, dg) @ qg)) < 1e-12


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("solver", ["gram", "matrix_free"])
def test_kpsvd_is_the_truncated_svd_of_the_dense_rearrangement(batch, rank, solver):
    a, g, f = batch
    best = _best_symmetric_sum(f, a.shape[2], g.shape[2], rank)
    approx = approximate("kpsvd", a, g, rank=rank, solver=solver)
    assert approx.n_terms == rank
    assert _rel(approx.to_dense(), best) < 1e-7
    want_err = float(torch.linalg.norm(f - best) / torch.linalg.norm(f))
    assert relative_error(a, g, approx) == pytest.approx(want_err, rel=1e-6)
    assert approx.info["solver"].startswith("matrix_free/")
    if solver == "gram":
        assert approx.info["solver"] == "matrix_free/lanczos"
        assert "needs one position per sample" in approx.info["solver_note"]


@pytest.mark.parametrize("method", ["deflation", "lanczos"])
@pytest.mark.parametrize("solver", ["gram", "matrix_free"])
def test_two_term_methods_against_the_dense_oracle(batch, method, solver):
    a, g, f = batch
    best = _best_symmetric_sum(f, a.shape[2], g.shape[2], 2)
    approx = approximate(method, a, g, solver=solver)
    assert _rel(approx.to_dense(), best) < 1e-6


@pytest.mark.parametrize("solver", ["gram", "matrix_free"])
def test_kfac_corrected_against_the_dense_oracle(batch, solver):
    a, g, f = batch
    fa, fg = kfac_expand_factors(a, g)
    kfac = torch.kron(fa, fg)
    want = kfac + _best_symmetric_sum(f - kfac, a.shape[2], g.shape[2], 1)
    approx = approximate("kfac_corrected", a, g, solver=solver)
    assert _rel(approx.to_dense(), want) < 1e-7
    lf = LayerFisher(a, g)
    assert lf.relative_error(approx) <= lf.relative_error(approximate("kfac", a, g)) + 1e-12


# -- EKFAC and Shampoo -----------------------------------------------------------------------------


def test_ekfac_is_the_best_diagonal_in_the_expand_eigenbasis(batch):
    a, g, f = batch
    fa, fg = kfac_expand_factors(a, g)
    u_a, u_g = torch.linalg.eigh(fa).eigenvectors, torch.linalg.eigh(fg).eigenvectors
    basis = torch.kron(u_a, u_g)
    want = torch.diagonal(basis.T @ f @ basis).reshape(a.shape[2], g.shape[2]).T
    assert torch.allclose(eigenbasis_scale(a, g, u_a=u_a, u_g=u_g), want, rtol=1e-11)
    approx = approximate("ekfac", a, g)
    assert approx.eigvals().sum() == pytest.approx(float(want.sum()), rel=1e-11)
    # best in its basis: ⟨F, F̃⟩ = ‖F̃‖² (the residual is orthogonal to the diagonal)
    dense = approx.to_dense()
    assert float((f * dense).sum()) == pytest.approx(float((dense**2).sum()), rel=1e-10)


def test_shampoo_factors_and_optimal_scale(batch):
    a, g, f = batch
    d = _gradients_by_loop(a, g)
    left = sum(dn.T @ dn for dn in d) / d.shape[0]
    right = sum(dn @ dn.T for dn in d) / d.shape[0]
    unit = torch.kron(left, right)
    c = float((f * unit).sum() / (unit**2).sum())
    assert _rel(approximate("shampoo", a, g).to_dense(), c * unit) < 1e-11


# -- the metrics, every method --------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_metrics_against_dense(batch, method):
    a, g, f = batch
    approx = approximate(method, a, g)
    dense = approx.to_dense().to(F64)
    lf = LayerFisher(a, g)
    assert approx.inner_fisher(a, g) == pytest.approx(float((f * dense).sum()), rel=1e-10)
    want = float(torch.linalg.norm(f - dense) / torch.linalg.norm(f))
    assert lf.relative_error(approx) == pytest.approx(want, rel=1e-6, abs=1e-7)
    lam = torch.linalg.eigvalsh(f).flip(0)
    lam_t = torch.linalg.eigvalsh(0.5 * (dense + dense.T)).flip(0)
    want_spec = float(torch.linalg.norm(lam - lam_t) / torch.linalg.norm(lam))
    assert spectrum_error(a, g, approx) == pytest.approx(want_spec, rel=1e-8, abs=1e-10)
    agree = lf.natural_gradient_agreement(approx, 0.1)
    grad_mean = vec(lf.mean_gradient())
    eye = torch.eye(f.shape[0], dtype=F64)
    x = torch.linalg.solve(f + 0.1 * eye, grad_mean)
    lam_d, u_d = torch.linalg.eigh(0.5 * (dense + dense.T))
    x_t = u_d @ ((u_d.T @ grad_mean) / (lam_d.clamp_min(0.0) + 0.1))
    assert agree.cosine == pytest.approx(float(x @ x_t / (x.norm() * x_t.norm())), rel=1e-8)


@pytest.mark.parametrize("method", KPSVD_FAMILY)
def test_kpsvd_family_orders_on_shared_layers(method):
    a, g = _sequence_batch(seed=4)
    lf = LayerFisher(a, g)
    kfac = lf.relative_error(approximate("kfac", a, g))
    assert lf.relative_error(approximate(method, a, g)) <= kfac + 1e-12


def test_the_fisher_average_refuses_shared_batches_clearly():
    a, g = _sequence_batch()
    state = fisher_ema.FisherEMA(3)
    with pytest.raises(ValueError, match="one position per sample.*ema_mode='factors'"):
        state.fold(a, g, 0.95)
