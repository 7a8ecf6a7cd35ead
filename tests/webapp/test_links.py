"""Links shared before Streamlit's query-parameter binding open the same view (issue 11).

Each page is opened with every URL parameter it reads, in the formats links have always
carried (comma-joined lists, ``1``/``0`` toggles, option values rather than labels, tab
slugs), each set to a value other than its default (a bound widget leaves a default out of
the URL). Every widget must show the link's value, no notice may appear, and the URL must
still hold every parameter exactly as given. Widgets bound by Streamlit have the URL name as
their session key; the hand-made ones ``<page>.<name>`` (pages/ui/urlstate.py says which).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.webapp.test_app import app, assert_clean

pytestmark = pytest.mark.usefixtures("app_env")

WIDGETS = ("selectbox", "number_input", "multiselect", "radio", "toggle", "slider")

# URL name → (session key, value the widget shows), per page
EXPLORER = {
    "dataset": ("explorer.dataset", "digits", "digits"),
    "preset": ("explorer.preset", "digits", "digits"),
    "seed": ("seed", "3", 3),
    "model": ("explorer.model", "trained", "trained"),
    "opt": ("explorer.opt", "kfac", "kfac"),
    "steps": ("steps", "3", 3),
    "lr.kfac": ("lr.kfac", "0.05", 0.05),
    "damping.kfac": ("damping.kfac", "0.02", 0.02),
    "tcov.kfac": ("tcov.kfac", "2", 2),
    "tinv.kfac": ("tinv.kfac", "4", 4),
    "kl.kfac": ("explorer.kl.kfac", "0.1", 0.1),
    "layer": ("explorer.layer", "decoder.linear1", "decoder.linear1"),
    "methods": ("explorer.methods", "kfac,ekfac,kpsvd", ["kfac", "ekfac", "kpsvd"]),
    "m": ("m", "64", 64),
    "fisher": ("explorer.fisher", "empirical", "empirical"),
    "damping": ("explorer.damping", "0.01", 0.01),
    "slow": ("explorer.slow", "1", True),
    "show": ("explorer.show", "ekfac", "ekfac"),
    "contrast": ("explorer.contrast", "0.95", 0.95),
    "heatmap": ("explorer.heatmap", "interactive", "interactive"),
    "tab": ("explorer.tab", "rank", "Kronecker rank"),
    "rank": ("rank", "3", 3),
}
RACE = {
    "dataset": ("race.dataset", "curves-small", "curves-small"),
    "preset": ("race.preset", "curves-small", "curves-small"),
    "seed": ("seed", "7", 7),
    "steps": ("steps", "5", 5),
    "batch": ("batch", "64", 64),
    "eval": ("eval", "2", 2),
    "schedule": ("race.schedule", "sequential", "sequential"),
    "opts": ("race.opts", "sgd,kpsvd", ["sgd", "kpsvd"]),
    "lr.sgd": ("lr.sgd", "0.02", 0.02),
    "momentum.sgd": ("momentum.sgd", "0.5", 0.5),
    "lr.kpsvd": ("lr.kpsvd", "0.1", 0.1),
    "damping.kpsvd": ("damping.kpsvd", "0.003", 0.003),
    "tcov.kpsvd": ("tcov.kpsvd", "5", 5),
    "tinv.kpsvd": ("tinv.kpsvd", "20", 20),
    "kl.kpsvd": ("race.kl.kpsvd", "off", "off"),
}
TRAINING = {
    "dataset": ("training.dataset", "digits", "digits"),
    "preset": ("training.preset", "digits", "digits"),
    "seed": ("seed", "2", 2),
    "opt": ("training.opt", "adam", "adam"),
    "lr.adam": ("lr.adam", "0.002", 0.002),
    "momentum.adam": ("momentum.adam", "0.8", 0.8),
    "steps": ("steps", "40", 40),
    "batch": ("batch", "256", 256),
    "layer": ("training.layer", "encoder.linear2", "encoder.linear2"),
    "every": ("every", "5", 5),
    "m": ("m", "128", 128),
    "methods": ("training.methods", "kfac,kpsvd", ["kfac", "kpsvd"]),
}


def widget(at, key: str):
    """The widget whose session key is ``key``, whatever its kind."""
    for kind in WIDGETS:
        for w in getattr(at, kind):
            if w.key == key:
                return w
    raise AssertionError(f"no widget with key {key!r}")


def check_link(at, link: dict) -> None:
    assert_clean(at)
    assert not at.warning, [w.value for w in at.warning]  # no value was refused
    for name, (key, given, value) in link.items():
        if name == "tab":  # tabs are no widget of AppTest: their state is the open label
            assert at.session_state[key] == value
        else:
            assert widget(at, key).value == value, name
        assert at.query_params.get(name) == given, (name, at.query_params.get(name))


@pytest.mark.parametrize(
    ("page", "link"), [("explorer", EXPLORER), ("race", RACE), ("training", TRAINING)]
)
def test_an_old_link_with_every_parameter_opens_its_view(page, link):
    at = app(page, **{name: given for name, (_, given, _) in link.items()})
    check_link(at, link)
    at.run()  # and it stays: a rerun keeps every value and the URL
    check_link(at, link)


def test_an_old_link_names_a_host_file_and_a_report(tmp_path, monkeypatch):
    """``path`` (a host data file) and ``report`` (a reproduction) are bound selects too."""
    data = tmp_path / "data"
    data.mkdir()
    x = np.random.default_rng(0).random((12, 625)).astype(np.float32)
    for name in ("faces-a.npz", "faces-b.npz"):
        np.savez(data / name, x_train=x[:8], x_test=x[8:])
    monkeypatch.setenv("KRONOSCOPE_DATA_DIR", str(data))
    at = app("race", dataset="faces", path="faces-b.npz")  # the race computes nothing yet
    assert_clean(at)
    assert not at.warning
    assert widget(at, "path").value == "faces-b.npz"
    assert at.query_params["path"] == "faces-b.npz"

    results = tmp_path / "results"
    for name in ("first", "second"):
        (results / name).mkdir(parents=True)
        (results / name / "settings.json").write_text("{}")
        (results / name / "results.csv").write_text("")
    monkeypatch.setenv("KRONOSCOPE_RESULTS_DIR", str(results))
    at = app("reports", report="second")
    assert not at.exception and not at.warning
    assert widget(at, "report").value == "second"
    assert at.query_params["report"] == "second"


def test_a_link_keeps_its_rank_until_the_rank_tab_opens():
    """``rank`` is drawn only in its tab: a link that opens another tab keeps it in the URL
    (without a notice: it is valid), and the slider shows it once the tab is opened."""
    at = app("explorer", tab="block", rank="3", layer="encoder.linear2", methods="kfac")
    assert_clean(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.query_params["rank"] == "3"
    at.session_state["explorer.tab"] = "Kronecker rank"
    at.run()
    assert_clean(at)
    assert widget(at, "rank").value == 3
