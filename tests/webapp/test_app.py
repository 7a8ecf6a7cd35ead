"""AppTest tests of every page (the run registry itself: tests/server/test_run_queue.py).

Pages run through app.py's ``st.navigation`` exactly as in the server. Runs use tiny settings
(a few steps of the DIGITS preset) passed through the URL, as a shared link would.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.engine.methods import METHODS
from core.views import explorer

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ("home", "explorer", "training", "race", "learn", "reports")


pytestmark = pytest.mark.usefixtures("app_env")


def app(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(params)
    if page != "home":
        at.switch_page(f"pages/{page}.py")
    return at.run()


def unescaped(text: str) -> str:
    """Markdown text as a person reads it (the app backslash-escapes visitor text)."""
    return re.sub(r"\\(.)", r"\1", text)


def errors(at: AppTest) -> list[str]:
    return [unescaped(e.value) for e in at.error]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)


def charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


def metrics(at: AppTest) -> pd.DataFrame:
    """The explorer's metrics table, read back from the page's markdown (numbers as shown, to
    4 decimals; "—" as NaN), with its column ids, not headings."""
    ids = {heading: name for name, heading in explorer.METRIC_HEADINGS.items()}
    (text,) = [m.value for m in at.markdown if m.value.startswith("| Method |")]
    header, _rule, *rows = text.splitlines()

    def cells(line: str) -> list[str]:
        parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        return [re.sub(r"\\(.)", r"\1", p.strip()) for p in parts]

    table = pd.DataFrame([cells(r) for r in rows], columns=[ids[h] for h in cells(header)])
    for column in explorer.METRIC_NUMBERS:
        table[column] = [float("nan") if v == "—" else float(v) for v in table[column]]
    return table


def spec(chart) -> str:
    """A chart's figure JSON with its unicode unescaped."""
    return json.dumps(json.loads(chart.proto.spec), ensure_ascii=False)


def wait_group(at: AppTest, page: str, timeout: float = 120):
    group = at.session_state[f"runs.{page}"]
    deadline = time.monotonic() + timeout
    while not group.done and time.monotonic() < deadline:  # a queued group has no thread yet
        group.join(0.1)
        time.sleep(0.05)
    assert group.done, "the background runs did not finish in time"
    return group


