"""The explorer's issue-19 jobs (core/server/jobs.py): ``downstream_sweep`` and
``power_iterations`` give what the functions they wrap give; the empirical Fisher of the sweeps
uses the Fisher batch's own targets (``fisher_targets``, core/views/downstream.py), checked
against the dense exact Fisher of a capture made by hand."""

from __future__ import annotations

import pytest
import torch

from core.engine.capture import capture
from core.engine.fisher import LayerFisher, exact_fisher
from core.engine.kron import vec
from core.engine.power_iterations import power_iteration_curve
from core.server import jobs
from core.training.data import load_dataset
from core.training.models import Autoencoder
from core.training.runner import RunConfig, TrainingRun
from core.views.downstream import compress_sweep, layer_weight

LAYER = "encoder.linear2"


@pytest.fixture(scope="module")
def model_and_data():
    gen = torch.Generator().manual_seed(1)
    model = Autoencoder([16, 8, 4], "bce", seed=1, dtype=torch.float64)
    x = (torch.rand(80, 16, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    return model, x[:48], x[48:]


def test_downstream_sweep_is_the_sweep(model_and_data):
    model, x_fisher, x_eval = model_and_data
    got = jobs.downstream_sweep(
        "compress", model, LAYER, x_fisher, x_eval, "bce", "true", 3, (1.0, 2.0),
        ("svd", "kfac"), 1e-3,
    )  # fmt: skip
    want = compress_sweep(model, LAYER, x_fisher, x_eval, loss="bce", ranks=[1, 2],
                          methods=["svd", "kfac"], seed=3)  # fmt: skip
    assert [(p.method, p.x) for p in got.points] == [(p.method, p.x) for p in want.points]
    for a, b in zip(got.points, want.points, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-12)
        assert a.fisher_increase == pytest.approx(b.fisher_increase, rel=1e-9)
    pruned = jobs.downstream_sweep(
        "prune", model, LAYER, x_fisher, x_eval, "bce", "true", 3, (0.5,), ("magnitude",),
        1e-3, "rows",
    )  # fmt: skip
    assert pruned.structure == "rows" and [p.method for p in pruned.points] == ["magnitude"]
    assert pruned.points[0].x == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown downstream job 'shrink'; choose compress"):
        jobs.downstream_sweep("shrink", model, LAYER, x_fisher, x_eval, "bce", "true", 0,
                              (1.0,), ("svd",), 1e-3)  # fmt: skip


def test_empirical_fisher_uses_the_fisher_batch_targets(model_and_data):
    """An autoencoder's empirical Fisher: targets = the Fisher batch itself, not the held-out
    batch (which has another size); the sweep's ½ ΔWᵀFΔW must equal the dense one."""
    model, x_fisher, x_eval = model_and_data
    result = compress_sweep(model, LAYER, x_fisher, x_eval, loss="bce", ranks=[1],
                            methods=["svd"], fisher="empirical", keep_weights=True)  # fmt: skip
    cap = capture(model, x_fisher, loss="bce", fisher="empirical", targets=x_fisher,
                  layers=[LAYER]).layers[LAYER]  # fmt: skip
    dense = exact_fisher(cap.a.double(), cap.g.double())
    delta = vec(result.weights[("svd", 1.0)] - layer_weight(model, LAYER)).double()
    assert result.points[0].fisher_increase == pytest.approx(
        0.5 * float(delta @ dense @ delta), rel=1e-9
    )


def test_power_iterations_job(model_and_data):
    model, x_fisher, _ = model_and_data
    cap = capture(model, x_fisher, loss="bce", generator=torch.Generator().manual_seed(0),
                  layers=[LAYER]).layers[LAYER]  # fmt: skip
    fisher = LayerFisher(cap.a.double(), cap.g.double())
    got = jobs.power_iterations(fisher, 5)
    want = power_iteration_curve(fisher.a, fisher.g, 5)
    assert got.errors == pytest.approx(want.errors) and len(got.errors) == 6
    assert got.kpsvd == pytest.approx(want.kpsvd) and got.kfac == pytest.approx(want.kfac)
    with pytest.raises(ValueError, match="steps must be an integer"):
        jobs.power_iterations(fisher, -1)


def test_module_is_unchanged_by_the_jobs(model_and_data):
    model, x_fisher, x_eval = model_and_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    jobs.downstream_sweep("prune", model, LAYER, x_fisher, x_eval, "bce", "true", 0, (0.5,),
                          ("kfac",), 1e-3)  # fmt: skip
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_keep_sends_back_only_the_last_value_of_the_kept_methods(model_and_data):
    model, x_fisher, x_eval = model_and_data
    result = jobs.downstream_sweep(
        "compress", model, LAYER, x_fisher, x_eval, "bce", "true", 0, (1.0, 3.0),
        ("svd", "kfac", "kpsvd"), 1e-3, keep=("svd", "kpsvd"),
    )  # fmt: skip
    assert set(result.weights) == {("svd", 3.0), ("kpsvd", 3.0)}
    assert all(int(torch.linalg.matrix_rank(w)) <= 3 for w in result.weights.values())
    plain = jobs.downstream_sweep("compress", model, LAYER, x_fisher, x_eval, "bce", "true", 0,
                                  (1.0,), ("svd",), 1e-3)  # fmt: skip
    assert plain.weights == {}


def test_shared_layer_fisher_increase_against_per_sample_gradients():
    """A Linear shared by T = 8 row tokens (preset digits-seq): ½ ΔWᵀFΔW is
    ½ (1/m) Σ_i ⟨D_i, ΔW⟩² with D_i = Σ_t g_{i,t} ā_{i,t}ᵀ, formed here by hand."""
    ds = load_dataset("digits", seed=0, n_train=64, n_test=32)
    run = TrainingRun(RunConfig.from_settings("digits", "adam", preset="digits-seq", steps=3),
                      dataset=ds)  # fmt: skip
    run.run()
    model, layer = run.model.cpu().double(), "tokens.linear1"
    x_fisher, x_eval = ds.x_train[:24].double(), ds.x_test.double()
    labels = ds.y_test
    result = compress_sweep(model, layer, x_fisher, x_eval, loss="ce", ranks=[1],
                            methods=["svd", "kfac"], targets=labels, keep_weights=True)  # fmt: skip
    cap = capture(model, x_fisher, loss="ce", generator=torch.Generator().manual_seed(0),
                  layers=[layer]).layers[layer]  # fmt: skip
    a, g = cap.a.double(), cap.g.double()
    assert a.ndim == 3 and a.shape[1] == 8
    per_sample = torch.einsum("itg,ita->iga", g, a)  # D_i, (m, dg, da)
    w0 = layer_weight(model, layer).double()
    for point in result.points:
        delta = result.weights[(point.method, 1.0)].double() - w0
        want = 0.5 * float(((per_sample * delta).sum((1, 2)) ** 2).mean())
        assert point.fisher_increase == pytest.approx(want, rel=1e-9)
