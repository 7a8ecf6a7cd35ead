"""``python -m core reproduce`` end to end on a tiny budget, its verdict rules on tables whose
answer is known, and the "Paper reproductions" page reading a results folder."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.__main__ import main
from core.engine.methods import METHODS
from core.views import reproduce
from core.views.report import mean_sd_figure
from core.views.report_files import (
    ReportCache,
    ReportError,
    read_capped,
    report_max_bytes,
)
from core.views.reproduce import (
    BUDGET_STEP_FACTOR,
    TRAINING_RULE,
    ReproduceSpec,
    final_losses,
    list_reports,
    load_report,
    quality_verdicts,
    training_verdicts,
)
from tests.webapp.test_app import unescaped

# A subset of the generated CURVES-like set and a few steps of the paper's 784-…-6 network.
TINY = ["--dataset", "curves", "--n-train", "256", "--n-test", "64", "--no-progress"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One training and one quality reproduction (module-wide: they are the slow part)."""
    base = tmp_path_factory.mktemp("repro")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONOSCOPE_CACHE_DIR", str(base / "cache"))
        training = base / "results" / "curves-training"
        argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "2"]
        argv += ["--max-steps", "3", "--seeds", "1,2", "--optimizers", "sgd,kfac,kpsvd"]
        assert main([*argv, "--out", str(training)]) == 0
        quality = base / "results" / "curves-quality"
        argv = ["reproduce", "--experiment", "quality", *TINY, "--max-steps", "2"]
        argv += ["--seeds", "1", "--layers", "6", "--quality-every", "1"]
        assert main([*argv, "--out", str(quality)]) == 0
    return training, quality


def _self_contained(html: str) -> None:
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None  # nothing loaded from a CDN
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js inlined


def test_training_reproduction_files_settings_and_verdicts(outputs):
    out, _ = outputs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == "training" and settings["dataset"] == "curves"
    assert settings["model"]["widths"] == [784, 400, 200, 100, 50, 25, 6]
    assert (settings["n_train"], settings["n_test"], settings["seeds"]) == (256, 64, [1, 2])
    assert settings["batch_size"] == 128 and settings["steps"] == 3
    opt = settings["optimizer_settings"]
    assert (opt["t_cov"], opt["t_inv"], opt["ema"], opt["kl_clip"]) == (100, 100, 0.95, 0.01)
    assert (opt["momentum"], opt["weight_decay"], opt["fisher_batch"]) == (0.9, 1e-3, 32)
    assert settings["optimizers"]["sgd"]["lr"] == 1e-3  # the curves preset's default
    assert settings["init"] == "xavier_uniform"  # the authors' initialisation, no deviation
    assert (opt["ema_mode"]) == "factors"
    deviations = " ".join(settings["deviations"])
    for word in ("subset", "--max-steps", "20 %"):
        assert word in deviations
    assert "Xavier" not in deviations and "He-normal" not in deviations
    assert settings["command"].endswith("--out curves-training")  # no server path
    assert str(out.parent) not in (out / "settings.json").read_text()
    assert {(r["optimizer"], r["seed"]) for r in settings["runs"]} == {
        (o, s) for o in ("sgd", "kfac", "kpsvd") for s in (1, 2)
    }

    df = pd.read_csv(out / "results.csv")
    assert list(df.columns[:8]) == [
        "optimizer",
        "seed",
        "status",
        "step",
        "epoch",
        "wall_time_s",
        "train_loss",
        "test_loss",
    ]
    assert len(df) == 3 * 2 * 3 and (df.status == "finished").all()
    first = df[df.step == 0].groupby("seed").train_loss.nunique()
    assert (first == 1).all()  # per seed every optimizer starts from the same parameters

    verdicts = pd.read_csv(out / "verdicts.csv")
    assert len(verdicts) == 3 * 2  # kpsvd against kfac, adam, sgd; equal epochs and time
    assert set(verdicts.criterion) == {"equal epochs", "equal wall time"}
    adam = verdicts[verdicts.claim == "kpsvd trains faster than adam"]
    assert (adam.verdict == "not testable here").all()
    assert adam.detail.str.contains("adam was not run").all()
    assert set(verdicts.verdict) <= {"reproduced", "not reproduced", "not testable here"}

    html = (out / "report.html").read_text()
    _self_contained(html)
    assert "Verdicts" in html and "Xavier-uniform" in html and "wall time" in html