def wait_until(condition, timeout: float = 120) -> None:
    """Wait for ``condition()`` (a state, not a duration); the timeout only ends a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- every page ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_by_default(page):
    at = app(page)
    assert_clean(at)
    assert at.title, "every page has a title"
    device = [c.value for c in at.sidebar.caption if "Compute device" in c.value]
    assert device and ("CPU" in device[0] or "CUDA" in device[0])


# -- Fisher explorer ---------------------------------------------------------------------------


def test_explorer_default_view():
    at = app("explorer")
    assert_clean(at)
    table = metrics(at)
    assert len(table) == len(METHODS)  # every method
    assert table["relative_error"].notna().all()
    kfac = table.set_index("method").loc["KFAC", "relative_error"]
    kpsvd = table.set_index("method").loc["KPSVD", "relative_error"]
    assert kpsvd <= kfac + 1e-9
    # issue 20: the block heatmaps come as one server-drawn picture, every cell of the block
    # (17 inputs × 8 outputs = 136), and no plotly chart (tabs are lazy: only the block runs)
    assert not charts(at)
    (picture,) = at.get("image")
    # sent as PNG, lossless (Streamlit's "auto" made it a JPEG: colours off, blurred cells)
    assert picture.proto.imgs[0].url.endswith(".png"), picture.proto
    assert any("A picture drawn on the server (136 × 136 cells" in c.value for c in at.caption)
    assert at.query_params["layer"] == "encoder.linear3"  # the smallest layer
    assert any("Server time for this view" in c.value for c in at.caption)
    at.radio(key="explorer.heatmap").set_value("interactive").run()
    assert_clean(at)
    assert at.query_params["heatmap"] == "interactive"
    assert len(charts(at)) == 1 and not at.get("image")
    assert "KPSVD − F" in spec(charts(at)[0])
    # the chart is sent coarsened (issue 20): 17 inputs in pairs × 8 outputs, and says so
    shapes = [t["z"]["shape"] for t in json.loads(charts(at)[0].proto.spec)["data"]]
    assert shapes == ["72, 72"] * 3, shapes
    assert any("at most 96 cells per axis" in c.value for c in at.caption)


def test_explorer_change_layer_method_and_rank():
    at = app("explorer")
    at.selectbox(key="explorer.layer").set_value("encoder.linear2").run()
    assert_clean(at)
    assert "encoder.linear2" in at.caption[0].value
    assert at.query_params["layer"] == "encoder.linear2"

    at.multiselect(key="explorer.methods").set_value(["kfac", "kfac_corrected"]).run()
    assert_clean(at)
    assert list(metrics(at)["method"]) == ["KFAC", "KFAC-corrected"]
    at.selectbox(key="explorer.show").set_value("kfac_corrected").run()
    assert_clean(at)
    at.radio(key="explorer.heatmap").set_value("interactive").run()
    block = spec(charts(at)[0])
    assert "KFAC-corrected − F" in block


@pytest.mark.parametrize(
    ("tab", "extra", "titles"),
    [
        ("factors", {"heatmap": "interactive"}, ["Kronecker factors of KPSVD"]),
        ("spectra", {"heatmap": "interactive"}, ["Eigenvalue spectra"]),
        ("rank", {}, ["Error of the best sum", "best rank-2 sum − F"]),
    ],
)
def test_explorer_tabs(tab, extra, titles):
    at = app("explorer", tab=tab, **extra)
    assert_clean(at)
    assert at.query_params["tab"] == tab
    shown = [spec(c) for c in charts(at)]
    assert len(shown) == len(titles)
    for text, title in zip(shown, titles, strict=True):
        assert title in text


@pytest.mark.parametrize(
    ("tab", "title", "caption"),
    [
        ("factors", "**Kronecker factors of KPSVD**", "each factor on its own symmetric linear"),
        ("spectra", "**Eigenvalue spectra**", "both axes logarithmic: F has at most m = 256"),
    ],
)
def test_explorer_factors_and_spectra_are_pictures_by_default(tab, title, caption):
    """issue 20: like the block heatmaps, the factors and the spectra come as one server-drawn
    PNG each (no plotly.js for a visitor who opens these tabs), with a title and a caption
    saying what is drawn."""
    at = app("explorer", tab=tab)
    assert_clean(at)
    assert not charts(at)
    (picture,) = at.get("image")
    assert picture.proto.imgs[0].url.endswith(".png"), picture.proto
    assert any(m.value == title for m in at.markdown)
    assert any(caption in c.value for c in at.caption)


def test_explorer_rank_slider():
    at = app("explorer", tab="rank", layer="decoder.linear2")
    at.slider(key="rank").set_value(4).run()
    assert_clean(at)
    # ``rank`` is bound to the URL: Streamlit's frontend writes it as the slider moves
    # (AppTest has no frontend; tests/webapp/test_browser.py watches a bound widget's URL)
    assert "best rank-4 sum" in spec(charts(at)[-1])
    errors_by_rank = json.loads(charts(at)[0].proto.spec)["data"][0]["y"]
    assert errors_by_rank  # the curve of error against r
    for tab in ("Fisher block", "Kronecker rank"):  # another tab and back: r is kept
        at.session_state["explorer.tab"] = tab
        at.run()
    assert at.slider(key="rank").value == 4 and "best rank-4 sum" in spec(charts(at)[-1])


def test_explorer_link_reproduces_the_view():
    params = dict(layer="decoder.linear1", methods="kfac,ekfac", show="ekfac", rank="3")
    at = app("explorer", tab="rank", **params)
    assert_clean(at)
    assert at.selectbox(key="explorer.layer").value == "decoder.linear1"
    assert at.multiselect(key="explorer.methods").value == ["kfac", "ekfac"]
    assert at.slider(key="rank").value == 3
    for key, value in params.items():
        assert at.query_params[key] == value
    assert list(metrics(at)["method"]) == ["KFAC", "EKFAC"]


def test_explorer_reports_malformed_url_values():
    at = app("explorer", layer="no-such-layer", rank="many", m="10000000", methods="kfac,bogus")
    assert_clean(at)
    assert at.selectbox(key="explorer.layer").value == "encoder.linear3"
    assert at.multiselect(key="explorer.methods").value == ["kfac"]
    assert at.selectbox(key="m").value == 256
    notices = " ".join(unescaped(w.value) for w in at.warning)
    for name, given, used in [
        ("layer", "no-such-layer", "encoder.linear3"),
        ("m", "10000000", "256"),
        ("methods", "kfac,bogus", "kfac"),
    ]:
        assert f"URL parameter {name}: the value {given} is not valid here; using {used}" in (
            notices
        ), notices


def test_explorer_trains_before_exploring():
    at = app("explorer", model="trained", opt="adam", steps="4")
    assert_clean(at)
    assert "trained 4 steps with Adam" in at.caption[0].value
    # Changing the method or the layer does not retrain: the run is cached.
    at.multiselect(key="explorer.methods").set_value(["kfac"]).run()
    at.selectbox(key="explorer.layer").set_value("decoder.linear1").run()
    assert_clean(at)
    assert "trained 4 steps with Adam" in at.caption[0].value


DIVERGING = {"lr.kfac": "10", "damping.kfac": "1e-08", "kl.kfac": "off"}


def test_explorer_reports_a_diverging_training_run():
    at = app("explorer", model="trained", opt="kfac", steps="30", **DIVERGING)
    assert not at.exception
    assert any("diverged" in e.lower() for e in errors(at)), errors(at)


def test_explorer_zero_fisher_is_a_message():
    # SGD with a huge step kills every ReLU: the Fisher block of the layer is zero.
    at = app("explorer", model="trained", opt="sgd", steps="30", **{"lr.sgd": "10"})
    assert not at.exception
    assert all("Traceback" not in e for e in errors(at))


def test_explorer_layer_size_limit(monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_MAX_LAYER_PARAMS", "200")
    at = app("explorer")
    assert_clean(at)  # the default layer (136 weights) is within the limit
    at.selectbox(key="explorer.layer").set_value("encoder.linear2").run()
    assert not at.exception
    assert any("above this server's limit of 200" in e for e in errors(at)), errors(at)
    assert all("KRONOSCOPE" not in e for e in errors(at))


def test_explorer_defers_slow_metrics_on_larger_layers():
    at = app("explorer", layer="encoder.linear1", methods="kfac,deflation")
    assert_clean(at)
    table = metrics(at).set_index("method")
    assert table.loc["KFAC", "spectrum_error"] >= 0
    assert table.loc["Deflation", "spectrum_error"] != table.loc["Deflation", "spectrum_error"]
    assert any("Compute slow metrics" in i.value for i in at.info)


# -- optimizer race ----------------------------------------------------------------------------


def test_race_start_and_finish():
    at = app("race", opts="sgd,kfac", steps="6", eval="3")
    at.button(key="race.start").click().run()
    assert_clean(at)
    group = wait_group(at, "race")
    at.run()
    assert_clean(at)
    assert [run.status for run in group.runs] == ["finished", "finished"]
    assert len(charts(at)) == 2  # loss against step and against wall time
    assert "KFAC train" in spec(charts(at)[0])
    assert any(d.label == "Results (CSV)" for d in at.get("download_button"))


def test_a_race_wider_than_the_share_takes_turns(monkeypatch):
    """Default share per visitor (2 of 4 slots): a four-way race runs two at a time and says
    so; stopped, the runs that never began read "not started" (issue 8)."""
    at = app("race", opts="sgd,adam,kfac,kpsvd", steps="20000")
    at.button(key="race.start").click().run()
    assert_clean(at)
    group = at.session_state["runs.race"]
    assert group.slots == 2
    assert any("2 of these runs train at a time" in c.value for c in at.caption)
    at.button(key="race.stop").click().run()
    group = wait_group(at, "race")
    at.run()
    texts = " ".join(p.text for p in at.get("progress"))
    assert "KFAC: not started" in texts and "KPSVD: not started" in texts, texts


def test_race_stop():
    at = app("race", opts="sgd,adam", steps="20000", schedule="sequential")
    at.button(key="race.start").click().run()
    group = at.session_state["runs.race"]
    wait_until(lambda: group.runs[0].status == "running")  # stop it mid-run, not before
    at.button(key="race.stop").click().run()
    group.join(60)
    assert group.done
    statuses = [run.status for run in group.runs]
    assert statuses[0] == "stopped" and statuses[1] == "pending", statuses  # 2nd never began
    at.run()
    assert not at.exception


def test_race_divergence_is_a_message():
    at = app("race", opts="kfac", steps="30", **DIVERGING)
    at.button(key="race.start").click().run()
    wait_group(at, "race")
    at.run()
    assert not at.exception
    assert any("diverged" in w.value for w in at.warning), [w.value for w in at.warning]


class _HeldRun:
    """A run that holds its slot until it is stopped: the server is full for as long as the
    test says, whatever the machine's speed (a real 20000-step race could end, or a leftover
    run of an earlier test still hold the slot, on a fast or a busy machine)."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self.progress = 0.0

    def run(self) -> None:
        self._release.wait(300)

    def stop(self) -> None:
        self._release.set()

    @property
    def done(self) -> bool:
        return self._release.is_set()


