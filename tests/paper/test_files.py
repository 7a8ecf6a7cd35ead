"""The "Paper reproductions" page reading a results folder: links, size caps, malformed files,
one parse per change of the files."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from core.paper import checks, files
from core.paper.files import REPORT_FILES, list_reports, load_report
from core.paper.safe_read import ReportCache, ReportError, read_capped, report_max_bytes
from core.paper.verdicts import TRAINING_RULE
from tests.paper.reproductions import two_runs_table
from tests.webapp.test_app import unescaped

# -- the reports page -------------------------------------------------------------------------


def _reports_app(**params):
    from tests.webapp.test_app import app

    return app("reports", **params)


def test_reports_page_shows_a_report(outputs, app_env, monkeypatch, tmp_path):
    training, quality = outputs
    root = tmp_path / "results"
    shutil.copytree(training, root / "curves-training")
    shutil.copytree(quality, root / "curves-quality")
    (root / "half-done").mkdir()
    (root / "half-done" / "settings.json").write_text("{}")
    hostile = root / "hostile"
    shutil.copytree(training, hostile)
    settings = json.loads((hostile / "settings.json").read_text())
    settings["dataset_label"] = "**bold** [link](http://example.invalid)"
    (hostile / "settings.json").write_text(json.dumps(settings))
    broken = root / "broken"
    shutil.copytree(training, broken)
    df = pd.read_csv(broken / "results.csv")
    df.loc[0, "optimizer"] = "<b>x</b>"
    df.to_csv(broken / "results.csv", index=False)
    assert list_reports(root) == ["broken", "curves-quality", "curves-training", "hostile"]
    with pytest.raises(ReportError, match='column optimizer holds "<b>x</b>" on line 2'):
        load_report(root, "broken")
    with pytest.raises(ReportError, match="choose one of the reports listed"):
        load_report(root, "../results/curves-training")

    monkeypatch.setenv("KRONOSCOPE_RESULTS_DIR", str(root))
    at = _reports_app(report="curves-training")
    assert not at.exception and not at.error
    assert at.selectbox[0].options == ["broken", "curves-quality", "curves-training", "hostile"]
    assert len(at.get("plotly_chart")) == 2  # loss against epoch and against wall time
    frames = [d.value for d in at.dataframe]
    assert any("verdict" in f.columns for f in frames)

    at = _reports_app(report="curves-quality")
    assert not at.exception and len(at.get("plotly_chart")) == 2

    at = _reports_app(report="hostile")
    titles = [s.value for s in at.subheader]
    assert any("\\*\\*bold\\*\\* \\[link\\]" in t for t in titles)  # escaped, not Markdown

    at = _reports_app(report="broken")
    assert "results.csv of report broken is not valid: column optimizer" in unescaped(
        at.error[0].value
    )

    at = _reports_app(report="../../etc")
    assert any("report" in w.value for w in at.warning)  # the URL value is named, not used


def test_reports_page_without_a_results_folder(app_env, monkeypatch):
    monkeypatch.delenv("KRONOSCOPE_RESULTS_DIR", raising=False)
    at = _reports_app()
    assert not at.exception and not at.error
    assert "has not configured a results folder" in at.info[0].value
    assert "KRONOSCOPE" not in at.info[0].value  # setting names are for the host (DOCKER.md)
    assert not at.text_input  # visitors never type a server path


# -- reading the host's results folder: links, sizes, malformed files, one parse per change ----


def write_report(folder: Path, settings: dict | None = None, results: str | None = None) -> Path:
    """A small, valid training report in ``folder`` (kpsvd and kfac, two seeds, 10 steps);
    ``settings`` entries replace the written ones, ``results`` replaces results.csv's text."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "experiment": "training",
        "dataset": "curves",
        "dataset_label": "CURVES (subset)",
        "steps_per_epoch": 5,
        "seeds": [1, 2],
        "rules": {"training": TRAINING_RULE},
    }
    (folder / "settings.json").write_text(json.dumps({**written, **(settings or {})}))
    if results is None:
        results = two_runs_table([1.0, 1.1], [2.0, 2.1], seeds=(1, 2)).to_csv(index=False)
    (folder / "results.csv").write_text(results)
    return folder


def _results_with(line: int, column: str, value: str) -> str:
    """A valid results.csv whose ``column`` on ``line`` (the header is line 1) holds ``value``."""
    df = two_runs_table([1.0, 1.1], [2.0, 2.1], seeds=(1, 2)).astype(object)
    df.loc[line - 2, column] = value
    return df.to_csv(index=False)


@pytest.fixture
def results_root(tmp_path):
    """A results folder with one good report, and a secret report outside it."""
    root = tmp_path / "results"
    write_report(root / "good")
    write_report(tmp_path / "outside" / "secret", {"dataset_label": "TOP SECRET"})
    return root


