"""The sequence preset digits-seq (issue 18): a Linear shared by an image's row tokens, captured
as a weight-sharing layer and trained by every optimizer."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from core.engine.capture import capture
from core.training.data import load_digits
from core.training.defaults import OPTIMIZERS
from core.training.models import PRESETS, batch_loss, build_model, describe_layers
from core.training.optim import OptimizerConfig, build_optimizer

DIGITS = load_digits()
X, Y = DIGITS.x_train[:256], DIGITS.y_train[:256]


def test_the_preset_is_a_sequence_classifier():
    assert PRESETS["digits-seq"].classifier and not PRESETS["digits-conv"].classifier
    model = build_model("digits-seq", input_dim=64, loss="bce", seed=0)
    first, last = describe_layers(model)
    assert (first.name, first.kind, first.positions, first.da, first.dg) == (
        "tokens.linear1", "linear", 8, 9, 16
    )  # fmt: skip
    assert (last.name, last.positions, last.da, last.dg) == ("classifier.linear1", 1, 129, 10)


def test_token_capture_gives_autograd_per_sample_gradients():
    """Σ_t γ_t a_tᵀ of the captured tokens equals each sample's [W | b] gradient (torch.func)."""
    model = build_model("digits-seq", input_dim=64, loss="bce", seed=3).double()
    x, y = X[:12].double(), Y[:12]
    got = capture(model, x, loss="ce", fisher="empirical", targets=y).layers["tokens.linear1"]
    assert got.a.shape == (12, 8, 9) and got.g.shape == (12, 8, 16)
    per_sample = torch.einsum("ntg,nta->nga", got.g, got.a)  # (m, dg, da) = [∂W | ∂b]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None], reduction="sum")

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    expected = torch.cat(
        [grads["tokens.linear1.weight"], grads["tokens.linear1.bias"][..., None]], dim=-1
    )
    torch.testing.assert_close(per_sample, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_the_sequence_classifier(name):
    model = build_model("digits-seq", input_dim=64, loss="bce", seed=0)
    lr = 0.01 if name in ("sgd", "adam", "swan") else 0.1
    opt = build_optimizer(model, OptimizerConfig(name, lr=lr), loss="ce", seed=1)
    losses = []
    for step in range(12):
        rows = slice((step % 2) * 128, (step % 2 + 1) * 128)
        opt.zero_grad()
        loss = batch_loss(model(X[rows]), Y[rows], "ce")
        loss.backward()
        opt.step(X[rows], Y[rows])
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
