"""The explorer's issue-19 tabs (pages/ui/downstream_tabs.py): "Compress", "Prune" and "Power
iterations", opened by the ``tab`` URL parameter on the default DIGITS layer; their URL
parameters ``compress_k``, ``prune_sparsity``, ``prune_kind`` and ``power_k``."""

from __future__ import annotations

import json

import pytest

from tests.webapp.test_app import app, assert_clean, charts, spec, unescaped

pytestmark = pytest.mark.usefixtures("app_env")


def _table(at):
    """The sweep's table (the metrics table is the first dataframe)."""
    return at.dataframe[-1].value


def test_compress_tab_default_view():
    at = app("explorer", tab="compress", methods="kfac,kpsvd")
    assert_clean(at)
    table = _table(at)
    methods = set(table["method"])
    assert {"Plain SVD", "FWSVD (diagonal Fisher)", "KFAC", "KPSVD", "Exact F"} <= methods
    ranks = sorted(set(table["rank k"].dropna()))
    assert ranks == [1, 2, 4, 8]  # 1, 2, 4, … up to the default largest rank 8
    assert table["loss increase"].notna().all()
    # the exact block's weighting minimises ½ ΔWᵀ F ΔW (+ damping): never above plain SVD's
    exact = table[table["method"] == "Exact F"].set_index("rank k")["½ ΔWᵀFΔW"]
    svd = table[table["method"] == "Plain SVD"].set_index("rank k")["½ ΔWᵀFΔW"]
    assert (exact <= svd * (1 + 1e-6) + 1e-9).all()
    figure, images = charts(at)
    assert "Compress: layer" in spec(figure)
    # the reconstructions: the unchanged model's row and one per method, 6 images each
    grid = json.loads(images.proto.spec)
    assert len(grid["data"]) == 6 * 6  # unchanged, SVD, FWSVD, KFAC, KPSVD, exact
    rows = [a["text"] for a in grid["layout"]["annotations"]]
    assert rows[0] == "unchanged" and "KPSVD, k = 8" in rows and "Exact F, k = 8" in rows
    assert any("reconstructs them" in unescaped(c.value) for c in at.caption)
    names = {trace["name"] for trace in json.loads(figure.proto.spec)["data"]}
    assert {"Plain SVD", "KFAC", "KPSVD", "Exact F"} <= names  # labels, not ids
    assert any("rank-k matrix closest" in unescaped(c.value) for c in at.caption)


def test_compress_k_link_sets_the_largest_rank_and_waits_while_its_tab_is_closed():
    at = app("explorer", tab="compress", methods="kfac", compress_k="3")
    assert_clean(at)
    assert not at.warning
    assert sorted(set(_table(at)["rank k"].dropna())) == [1, 2, 3]
    at = app("explorer", tab="block", methods="kfac", compress_k="3", power_k="4")
    assert_clean(at)
    assert not at.warning
    assert at.query_params["compress_k"] == "3" and at.query_params["power_k"] == "4"


def test_prune_tab_rows_link():
    at = app("explorer", tab="prune", methods="kfac", prune_sparsity="0.3", prune_kind="rows")
    assert_clean(at)
    assert not at.warning
    table = _table(at)
    assert set(table["method"]) >= {"Magnitude", "KFAC", "Exact F"}
    # rows of an 8-row W: the sparsity reached is whole rows, at most the one asked for
    reached = table.groupby("method")["sparsity"].apply(list)
    assert all(len(xs) == 3 and max(xs) <= 0.3 + 1e-9 for xs in reached)
    # OBS with the exact block predicts no more loss than magnitude pruning on the same rows
    by = table.set_index(["method", "sparsity"])["½ ΔWᵀFΔW"]
    assert by["Exact F"].iloc[-1] <= by["Magnitude"].iloc[-1] * (1 + 1e-6)
    assert (table["loss increase"].notna()).all()
    text = json.dumps(json.loads(charts(at)[0].proto.spec)["layout"]["title"])
    assert "Prune (rows)" in text
    assert at.query_params["prune_kind"] == "rows"
    assert at.query_params["prune_sparsity"] == "0.3"


def test_power_tab():
    at = app("explorer", tab="power", power_k="6")
    assert_clean(at)
    (figure,) = charts(at)
    errors = json.loads(figure.proto.spec)["data"][0]["y"]
    assert len(errors) == 7  # k = 0 … 6
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:], strict=False))
    assert any("Shampoo" in unescaped(c.value) for c in at.caption)


@pytest.mark.parametrize(
    ("tab", "name", "bad", "used"),
    [
        ("compress", "compress_k", "9999", "8"),
        ("compress", "compress_k", "abc", "8"),
        ("prune", "prune_sparsity", "0.55", "0.5"),
        ("prune", "prune_kind", "diagonal", "unstructured"),
        ("power", "power_k", "-3", "10"),
        ("block", "power_k", "1e9", "10"),  # checked while its tab is closed, too
    ],
)
def test_a_bad_value_gets_a_notice(tab, name, bad, used):
    at = app("explorer", tab=tab, methods="kfac", **{name: bad})
    assert_clean(at)
    notices = " ".join(unescaped(w.value) for w in at.warning)
    assert f"URL parameter {name}: the value {bad} is not valid here" in notices
    assert f"using {used}" in notices


def test_a_convolution_gets_a_note_and_the_power_tab_still_works():
    params = dict(dataset="digits", preset="digits-conv", layer="encoder.conv2", m="64")
    at = app("explorer", tab="compress", methods="kfac", **params)
    assert_clean(at)
    assert any("fully connected layers" in unescaped(i.value) for i in at.info)
    at = app("explorer", tab="power", power_k="3", **params)
    assert_clean(at)
    errors = json.loads(charts(at)[0].proto.spec)["data"][0]["y"]
    assert len(errors) == 4


def test_classifier_with_the_empirical_fisher():
    params = dict(dataset="digits", preset="digits-cnn", m="64", fisher="empirical")
    at = app("explorer", tab="prune", methods="kfac", layer="classifier.linear1", **params)
    assert_clean(at)
    table = _table(at)
    assert {"Magnitude", "KFAC"} <= set(table["method"])
    assert table["loss increase"].notna().all()
