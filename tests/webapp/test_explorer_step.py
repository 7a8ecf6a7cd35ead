"""The explorer's "Damped step" tab (issue 21): the λ slider and its URL parameter
``step_damping``, the table next to the Frobenius error, the "error vs λ" figure and caption."""

from __future__ import annotations

import json

import pytest

from core.engine.methods import METHODS
from tests.webapp.test_app import app, assert_clean, charts, spec, unescaped
from tests.webapp.test_app import metrics as metrics_of

pytestmark = pytest.mark.usefixtures("app_env")


def test_step_tab_default_view():
    at = app("explorer", tab="step")
    assert_clean(at)
    assert at.query_params["step_damping"] == "0.001"
    assert at.select_slider(key="explorer.step_damping").value == 0.001
    table = at.dataframe[0].value.set_index("method")
    assert len(table) == len(METHODS)  # every method: Frobenius error next to the step's
    metrics = metrics_of(at).set_index("method")
    # the metrics table shows 4 decimals: the step table's full numbers round to them
    shown = table["relative_error"].map(lambda v: float(f"{v:.4f}"))
    assert (shown == metrics["relative_error"]).all()
    assert table["step_error"].notna().all() and (table["step_cosine"].abs() <= 1 + 1e-9).all()
    (figure,) = charts(at)
    text = spec(figure)
    assert "vs λ" in text and "KFAC-corrected (optimizer's damping)" in text
    assert "kfac_corrected" not in text  # labels, not ids
    assert len(text) < 8_000 * len(METHODS)  # 2 modes × 17 dampings per method: small
    assert any("optimizers really apply" in unescaped(c.value) for c in at.caption)


def test_step_damping_link_opens_its_value_and_stays_while_the_tab_is_closed():
    at = app("explorer", tab="step", step_damping="0.0316", methods="kfac,deflation")
    assert_clean(at)
    assert not at.warning
    assert at.select_slider(key="explorer.step_damping").value == 0.0316
    shown = at.dataframe[0].value.set_index("method")
    assert list(shown.index) == ["KFAC", "Deflation"]
    lines = json.loads(charts(at)[0].proto.spec)["layout"]["shapes"]
    assert any(shape.get("x0") == 0.0316 for shape in lines)  # the chosen λ, marked
    at.select_slider(key="explorer.step_damping").set_value(1.0).run()
    assert_clean(at)
    assert at.query_params["step_damping"] == "1.0"
    at.session_state["explorer.tab"] = "Fisher block"
    at.run()
    assert_clean(at)
    assert at.query_params["step_damping"] == "1.0"  # kept for the tab's next opening


@pytest.mark.parametrize("tab", ["step", "block"])
def test_a_bad_step_damping_gets_a_notice(tab):
    at = app("explorer", tab=tab, step_damping="0.5")  # not one of the slider's stops
    assert_clean(at)
    notices = " ".join(unescaped(w.value) for w in at.warning)
    assert "URL parameter step_damping: the value 0.5 is not valid here; using 0.001" in notices
    assert at.query_params["step_damping"] == "0.001"


def test_step_tab_defers_exact_damping_of_sums_on_larger_layers():
    at = app("explorer", tab="step", layer="encoder.linear1", methods="kfac,deflation")
    assert_clean(at)
    table = at.dataframe[0].value.set_index("method")
    assert table.loc["Deflation", "step_error"] >= 0  # factored: closed form, always
    assert table.loc["Deflation", "exact_step_error"] != table.loc["Deflation", "exact_step_error"]
    assert table.loc["KFAC", "exact_step_error"] >= 0
    assert any("exact damping not computed" in unescaped(c.value) for c in at.caption)
