"""Natural-gradient optimizers on the convolutional presets (issue 18)."""

from __future__ import annotations

import pytest
import torch

from core.training.data import load_digits
from core.training.defaults import OPTIMIZERS
from core.training.models import batch_loss, build_model
from core.training.optim import OptimizerConfig, build_optimizer

X = load_digits().x_train[:256]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_the_conv_autoencoder(name):
    model = build_model("digits-conv", input_dim=64, loss="bce", seed=0)
    opt = build_optimizer(
        model,
        OptimizerConfig(name, lr=0.01 if name in ("sgd", "adam") else 0.1),
        loss="bce",
        seed=1,
    )
    losses = []
    for step in range(12):
        xb = X[(step % 2) * 128 : (step % 2 + 1) * 128]
        opt.zero_grad()
        loss = batch_loss(model(xb), xb, "bce")
        loss.backward()
        opt.step(xb, xb)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_kfac_conv_direction_equals_dense_factored_solve():
    """Oracle: KFAC-expand factors of the captured patches, Martens–Grosse factored damping,
    P = (G + √λ/π I)⁻¹ V (A + π√λ I)⁻¹ with V = [∇W.reshape(C_out, −1) | ∇b]."""
    model = build_model("digits-conv", input_dim=64, loss="bce", seed=0).double()
    lam = 0.1
    opt = build_optimizer(
        model, OptimizerConfig("kfac", lr=0.1, damping=lam, kl_clip=None), loss="bce", seed=1
    )
    xb = X[:64].double()
    opt.zero_grad()
    batch_loss(model(xb), xb, "bce").backward()
    conv = model.encoder.conv2
    v = torch.cat([conv.weight.grad.reshape(16, -1), conv.bias.grad[:, None]], 1).clone()
    pre = opt.preconditioner
    opt._refresh(pre, xb, xb)
    cap = pre.last_capture.layers["encoder.conv2"]
    a, g = cap.a.double(), cap.g.double()
    m, t = a.shape[:2]
    big_a = torch.einsum("ntp,ntq->pq", a, a) / (m * t)
    big_g = torch.einsum("ntp,ntq->pq", g, g) / m
    pi = ((big_a.trace() / big_a.shape[0]) / (big_g.trace() / big_g.shape[0])).sqrt()
    ad = big_a + pi * lam**0.5 * torch.eye(big_a.shape[0], dtype=torch.float64)
    gd = big_g + lam**0.5 / pi * torch.eye(big_g.shape[0], dtype=torch.float64)
    expected = torch.linalg.solve(gd, v) @ torch.linalg.inv(ad)
    with torch.no_grad():
        opt._precondition_grads(pre)
    got = torch.cat([conv.weight.grad.reshape(16, -1), conv.bias.grad[:, None]], 1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
