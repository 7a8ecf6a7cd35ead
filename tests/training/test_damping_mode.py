"""The optimizers' ``damping_mode`` (issue 21): ``"exact"`` preconditions with (F̃ + λI)⁻¹.

Dense float64 oracle: on a tiny network, after one curvature capture (t_cov = t_inv = 1, so the
factor EMA is that capture's factors), KFAC's preconditioned gradient with
``damping_mode="exact"`` is ``(A ⊗ G + λI)⁻¹ vec(∇)`` formed densely with ``torch.kron`` from
the captured ``ā`` and ``γ`` (A = āᵀā/m, G = γᵀγ/m, vec column-major, ∇ the (dg, da)
gradient with the bias as the last column), and NOT Martens–Grosse's factored
``((A + π√λI) ⊗ (G + √λ/πI))⁻¹ vec(∇)``, which ``"factored"`` (the default) still gives. A
two-term method (kfac_corrected) in exact mode gives ``(F̃ + λI)⁻¹`` of its own dense F̃; the
settings route (RunConfig.from_settings, config JSON, the CLI) carries the option; bad values
and optimizers without a damped solve are refused with a clear message.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.__main__ import main
from core.training.models import per_sample_nll
from core.training.optim import OptimizerConfig, build_optimizer
from core.training.runner import RunConfig

DAMPING = 0.05


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 5))


def _data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(24, 5, generator=gen) > 0.5).float() * 0.8 + 0.1


def _one_step(method: str, mode: str):
    """One optimizer step; returns (optimizer, {layer: (gradient, preconditioned gradient)})."""
    model, x = _model(), _data()
    cfg = OptimizerConfig(
        method, lr=0.1, damping=DAMPING, t_cov=1, t_inv=1, kl_clip=None, momentum=0.0,
        damping_mode=mode,
    )  # fmt: skip
    opt = build_optimizer(model, cfg, loss="bce", seed=3)
    opt.zero_grad()
    per_sample_nll(model(x), x, "bce").mean().backward()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    def matrix(layer: nn.Linear) -> torch.Tensor:
        return torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).double()

    grads = {n: matrix(m) for n, m in layers.items()}
    opt.step(x, x)
    return opt, {n: (grads[n], matrix(m)) for n, m in layers.items()}  # .grad now holds P


def _vec(v: torch.Tensor) -> torch.Tensor:
    return v.T.reshape(-1)  # column-major


def _unvec(x: torch.Tensor, dg: int, da: int) -> torch.Tensor:
    return x.reshape(da, dg).T


def _dense_solve(matrix: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _unvec(torch.linalg.solve(matrix, _vec(v)), *v.shape)


def test_kfac_exact_damping_equals_dense_tikhonov_solve():
    opt, out = _one_step("kfac", "exact")
    assert opt.preconditioner.damping_mode == "exact"
    for name, (grad, direction) in out.items():
        lc = opt.preconditioner.last_capture.layers[name]
        a, g = lc.a.double(), lc.g.double()
        fa, fg = a.T @ a / a.shape[0], g.T @ g / g.shape[0]
        n = fa.shape[0] * fg.shape[0]
        eye = torch.eye(n, dtype=torch.float64)
        want = _dense_solve(torch.kron(fa, fg) + DAMPING * eye, grad)
        assert torch.allclose(direction, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
        # the factored damping is a different matrix: the test can tell the modes apart
        pi = torch.sqrt((torch.trace(fa) / fa.shape[0]) / (torch.trace(fg) / fg.shape[0]))
        root = DAMPING**0.5
        r = fa + pi * root * torch.eye(fa.shape[0], dtype=torch.float64)
        s = fg + root / pi * torch.eye(fg.shape[0], dtype=torch.float64)
        factored = _dense_solve(torch.kron(r, s), grad)
        assert float((factored - want).norm()) > 1e-2 * float(want.norm())


def test_factored_mode_is_still_the_default_and_martens_grosse():
    opt, out = _one_step("kfac", "factored")
    assert OptimizerConfig("kfac", lr=0.1).damping_mode == "factored"
    for name, (grad, direction) in out.items():
        lc = opt.preconditioner.last_capture.layers[name]
        a, g = lc.a.double(), lc.g.double()
        fa, fg = a.T @ a / a.shape[0], g.T @ g / g.shape[0]
        pi = torch.sqrt((torch.trace(fa) / fa.shape[0]) / (torch.trace(fg) / fg.shape[0]))
        root = DAMPING**0.5
        r = fa + pi * root * torch.eye(fa.shape[0], dtype=torch.float64)
        s = fg + root / pi * torch.eye(fg.shape[0], dtype=torch.float64)
        want = _dense_solve(torch.kron(r, s), grad)
        assert torch.allclose(direction, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_two_term_exact_damping_is_the_dense_solve_of_its_approximation():
    opt, out = _one_step("kfac_corrected", "exact")
    for name, (grad, direction) in out.items():
        approx = opt.preconditioner.inverses[name].approx
        assert len(approx.terms) == 2
        dense = approx.to_dense().double()
        dense = (dense + dense.T) / 2
        lam, q = torch.linalg.eigh(dense)
        lam = lam.clamp_min(0.0)  # the engine's documented PSD projection in exact mode
        want = _unvec(q @ ((q.T @ _vec(grad)) / (lam + DAMPING)), *grad.shape)
        assert torch.allclose(direction, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_ekfac_damps_exactly_in_both_modes():
    _, exact = _one_step("ekfac", "exact")
    _, factored = _one_step("ekfac", "factored")
    for name in exact:
        assert torch.allclose(exact[name][1], factored[name][1], rtol=1e-6, atol=1e-9)


def test_bad_damping_mode_and_first_order_optimizers_are_refused():
    with pytest.raises(ValueError, match="damping_mode must be one of"):
        OptimizerConfig("kfac", lr=0.1, damping_mode="tikhonov")
    for name in ("adam", "sgd"):
        with pytest.raises(ValueError, match="needs a natural-gradient optimizer"):
            OptimizerConfig(name, lr=0.1, damping_mode="exact")
    assert OptimizerConfig("kfac", lr=0.1, damping_mode=" Exact ").damping_mode == "exact"


def test_settings_and_cli_carry_the_damping_mode(tmp_path):
    cfg = RunConfig.from_settings("curves-small", "kfac", damping_mode="exact", steps=2)
    assert cfg.optimizer.damping_mode == "exact"
    assert cfg.to_dict()["optimizer"]["damping_mode"] == "exact"
    out = tmp_path / "run"
    argv = ["train", "--dataset", "curves-small", "--optimizer", "kfac", "--steps", "3"]
    assert main([*argv, "--damping-mode", "exact", "--no-progress", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["optimizer"]["damping_mode"] == "exact"
    # compare: the option reaches the natural-gradient optimizers; Adam ignores it
    out2 = tmp_path / "cmp"
    argv = ["compare", "--dataset", "curves-small", "--optimizers", "kfac,adam", "--steps", "2"]
    assert main([*argv, "--damping-mode", "exact", "--no-progress", "--out", str(out2)]) == 0
    text = (out2 / "config.json").read_text()
    assert text.count('"damping_mode": "exact"') == 1  # kfac
    assert text.count('"damping_mode": "factored"') == 1  # adam