def test_quality_reproduction_tracks_every_method(outputs):
    _, out = outputs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["quality"]["layers"] == [{"number": 6, "name": "encoder.linear6"}]
    assert settings["quality"]["fisher_batch"] == 256  # the paper's CURVES Fisher batch
    df = pd.read_csv(out / "results.csv")
    assert (df.layer == "encoder.linear6").all() and df.step.tolist() == [0, 1]
    for m in METHODS:
        assert df[f"rel_error_{m}"].notna().all() and df[f"spectrum_error_{m}"].notna().all()
    # Eckart–Young: the best Kronecker product (sum) is at least as close as KFAC's
    for m in ("kpsvd", "deflation", "lanczos", "kfac_corrected"):
        assert (df[f"rel_error_{m}"] <= df.rel_error_kfac + 1e-9).all()
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert len(verdicts) == 4 * 2
    frob = verdicts[verdicts.claim.str.contains("Frobenius")]
    assert (frob.verdict == "reproduced").all()
    _self_contained((out / "report.html").read_text())


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--experiment", "speed", "--dataset", "curves"], "invalid choice: 'speed'"),
        (["--experiment", "training", "--dataset", "digits"], "invalid choice: 'digits'"),
        (["--experiment", "training", "--dataset", "curves", "--seeds", "a,b"], "--seeds"),
        (["--experiment", "training", "--dataset", "curves", "--seeds", "1,1"], "seeds must"),
        (
            ["--experiment", "training", "--dataset", "curves", "--optimizers", "kfac,foo"],
            "unknown optimizer(s) foo",
        ),
        (
            ["--experiment", "quality", "--dataset", "curves", "--optimizers", "kfac,adam"],
            "one optimizer",
        ),
        (["--experiment", "quality", "--dataset", "curves", "--layers", "13"], "unknown layer"),
        (["--experiment", "training", "--dataset", "curves", "--n-train", "0"], "n-train"),
        (
            ["--experiment", "training", "--dataset", "curves", "--optimizers", "kfac"]
            + ["--lrs", "adam=0.1"],
            "not run here",
        ),
        (["--experiment", "training", "--dataset", "mnist"], "--data-path"),
        (
            ["--experiment", "training", "--dataset", "curves", "--layers", "5"],
            "quality experiment only",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", *argv, "--n-test", "8", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m core reproduce: error: ") and match in last, last
    assert "Traceback" not in err


def test_spec_ema_mode_reaches_the_optimizer_and_is_checked():
    spec = ReproduceSpec("training", "curves", optimizers=("kpsvd",), ema_mode="fisher")
    sched = {"batch_size": 128, "steps": 10, "eval_every": 5, "quality_every": 5}
    assert spec.run_config("kpsvd", sched, seed=1).optimizer.ema_mode == "fisher"
    with pytest.raises(ValueError, match="unknown ema_mode 'fishr'"):
        ReproduceSpec("training", "curves", ema_mode="fishr")


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used without --download")


# -- the verdict rules on tables with a known answer ------------------------------------------


def _run(name, seed, losses, seconds_per_step, status="finished", per_epoch=5):
    n = len(losses)
    return pd.DataFrame(
        {
            "optimizer": name,
            "seed": seed,
            "status": status,
            "step": range(n),
            "epoch": [(k + 1) / per_epoch for k in range(n)],
            "wall_time_s": [seconds_per_step * (k + 1) for k in range(n)],
            "train_loss": losses,
            "test_loss": np.nan,
        }
    )


def test_final_loss_windows_by_epoch_and_by_time():
    df = _run("kfac", 1, [10.0 - k for k in range(10)], 1.0)
    assert final_losses(df, "kfac") == {1: pytest.approx(3.0)}  # steps 5..9: 5, 4, 3, 2, 1
    # by T = 3.5 s three updates are done: the loss now is record 3's; window records 0..3
    assert final_losses(df, "kfac", until=3.5) == {1: pytest.approx(8.5)}
    assert final_losses(df, "kfac", until=0.5) == {1: pytest.approx(10.0)}  # initial loss
    diverged = _run("kfac", 1, [10.0, 9.0, math.inf], 1.0, status="diverged")
    assert final_losses(diverged, "kfac") == {1: math.inf}
    assert final_losses(diverged, "kfac", until=1.5) == {1: pytest.approx(9.5)}
    assert final_losses(diverged, "kfac", until=2.5) == {1: math.inf}


