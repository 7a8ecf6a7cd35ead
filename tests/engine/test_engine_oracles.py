"""Every approximation against a dense float64 oracle built from F and ℛ(F) explicitly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import core.engine.approx as approx_module
import core.engine.rearranged_svd as svd_module
from core.engine.fisher import LayerFisher, exact_fisher
from core.engine.kron import KronEig, rearrange, unvec, vec
from core.engine.methods import KPSVD_FAMILY, METHODS, approximate


@pytest.fixture(autouse=True)
def float64_by_default():
    """Oracles are float64 throughout; restore the default for the other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def batch(m: int, da: int, dg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0  # a bias column, as captured
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, dg)
    return a, g


def unrearrange(low_rank: torch.Tensor, da: int, dg: int) -> torch.Tensor:
    """Σ_k σ_k mat(u_k) ⊗ mat(v_k) from a matrix given in rearranged form."""
    u, s, vh = torch.linalg.svd(low_rank)
    out = torch.zeros(da * dg, da * dg)
    for k in range(int((s > 1e-12 * s[0]).sum())):
        out += s[k] * torch.kron(unvec(u[:, k], da, da), unvec(vh[k], dg, dg))
    return out


def truncated(matrix: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix)
    return (u[:, :r] * s[:r]) @ vh[:r]


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


M, DA, DG = 24, 6, 5

# How ℛ(F)'s triplets are found: the Gram route solves small batches densely and iterates on
# larger ones ("gram/krylov" forces the iteration); the seed paper's matrix-free iterations.
ROUTES = ["gram", "gram/krylov", "matrix_free"]


