"""Tests of core.training.optim: every optimizer's update against a dense float64 oracle,
options, KL-clip.

The central check (the seed authors' Deflation and KFAC-corrected optimizers never deflated, and
their KFAC-corrected one failed on re-estimation): on a tiny network, after TWO curvature
refreshes (so re-estimation and the curvature EMA are exercised), each natural-gradient
optimizer's update is exactly ``−lr · D⁻¹ vec(∇W)`` with ``D`` the dense matrix of the damped
approximation, formed independently here with ``torch.kron``, in both EMA modes. In "factors"
mode the EMA'd factors are rebuilt here from the captured batches (``approximate()`` on each
batch, sign alignment, averaging with torch; for ekfac the eigenbasis and diagonal by hand);
in "window" mode the approximation is checked against the dense EMA of the Fisher. Then:

* one product R⊗S (kfac, kpsvd, shampoo): ``D = (R + π√λI) ⊗ (S + √λ/πI)``,
  ``π = sqrt((tr R/da)/(tr S/dg))`` (Martens–Grosse factored damping);
* two products (deflation, lanczos, kfac_corrected): ``D = (R₁+π√λI)⊗(S₁+√λ/πI) + R₂⊗S₂``
  (first term factored-damped, second undamped), with the safeguard not engaged;
* ekfac and eva: ``D = F̃ + λI``; exact: ``D = F_ema + λI`` (the exact per-layer block,
  block-diagonal).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import core.training.averages as averages_module
from core.engine.fisher import exact_fisher
from core.engine.kron import rearrange
from core.engine.methods import approximate
from core.training.averages import APPROX_TOL
from core.training.defaults import TWO_LEVEL_OPTIMIZERS
from core.training.models import per_sample_nll
from core.training.optim import (
    EMA_MODES,
    NATURAL_OPTIMIZERS,
    OPTIMIZERS,
    NonFiniteError,
    OptimizerConfig,
    all_finite,
    build_optimizer,
    default_damping,
    default_lr,
)

RHO = 0.8
DAMPING = 1e-2


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 4, bias=False), nn.Sigmoid())


class _Logits(nn.Module):
    """A small autoencoder-like net with logit outputs (for the BCE likelihood)."""

    def __init__(self, seed: int = 0, d: int = 6, h: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 4), nn.Linear(4, d))

    def forward(self, x):
        return self.body(x)


def _data(n: int = 64, d: int = 6, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=gen) > 0.5).float() * 0.8 + 0.1


def _loss(model, x):
    return per_sample_nll(model(x), x, "bce").mean()


def _train_step(model, opt, x):
    opt.zero_grad()
    loss = _loss(model, x)
    loss.backward()
    opt.step(x, x)
    return float(loss.detach())


def _grad_matrix(layer: nn.Linear) -> torch.Tensor:
    v = layer.weight.grad
    if layer.bias is not None:
        v = torch.cat([v, layer.bias.grad[:, None]], 1)
    return v.to(torch.float64)


def _weight_matrix(layer: nn.Linear) -> torch.Tensor:
    w = layer.weight.detach()
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach()[:, None]], 1)
    return w.to(torch.float64)


def _vec(m):
    return m.T.reshape(-1)


def _factored(r, s, lam):
    da, dg = r.shape[0], s.shape[0]
    tr_r, tr_s = float(torch.trace(r)) / da, float(torch.trace(s)) / dg
    pi = math.sqrt(tr_r / tr_s) if tr_r > 0 and tr_s > 0 else 1.0
    return r + pi * lam**0.5 * torch.eye(da, dtype=r.dtype), s + lam**0.5 / pi * torch.eye(
        dg, dtype=s.dtype
    )


def _ema_fisher(captures: list[tuple[torch.Tensor, torch.Tensor]], rho: float) -> torch.Tensor:
    """Σ_k w_k F_k, w_k ∝ ρ^k (k = 0 newest), from the raw captures."""
    weights = [rho**k for k in range(len(captures))]
    total = sum(weights)
    fs = [exact_fisher(a.double(), g.double()) for a, g in reversed(captures)]
    return sum(w / total * f for w, f in zip(weights, fs, strict=True))


def _dense_damped(method, approx, lam, ema_fisher):
    n = ema_fisher.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    if method == "exact":
        return ema_fisher + lam * eye
    if method in ("ekfac", "eva"):
        return approx.to_dense().double() + lam * eye
    terms = [(r.double(), s.double()) for r, s in approx.terms]
    # ordering check: the engine's to_dense is Σ kron(R_k, S_k) in column-major vec order
    assert torch.allclose(approx.to_dense().double(), sum(torch.kron(r, s) for r, s in terms))
    r1, s1 = _factored(*terms[0], lam)
    return torch.kron(r1, s1) + sum(torch.kron(r, s) for r, s in terms[1:])


def _factor_ema_reference(method, captures, rho):
    """The "factors" mode state, rebuilt from the captures (oldest first): the engine's terms
    of each batch, the new term's sign aligned with the running one, averaged with torch.
    Returns the dense F̃_ema (ekfac, eva) or its terms."""
    if method == "eva":  # the running Kronecker vectors ā, ḡ (Zhang et al. 2023)
        bars = None
        for a, g in captures:
            new = (a.double().mean(0), g.double().mean(0))
            bars = (
                new
                if bars is None
                else [rho * o + (1 - rho) * n for o, n in zip(bars, new, strict=True)]
            )
        u = torch.kron(*bars)
        return torch.outer(u, u)
    terms, scale = None, None
    for a, g in captures:
        a, g = a.double(), g.double()
        if method in ("kfac", "ekfac"):
            new = [(a.T @ a / a.shape[0], g.T @ g / g.shape[0])]
        else:
            new = list(approximate(method, a, g, tol=APPROX_TOL).terms)
        want_terms = 2 if method in ("deflation", "lanczos", "kfac_corrected") else 1
        assert len(new) == want_terms  # no dropped (zero) term on this data
        if terms is None:
            terms = new
        else:
            avg = []
            for (r_old, s_old), (r, s) in zip(terms, new, strict=True):
                if float(torch.sum(r * r_old)) < 0:
                    r, s = -r, -s
                avg.append((rho * r_old + (1 - rho) * r, rho * s_old + (1 - rho) * s))
            terms = avg
        if method == "ekfac":  # eigenbasis of the running A, G; the batch diagonal in it
            u_a = torch.linalg.eigh(terms[0][0]).eigenvectors
            u_g = torch.linalg.eigh(terms[0][1]).eigenvectors
            s_t = torch.einsum("jp,ji->pi", (g @ u_g) ** 2, (a @ u_a) ** 2) / a.shape[0]
            scale = s_t if scale is None else rho * scale + (1 - rho) * s_t
    if method == "ekfac":
        u = torch.kron(u_a, u_g)  # column i·dg + p is u_a[:, i] ⊗ u_g[:, p], i.e. vec order
        return u @ torch.diag(_vec(scale)) @ u.T
    return terms


# "exact" uses the window in both modes, so it is checked under mode="window" only; the
# "fisher" mode (a low-rank average of the Fisher itself) has its own dense oracle in
# tests/training/test_optim_ema.py. The two-level optimizers add a coarse correction across
# layers to KFAC's per-layer solve: their own dense oracle is tests/training/test_two_level.py.
@pytest.mark.parametrize(
    ("method", "mode"),
    [
        (m, e)
        for m in NATURAL_OPTIMIZERS
        for e in EMA_MODES
        if e != "fisher" and (m, e) != ("exact", "factors") and m not in TWO_LEVEL_OPTIMIZERS
    ],
)
def test_update_equals_dense_solve_after_reestimation(method, mode):
    model = _Logits(seed=0)
    x = _data()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    cfg = OptimizerConfig(
        method,
        lr=0.3,
        damping=DAMPING,
        t_cov=1,
        t_inv=1,
        ema=RHO,
        kl_clip=None,
        momentum=0.0,
        ema_mode=mode,
    )
    opt = build_optimizer(model, cfg, loss="bce", seed=3)
    captures = {n: [] for n in names}
    for step in range(3):
        xb = x[16 * step : 16 * (step + 1)]
        opt.zero_grad()
        _loss(model, xb).backward()
        grads = [_grad_matrix(layer) for layer in layers]
        before = [_weight_matrix(layer) for layer in layers]
        opt.step(xb, xb)
        for n in names:
            lc = opt.preconditioner.last_capture.layers[n]
            captures[n].append((lc.a, lc.g))
    pre = opt.preconditioner
    assert pre.curvature_updates == 3 and pre.inverse_updates == 3
    assert (pre.ema_mode == "window") == (mode == "window")
    for name, layer, v, w0 in zip(names, layers, grads, before, strict=True):
        f_ema = _ema_fisher(captures[name], RHO)
        approx = pre.inverses[name].approx
        if mode == "factors":
            ref = _factor_ema_reference(method, captures[name], RHO)
            if method in ("ekfac", "eva"):  # both Tikhonov-damped: F̃ + λI
                dense = ref + DAMPING * torch.eye(ref.shape[0], dtype=torch.float64)
            else:
                r1, s1 = _factored(*ref[0], DAMPING)
                dense = torch.kron(r1, s1) + sum(torch.kron(r, s) for r, s in ref[1:])
            if method == "kfac":  # the classic form of KFAC's EMA, spelled out
                fac = [(a.T @ a / a.shape[0], g.T @ g / g.shape[0]) for a, g in captures[name]]
                want_r = RHO**2 * fac[0][0] + RHO * (1 - RHO) * fac[1][0] + (1 - RHO) * fac[2][0]
                assert torch.allclose(approx.terms[0][0], want_r.double(), atol=1e-6)
        elif method in ("kfac", "shampoo", "eva"):
            # window mode: the method of the window's weighted rows (KFAC: A⊗G of those rows)
            a_w, g_w = pre.average.layers[name].weighted()
            assert torch.allclose(approx.to_dense(), approximate(method, a_w, g_w).to_dense())
        elif method != "exact":
            # the approximation is the engine's method applied to the EMA'd Fisher
            da, dg = approx.da, approx.dg
            sv = torch.linalg.svdvals(rearrange(f_ema, da, dg))
            err = torch.linalg.norm(f_ema - approx.to_dense().double())
            if method in ("deflation", "lanczos"):  # really deflated: the rank-2 optimum
                assert len(approx.terms) == 2
                assert float(err) == pytest.approx(float(sv[2:].norm()), rel=1e-6, abs=1e-12)
            if method == "kpsvd":
                assert float(err) == pytest.approx(float(sv[1:].norm()), rel=1e-6, abs=1e-12)
            if method == "kfac_corrected":  # A⊗G + the best product of F − A⊗G
                assert len(approx.terms) == 2
                a_w, g_w = pre.average.layers[name].weighted()
                m = a_w.shape[0]
                a_f, g_f = a_w.T @ a_w / m, g_w.T @ g_w / m
                assert torch.allclose(approx.terms[0][0], a_f) and torch.allclose(
                    approx.terms[0][1], g_f
                )
                resid = rearrange(f_ema - torch.kron(a_f, g_f), da, dg)
                best = torch.linalg.svdvals(resid)[1:].norm()
                assert float(err) == pytest.approx(float(best), rel=1e-6, abs=1e-12)
        if mode == "window":
            dense = _dense_damped(method, approx, DAMPING, f_ema)
        want = torch.linalg.solve(dense, _vec(v))
        got = -(_weight_matrix(layer) - w0) / cfg.lr
        scale = float(want.abs().max())
        assert torch.allclose(_vec(got), want, atol=2e-5 * scale + 1e-7, rtol=1e-4), name
    # The dense solve is the reference only where the safeguard did not engage.
    assert pre.safeguard_counts()["entries_raised"] == 0


def test_factor_ema_aligns_the_sign_of_a_flipped_second_term(monkeypatch):
    """A second term that arrives with the opposite sign (R⊗S = (−R)⊗(−S)) is flipped back
    before averaging; without alignment, ρ = 0.5 would cancel it exactly."""
    calls = {"n": 0}
    real = averages_module.approximate

    def flipping(method, a, g, **kw):
        approx = real(method, a, g, **kw)
        if method == "deflation":
            calls["n"] += 1
            if calls["n"] % 2 == 0:  # every other batch: the second term with flipped sign
                (r1, s1), (r2, s2) = approx.terms
                approx.terms = [(r1, s1), (-r2, -s2)]
        return approx

    monkeypatch.setattr(averages_module, "approximate", flipping)
    model = _Logits(seed=0)
    x = _data()
    cfg = OptimizerConfig("deflation", lr=0.1, ema=0.5, fisher="empirical", t_cov=1, t_inv=1)
    opt = build_optimizer(model, cfg, loss="bce", seed=0)
    pre = opt.preconditioner
    pre.update_curvature(x, x)  # the model does not move: both captures are identical
    first = {n: [t.clone() for t in s.terms[1]] for n, s in pre.average.layers.items()}
    pre.update_curvature(x, x)  # … but the second arrives with its second term flipped
    assert calls["n"] == 2 * len(first)
    for name, state in pre.average.layers.items():
        r2, s2 = state.terms[1]
        assert float(torch.linalg.norm(first[name][0])) > 0
        assert torch.allclose(r2, first[name][0], atol=1e-12)  # not 0 (cancelled)
        assert torch.allclose(s2, first[name][1], atol=1e-12)
    assert pre.alignment["updates"] == len(first)
    assert pre.alignment["flipped"] == len(first)
    # and the preconditioner still solves with the unflipped second term
    pre.update_inverses()
    v = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    approx = pre.inverses["body.2"].approx
    dense = sum(torch.kron(r, s) for r, s in approx.terms)
    kept = [pre.average.layers["body.2"].terms[0], first["body.2"]]
    want_dense = sum(torch.kron(r, s) for r, s in kept)
    assert torch.allclose(dense, want_dense, atol=1e-12)
    assert pre.precondition("body.2", v).shape == v.shape


def test_factor_ema_handles_a_dead_layer():
    """F_t = 0 on a layer (all its output gradients zero): zero terms, a finite update."""
    model = _Logits(seed=0)
    with torch.no_grad():  # body.0 feeds Tanh; zero the next layer so body.0 gets no gradient
        model.body[2].weight.zero_()
    x = _data()
    for method in ("kpsvd", "deflation", "kfac_corrected", "ekfac"):
        cfg = OptimizerConfig(method, lr=0.1, t_cov=1, t_inv=1)
        opt = build_optimizer(model, cfg, loss="bce", seed=0)
        for _ in range(2):
            opt.zero_grad()
            _loss(model, x[:16]).backward()
            pre_step = [p.detach().clone() for p in model.parameters()]
            opt.step(x[:16], x[:16])
            for p in model.parameters():
                assert bool(torch.isfinite(p).all()), method
            for p, q in zip(model.parameters(), pre_step, strict=True):
                p.data.copy_(q)  # keep the layer dead for the second refresh
        g = opt.preconditioner.last_capture.layers["body.0"].g
        assert not bool((g != 0).any())
        state = opt.preconditioner.average.layers["body.0"]
        if method != "ekfac":
            assert len(state.terms) == (1 if method == "kpsvd" else 2)


def test_window_weights_reproduce_the_ema_fisher():
    model = _Logits(seed=2)
    x = _data(seed=5)
    cfg = OptimizerConfig("exact", lr=0.1, t_cov=1, t_inv=1, ema=RHO, momentum=0.0)
    opt = build_optimizer(model, cfg, loss="bce", seed=0)
    caps = []
    for step in range(6):
        _train_step(model, opt, x[8 * step : 8 * step + 8 + step])  # unequal batch sizes
        caps.append(opt.preconditioner.last_capture.layers["body.0"])
    a, g = opt.preconditioner.average.layers["body.0"].weighted()
    kept = caps[-4:]  # WINDOW_CAPTURES
    want = _ema_fisher([(c.a, c.g) for c in kept], RHO)
    assert torch.allclose(exact_fisher(a, g), want, atol=1e-10)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name):
    model = _Logits(seed=1)
    x = _data(n=128)
    lr = {"sgd": 0.5, "adam": 0.05}.get(name, 0.2)
    cfg = OptimizerConfig(name, lr=lr, damping=0.1, t_cov=2, t_inv=4)
    opt = build_optimizer(model, cfg, loss="bce", seed=0)
    with torch.no_grad():
        before = float(_loss(model, x))
    for step in range(24):
        i = (step * 32) % 128
        _train_step(model, opt, x[i : i + 32])
    with torch.no_grad():
        after = float(_loss(model, x))
    assert after < 0.85 * before, (name, before, after)  # all reach ≤ 0.77 · before


def test_same_seed_same_trajectory():
    def run(seed):
        model = _Logits(seed=0)
        x = _data()
        opt = build_optimizer(
            model, OptimizerConfig("deflation", lr=0.1, t_cov=1, t_inv=2), loss="bce", seed=seed
        )
        for step in range(4):
            _train_step(model, opt, x[16 * step : 16 * step + 16])
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))  # the true Fisher's sampled targets differ


def test_kl_clipping_bounds_the_quadratic_kl():
    model = _net()
    x = torch.rand(32, 4)
    kl = 1e-6
    cfg = OptimizerConfig("kfac", lr=1.0, damping=1e-2, kl_clip=kl, momentum=0.0)
    opt = build_optimizer(model, cfg, loss="mse", seed=0)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    opt.zero_grad()
    (0.5 * ((model(x) - x) ** 2).sum(1)).mean().backward()
    grads = [_grad_matrix(layer) for layer in layers]
    before = [_weight_matrix(layer) for layer in layers]
    opt.step(x, x)
    nu = opt.last_kl_scale
    assert 0 < nu < 1
    # update = −lr ν P, so lr² Σ⟨V, P⟩ ν² = kl exactly when clipped
    quad = sum(
        float((v * (w0 - _weight_matrix(layer))).sum()) / (cfg.lr * nu)
        for v, w0, layer in zip(grads, before, layers, strict=True)
    )
    assert cfg.lr**2 * nu**2 * quad == pytest.approx(kl, rel=1e-4)


def test_weight_decay_is_preconditioned_with_the_gradient():
    x = _data()
    deltas = {}
    for wd in (0.0, 0.1):
        model = _Logits(seed=0)
        cfg = OptimizerConfig(
            "kfac", lr=0.1, damping=1e-2, weight_decay=wd, kl_clip=None, momentum=0.0
        )
        opt = build_optimizer(model, cfg, loss="bce", seed=0)
        layer = model.body[0]
        w0 = _weight_matrix(layer)
        _train_step(model, opt, x[:16])
        deltas[wd] = _weight_matrix(layer) - w0
        inv = opt.preconditioner.inverses["body.0"]
    # the difference is −lr · (F̃ + λ)⁻¹ (wd · θ), with θ the parameters before the step
    diff = deltas[0.1] - deltas[0.0]
    want = -0.1 * inv.solve(0.1 * w0)
    assert torch.allclose(diff, want, atol=1e-6)


def test_fisher_data_draws_fisher_minibatches():
    model = _Logits(seed=0)
    x = _data(n=100)
    cfg = OptimizerConfig("kfac", lr=0.1, fisher_batch=40, fisher="empirical")
    opt = build_optimizer(model, cfg, loss="bce", seed=0, fisher_data=(x, x))
    _train_step(model, opt, x[:10])
    lc = opt.preconditioner.last_capture.layers["body.0"]
    assert lc.a.shape[0] == 40
    # without fisher_data, fisher_batch truncates the training minibatch
    opt = build_optimizer(model, OptimizerConfig("kfac", lr=0.1, fisher_batch=5), loss="bce")
    _train_step(model, opt, x[:10])
    assert opt.preconditioner.last_capture.layers["body.0"].a.shape[0] == 5


@pytest.mark.parametrize(
    ("name", "where", "bad"), [("kpsvd", 0, float("nan")), ("sgd", -1, float("inf"))]
)
def test_nonfinite_gradient_raises(name, where, bad):
    """A NaN or inf in any gradient (the first entry of the first, the last of the last), with
    a preconditioner or without."""
    model = _Logits(seed=0)
    x = _data()
    opt = build_optimizer(model, OptimizerConfig(name, lr=0.1), loss="bce")
    opt.zero_grad()
    _loss(model, x).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grads[where].view(-1)[where] = bad
    with pytest.raises(NonFiniteError, match="non-finite at step 0"):
        opt.step(x, x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_entry_in_any_tensor(bad):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen),
               torch.randn(3, 2, 4, generator=gen)]  # fmt: skip
    assert all_finite(tensors)
    assert all_finite([])
    assert all_finite([torch.full((2,), 3e38)])  # large but finite
    for k, t in enumerate(tensors):
        for index in (0, t.numel() - 1):  # first and last entry of each
            hit = [u.clone() for u in tensors]
            hit[k].view(-1)[index] = bad
            assert not all_finite(hit), (k, index)
            assert not all_finite(iter(hit)), (k, index)  # any iterable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "kfac", "lr": -0.1}, "learning rate must be"),
        ({"name": "adam", "lr": 0.0}, "learning rate must be"),
        ({"name": "kfac", "lr": float("nan")}, "learning rate must be"),
        ({"name": "kfac", "lr": 0.1, "damping": 0.0}, "damping must be > 0"),
        ({"name": "deflation", "lr": 0.1, "damping": -1.0}, "damping must be"),
        ({"name": "nesterov", "lr": 0.1}, "unknown optimizer 'nesterov'"),
        ({"name": "kfac", "lr": 0.1, "t_cov": 0}, "t_cov must be"),
        ({"name": "kfac", "lr": 0.1, "t_inv": 2.5}, "t_inv must be"),
        ({"name": "kfac", "lr": 0.1, "ema": 1.0}, "ema must lie"),
        ({"name": "kfac", "lr": 0.1, "kl_clip": 0.0}, "kl_clip must be"),
        ({"name": "kfac", "lr": 0.1, "momentum": 1.5}, "momentum must lie"),
        ({"name": "kfac", "lr": 0.1, "weight_decay": -1e-4}, "weight_decay must be"),
        ({"name": "kfac", "lr": 0.1, "fisher_batch": 0}, "fisher_batch must be"),
        ({"name": "kfac", "lr": 0.1, "fisher": "observed"}, "fisher must be one of"),
        ({"name": "kfac", "lr": 0.1, "ema_mode": "median"}, "ema_mode must be one of"),
        ({"name": "kpsvd", "lr": 0.1, "ema_mode": None}, "ema_mode must be one of"),
    ],
)
def test_invalid_options_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)


def test_valid_options_and_defaults():
    assert OptimizerConfig("sgd", lr=0.1, damping=0.0).damping == 0.0  # not needed by SGD
    assert OptimizerConfig("KFAC-corrected", lr=0.1).name == "kfac_corrected"
    assert OptimizerConfig("kfac", lr=0.1, kl_clip=None).kl_clip is None
    assert OptimizerConfig("kpsvd", lr=0.1).ema_mode == "factors"  # the default, every method
    assert OptimizerConfig("kpsvd", lr=0.1, ema_mode=" Window").ema_mode == "window"
    for name in OPTIMIZERS:
        assert default_lr(name) > 0 and default_damping(name) >= 0
        assert OptimizerConfig(name, lr=0.1).damping == default_damping(name)
    assert all(default_damping(name) > 0 for name in NATURAL_OPTIMIZERS)
    with pytest.raises(ValueError, match="unknown optimizer"):
        default_lr("lbfgs")


@pytest.mark.parametrize(("t_cov", "t_inv"), [(1, 3), (3, 1), (2, 5)])
def test_refresh_cadence_follows_t_cov_and_t_inv(t_cov, t_inv):
    """Curvature is captured at steps 0, t_cov, 2·t_cov, … and the inverses rebuilt at steps
    0, t_inv, 2·t_inv, … (independently); between two inverse refreshes the same inverse
    object preconditions every step."""
    model = _Logits(seed=0)
    x = _data()
    cfg = OptimizerConfig("kfac", lr=0.05, t_cov=t_cov, t_inv=t_inv)
    opt = build_optimizer(model, cfg, loss="bce", seed=0)
    seen, refreshed = [], []
    previous = None
    for step in range(7):
        _train_step(model, opt, x[8 * step : 8 * step + 8])
        d = opt.diagnostics()
        seen.append((d["curvature_updates"], d["inverse_updates"]))
        inverse = opt.preconditioner.inverses["body.0"]
        refreshed.append(inverse is not previous)
        previous = inverse
    assert seen == [(step // t_cov + 1, step // t_inv + 1) for step in range(7)]
    assert refreshed == [step % t_inv == 0 for step in range(7)]


@pytest.mark.parametrize("lr", [0.3, 2.0])
def test_kl_clipping_scale_for_any_learning_rate(lr):
    """ν = min(1, sqrt(kl_clip / (lr² Σ⟨V, P⟩))): the quadratic KL of the step,
    lr² ν² Σ⟨V, P⟩, equals kl_clip when clipping is active (lr ≠ 1 tells lr² from lr)."""
    model = _net()
    x = torch.rand(32, 4, generator=torch.Generator().manual_seed(3))
    kl = 1e-6
    cfg = OptimizerConfig("kfac", lr=lr, damping=1e-2, kl_clip=kl, momentum=0.0)
    opt = build_optimizer(model, cfg, loss="mse", seed=0)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    opt.zero_grad()
    (0.5 * ((model(x) - x) ** 2).sum(1)).mean().backward()
    grads = [_grad_matrix(layer) for layer in layers]
    opt.step(x, x)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    vp = sum(
        float((v * opt.preconditioner.inverses[n].solve(v)).sum())
        for v, n in zip(grads, names, strict=True)
    )
    assert opt.last_kl_scale == pytest.approx(min(1.0, math.sqrt(kl / (lr**2 * vp))), rel=1e-9)
    assert lr**2 * opt.last_kl_scale**2 * vp == pytest.approx(kl, rel=1e-9)