def _table(kpsvd_final, kfac_final, *, kpsvd_speed=1.0, kfac_speed=1.0, seeds=(1, 2, 3)):
    """10 steps per run, 5 per epoch: first epoch at 20, last epoch at the given loss."""
    frames = []
    for i, seed in enumerate(seeds):
        for name, final, speed in (
            ("kpsvd", kpsvd_final[i], kpsvd_speed),
            ("kfac", kfac_final[i], kfac_speed),
        ):
            frames.append(_run(name, seed, [20.0] * 5 + [final] * 5, speed))
    return pd.concat(frames, ignore_index=True)


def _verdict(table, criterion, baseline="kfac"):
    rows = training_verdicts(table)
    row = rows[
        (rows.claim == f"kpsvd trains faster than {baseline}") & (rows.criterion == criterion)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_training_verdict_rule():
    clear = _table([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    row = _verdict(clear, "equal epochs")
    assert row.verdict == "reproduced" and row.method.startswith("1 ± 0.1 (n=3)")
    assert _verdict(clear, "equal epochs", "sgd").verdict == "not testable here"
    # within one sd of each other: not shown to be faster
    close = _table([1.0, 1.5, 0.5], [1.2, 1.7, 0.7])
    row = _verdict(close, "equal epochs")
    assert row.verdict == "not reproduced" and "within the seed spread" in row.detail
    worse = _table([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])
    row = _verdict(worse, "equal epochs")
    assert row.verdict == "not reproduced" and "kfac lower" in row.detail
    one_seed = _table([1.0], [2.0], seeds=(1,))
    assert _verdict(one_seed, "equal epochs").verdict == "not testable here"
    # kpsvd takes 10× longer per step: at kfac's finishing time T = 10 s it has done one
    # step and is still at 20, so it is faster per epoch but slower per second
    slow = _table([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], kpsvd_speed=10.0)
    assert _verdict(slow, "equal epochs").verdict == "reproduced"
    row = _verdict(slow, "equal wall time")
    assert row.verdict == "not reproduced" and "T = 10 s" in row.detail
    diverged = clear.copy()
    mask = (diverged.optimizer == "kfac") & (diverged.seed == 2)
    diverged.loc[mask, "status"] = "diverged"
    assert _verdict(diverged, "equal epochs").verdict == "reproduced"
    assert "kfac diverged" in _verdict(diverged, "equal epochs").detail


def test_quality_verdict_rule():
    kfac = np.full(10, 0.5)
    for lower, expected in ((9, "reproduced"), (8, "not reproduced")):
        kpsvd = np.where(np.arange(10) < lower, 0.4, 0.6)
        df = pd.DataFrame(
            {
                "layer": "encoder.linear5",
                "step": range(10),
                "rel_error_kfac": kfac,
                "rel_error_kpsvd": kpsvd,
            }
        )
        rows = quality_verdicts(df)
        row = rows[rows.claim.str.startswith("kpsvd") & rows.claim.str.contains("Frobenius")]
        assert row.iloc[0].verdict == expected and f"{lower}0%" in row.iloc[0].detail
        spectrum = rows[rows.claim.str.contains("spectrum")]
        assert (spectrum.verdict == "not testable here").all()


def test_mean_sd_figure_mean_and_band():
    df = pd.DataFrame(
        {
            "optimizer": "kfac",
            "seed": [1, 1, 2, 2],
            "step": [0, 1, 0, 1],
            "epoch": [0.5, 1.0, 0.5, 1.0],
            "wall_time_s": [1.0, 2.0, 3.0, 4.0],
            "train_loss": [1.0, 2.0, 3.0, math.inf],
        }
    )
    fig = mean_sd_figure(df, x="wall_time_s", y="train_loss", group="optimizer")
    band, line = fig.data
    assert list(line.x) == [2.0, 3.0] and list(line.y) == [2.0, 2.0]  # inf left out
    assert band.y[0] == pytest.approx(2.0 + math.sqrt(2.0))  # sd over seeds 1, 3 at step 0


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
        results = _table([1.0, 1.1], [2.0, 2.1], seeds=(1, 2)).to_csv(index=False)
    (folder / "results.csv").write_text(results)
    return folder


def _results_with(line: int, column: str, value: str) -> str:
    """A valid results.csv whose ``column`` on ``line`` (the header is line 1) holds ``value``."""
    df = _table([1.0, 1.1], [2.0, 2.1], seeds=(1, 2)).astype(object)
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
    for file in reproduce.REPORT_FILES:  # settings.json, results.csv, verdicts.csv, report.html
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
    monkeypatch.setattr(reproduce, "read_capped", lambda real, *a: opened.append(real) or b"")
    assert list_reports(root) == ["alias", "good", "good-link"]
    for name in ["linked-folder", "zeros", *(f"linked-{f}" for f in reproduce.REPORT_FILES)]:
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
        (",".join(reproduce._RESULT_COLUMNS) + "\n", "it holds no rows."),
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
    monkeypatch.setattr(reproduce, "_parse_results", _fail)
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
    parse = reproduce._parse_results

    def counted(*args):
        count[0] += 1
        time.sleep(0.2)
        return parse(*args)

    monkeypatch.setattr(reproduce, "_parse_results", counted)
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


def _write_idx(path: Path, images: np.ndarray) -> None:
    """``images`` (n, 28, 28) uint8 as an IDX image file (big-endian header, as MNIST's)."""
    n, rows, cols = images.shape
    header = np.array([2051, n, rows, cols], dtype=">u4").tobytes()
    path.write_bytes(header + images.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_dir(tmp_path):
    """A small synthetic MNIST-shaped dataset written as the original IDX image files."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 28, 28)))
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (16, 28, 28)))
    return folder


def test_quality_on_several_layers_trains_once_and_reruns_as_written(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    import hashlib
    import shlex

    from core.__main__ import build_parser
    from core.training.runner import TrainingRun

    made = []
    init = TrainingRun.__init__

    def counted(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "__init__", counted)
    # the estimate puts layer 1 (785 × 1000) over a 1 s budget and layers 4, 5 under it; the
    # test raises the budget to 60 s and scales the estimate with it, so that a slow machine's
    # measured times (the other skip rule, tested below) cannot skip layers 4 and 5
    estimate = reproduce.metric_cost_s
    assert estimate(64, 785, 1000) > 1 > estimate(64, 251, 30)
    monkeypatch.setattr(reproduce, "metric_cost_s", lambda *shape: 60 * estimate(*shape))
    out = tmp_path / "results" / "mnist-quality"
    argv = ["reproduce", "--experiment", "quality", "--dataset", "mnist"]
    argv += ["--data-path", str(mnist_dir), "--max-steps", "2", "--seeds", "1"]
    argv += ["--layers", "1,4,5", "--quality-every", "1", "--metric-budget-s", "60"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    assert len(made) == 1  # one training for all three layers
    df = pd.read_csv(out / "results.csv")
    for number, name in ((4, "encoder.linear4"), (5, "decoder.linear1")):  # measured
        rows = df[df.layer == name]
        assert rows.layer_number.eq(number).all() and rows.step.tolist() == [0, 1]
        for m in METHODS:
            assert rows[f"rel_error_{m}"].notna().all()
    err = capsys.readouterr().err
    assert "step 1: layer 5 (decoder.linear1" in err  # progress per checkpoint and layer
    # layer 1 is estimated over the budget: skipped, with a notice
    assert df[df.layer == "encoder.linear1"].filter(like="rel_error").isna().all().all()
    settings = json.loads((out / "settings.json").read_text())
    rerun = json.loads((out / "rerun.json").read_text())
    (notice,) = settings["quality"]["skipped"]
    assert (
        notice.startswith("layer 1 (encoder.linear1, m=64, da=785, dg=1000)")
        and "--metric-budget-s" in notice
    )
    assert "Skipped — layer 1" in (out / "report.html").read_text()
    assert rerun["data_path"] == str(mnist_dir)  # as given, not "mnist"
    assert rerun["data_files"] == settings["data_files"]
    assert str(tmp_path) not in (out / "settings.json").read_text()  # served: no server path
    files = {f["name"]: f for f in settings["data_files"]}
    train = mnist_dir / "train-images-idx3-ubyte"
    assert files[train.name]["size"] == train.stat().st_size
    assert files[train.name]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    # the recorded command parses back to the same settings
    words = shlex.split(rerun["command"])
    assert words[:3] == ["python", "-m", "core"]
    parser = build_parser()

    def parsed(a):
        return {k: v for k, v in vars(parser.parse_args(a)).items() if k not in ("func", "parser")}

    assert parsed(words[3:]) == parsed(argv)
    # the report names the data files, never the server path
    html = (out / "report.html").read_text()
    assert files[train.name]["sha256"] in html and str(tmp_path) not in html
    assert "To rerun: python -m core reproduce --experiment quality" in html


def test_a_measure_that_took_longer_than_the_budget_is_skipped_from_then_on(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    """The cost estimate is only a floor for the iterative methods: a measure that TOOK longer
    than --metric-budget-s is measured once, then skipped at later checkpoints, with a notice
    that names the layer, the method and its time."""
    monkeypatch.setattr(reproduce, "metric_cost_s", lambda m, da, dg: 0.0)  # never estimated over
    out = tmp_path / "slow"
    argv = ["reproduce", "--experiment", "quality", "--dataset", "mnist"]
    argv += ["--data-path", str(mnist_dir), "--max-steps", "3", "--seeds", "1"]
    argv += ["--layers", "4", "--quality-every", "1", "--metric-budget-s", "1e-9"]
    assert main([*argv, "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv").sort_values("step")
    for m in METHODS:  # measured at the first checkpoint only
        assert df[f"rel_error_{m}"].notna().tolist() == [True, False, False]
    skipped = json.loads((out / "settings.json").read_text())["quality"]["skipped"]
    assert len(skipped) == len(METHODS)
    for m in METHODS:
        (notice,) = [n for n in skipped if f": {m} took " in n]
        assert notice.startswith("layer 4 (encoder.linear4, m=") and "at step 0" in notice
    err = capsys.readouterr().err
    assert "step 0: layer 4 (encoder.linear4" in err and "step 1: layer 4" in err


def _check_budgeted_runs(settings: dict, df: pd.DataFrame, budget_s: float) -> None:
    """Every run trained its epochs and then stopped at the first record at or past the
    budget (or at its step cap, and then says so)."""
    steps = settings["steps"]
    cap = steps * BUDGET_STEP_FACTOR
    for run in settings["runs"]:
        part = df[(df.optimizer == run["optimizer"]) & (df.seed == run["seed"])]
        assert run["status"] == "finished" and len(part) >= steps
        after_epochs = part[part.step + 1 >= steps]
        assert (after_epochs.wall_time_s.iloc[:-1] < budget_s).all()
        if part.wall_time_s.iloc[-1] >= budget_s:
            assert "time budget" in run["message"]
        else:
            assert len(part) == cap and "step cap" in run["message"]


def test_time_budget_gives_every_optimizer_the_same_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "budget"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "1"]
    argv += ["--seeds", "1", "--optimizers", "sgd,kpsvd", "--time-budget-s", "0.4"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["time_budget_s"] == 0.4 and settings["time_budget"].startswith("given")
    df = pd.read_csv(out / "results.csv")
    _check_budgeted_runs(settings, df, 0.4)  # going on past the epochs: the "auto" test
    wall = pd.read_csv(out / "verdicts.csv").query("criterion == 'equal wall time'")
    assert len(wall) and wall.detail.str.contains(r"T = 0\.4 s \(the time budget\)").all()
    with pytest.raises(ValueError, match="training experiment only"):
        ReproduceSpec("quality", "curves", time_budget_s=1.0)
    with pytest.raises(ValueError, match="time-budget-s must be a finite number"):
        ReproduceSpec("training", "curves", time_budget_s=-1.0)
    assert ReproduceSpec("training", "curves").time_budget_s == "auto"
    assert ReproduceSpec("quality", "curves").time_budget_s is None


def test_auto_time_budget_is_the_slowest_first_seed_run(tmp_path, monkeypatch):
    """Default ``auto``: T is the longest time an optimizer needed for the epochs on seed 1;
    seed 1's faster runs are trained again to T, later seeds' runs all reach T; the
    equal-epochs verdict still reads only the epochs' steps."""
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "auto"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "2"]
    argv += ["--seeds", "1,2", "--optimizers", "sgd,kpsvd"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    budget = settings["time_budget_s"]
    assert settings["time_budget"].startswith("auto") and budget > 0
    df = pd.read_csv(out / "results.csv")
    steps = settings["steps"]
    first = df[df.seed == 1]
    ends = first.groupby("optimizer").wall_time_s.max()
    assert ends.min() >= budget  # the faster run went on to T
    # the slowest run kept its own records: its epochs alone took T
    slowest = first[first.wall_time_s == budget]
    assert len(slowest) == 1 and int(slowest.step.iloc[0]) == steps - 1
    _check_budgeted_runs(settings, df, budget)
    # equal epochs: the last epoch of the first `steps` records, whatever came after
    sgd = df[(df.optimizer == "sgd")].sort_values(["seed", "step"])
    per_epoch = settings["steps_per_epoch"]
    want = {
        seed: part[part.step < steps].train_loss.tail(per_epoch).mean()
        for seed, part in sgd.groupby("seed")
    }
    assert final_losses(df, "sgd", steps=steps) == pytest.approx(want, rel=1e-12)
    assert final_losses(df, "sgd") != pytest.approx(want, rel=1e-12)  # it went on


def test_time_budget_off_stops_at_the_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "off"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "1"]
    argv += ["--seeds", "1", "--optimizers", "sgd,kpsvd", "--time-budget-s", "off"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["time_budget_s"] is None and settings["time_budget"].startswith("off")
    df = pd.read_csv(out / "results.csv")
    assert (df.groupby("optimizer").size() == settings["steps"]).all()
    wall = pd.read_csv(out / "verdicts.csv").query("criterion == 'equal wall time'")
    assert wall.detail.str.contains("the shortest run's time").all()
    with pytest.raises(SystemExit):
        main([*argv[:-1], "soon", "--out", str(tmp_path / "bad")])


def test_kfac_error_above_one_is_genuine_and_reported():
    """Inputs and output gradients whose sizes anti-correlate across samples: A ⊗ G pairs a
    large ā with another sample's large g, so it overshoots F; a dense float64 block agrees."""
    import torch

    from core.engine.fisher import LayerFisher
    from core.engine.methods import approximate

    rng = np.random.default_rng(3)
    scale = np.array([10.0, 0.1, 10.0, 0.1])[:, None]
    a = torch.tensor(rng.standard_normal((4, 3)) * scale)
    g = torch.tensor(rng.standard_normal((4, 2)) / scale)
    an, gn = a.numpy(), g.numpy()
    dense = sum(np.kron(np.outer(x, x), np.outer(y, y)) for x, y in zip(an, gn)) / 4
    kfac = np.kron(an.T @ an / 4, gn.T @ gn / 4)
    expected = np.linalg.norm(dense - kfac) / np.linalg.norm(dense)
    measured = LayerFisher(a, g).relative_error(approximate("kfac", a, g))
    assert expected > 1 and measured == pytest.approx(expected, rel=1e-9)
    df = pd.DataFrame(
        {"layer": ["l", "l", "m"], "step": [0, 5, 0], "rel_error_kfac": [0.4, measured, 0.9]}
    )
    (note,) = reproduce.overshoot_notes(df)
    assert note.startswith(
        "KFAC's A ⊗ G overshoots F in scale here (error > 1): layer l, step(s) 5"
    )


def test_per_layer_claims_say_where_each_claim_holds():
    df = pd.DataFrame(
        {
            "layer": ["enc"] * 4 + ["dec"] * 4,
            "step": [0, 25, 50, 75] * 2,
            "rel_error_kfac": [0.5] * 8,
            "rel_error_kpsvd": [0.4, 0.4, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6],
        }
    )
    table = reproduce.per_layer_claims(df).set_index("claim")
    row = table.loc["kpsvd approximates F better than kfac (relative Frobenius error)"]
    assert row["enc"] == "holds: 0.4 vs kfac 0.5, lower at 100%"
    assert row["dec"] == "does not hold: 0.55 vs kfac 0.5, lower at 25% (not at step 25, 50, 75)"