def test_links_out_of_the_results_folder_are_neither_listed_nor_read(results_root, monkeypatch):
    root, secret = results_root, results_root.parent / "outside" / "secret"
    (root / "linked-folder").symlink_to(secret, target_is_directory=True)
    for file in REPORT_FILES:  # settings.json, results.csv, verdicts.csv, report.html
        (secret / file).touch(exist_ok=True)
        folder = write_report(root / f"linked-{file}")
        (folder / file).unlink(missing_ok=True)
        (folder / file).symlink_to(secret / file)
    (root / "zeros").mkdir()
    (root / "zeros" / "settings.json").symlink_to("/dev/zero")
    (root / "zeros" / "results.csv").touch()
    (root / "alias").symlink_to(root / "good", target_is_directory=True)  # inside: fine
    write_report(root / "good-link")
    (root / "good-link" / "report.html").write_text("<html></html>")
    (root / "good-link" / "verdicts.csv").symlink_to(root / "good-link" / "report.html")

    opened = []
    monkeypatch.setattr(files, "read_capped", lambda real, *a: opened.append(real) or b"")
    assert list_reports(root) == ["alias", "good", "good-link"]
    for name in ["linked-folder", "zeros", *(f"linked-{f}" for f in REPORT_FILES)]:
        with pytest.raises(ReportError, match="no such report here"):
            load_report(root, name)
    assert opened == []


def test_a_link_swapped_in_after_listing_is_not_followed(tmp_path):
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "settings.json").symlink_to(tmp_path / "secret")
    with pytest.raises(ReportError, match="^settings.json of report x cannot be opened"):
        read_capped(str(tmp_path / "settings.json"), "settings.json of report x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ReportError, match="is not a regular file"):  # not waited on
        read_capped(str(tmp_path / "fifo"), "results.csv of report x")


def test_a_study_folder_is_named_as_such(results_root):
    write_report(results_root / "convs", {"experiment": "conv"})
    with pytest.raises(ReportError) as err:
        load_report(results_root, "convs")
    assert str(err.value).startswith("Report convs is a study (conv), not one of the seed paper")
    assert "report.html in its folder" in str(err.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"deep": json.loads("[" * 500 + "]" * 500)}, "nested too deeply"),
        ({"seeds": [1, math.nan]}, "field seeds holds NaN, expected an integer"),
        ({"steps_per_epoch": math.nan}, "field steps_per_epoch holds NaN, expected an integer"),
        ({"batch_size": 12.5}, "field batch_size holds 12.5, expected an integer"),
        ({"n_train": True}, "field n_train holds true, expected an integer"),
        ({"experiment": "speed"}, 'field experiment holds "speed", expected one of quality,'),
        ({"dataset": ["curves"]}, "field dataset holds a list, expected one of curves,"),
        ({"rules": ["x"]}, "field rules holds a list, expected an object of texts"),
        ({"dataset_label": {"a": 1}}, "field dataset_label holds an object, expected a text"),
    ],
)
def test_malformed_settings_are_one_sentence(results_root, settings, message):
    write_report(results_root / "bad", settings)
    with pytest.raises(ReportError) as err:
        load_report(results_root, "bad")
    assert str(err.value).startswith("settings.json of report bad is not valid: ")
    assert message in str(err.value)
    assert load_report(results_root, "good").verdicts is not None  # the others still work


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 10_000 + "]" * 10_000, "is not valid: nested too deeply."),  # RecursionError
        ('{"experiment": ', "is not valid JSON (line 1, column 16)."),
        (
            '{"seeds": [' + "9" * 5000 + "]}",
            "is not valid: it holds an integer with too many digits.",
        ),
        ("\xff\xfe", "is not valid: it is not UTF-8 text."),
        ("[1, 2]", "is not valid: it holds a list, not an object."),
        ('{"dataset": "curves"}', "is not valid: it lacks the field experiment."),
    ],
)
def test_unparsable_settings_are_one_sentence(results_root, text, message):
    folder = write_report(results_root / "bad")
    (folder / "settings.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ReportError) as err:
        load_report(results_root, "bad")
    assert str(err.value) == f"settings.json of report bad {message}"


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (_results_with(3, "seed", "nan"), "column seed holds NaN on line 3, expected an integer"),
        (_results_with(4, "seed", "1.5"), "column seed holds 1.5 on line 4, expected an integer"),
        (_results_with(2, "step", ""), "column step holds NaN on line 2, expected an integer"),
        (_results_with(5, "epoch", "0"), "column epoch holds 0 on line 5, expected a number > 0"),
        (_results_with(2, "wall_time_s", "inf"), "column wall_time_s holds Infinity on line 2"),
        (_results_with(6, "train_loss", "low"), 'column train_loss holds "low" on line 6'),
        (_results_with(2, "optimizer", "<b>x</b>"), 'column optimizer holds "<b>x</b>" on line 2'),
        (_results_with(3, "step", "0"), "line 3 repeats a step of its run"),
        ("optimizer,seed\nkfac,1\n", "it lacks the column(s) status, step, epoch,"),
        ("", "results.csv of report bad is empty."),
        (",".join(checks.RESULT_COLUMNS) + "\n", "it holds no rows."),
        ('a,b\n"1,2\n', "is not a readable CSV table."),
    ],
)
def test_malformed_results_are_one_sentence(results_root, results, message):
    write_report(results_root / "bad", results=results)
    with pytest.raises(ReportError) as err:
        load_report(results_root, "bad")
    assert str(err.value).startswith("results.csv of report bad ")
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_diverged_run_with_infinite_loss_is_valid(results_root):
    write_report(results_root / "diverged", results=_results_with(11, "train_loss", "inf"))
    report = load_report(results_root, "diverged")
    assert len(report.figures) == 2 and not report.verdicts.empty