def solver_for(route: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``solver`` argument for ``route``, forcing the block iteration for "gram/krylov"."""
    if route == "gram/krylov":
        monkeypatch.setattr(svd_module, "DENSE_MAX_M", 0)
    return route.split("/")[0]


@pytest.fixture(scope="module")
def layer():
    a, g = batch(M, DA, DG)
    f = exact_fisher(a, g)
    return a, g, f, rearrange(f, DA, DG)


def test_exact_fisher_is_the_sum_of_per_sample_kronecker_products(layer):
    a, g, f, _ = layer
    loop = sum(torch.kron(torch.outer(ai, ai), torch.outer(gi, gi)) for ai, gi in zip(a, g))
    assert rel(f, loop / M) < 1e-13
    # vec(W) ordering: vec(V)ᵀ F vec(V) = (1/m) Σ (g_iᵀ V ā_i)², V of shape (dg, da)
    v = torch.randn(DG, DA)
    quad = float(vec(v) @ f @ vec(v))
    assert quad == pytest.approx(float(((g @ v * a).sum(1) ** 2).mean()), rel=1e-12)


def test_rearrangement_maps_kronecker_products_to_rank_one():
    r, s = torch.randn(DA, DA), torch.randn(DG, DG)
    x = torch.kron(r, s)
    assert torch.allclose(rearrange(x, DA, DG), torch.outer(vec(r), vec(s)))
    assert torch.linalg.norm(rearrange(x, DA, DG)) == pytest.approx(float(torch.linalg.norm(x)))


def test_kfac_is_a_kron_g(layer):
    a, g, _, _ = layer
    ap = approximate("kfac", a, g)
    assert rel(ap.to_dense(), torch.kron(a.T @ a / M, g.T @ g / M)) < 1e-13


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_kpsvd_is_the_truncated_svd_of_the_rearrangement(layer, route, rank, monkeypatch):
    a, g, _, rf = layer
    ap = approximate("kpsvd", a, g, rank=rank, solver=solver_for(route, monkeypatch))
    oracle = unrearrange(truncated(rf, rank), DA, DG)
    assert rel(ap.to_dense(), oracle) < 1e-8
    sig = torch.linalg.svdvals(rf)[:rank]
    assert torch.allclose(torch.tensor(ap.info["singular_values"]), sig, rtol=1e-8)


def test_kpsvd_factors_match_singular_vectors_up_to_sign(layer):
    a, g, _, rf = layer
    u, s, vh = torch.linalg.svd(rf)
    ap = approximate("kpsvd", a, g, rank=3)
    for k, (r, sm) in enumerate(ap.terms):
        ur, vs = vec(r) / torch.linalg.norm(r), vec(sm) / torch.linalg.norm(sm)
        sign = torch.sign(ur @ u[:, k])
        assert torch.allclose(sign * ur, u[:, k], atol=1e-8)
        assert torch.allclose(sign * vs, vh[k], atol=1e-8)
        assert float(torch.linalg.norm(r) * torch.linalg.norm(sm)) == pytest.approx(
            float(s[k]), rel=1e-9
        )


@pytest.mark.parametrize("method", ["deflation", "lanczos"])
@pytest.mark.parametrize("route", ROUTES)
def test_two_term_methods_are_the_best_two_terms(layer, method, route, monkeypatch):
    a, g, _, rf = layer
    ap = approximate(method, a, g, solver=solver_for(route, monkeypatch))
    assert len(ap.terms) == 2
    assert rel(ap.to_dense(), unrearrange(truncated(rf, 2), DA, DG)) < 1e-8


@pytest.mark.parametrize("route", ROUTES)
def test_kfac_corrected_adds_the_best_product_of_the_residual(layer, route, monkeypatch):
    a, g, f, rf = layer
    kfac = torch.kron(a.T @ a / M, g.T @ g / M)
    residual = rearrange(f - kfac, DA, DG)
    oracle = kfac + unrearrange(truncated(residual, 1), DA, DG)
    ap = approximate("kfac_corrected", a, g, solver=solver_for(route, monkeypatch))
    assert rel(ap.to_dense(), oracle) < 1e-8


def test_ekfac_is_the_best_diagonal_in_kfacs_eigenbasis(layer):
    a, g, f, _ = layer
    ap = approximate("ekfac", a, g)
    basis = torch.kron(ap.u_a, ap.u_g)
    diag = torch.diagonal(basis.T @ f @ basis)
    assert rel(ap.to_dense(), basis @ torch.diag(diag) @ basis.T) < 1e-12
    # orthonormal eigenbasis of A ⊗ G
    kfac = torch.kron(a.T @ a / M, g.T @ g / M)
    off = basis.T @ kfac @ basis
    assert torch.allclose(off, torch.diag(torch.diagonal(off)), atol=1e-10)


def test_shampoo_is_the_scaled_product_of_its_factors(layer):
    a, g, f, _ = layer
    left = sum((gi @ gi) * torch.outer(ai, ai) for ai, gi in zip(a, g)) / M
    right = sum((ai @ ai) * torch.outer(gi, gi) for ai, gi in zip(a, g)) / M
    k = torch.kron(left, right)
    oracle = (f * k).sum() / (k * k).sum() * k
    assert rel(approximate("shampoo", a, g).to_dense(), oracle) < 1e-12


@pytest.mark.parametrize("method", KPSVD_FAMILY)
def test_gram_and_matrix_free_routes_agree(layer, method):
    a, g, _, _ = layer
    fast = approximate(method, a, g, solver="gram").to_dense()
    paper = approximate(method, a, g, solver="matrix_free").to_dense()
    assert rel(fast, paper) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_matrix_free_metrics_match_dense_ones(layer, method):
    a, g, f, _ = layer
    ap = approximate(method, a, g)
    dense = ap.to_dense()
    lf = LayerFisher(a, g)
    assert lf.relative_error(ap) == pytest.approx(rel(dense, f), rel=1e-9)
    lam = torch.linalg.eigvalsh(f).flip(0)
    lam_t = torch.linalg.eigvalsh(0.5 * (dense + dense.T)).flip(0)
    err, exact = lf.spectrum_error(ap)
    assert exact
    assert err == pytest.approx(float(torch.linalg.norm(lam - lam_t) / torch.linalg.norm(lam)))
    assert torch.allclose(ap.eigvals(), lam_t, atol=1e-12 * float(lam_t.abs().max()))


def test_fisher_eigenvalues_from_the_gram_matrix(layer):
    a, g, f, _ = layer
    lam = torch.linalg.eigvalsh(f).flip(0)
    mine = LayerFisher(a, g).eigvals()
    assert mine.numel() == min(M, DA * DG)
    assert torch.allclose(mine, lam[: mine.numel()], atol=1e-13 * float(lam[0]))
    assert float(lam[mine.numel() :].abs().max()) < 1e-12 * float(lam[0])


def test_woodbury_natural_gradient_matches_a_dense_solve(layer):
    a, g, f, _ = layer
    v = torch.randn(DG, DA)
    lf = LayerFisher(a, g)
    x = lf.solve(v, 1e-3)
    dense = torch.linalg.solve(f + 1e-3 * torch.eye(DA * DG), vec(v))
    assert rel(vec(x), dense) < 1e-9


def test_mean_gradient_is_the_batch_average(layer):
    """(1/m) Σ g_i ā_iᵀ: the gradient of the mean loss. Every agreement metric is invariant to
    the scale of v, so this is checked on its own."""
    a, g, _, _ = layer
    loop = sum(torch.outer(gi, ai) for ai, gi in zip(a, g)) / M
    assert rel(LayerFisher(a, g).mean_gradient(), loop) < 1e-13


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "ekfac", "shampoo"])
def test_exact_damped_solve_of_single_products(layer, method):
    a, g, _, _ = layer
    ap = approximate(method, a, g)
    v = torch.randn(DG, DA)
    dense = torch.linalg.solve(ap.to_dense() + 0.05 * torch.eye(DA * DG), vec(v))
    assert rel(vec(ap.solve(v, 0.05)), dense) < 1e-10


def factored_first_term(r: torch.Tensor, s: torch.Tensor, damping: float) -> torch.Tensor:
    """Dense ``(R + π√λ I) ⊗ (S + √λ/π I)``, ``π² = (tr R / da) / (tr S / dg)``, written out
    from Martens & Grosse (2015, §6.3) without core.engine.kron's helpers (they are under test)."""
    da, dg = r.shape[0], s.shape[0]
    pi = math.sqrt((float(torch.trace(r)) / da) / (float(torch.trace(s)) / dg))
    root = math.sqrt(damping)
    return torch.kron(r + pi * root * torch.eye(da), s + root / pi * torch.eye(dg))


@pytest.mark.parametrize("method", ["kfac", "kpsvd", "deflation", "lanczos", "kfac_corrected"])
def test_factored_damped_solve_matches_dense(layer, method):
    a, g, _, _ = layer
    ap = approximate(method, a, g, psd_floor=1e-9)
    damping = 0.5  # large enough that the damped sum stays positive definite here
    (r1, s1), *rest = ap.terms
    damped = factored_first_term(r1, s1, damping) + sum(
        (torch.kron(r, s) for r, s in rest), torch.zeros(1)
    )
    assert float(torch.linalg.eigvalsh(damped)[0]) > 0
    v = torch.randn(DG, DA)
    dense = torch.linalg.solve(damped, vec(v))
    assert rel(vec(ap.solve(v, damping, mode="factored")), dense) < 1e-9
    assert ap.safeguard.entries_raised == 0


def test_safeguard_engages_on_an_indefinite_sum_and_counts_it():
    a, g = batch(8, 4, 3, seed=3)
    ap = approximate("deflation", a, g)
    v = torch.randn(3, 4)
    x = ap.solve(v, 1e-6, mode="factored")
    assert torch.isfinite(x).all()
    assert ap.safeguard.inverses == 1
    ap.solve(v, 1e-6, mode="factored")  # the cached inverse: counted once
    assert ap.safeguard.inverses == 1
    # Without the floor the congruent diagonal 1 + μν has entries below 0.1 here.
    (r1, s1), (r2, s2) = ap.terms
    kappa = scipy.linalg.eigh(
        torch.kron(r2, s2).numpy(), factored_first_term(r1, s1, 1e-6).numpy(), eigvals_only=True
    )  # the products μ_i ν_p of the two generalized eigenproblems
    expected = int((1 + kappa < 0.1).sum())
    assert expected > 0
    assert ap.safeguard.entries_raised == expected
    assert ap.safeguard.engaged == 1


def test_exact_solve_projects_an_indefinite_sum_onto_the_psd_cone():
    a, g = batch(8, 4, 3, seed=3)
    ap = approximate("kfac_corrected", a, g)
    dense = ap.to_dense()
    lam, u = torch.linalg.eigh(dense)
    assert float(lam[0]) < 0  # this batch gives an indefinite approximation
    v = torch.randn(3, 4)
    oracle = u @ ((u.T @ vec(v)) / (lam.clamp_min(0) + 0.01))
    assert rel(vec(ap.solve(v, 0.01)), oracle) < 1e-10
    assert ap.safeguard.entries_raised == int((lam < 0).sum())


def test_large_sums_use_lanczos_eigenvalues_and_minres(monkeypatch):
    monkeypatch.setattr(approx_module, "DENSE_SPECTRUM_LIMIT", 500)
    a, g = batch(30, 60, 40, seed=4)  # n = 2400 > both dense limits for sums
    ap = approximate("kfac_corrected", a, g)
    assert ap._projected.size == 900 > 500  # Lanczos on the sum compressed to 30² dimensions
    dense = ap.to_dense()
    lam = torch.linalg.eigvalsh(dense).flip(0)
    top = ap.eigvals(10)
    assert torch.allclose(top, lam[:10], rtol=1e-8, atol=1e-10 * float(lam[0]))
    v = torch.randn(40, 60)
    x = ap.solve(v, 0.1)
    residual = dense @ vec(x) + 0.1 * vec(x) - vec(v)
    assert float(torch.linalg.norm(residual) / torch.linalg.norm(v)) < 1e-6
    err, exact = LayerFisher(a, g).spectrum_error(ap)
    assert not exact and 0 < err < 1


def test_kron_eig_solve_matches_dense():
    r = torch.randn(4, 4)
    s = torch.randn(3, 3)
    r, s = r @ r.T, s @ s.T
    v = torch.randn(3, 4)
    x = KronEig.of(r, s).solve(v, 0.3)
    dense = torch.linalg.solve(torch.kron(r, s) + 0.3 * torch.eye(12), vec(v))
    assert rel(vec(x), dense) < 1e-12


@pytest.mark.parametrize("method", ["kpsvd", "deflation", "kfac_corrected"])
def test_many_samples_against_the_dense_oracle(method):
    """m ≫ da, dg: the block Krylov basis spans many blocks before it converges."""
    a, g = batch(400, 9, 7, seed=5)
    oracle = oracle_terms(a, g, method, 1 if method == "kpsvd" else 2)
    ap = approximate(method, a, g)
    assert rel(ap.to_dense(), oracle) < 1e-8
    ap32 = approximate(method, a.float(), g.float())
    assert rel(ap32.to_dense().double(), oracle) < 1e-5


def test_a_sum_is_eigendecomposed_once_for_spectrum_and_solve():
    a, g = batch(40, 7, 5, seed=6)
    ap = approximate("kfac_corrected", a, g)
    lam = ap.eigvals()
    assert ap.eigvals(3) is not None and torch.equal(ap.eigvals(3), lam[:3])
    v = torch.randn(5, 7)
    x = ap.solve(v, 0.01)
    assert ap.safeguard.inverses == 1  # the eigendecomposition behind both, formed once
    dense = ap.to_dense()
    lam_d, u = torch.linalg.eigh(dense)
    assert torch.allclose(lam, lam_d.flip(0), atol=1e-12 * float(lam_d.abs().max()))
    oracle = u @ ((u.T @ vec(v)) / (lam_d.clamp_min(0) + 0.01))
    assert rel(vec(x), oracle) < 1e-10


def test_factored_solve_applies_the_floor_it_counts():
    """With K₁ the factored-damped first term and K₂ = R₂⊗S₂, the pencil (K₂, K₁) has
    Wᵀ K₁ W = I, Wᵀ K₂ W = diag(κ) (κ = μ_i ν_p), so the floored inverse is
    W diag(1 / max(1 + κ, floor)) Wᵀ: positive definite, whatever the sign of 1 + κ."""
    a, g = batch(8, 4, 3, seed=3)
    ap = approximate("deflation", a, g)  # psd_floor 0.1
    damping = 1e-6
    (r1, s1), (r2, s2) = ap.terms
    k1 = factored_first_term(r1, s1, damping).numpy()
    kappa, w = scipy.linalg.eigh(torch.kron(r2, s2).numpy(), k1)
    assert float((1 + kappa).min()) < 0  # without the floor the inverse would be indefinite
    oracle = torch.from_numpy((w / np.maximum(1 + kappa, 0.1)) @ w.T)
    gen = torch.Generator().manual_seed(0)
    for v in [torch.randn(3, 4, generator=gen) for _ in range(3)]:
        assert rel(vec(ap.solve(v, damping, mode="factored")), oracle @ vec(v)) < 1e-8
    # Along the most negative generalized direction, ⟨v, (F̃ + λ)⁻¹ v⟩ stays positive.
    worst = unvec(torch.from_numpy(k1 @ w[:, int(np.argmin(kappa))]), 3, 4)
    assert float((worst * ap.solve(worst, damping, mode="factored")).sum()) > 0
    assert ap.safeguard.entries_raised == int((1 + kappa < 0.1).sum()) > 0


@pytest.mark.parametrize("method", KPSVD_FAMILY)
@pytest.mark.parametrize("scale", [1e-3, 1e2, 1e3])
def test_kpsvd_family_is_scale_equivariant(layer, method, scale):
    """F(c·ā, g) = c² F(ā, g), so every term scales by c² and the error does not change.
    Regression (issue 9): the Gram route's block orthonormalisation used an absolute
    threshold, and for σ₁ > ~3e3 (a trained layer's Fisher) stopped after one step with wrong
    triplets reported as converged; Deflation's first factor came out indefinite."""
    a, g, _, rf = layer
    ap = approximate(method, scale * a, g)
    base = approximate(method, a, g)
    assert ap.info["converged"]
    sig = torch.tensor(ap.info["singular_values"])
    assert torch.allclose(sig, scale**2 * torch.tensor(base.info["singular_values"]), rtol=1e-8)
    assert rel(ap.to_dense(), scale**2 * base.to_dense()) < 1e-8
    if method != "kfac_corrected":
        r = {"kpsvd": 1, "deflation": 2, "lanczos": 2}[method]
        assert rel(ap.to_dense(), scale**2 * unrearrange(truncated(rf, r), DA, DG)) < 1e-8
        for r1 in (ap.terms[0][0], ap.terms[0][1]):  # the top term's factors are PSD
            assert float(torch.linalg.eigvalsh(r1)[0]) > -1e-12 * float(torch.linalg.norm(r1))


@pytest.mark.parametrize(
    ("solver", "method", "slack"),
    [
        ("gram", "deflation", 1.01),
        ("matrix_free", "lanczos", 1.01),
        ("matrix_free", "deflation", 10),
    ],
)
@pytest.mark.parametrize("tol", [1e-6, 1e-9])
def test_converged_means_the_residual_is_below_tol(solver, method, slack, tol):
    """``converged`` promises ‖ℛ(F)ᵀu − σv‖ ≤ tol·σ₁ for every returned triplet, checked here
    on the dense ℛ(F); ``max_residual`` is that residual over σ₁. The Ritz residuals of the
    Gram and Lanczos routes are exact; the power method measures its second triplet on the
    deflated operator, which differs from ℛ(F) by the first triplet's error (slack 10)."""
    m, da, dg = 120, 10, 9
    a, g = batch(m, da, dg, seed=7)
    rf = rearrange(exact_fisher(a, g), da, dg)
    sigma1 = float(torch.linalg.svdvals(rf)[0])
    ap = approximate(method, a, g, solver=solver, tol=tol)
    assert ap.info["converged"]
    residuals = []
    for r, s in ap.terms:
        nr = torch.linalg.norm(r)  # u = vec(R)/‖R‖, σ v = ‖R‖ vec(S) (σ = ‖R‖‖S‖)
        residuals.append(float(torch.linalg.norm(rf.T @ vec(r) / nr - nr * vec(s))) / sigma1)
    assert max(residuals) <= slack * tol
    if "max_residual" in ap.info:
        assert ap.info["max_residual"] == pytest.approx(max(residuals), rel=1e-3, abs=1e-12)


def test_minres_preconditioner_tolerates_round_off_negative_factor_eigenvalues(monkeypatch):
    """The first term's factors are PSD in exact arithmetic, but computed ones can carry
    eigenvalues like −1e-10·‖R‖. Multiplied by a large eigenvalue of S (here 1e4) that exceeds
    a small damping (1e-7), and the preconditioner (R₁⊗S₁ + λI)⁻¹ would be indefinite, which
    MINRES refuses ("non-symmetric matrix"); its PSD part is used instead."""
    monkeypatch.setattr(approx_module, "DENSE_EIG_LIMIT", 10)
    gen = torch.Generator().manual_seed(8)
    q_r = torch.linalg.qr(torch.randn(4, 4, generator=gen))[0]
    q_s = torch.linalg.qr(torch.randn(3, 3, generator=gen))[0]
    r1 = q_r @ torch.diag(torch.tensor([1.0, 0.5, 0.2, -1e-10])) @ q_r.T
    s1 = q_s @ torch.diag(torch.tensor([1e4, 2e3, 1e3])) @ q_s.T
    r2, s2 = sym_matrix(4, gen), sym_matrix(3, gen)  # keeps the sum well conditioned
    ap = approx_module.KroneckerSum("deflation", [(r1, s1), (r2, s2)])
    v = torch.randn(3, 4, generator=gen)
    x = ap.solve(v, 1e-7)
    assert ap.info["minres_status"] == 0
    dense = torch.linalg.solve(ap.to_dense() + 1e-7 * torch.eye(12), vec(v))
    # MINRES stops on a residual relative to ‖F̃‖‖x‖; with cond(F̃ + λI) ≈ 1e10 here that
    # leaves about 1e-4 of relative error against the dense solve.
    assert rel(vec(x), dense) < 1e-3


def sym_matrix(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, n, generator=gen)
    return x + x.T


@pytest.mark.parametrize(
    ("solver", "method"),
    [("gram", "deflation"), ("matrix_free", "lanczos"), ("matrix_free", "deflation")],
)
def test_a_looser_tolerance_stops_earlier(solver, method, monkeypatch):
    """The iterations stop as soon as the residual test passes, not only when the Krylov space
    is exhausted (which is exact, and also what a wrong residual estimate would fall back to)."""
    monkeypatch.setattr(svd_module, "DENSE_MAX_M", 0)  # the iteration, not the dense solve
    a, g = batch(120, 10, 9, seed=7)
    loose = approximate(method, a, g, solver=solver, tol=1e-3)
    tight = approximate(method, a, g, solver=solver, tol=1e-9)
    assert loose.info["converged"] and tight.info["converged"]
    assert loose.info["iterations"] < tight.info["iterations"]


def two_group_batch(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two groups of samples on disjoint input and output coordinates, the second scaled by
    ``scale``: ℛ(F) is the direct sum of the groups' blocks, so its top two singular values are
    the groups' own (0.81 apart at scale 0.975 on these draws)."""
    gen = torch.Generator().manual_seed(3)
    m, da, dg = 40, 6, 4
    a, g = torch.zeros(m, da), torch.zeros(m, dg)
    half = m // 2
    a[:half, :3] = torch.rand(half, 3, generator=gen) + 0.5
    g[:half, :2] = torch.randn(half, 2, generator=gen)
    a[half:, 3:] = scale * (torch.rand(half, 3, generator=gen) + 0.5)
    g[half:, 2:] = scale * torch.randn(half, 2, generator=gen)
    return a, g


def dense_rank_one(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The best Kronecker product σ₁ U ⊗ V of F from the dense SVD of ℛ(F), and its singular
    values."""
    da, dg = a.shape[1], g.shape[1]
    rf = rearrange(exact_fisher(a, g), da, dg)
    return unrearrange(truncated(rf, 1), da, dg), torch.linalg.svdvals(rf)


def test_rank_one_kpsvd_takes_the_power_path_on_a_clear_gap():
    """Nonnegative inputs (as after a ReLU) give σ₂/σ₁ ≪ 1: two matrix–vector products a step
    (RearrangedFisher._power_top) reach the tolerance, and the term is the dense SVD's."""
    a, g = batch(60, 7, 5)
    a = a.abs()
    oracle, sigma = dense_rank_one(a, g)
    assert float(sigma[1] / sigma[0]) < 0.3  # the premise: a clear gap
    got = approximate("kpsvd", a, g)
    assert got.info["iteration"] == "power"
    assert rel(got.to_dense(), oracle) < 1e-9


def test_rank_one_kpsvd_leaves_power_iteration_on_a_flat_top():
    """σ₂/σ₁ ≈ 0.8: the residual would fall by only ≈ 0.66 a step, so power iteration gives up
    after its first steps and block Krylov finishes from its vector (K_g is singular here,
    rank ≤ dg(dg + 1)/2 = 10 < m, so the dense route is not open); the term is still the dense
    SVD's and the step count includes the power steps."""
    a, g = two_group_batch(0.975)
    oracle, sigma = dense_rank_one(a, g)
    assert 0.7 < float(sigma[1] / sigma[0]) < 0.99  # the premise: a flat top, yet separated
    got = approximate("kpsvd", a, g)
    assert got.info["iteration"] == "block Krylov"
    assert got.info["iterations"] >= 3  # two power steps, then at least one block step
    assert rel(got.to_dense(), oracle) < 1e-8
    assert got.info["singular_values"][0] == pytest.approx(float(sigma[0]), rel=1e-10)


def oracle_terms(a: torch.Tensor, g: torch.Tensor, method: str, rank: int) -> torch.Tensor:
    """The dense oracle of a KPSVD-family method: the truncated SVD of ℛ(F) (of ℛ(F − A⊗G)
    plus A⊗G for KFAC-corrected)."""
    m, da, dg = a.shape[0], a.shape[1], g.shape[1]
    f = exact_fisher(a, g)
    if method == "kfac_corrected":
        kfac = torch.kron(a.T @ a / m, g.T @ g / m)
        return kfac + unrearrange(truncated(rearrange(f - kfac, da, dg), 1), da, dg)
    return unrearrange(truncated(rearrange(f, da, dg), rank), da, dg)


@pytest.mark.parametrize(
    ("method", "rank"), [("kpsvd", 3), ("deflation", 2), ("lanczos", 2), ("kfac_corrected", 1)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_batches_are_solved_densely(method, rank, dtype):
    """m ≤ DENSE_MAX_M with K_g positive definite (m = 60 ≤ dg(dg + 1)/2 = 78): one
    dense eigenproblem, no iteration, a measured residual within the tolerance, and the dense
    oracle's terms (float32 inputs: the Grams' rounding, as on the iterative routes)."""
    a, g = batch(60, 7, 12, seed=4)
    got = approximate(method, a.to(dtype), g.to(dtype), rank=rank)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    assert got.info["iteration"] == "dense" and got.info["iterations"] == 0
    assert 0 <= got.info["max_residual"] <= tol
    assert rel(got.to_dense().double(), oracle_terms(a, g, method, rank)) < (
        1e-9 if dtype == torch.float64 else 1e-5
    )


@pytest.mark.parametrize("method", ["deflation", "kfac_corrected"])
def test_the_dense_route_leaves_a_singular_k_g_to_the_iteration(method):
    """m = 120 > dg(dg + 1)/2 = 10: K_g = (ΓΓᵀ)∘² is singular and its Cholesky factorisation
    fails, so the block iteration runs, and the terms are still the dense oracle's."""
    a, g = batch(120, 8, 4, seed=9)
    got = approximate(method, a, g)
    assert got.info["iteration"] == "block Krylov" and got.info["iterations"] > 0
    assert rel(got.to_dense(), oracle_terms(a, g, method, 2)) < 1e-8
