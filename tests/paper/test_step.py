"""The step experiment (core/paper/step.py, core/paper/step_report.py): the look-ahead against a
step written out by hand, the gradients against autograd per parameter, the rank correlations
on rankings whose answer is known, and one tiny trajectory end to end."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from core.engine.likelihoods import batch_loss
from core.paper import step, step_report


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 5))


def test_gradients_are_the_weight_and_bias_gradients():
    model, x = tiny_model(), torch.rand(7, 5)
    grads = step._gradients(model, x, "bce")
    batch_loss(model(x), x, "bce").backward()
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        want = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).double()
        torch.testing.assert_close(grads[name], want)
        assert grads[name].shape == (layer.out_features, layer.in_features + 1)


@pytest.mark.parametrize("kl_clip", [None, 1e-6])
def test_look_ahead_is_one_clipped_step_on_a_copy(kl_clip):
    model, x, held = tiny_model(), torch.rand(7, 5), torch.rand(4, 5)
    before = copy.deepcopy(model.state_dict())
    grads = step._gradients(model, x, "bce")
    directions = {n: 2.0 * v for n, v in grads.items()}  # a preconditioner of 2·I
    lr = 0.1
    same, other = step.look_ahead(
        model, directions, grads, lr=lr, kl_clip=kl_clip, batches=[x, held], loss="bce"
    )
    vg = sum(float((2.0 * v * v).sum()) for v in grads.values())
    nu = 1.0 if kl_clip is None else min(1.0, math.sqrt(kl_clip / (lr**2 * vg)))
    assert kl_clip is None or nu < 1  # the clip engaged in the clipped case
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in directions.items():
            layer = moved.get_submodule(name)
            layer.weight -= (lr * nu * p[:, :-1]).float()
            layer.bias -= (lr * nu * p[:, -1]).float()
    for got, batch in ((same, x), (other, held)):
        with torch.no_grad():
            want = float(
                batch_loss(model(batch), batch, "bce") - batch_loss(moved(batch), batch, "bce")
            )
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def synthetic(records_by_method: dict[str, float]) -> pd.DataFrame:
    rows = []
    for layer in ("a", "b"):
        for method, value in records_by_method.items():
            rows.append(
                {"seed": 0, "step": 0, "layer": layer, "method": method, "damping": 0.1}
                | {m: value for m in step_report.MEASURES}
                | {"step_norm_ratio": math.exp(value)}
            )
    return pd.DataFrame(rows)


def test_rank_correlations_orient_every_measure():
    loss = pd.Series({"kfac": 3.0, "kpsvd": 2.0, "ekfac": 1.0, "exact": 0.5})
    records = synthetic({"kfac": 0.3, "kpsvd": 0.2, "ekfac": 0.1, "exact": 0.0})
    rhos = step_report.rank_correlations(records, loss).set_index("measure")
    errors = ["relative Frobenius error", "step error, optimizer's damping"]
    assert rhos.loc[errors, "rho approximations"].tolist() == pytest.approx([1.0, 1.0])
    assert rhos.loc[errors, "n approximations"].tolist() == [2, 2]  # per layer
    # a cosine or a loss decrease that grows with the training loss predicts it backwards
    assert rhos.loc["step cosine, optimizer's damping", "rho with exact"] == pytest.approx(-1.0)
    assert rhos.loc["look-ahead loss decrease, same batch", "n with exact"] == 1  # per model
    assert rhos.loc["step norm ratio, optimizer's damping", "rho approximations"] == pytest.approx(
        1
    )


def test_tuned_losses_take_each_methods_own_damping():
    losses = pd.DataFrame(
        {"method": ["kfac", "kfac", "ekfac"], "damping": [0.1, 1.0, 0.1], "train_loss": [2, 9, 1]}
    )
    records = pd.DataFrame({"method": ["kfac", "ekfac"], "damping": [1.0, 0.1]})
    assert step_report.tuned_losses(losses, records).to_dict() == {"ekfac": 1, "kfac": 9}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ("kfac", "bogus")}, "unknown method"),
        ({"checkpoints": 1}, "checkpoints"),
        ({"dampings": (0.0,)}, "damping"),
        ({"preset": "nope"}, "unknown preset"),
    ],
)
def test_spec_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        step.StepSpec(**kwargs)


def test_a_tiny_experiment_end_to_end(tmp_path):
    out = tmp_path / "step.md"
    argv = [
        "--methods", "exact,kfac,ekfac,deflation", "--epochs", "0.2", "--checkpoints", "2",
        "--train-epochs", "0.2", "--train-seeds", "1", "--train-dampings", "0.1",
        "--dampings", "0.1,10", "--n-train", "256", "--fisher-batch", "32", "--out", str(out),
    ]  # fmt: skip
    assert step_report.main(argv) == 0
    records = pd.read_csv(tmp_path / "step.csv")
    assert set(records["method"]) == {"exact", "kfac", "ekfac", "deflation", step.STEP_FIT}
    fit = records[records["method"] == step.STEP_FIT]
    assert fit["relative_error"].isna().all() and (fit["step_cosine"].abs() <= 1).all()
    records = records[records["method"] != step.STEP_FIT]
    assert records["step"].nunique() == 2 and records["layer"].nunique() == 6
    exact = records[records["method"] == "exact"]
    assert (exact["step_error"] < 1e-8).all() and (exact["relative_error"] < 1e-6).all()
    assert (exact["step_cosine"] > 1 - 1e-10).all()
    ekfac = records[records["method"] == "ekfac"]  # exact damping in both modes
    assert (ekfac["step_error"] - ekfac["exact_step_error"]).abs().max() < 1e-8
    # λ = 10: every method's exact-damping error is small next to λ = 0.1's
    assert (records["error_exact@10"] <= records["error_exact@0.1"] + 1e-12).all()
    text = out.read_text()
    assert "Rank correlation" in text and "python -m core.paper.step_report --methods" in text