def test_files_above_the_cap_are_refused_unread(results_root, monkeypatch):
    folder = write_report(results_root / "huge")
    with open(folder / "results.csv", "r+b") as f:  # sparse: no disk space used
        f.truncate(report_max_bytes() + 1)
    monkeypatch.setattr(files, "parse_results", _fail)
    with pytest.raises(ReportError) as err:
        load_report(results_root, "huge")
    assert str(err.value) == (
        f"results.csv of report huge is too large to show: {report_max_bytes() + 1:,} bytes, "
        f"above the cap of {report_max_bytes():,} bytes (64 MiB)."
    )
    folder = write_report(results_root / "huge-settings")
    with open(folder / "settings.json", "r+b") as f:
        f.truncate(4 << 20)
    with pytest.raises(ReportError, match="^settings.json of report huge-settings is too large"):
        load_report(results_root, "huge-settings")
    assert "huge" in list_reports(results_root)  # listed: the visitor learns why it is refused


def _fail(*args):
    raise AssertionError("parsed a file that should have been refused")


@pytest.fixture
def parses(monkeypatch):
    """The number of times a results.csv is parsed (each parse takes 0.2 s more)."""
    count = [0]
    parse = files.parse_results

    def counted(*args):
        count[0] += 1
        time.sleep(0.2)
        return parse(*args)

    monkeypatch.setattr(files, "parse_results", counted)
    return count


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_report_is_parsed_once_per_change_of_its_files(results_root, parses):
    first = load_report(results_root, "good")
    assert load_report(results_root, "good") is first and parses[0] == 1
    _touch(results_root / "good" / "results.csv")
    second = load_report(results_root, "good")
    assert second is not first and parses[0] == 2
    assert load_report(results_root, "good") is second and parses[0] == 2
    write_report(results_root / "good", {"dataset_label": "CURVES again"})  # settings changed
    assert load_report(results_root, "good").title.endswith("CURVES again") and parses[0] == 3
    # a malformed report is remembered too: not parsed again on every visit
    write_report(results_root / "bad", results=_results_with(3, "seed", "nan"))
    for _ in range(3):
        with pytest.raises(ReportError, match="column seed holds NaN"):
            load_report(results_root, "bad")
    assert parses[0] == 4


def test_visitors_arriving_together_share_one_parse(results_root, parses):
    start, got = threading.Barrier(4), []

    def visit():
        start.wait()
        got.append(load_report(results_root, "good"))

    threads = [threading.Thread(target=visit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert parses[0] == 1 and len(got) == 4 and all(r is got[0] for r in got)


def test_report_cache_is_bounded_by_entries_and_bytes():
    loads = []

    def load(key):
        loads.append(key)
        return key

    cache = ReportCache(max_entries=2, max_bytes=100)
    for key in ("a", "b", "a", "c", "a", "b"):  # "b" is the least recent when "c" arrives
        assert cache.get(key, ((10, 1),), lambda k=key: load(k)) == key
    assert loads == ["a", "b", "c", "b"]
    cache.get("big", ((95, 1),), lambda: load("big"))  # only the newest fits in 100 bytes
    assert cache.get("a", ((10, 1),), lambda: load("a")) == "a"
    assert loads[-2:] == ["big", "a"]
    cache.get("huge", ((500, 1),), lambda: load("huge"))  # kept alone, though above the bound
    assert cache.get("huge", ((500, 1),), lambda: load("again")) == "huge"
