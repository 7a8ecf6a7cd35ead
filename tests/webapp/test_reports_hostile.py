"""The "Paper reproductions" page against a hostile visitor and a careless host (AppTest): links
out of the results folder, malformed and oversized reports, and what a visitor is told.

The reading itself (links, caps, checks, one parse per change) is tested on files in
tests/paper/test_files.py; here the page shows its outcome: one plain sentence per refused
report, no exception text, no server path, no setting name, and the other reports unharmed.
"""

from __future__ import annotations

import pytest

from core.paper.safe_read import report_max_bytes
from tests.paper.test_files import write_report
from tests.webapp.test_app import app, errors
from tests.webapp.test_hostile import assert_safe, page_text

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture
def results(tmp_path, monkeypatch):
    """The host's results folder: a good report, reports that must be refused, and a secret
    report outside the folder that links lead to."""
    root = tmp_path / "results"
    write_report(root / "good")
    secret = write_report(tmp_path / "outside" / "secret", {"dataset_label": "TOP SECRET"})
    (root / "escape").symlink_to(secret, target_is_directory=True)
    (write_report(root / "escape-file") / "results.csv").unlink()
    (root / "escape-file" / "results.csv").symlink_to(secret / "results.csv")

    (write_report(root / "deep") / "settings.json").write_text("[" * 10_000 + "]" * 10_000)
    write_report(root / "nan-seed", {"seeds": [1, float("nan")]})
    write_report(root / "nan-epoch", {"steps_per_epoch": float("nan")})
    with open(write_report(root / "huge") / "results.csv", "r+b") as f:
        f.truncate(3 * report_max_bytes())  # sparse, like the 213 MB file of the issue
    monkeypatch.setenv("KRONOSCOPE_RESULTS_DIR", str(root))
    return root


def test_links_out_of_the_folder_are_not_offered(results):
    at = app("reports")
    assert_safe(at)
    assert at.selectbox(key="report").options == ["deep", "good", "huge", "nan-epoch", "nan-seed"]
    for name in ("escape", "escape-file"):
        at = app("reports", report=name)
        assert_safe(at, name)
        assert any("URL parameter report" in w.value for w in at.warning)
        assert "TOP SECRET" not in " ".join(s.value for s in at.subheader)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("deep", "settings.json of report deep is not valid: nested too deeply."),
        (
            "nan-seed",
            "settings.json of report nan-seed is not valid: field seeds holds NaN, expected an "
            "integer.",
        ),
        (
            "nan-epoch",
            "settings.json of report nan-epoch is not valid: field steps_per_epoch holds NaN, "
            "expected an integer.",
        ),
        (
            "huge",
            f"results.csv of report huge is too large to show: {3 * report_max_bytes():,} bytes, "
            f"above the cap of {report_max_bytes():,} bytes (64 MiB).",
        ),
    ],
)
def test_a_refused_report_is_one_plain_sentence(results, name, message):
    at = app("reports", report=name)
    assert_safe(at)
    assert errors(at) == [message]
    text = page_text(at)
    for internal in ("RecursionError", "ValueError", "int()", "cannot convert", "Traceback"):
        assert internal not in text
    assert not at.dataframe and not at.get("plotly_chart")


def test_the_other_reports_still_show(results):
    for name in ("deep", "huge", "good"):  # in one server process, one after the other
        at = app("reports", report=name)
    assert_safe(at)
    assert not at.error
    assert len(at.get("plotly_chart")) == 2
    assert any("verdict" in frame.value.columns for frame in at.dataframe)


def test_no_results_folder_names_no_setting(monkeypatch):
    monkeypatch.delenv("KRONOSCOPE_RESULTS_DIR", raising=False)
    at = app("reports")
    assert_safe(at)
    assert "has not configured a results folder" in at.info[0].value


def test_text_from_a_report_is_never_markup(results):
    label, rule = "**bold** [x](http://evil.example)", "<script>alert(1)</script> $x$"
    write_report(results / "markup", {"dataset_label": label, "rules": {"training": rule}})
    at = app("reports", report="markup")
    assert_safe(at)
    assert "\\*\\*bold\\*\\* \\[x\\]" in at.subheader[0].value  # escaped, not Markdown
    assert [t.value for t in at.text] == [rule]  # st.text: shown as it is, never rendered
