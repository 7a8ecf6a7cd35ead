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
    VARIANTS,
    coarse_basis,
    coarse_correction,
    coarse_matrix,
    coarse_vectors,
    fisher_products,
    kronecker_coarse_matrix,
    per_sample_projections,
    spectral_vectors,
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
    corr = coarse_correction(basis, grads, coarse_matrix(per_sample_projections(caps, basis)), LAM)
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
        coarse_vectors("nope", grads, grads)
    with pytest.raises(ValueError, match="KFAC factors"):
        coarse_vectors("spectral", grads, grads)
    for space in ("residual", "krylov", "krylov_residual"):
        with pytest.raises(ValueError, match="precondition"):
            coarse_vectors(space, grads, grads, captures=caps, damping=LAM)
    with pytest.raises(ValueError, match="captures and the damping"):
        coarse_vectors("residual", grads, grads, precondition=lambda _n, v: v)
    with pytest.raises(ValueError, match="no capture"):
        fisher_products(caps, {"nowhere": torch.ones(2, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="no capture"):
        kronecker_coarse_matrix(caps, {"nowhere": torch.ones(2, 2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="coarse matrix is"):
        coarse_correction(coarse_basis(grads), grads, torch.eye(5), LAM)
    basis = coarse_basis(grads)
    with pytest.raises(ValueError, match="damping"):
        coarse_correction(basis, grads, coarse_matrix(per_sample_projections(caps, basis)), 0.0)
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
        approx = {k: approximate("kfac", caps[k].a.double(), caps[k].g.double()) for k in grads}
        want = two_level_directions(
            space,
            grads,
            kfac,
            caps,
            LAM,
            precondition=lambda k, v, approx=approx: approx[k].solve(v, LAM, mode="factored"),
            spectral=spectral_vectors({k: a.terms[0] for k, a in approx.items()}),
        )
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


# ---- the variants of the paper's comparison: dense whole-network oracles -------------------


def dense_kfac_blocks(caps, names):
    """Each layer's damped KFAC block ``(A + π√λ) ⊗ (G + √λ/π)`` densely."""
    out = []
    for k in names:
        a, g = caps[k].a, caps[k].g
        r, s = factored_damping(a.T @ a / a.shape[0], g.T @ g / g.shape[0], LAM)
        out.append(torch.kron(r, s))
    return out


def dense_kronecker_fisher(caps, names):
    """The whole-network Kronecker-factored Fisher with blocks ``A_ij ⊗ G_ij``,
    ``A_ij = (1/m) Σ_n ā_{n,i} ā_{n,j}ᵀ`` (Tselepidis et al.'s cross-layer factors)."""
    m = caps[names[0]].a.shape[0]
    rows = []
    for i in names:
        row = []
        for j in names:
            a_ij = caps[i].a.T @ caps[j].a / m
            g_ij = caps[i].g.T @ caps[j].g / m
            row.append(torch.kron(a_ij, g_ij))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def dense_r0(names, shapes, per_layer):
    """R₀ (k × n) from a list per layer of dense column vectors (NOT normalised: the oracle's
    Galerkin formula does not depend on the scaling)."""
    sizes = [s[0] * s[1] for s in shapes]
    rows = []
    for li, vs in enumerate(per_layer):
        for v in vs:
            parts = [v if lj == li else torch.zeros(n, dtype=torch.float64)
                     for lj, n in enumerate(sizes)]  # fmt: skip
            rows.append(torch.cat(parts))
    return torch.stack(rows)


def split(v, shapes):
    out, lo = [], 0
    for s in shapes:
        out.append(v[lo : lo + s[0] * s[1]])
        lo += s[0] * s[1]
    return out


@pytest.mark.parametrize("space", VARIANTS)
def test_every_variant_is_its_dense_formula(space):
    """``d = M⁻¹∇ + R₀ᵀ(R₀ F̂ R₀ᵀ)⁻¹R₀∇`` with R₀ built densely from the variant's definition
    (un-normalised), ``F̂ = F + λI`` (the Kronecker-factored ``F_K + λI`` for tselepidis; the
    diagonal of the coarse matrix for nicolaides_layerwise), against the module."""
    model, x, caps, grads = tiny()
    j, names, shapes = dense_per_sample_gradients(model, x)
    f = j.T @ j / x.shape[0]
    eye = torch.eye(f.shape[0], dtype=torch.float64)
    blocks = dense_kfac_blocks(caps, names)
    m_inv = torch.block_diag(*[torch.linalg.inv(b) for b in blocks])
    g = torch.cat([vec(grads[k]) for k in names])
    d_kfac = m_inv @ g
    m_inv_l = [torch.linalg.inv(b) for b in blocks]
    # spectral: this minibatch's factors are singular (m < d, dead units), and the eigenvector
    # of a zero eigenvalue is orthogonal to every per-sample gradient and to ∇ — the correction
    # would vanish; random SPD factors (A, G) per layer give a non-trivial oracle
    gen = torch.Generator().manual_seed(11)
    spd = {}
    for k, (dg, da) in zip(names, shapes, strict=True):
        ra = torch.randn(da, da, generator=gen, dtype=torch.float64)
        rg = torch.randn(dg, dg, generator=gen, dtype=torch.float64)
        spd[k] = (ra @ ra.T + 0.1 * torch.eye(da), rg @ rg.T + 0.1 * torch.eye(dg))
    ones = [torch.ones(s[0] * s[1], dtype=torch.float64) for s in shapes]
    r = split(g - (f + LAM * eye) @ d_kfac, shapes)
    if space == "kfac_direction":
        per_layer = [[v] for v in split(d_kfac, shapes)]
    elif space == "gradient":
        per_layer = [[v] for v in split(g, shapes)]
    elif space in ("nicolaides", "tselepidis", "nicolaides_layerwise"):
        per_layer = [[v] for v in ones]
    elif space == "residual":
        per_layer = [[mi @ rl] for mi, rl in zip(m_inv_l, r, strict=True)]
    elif space == "spectral":  # the eigenvector of the dense Kronecker block, smallest λ
        per_layer = [[torch.linalg.eigh(torch.kron(*spd[k])).eigenvectors[:, 0]] for k in names]
    elif space == "krylov":
        per_layer = [[o, mi @ o] for mi, o in zip(m_inv_l, ones, strict=True)]
    else:
        assert space == "krylov_residual"
        per_layer = [[mi @ rl, mi @ mi @ rl] for mi, rl in zip(m_inv_l, r, strict=True)]
    r0 = dense_r0(names, shapes, per_layer)
    fine = dense_kronecker_fisher(caps, names) if space == "tselepidis" else f
    coarse = r0 @ (fine + LAM * eye) @ r0.T
    if space == "nicolaides_layerwise":
        coarse = torch.diag(torch.diagonal(coarse))
    want = d_kfac + r0.T @ torch.linalg.solve(coarse, r0 @ g)
    kfac = {k: v.reshape(s[1], s[0]).T for k, v, s in
            zip(names, split(d_kfac, shapes), shapes, strict=True)}  # fmt: skip
    approx = {k: approximate("kfac", caps[k].a, caps[k].g) for k in names}
    got = two_level_directions(
        space,
        grads,
        kfac,
        caps,
        LAM,
        precondition=lambda k, v: approx[k].solve(v, LAM, mode="factored"),
        spectral=spectral_vectors(spd),
    )
    assert torch.allclose(torch.cat([vec(got[k]) for k in names]), want, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(want, d_kfac, rtol=1e-3)  # the correction is not nothing


def test_the_variants_differ_where_they_should():
    """Tselepidis' Kronecker coarse matrix is not the exact one (the cross-layer blocks of F
    are not Kronecker products), and dropping the cross-layer entries changes the step."""
    _, _, caps, grads = tiny()
    kfac = {k: 2.0 * v for k, v in grads.items()}
    d = {s: two_level_directions(s, grads, kfac, caps, LAM)
         for s in ("nicolaides", "tselepidis", "nicolaides_layerwise")}  # fmt: skip
    for other in ("tselepidis", "nicolaides_layerwise"):
        assert any(not torch.allclose(d["nicolaides"][k], d[other][k], rtol=1e-4) for k in kfac)


def conv_like_captures(m=7, t=(3, 5), dims=((4, 3), (2, 4)), seed=5):
    """Synthetic captures with several positions per sample (T differs between layers)."""
    gen = torch.Generator().manual_seed(seed)
    caps = {}
    for i, (ti, (da, dg)) in enumerate(zip(t, dims, strict=True)):
        a = torch.randn(m, ti, da, generator=gen, dtype=torch.float64)
        g = torch.randn(m, ti, dg, generator=gen, dtype=torch.float64)
        caps[f"l{i}"] = type("Cap", (), {"a": a, "g": g})()
    return caps


def test_fisher_products_and_the_kronecker_coarse_matrix_with_positions():
    """Several positions per sample: ``F v`` against ``J v`` with ``D_n = Σ_t γ_{nt} ā_{nt}ᵀ``,
    and the Kronecker coarse matrix against dense ``Â_ij ⊗ Ĝ_ij`` blocks from the per-sample
    ``â_n = mean_t ā_{nt}``, ``ĝ_n = Σ_t γ_{nt}``."""
    caps = conv_like_captures()
    names = list(caps)
    m = caps[names[0]].a.shape[0]
    d = {k: torch.einsum("ntg,nta->nga", c.g, c.a) for k, c in caps.items()}  # D_n per layer
    j = torch.cat([torch.stack([vec(d[k][n]) for n in range(m)]) for k in names], dim=1)
    f = j.T @ j / m
    gen = torch.Generator().manual_seed(9)
    v = {k: torch.randn(c.g.shape[-1], c.a.shape[-1], generator=gen, dtype=torch.float64)
         for k, c in caps.items()}  # fmt: skip
    got = fisher_products(caps, v)
    want = f @ torch.cat([vec(v[k]) for k in names])
    assert torch.allclose(torch.cat([vec(got[k]) for k in names]), want, rtol=1e-12)
    hat = {k: (c.a.mean(dim=1), c.g.sum(dim=1)) for k, c in caps.items()}
    blocks = [[torch.kron(hat[i][0].T @ hat[k][0] / m, hat[i][1].T @ hat[k][1] / m)
               for k in names] for i in names]  # fmt: skip
    fk = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)
    shapes = [(c.g.shape[-1], c.a.shape[-1]) for c in caps.values()]
    r0 = dense_r0(names, shapes, [[vec(v[k])] for k in names])
    basis = dict(v)  # any vectors: the matrix is R₀ F_K R₀ᵀ for the given R₀
    assert torch.allclose(kronecker_coarse_matrix(caps, basis), r0 @ fk @ r0.T, rtol=1e-12)


def test_coarse_basis_orthonormalises_and_drops_dependent_vectors():
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    basis = coarse_basis({"a": torch.stack([u, 2 * u + w]), "b": torch.stack([u, -3 * u])})
    q = basis["a"].reshape(2, -1)
    assert torch.allclose(q @ q.T, torch.eye(2, dtype=torch.float64), atol=1e-14)
    assert basis["b"].shape == (1, 3, 4)  # −3u is in the span of u: one direction
    # with M = cI the Krylov space {1, M⁻¹1} is one direction: the Nicolaides correction
    _, _, caps, grads = tiny()
    kfac = {k: v / 5.0 for k, v in grads.items()}
    kry = two_level_directions("krylov", grads, kfac, caps, LAM,
                               precondition=lambda _k, v: v / 5.0)  # fmt: skip
    nic = two_level_directions("nicolaides", grads, kfac, caps, LAM)
    assert all(torch.allclose(kry[k], nic[k], rtol=1e-10) for k in kfac)


def test_the_spectral_space_of_a_null_direction_adds_nothing():
    """With the minibatch's own (singular) factors the smallest eigenvector ``q_G q_Aᵀ`` has
    ``q_Gᵀ γ_n = 0`` or ``ā_nᵀ q_A = 0`` for every sample: it is orthogonal to ∇ and to every
    ``D_n``, so the spectral correction is exactly KFAC's step (a property of that coarse space,
    stated in bench/RESULTS-two-level.md)."""
    _, _, caps, grads = tiny()
    approx = {k: approximate("kfac", caps[k].a, caps[k].g) for k in caps}
    for a in approx.values():  # every layer has a singular factor here
        low = [torch.linalg.eigvalsh(f) for f in a.terms[0]]
        assert min(float(e[0] / e[-1]) for e in low) < 1e-12
    kfac = {k: approx[k].solve(grads[k], LAM, mode="factored") for k in caps}
    spectral = spectral_vectors({k: a.terms[0] for k, a in approx.items()})
    got = two_level_directions("spectral", grads, kfac, caps, LAM, spectral=spectral)
    assert all(torch.allclose(got[k], kfac[k], atol=1e-14) for k in kfac)