def test_race_waits_in_the_queue_when_the_server_is_full(monkeypatch):
    from core.server.run_queue import RunGroup
    from pages.ui import run_registry

    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "1")
    registry = run_registry()
    assert registry.active_slots() == 0 and registry.queued_count() == 0  # a clean server
    held = registry.start("another-tab", RunGroup([_HeldRun()]), visitor="another-visitor")
    assert held.state == "running"  # the one slot is taken, by another visitor
    second = app("race", opts="adam", steps="5")
    second.button(key="race.start").click().run()
    assert_clean(second)
    waiting = [i.value for i in second.info if "Waiting for a free training slot" in i.value]
    assert waiting and "place 1 in the queue" in waiting[0], [i.value for i in second.info]
    sidebar = " ".join(c.value for c in second.sidebar.caption)
    assert "1 of 1 running, 1 waiting" in sidebar, sidebar
    assert all("KRONOSCOPE" not in text for text in waiting + [sidebar])
    assert second.session_state["runs.race"].queued
    held.stop()  # the slot frees: the queued race starts
    held.join(60)
    group = wait_group(second, "race")
    assert group.runs[0].status == "finished"


def test_sessions_do_not_see_each_other_runs():
    first = app("race", opts="sgd", steps="5")
    first.button(key="race.start").click().run()
    second = app("race")
    assert "runs.race" not in second.session_state
    assert any("press **Start**" in i.value for i in second.info)
    wait_group(first, "race")


# -- approximation over training ---------------------------------------------------------------


def test_training_page_tracks_errors():
    at = app("training", steps="6", every="3", methods="kfac,kpsvd", m="64", opt="sgd")
    at.button(key="training.start").click().run()
    group = wait_group(at, "training")
    at.run()
    assert_clean(at)
    df = group.runs[0].dataframe()
    assert df["rel_error_kfac"].notna().sum() >= 2
    assert len(charts(at)) == 3


def test_explorer_rank_tab_with_a_single_sample():
    """m = 1: ℛ(F) has rank 1 and the rank view says so instead of a slider (found by the
    explorer sweep: a slider from 1 to 1 raised)."""
    at = app("explorer", m="1", tab="rank", methods="kfac_corrected", layer="encoder.linear2")
    assert_clean(at)
    assert any("exactly one Kronecker product" in c.value for c in at.caption)
