"""The network-level Fisher page (pages/network.py, issue 19): its default view, its URL
parameters (``net_data``, ``net_widths``, ``net_seed``, ``net_steps``, ``net_m``,
``net_damping``) and a network above the dense limit."""

from __future__ import annotations

import json

import pytest

from tests.webapp.test_app import app, assert_clean, charts

pytestmark = pytest.mark.usefixtures("app_env")


def test_network_page_default_view():
    at = app("network", net_m="64")
    assert_clean(at)
    assert at.title[0].value == "Network-level Fisher"
    directions, matrices = at.dataframe[0].value, at.dataframe[1].value
    assert set(directions["direction"]) == {
        "exact_block",
        "kfac",
        "two_level:kfac_direction",
        "two_level:gradient",
        "two_level:nicolaides",
    }
    assert (directions["relative_error"] > 0).all()
    errors = matrices.set_index("matrix")["relative_frobenius_error"]
    # the exact block diagonal drops only the cross-layer blocks: closer than KFAC
    assert 0 < errors["exact_block"] < errors["kfac"]
    (heatmaps,) = charts(at)
    assert len(json.loads(heatmaps.proto.spec)["data"]) == 6  # F, block, KFAC, 3 two-level


def test_network_page_from_url_and_above_the_dense_limit():
    at = app("network", net_data="digits", net_widths="64-32-16", net_m="32", net_damping="1.0")
    assert_clean(at)
    assert at.sidebar.selectbox[0].value == "digits"
    assert len(at.dataframe) == 1  # directions only
    assert not charts(at)
    assert any("above the dense limit" in i.value for i in at.info)
