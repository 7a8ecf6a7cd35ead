"""The downstream sweeps on a network (core/views/downstream.py) and their figures
(core/views/downstream_figures.py): losses measured on a copy, the model untouched, the exact-
Fisher yardstick against a dense oracle, skipped methods named."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.engine import weight_metric as wm
from core.engine.capture import capture
from core.engine.fisher import exact_fisher
from core.engine.kron import vec
from core.engine.methods import SHOWN
from core.training.models import Autoencoder
from core.views.downstream import (
    compress_sweep,
    held_out_loss,
    layer_weight,
    merge_results,
    prune_sweep,
    reconstructions,
)
from core.views.downstream_figures import (
    downstream_figures,
    downstream_table,
    reconstruction_figure,
)

LAYER = "encoder.linear2"  # 8 → 4: W is (4, 9), n = 36


@pytest.fixture(scope="module")
def trained():
    gen = torch.Generator().manual_seed(0)
    model = Autoencoder([16, 8, 4], "bce", seed=0, dtype=torch.float64)
    x = (torch.rand(96, 16, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), x, reduction="sum") / 96
        loss.backward()
        opt.step()
    return model, x[:64], x[64:]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_compress_sweep_measures_on_a_copy(trained):
    model, x_fisher, x_eval = trained
    before = state(model)
    result = compress_sweep(
        model, LAYER, x_fisher, x_eval, loss="bce", ranks=[1, 4], keep_weights=True
    )
    assert all(torch.equal(v, state(model)[k]) for k, v in before.items())
    assert result.base_loss == pytest.approx(held_out_loss(model, x_eval, loss="bce"))
    assert set(result.methods) == {"svd", "fwsvd", *SHOWN}
    generator = torch.Generator().manual_seed(0)  # the sweep's capture: seed 0, true Fisher
    cap = capture(model, x_fisher, loss="bce", generator=generator, layers=[LAYER]).layers[LAYER]
    fisher = exact_fisher(cap.a.double(), cap.g.double())
    w0 = layer_weight(model, LAYER)
    for point in result.points:
        w = result.weights[(point.method, float(point.x))]
        clone = copy.deepcopy(model)
        with torch.no_grad():
            clone.get_submodule(LAYER).weight.copy_(w[:, :-1])
            clone.get_submodule(LAYER).bias.copy_(w[:, -1])
        assert point.loss == pytest.approx(held_out_loss(clone, x_eval, loss="bce"), rel=1e-12)
        delta = vec(w - w0)
        assert point.fisher_increase == pytest.approx(0.5 * float(delta @ fisher @ delta))
        if point.x == 4:  # full rank: nothing changes
            assert abs(point.loss_increase) < 1e-9 and point.fisher_increase < 1e-15


def _without_time(result):
    """The points' fields but their timing; NaN (a baseline's objective) compared as a name."""
    return [
        {k: "nan" if v != v else v for k, v in vars(p).items() if k != "seconds"}
        for p in result.points
    ]


def test_per_method_sweeps_merge_into_the_whole_sweep(trained):
    """The explorer runs one job per method: merged, they equal one sweep of every method."""
    model, x_fisher, x_eval = trained
    methods = ("magnitude", "kfac", "deflation", "exact")
    whole = prune_sweep(
        model, LAYER, x_fisher, x_eval, loss="bce", sparsities=[0.25, 0.5], methods=methods,
        keep_weights=True,
    )  # fmt: skip
    parts = [
        prune_sweep(
            model,
            LAYER,
            x_fisher,
            x_eval,
            loss="bce",
            sparsities=[0.25, 0.5],
            methods=(m,),
            keep_weights=True,
        )  # fmt: skip
        for m in methods
    ]
    merged = merge_results(parts)
    assert merged.methods == list(methods) and merged.base_loss == whole.base_loss
    assert _without_time(merged) == _without_time(whole)
    assert merged.skipped == whole.skipped
    assert merged.weights.keys() == whole.weights.keys()
    assert all(torch.equal(merged.weights[k], whole.weights[k]) for k in whole.weights)
    other = compress_sweep(model, LAYER, x_fisher, x_eval, loss="bce", ranks=[1], methods=("kfac",))
    with pytest.raises(ValueError, match="different settings"):
        merge_results([parts[0], other])
    with pytest.raises(ValueError, match="no sweep"):
        merge_results([])


def test_prune_sweep_and_skipped_methods(trained, monkeypatch):
    model, x_fisher, x_eval = trained
    monkeypatch.setattr(wm, "DENSE_LIMIT", 20)  # the exact block and EKFAC no longer fit
    result = prune_sweep(
        model,
        LAYER,
        x_fisher,
        x_eval,
        loss="bce",
        sparsities=[0.0, 0.5],
        structure="columns",
        methods=["magnitude", "kfac", "exact", "ekfac"],
    )
    assert result.methods == ["magnitude", "kfac"]
    assert set(result.skipped) == {"exact", "ekfac"}
    assert "above the 20" in result.skipped["exact"]
    for point in result.points:
        if point.x == 0.0:
            assert point.loss_increase == 0.0 and point.fisher_increase == 0.0
        else:
            assert point.x == pytest.approx(4 / 9 * 1.0)  # round(4.5) = 4 of 9 columns
    figures, caption = downstream_figures(result)
    assert len(figures) == 1 and len(figures[0].data) == 4  # 2 methods × 2 panels
    assert LAYER in caption and "Not shown: Exact F, EKFAC" in caption
    table = downstream_table(result)
    assert len(table) == 4 + 2 and table["note"].str.contains("above the 20").sum() == 2


def test_bad_names_are_refused(trained):
    model, x_fisher, x_eval = trained
    with pytest.raises(ValueError, match="unknown method"):
        compress_sweep(model, LAYER, x_fisher, x_eval, loss="bce", ranks=[1], methods=["nope"])
    with pytest.raises(ValueError, match="unknown linear layer 'encoder.relu1'"):
        layer_weight(model, "encoder.relu1")
    with pytest.raises(ValueError, match="rank k"):
        compress_sweep(model, LAYER, x_fisher, x_eval, loss="bce", ranks=[9], methods=["svd"])


def test_reconstructions_and_their_figure(trained):
    model, _, x_eval = trained
    w = layer_weight(model, LAYER)
    images = reconstructions(model, LAYER, {"zero": torch.zeros_like(w)}, x_eval[:3])
    assert torch.allclose(images["original"], model.reconstruct(x_eval[:3]))
    assert not torch.allclose(images["zero"], images["original"])
    assert torch.equal(layer_weight(model, LAYER), w)
    fig = reconstruction_figure(images, (4, 4), count=3, titles={"zero": "W = 0"})
    assert len(fig.data) == 6
    with pytest.raises(ValueError, match="16 values per image, not 5 × 5"):
        reconstruction_figure(images, (5, 5))
    with pytest.raises(ValueError, match="need an autoencoder"):
        reconstructions(nn.Sequential(nn.Linear(3, 3)), "0", {}, x_eval)
