"""Issue 18 in the app: the convolutional presets in the explorer, the training page and the
race, with each layer's geometry in the picker and a classifier's labels for its empirical
Fisher."""

from __future__ import annotations

import pytest
import torch

from core import jobs
from core.training.data import load_dataset
from core.training.models import build_model
from pages.ui.data import presets_for
from tests.webapp.test_app import app, assert_clean, charts, metrics, spec, wait_group

pytestmark = pytest.mark.usefixtures("app_env")


def test_presets_offered_follow_the_input_size_and_the_labels():
    labelled = presets_for("digits", labelled=True)
    assert labelled == ["digits", "digits-conv", "digits-cnn", "digits-seq"]
    assert presets_for("digits", labelled=False) == ["digits", "digits-conv"]
    assert "mnist-cnn" not in presets_for("mnist", labelled=False)
    assert set(presets_for("curves-small", labelled=False)) == {"curves-small"}


def test_explorer_on_a_conv_layer_shows_its_geometry_and_metrics():
    at = app("explorer", dataset="digits", preset="digits-conv", layer="encoder.conv2", m="64")
    assert_clean(at)
    picker = at.selectbox(key="explorer.layer")
    assert "conv 8→16, 3×3 stride 2, T 4 (2×2)" in picker.format_func(picker.value)
    table = metrics(at).set_index("method")
    assert table["relative_error"].notna().all()
    # KPSVD is the best symmetric Kronecker product: never worse than KFAC-expand's product
    assert table.loc["KPSVD", "relative_error"] <= table.loc["KFAC", "relative_error"] + 1e-9
    # on a layer with T > 1 KFAC-expand and KFAC-reduce are different products
    assert table.loc["KFAC", "relative_error"] != table.loc["KFAC-reduce", "relative_error"]
    assert len(at.get("image")) == 1  # the block heatmaps, drawn as a picture


def test_classifier_explorer_with_the_empirical_fisher():
    at = app("explorer", dataset="digits", preset="digits-cnn", layer="features.conv1",
             fisher="empirical", m="32")  # fmt: skip
    assert_clean(at)
    assert metrics(at)["relative_error"].notna().all()


def test_the_classifier_empirical_fisher_uses_the_labels():
    """Captured with the labels, the output gradients of the softmax layer are p − onehot(y):
    every row sums to zero and is negative exactly at the label."""
    ds = load_dataset("digits", seed=0)
    model = build_model("digits-cnn", input_dim=64, loss="bce", seed=0)
    x, y = ds.x_train[:16], ds.y_train[:16]
    fisher = jobs.layer_fisher(model, x, "classifier.linear1", "ce", "empirical", 0, y)
    g = fisher.g.double() * fisher.g.shape[0] ** 0.5  # undo the 1/√m scaling, if any
    assert torch.allclose(g.sum(1), torch.zeros(16, dtype=g.dtype), atol=1e-6)
    negative = g < 0
    assert negative.sum(1).eq(1).all()
    assert torch.equal(negative.double().argmax(1), y)


def test_race_on_the_conv_classifier():
    at = app("race", dataset="digits", preset="digits-cnn", opts="adam,kfac", steps="6", eval="3")
    at.button(key="race.start").click().run()
    assert_clean(at)
    group = wait_group(at, "race")
    at.run()
    assert_clean(at)
    assert [run.status for run in group.runs] == ["finished", "finished"]
    assert len(charts(at)) == 2


def test_training_page_tracks_a_conv_layer_of_the_classifier():
    params = {"steps": "6", "every": "3", "methods": "kfac,kfac_reduce,kpsvd", "m": "64"}
    at = app("training", dataset="digits", preset="digits-cnn", layer="features.conv2",
             opt="kfac", **params)  # fmt: skip
    at.button(key="training.start").click().run()
    group = wait_group(at, "training")
    at.run()
    assert_clean(at)
    df = group.runs[0].dataframe()
    assert group.runs[0].config.quality_layer == "features.conv2"
    for method in ("kfac", "kfac_reduce", "kpsvd"):
        assert df[f"rel_error_{method}"].notna().sum() >= 2
    errors = df[["rel_error_kfac", "rel_error_kpsvd"]].dropna()
    assert (errors["rel_error_kpsvd"] <= errors["rel_error_kfac"] + 1e-9).all()


def test_factors_tab_groups_a_conv_input_factor_by_kernel_position():
    at = app("explorer", dataset="digits", preset="digits-conv", layer="encoder.conv2",
             methods="kfac", tab="factors", m="32")  # fmt: skip
    assert_clean(at)
    assert at.query_params["factor_order"] == "kernel"
    assert any("9 blocks of 8 channels" in c.value for c in at.caption)  # under the picture
    at.radio(key="explorer.factor_order").set_value("unfolded").run()
    assert_clean(at)
    assert not any("blocks of 8 channels" in c.value for c in at.caption)
    at.radio(key="explorer.heatmap").set_value("interactive").run()  # the plotly chart says it
    at.radio(key="explorer.factor_order").set_value("kernel").run()
    assert_clean(at)
    assert "9 blocks of 8 channels" in spec(charts(at)[-1])


def test_explorer_on_a_sequence_layer():
    """digits-seq's first layer is one Linear shared by the 8 row tokens (T = 8)."""
    at = app("explorer", dataset="digits", preset="digits-seq", layer="tokens.linear1", m="64")
    assert_clean(at)
    picker = at.selectbox(key="explorer.layer")
    assert "8→16 at T 8 positions" in picker.format_func(picker.value)
    table = metrics(at).set_index("method")
    assert table.loc["KPSVD", "relative_error"] <= table.loc["KFAC", "relative_error"] + 1e-9
    assert table.loc["KFAC", "relative_error"] != table.loc["KFAC-reduce", "relative_error"]
