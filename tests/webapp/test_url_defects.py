"""The smaller defects a hostile visitor found (issue 17), each as the visitor met it.

A URL value is never an exception on the page, and never replaced without a notice that names
the parameter, the value given and the value used; a failure is a sentence that says what to
do, without exception type names; visitors never see the server's setting names.
"""

from __future__ import annotations

import logging
import re

import pytest
from streamlit.testing.v1 import AppTest

from tests.webapp.test_app import app, assert_clean, errors, unescaped

pytestmark = pytest.mark.usefixtures("app_env")

EXCEPTION_TYPE = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


def notices(at) -> str:
    return " ".join(unescaped(w.value) for w in at.warning)


def assert_notice(at, name: str, given: str, used: str) -> None:
    text = notices(at)
    assert f"URL parameter {name}: the value {given} is not valid here; using {used}." in text, text


# -- numbers too large for any input (an OverflowError in Streamlit's binding) ---------------


@pytest.mark.parametrize(
    ("page", "name", "given", "used"),
    [
        ("race", "seed", "inf", 0),
        ("race", "steps", "1e309", 200),
        ("training", "every", "-inf", 10),
        ("training", "lr.kfac", "1e309", None),  # a float input: refused the same way
    ],
)
def test_an_infinite_number_is_a_notice(page, name, given, used):
    at = app(page, **{name: given})
    assert_clean(at)
    value = at.number_input(key=name).value
    if used is not None:
        assert value == used
    assert_notice(at, name, given, f"{value:g}")
    assert name not in at.query_params  # the refused value left the URL
    at.run()  # the next run binds the input again: no exception, nothing left to report
    assert_clean(at)
    assert not at.warning and at.number_input(key=name).value == value


# -- repeated items of a list ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "key", "given", "used"),
    [
        ("race", "opts", "adam,adam", ["adam"]),
        ("race", "opts", "sgd,kfac,sgd,bogus", ["sgd", "kfac"]),
        ("training", "methods", "kfac,kfac,kpsvd", ["kfac", "kpsvd"]),
    ],
)
def test_repeated_list_items_are_dropped_with_a_notice(page, key, given, used):
    at = app(page, **{key: given})
    assert_clean(at)
    assert at.multiselect(key=f"{page}.{key}").value == used
    assert_notice(at, key, given, ",".join(used))
    assert at.query_params[key] == ",".join(used)


# -- values of widgets drawn after the notices were placed (the explorer's views) ------------


def test_every_replaced_explorer_value_gets_a_notice():
    at = app("explorer", slow="2", show="bogus", contrast="2", heatmap="bogus", tab="bogus")
    assert_clean(at)
    assert len(at.warning) == 1, "one warning lists every replaced value"
    for name, given, used in [
        ("slow", "2", "0"),
        ("show", "bogus", "kpsvd"),
        ("contrast", "2", "0.99"),
        ("heatmap", "bogus", "picture"),
        ("tab", "bogus", "block"),
    ]:
        assert_notice(at, name, given, used)
        assert at.query_params[name] == used
    assert at.toggle(key="explorer.slow").value is False
    assert at.session_state["explorer.tab"] == "Fisher block"
    assert len(at.get("image")) == 1  # the block heatmaps as the picture


@pytest.mark.parametrize(
    ("params", "used"),
    [
        ({"tab": "rank", "rank": "abc"}, "2"),
        ({"tab": "rank", "rank": "1e309"}, "2"),
        ({"rank": "abc"}, "2"),  # the rank tab is closed: checked all the same
        ({"rank": "11"}, "2"),  # more than any Fisher block of the explorer offers
        ({"tab": "rank", "m": "1", "rank": "3"}, "1"),  # m = 1: there is no slider
    ],
)
def test_an_invalid_rank_gets_a_notice(params, used):
    at = app("explorer", layer="encoder.linear2", methods="kfac", **params)
    assert_clean(at)
    assert_notice(at, "rank", params["rank"], used)
    assert "rank" not in at.query_params
    if at.slider:
        assert at.slider(key="rank").value == int(used)


# -- uploads and failures --------------------------------------------------------------------


def test_an_upload_with_another_extension_is_a_plain_message(tmp_path, monkeypatch):
    """The uploader offers .npz files only, but a raw client can send any name."""
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path))
    at = app("explorer", dataset="faces")
    at.file_uploader(key="explorer.upload").set_value(
        ("evil.html", b"<script>alert(1)</script>", "text/html")
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (message,) = errors(at)
    assert "evil.html is not a readable FACES dataset" in message, message
    assert "an .npz with arrays x_train and x_test" in message, message
    assert not EXCEPTION_TYPE.search(message), message


def test_an_unexpected_failure_says_what_to_do_without_its_type(caplog):
    def page():
        from pages.ui.errors import friendly_errors

        with friendly_errors("Drawing the view"):
            raise KeyError("/srv/kronoscope/internal")

    with caplog.at_level(logging.ERROR, logger="pages.ui.errors"):
        at = AppTest.from_function(page).run()
    assert not at.exception, [e.value for e in at.exception]
    (message,) = errors(at)
    assert message.startswith("**Drawing the view** failed: something went wrong inside the app")
    assert "tell the host" in message
    assert not EXCEPTION_TYPE.search(message) and "/srv" not in message, message
    assert "Drawing the view failed unexpectedly" in caplog.text  # the host's log has it
    assert "KeyError" in caplog.text


def test_home_names_no_server_setting():
    at = app("home")
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "KRONOSCOPE_" not in text
    assert "ask the host to raise it" in text
