"""Tests of the command line ``python -m core {train,compare,quality}`` (in-process, tiny runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest

from core.__main__ import main

TINY = ["--dataset", "digits", "--widths", "64-6-3", "--batch-size", "64", "--no-progress"]


def test_train_writes_metrics_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--optimizer", "kfac", "--steps", "6", "--seed", "1", "--out"]
    code = main([*args, str(out), "--t-cov", "2", "--kl-clip", "none", "--damping", "0.3"])
    assert code == 0
    df = pd.read_csv(out / "metrics.csv")
    assert list(df.columns[:6]) == [
        "optimizer",
        "step",
        "epoch",
        "wall_time_s",
        "train_loss",
        "test_loss",
    ]
    assert len(df) == 6 and (df.optimizer == "kfac").all()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "finished"
    assert cfg["config"]["seed"] == 1 and cfg["config"]["widths"] == [64, 6, 3]
    assert cfg["config"]["optimizer"]["t_cov"] == 2
    assert cfg["config"]["optimizer"]["kl_clip"] is None
    assert "finished" in capsys.readouterr().out


def test_train_by_epochs_and_seed_reproducibility(tmp_path):
    dfs = []
    for name in ("a", "b"):
        args = ["train", *TINY, "--optimizer", "adam", "--epochs", "0.5", "--seed", "3"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        dfs.append(pd.read_csv(tmp_path / name / "metrics.csv").drop(columns="wall_time_s"))
    assert len(dfs[0]) == 12  # 1,498 digits // 64 = 23 steps per epoch, × 0.5
    pd.testing.assert_frame_equal(dfs[0], dfs[1])


def test_compare_writes_one_csv_and_an_offline_html_report(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--optimizers", "adam,kfac,kpsvd", "--steps", "5"]
    code = main([*args, "--lrs", "adam=0.01,kfac=0.2", "--out", str(out)])
    assert code == 0
    df = pd.read_csv(out / "metrics.csv")
    assert set(df.optimizer) == {"adam", "kfac", "kpsvd"}
    assert df[df.step == 0].train_loss.nunique() == 1  # same data and initialisation
    cfg = json.loads((out / "config.json").read_text())
    lrs = {c["optimizer"]["name"]: c["optimizer"]["lr"] for c in cfg["configs"]}
    assert lrs["adam"] == 0.01 and lrs["kfac"] == 0.2
    html = (out / "report.html").read_text()
    assert html.count("<div id=") >= 2  # loss vs step and vs wall time
    assert "wall time" in html
    # plotly.js is inlined: no script is loaded from a CDN
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None
    assert "Plotly" in html and len(html) > 1_000_000


def test_quality_writes_error_table_and_report(tmp_path):
    out = tmp_path / "q"
    args = ["quality", *TINY, "--layer", "encoder.linear2", "--steps", "5", "--quality-every"]
    assert main([*args, "2", "--methods", "kfac,kpsvd,kfac_corrected", "--out", str(out)]) == 0
    table = pd.read_csv(out / "quality.csv")
    assert table.step.tolist() == [0, 2, 4]
    for m in ("kfac", "kpsvd", "kfac_corrected"):
        assert f"rel_error_{m}" in table and f"spectrum_error_{m}" in table
    assert (table.rel_error_kpsvd <= table.rel_error_kfac + 1e-9).all()
    assert "relative Frobenius error" in (out / "report.html").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["layer"], cfg["layer_number"]) == ("encoder.linear2", 2)
    assert "layer 2, encoder.linear2" in (out / "report.html").read_text()
    # a layer may also be given by its number, counted from 1 as the names count
    for number, name in (("4", "decoder.linear2"),):
        args[args.index("--layer") + 1] = number
        assert main([*args, "2", "--methods", "kfac", "--out", str(tmp_path / number)]) == 0
        cfg = json.loads((tmp_path / number / "config.json").read_text())
        assert (cfg["layer"], cfg["layer_number"]) == (name, int(number))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", *TINY, "--optimizer", "rmsprop", "--steps", "2"], "unknown optimizer"),
        (["train", "--dataset", "cifar", "--optimizer", "kfac", "--steps", "2"], "unknown dataset"),
        (["train", *TINY, "--optimizer", "kfac", "--lr", "-1", "--steps", "2"], "learning rate"),
        (["train", *TINY, "--optimizer", "kfac", "--damping", "0", "--steps", "2"], "damping"),
        (["quality", *TINY, "--layer", "enc.9", "--steps", "2"], "unknown layer 'enc.9'"),
        (["quality", *TINY, "--layer", "0", "--steps", "2"], "1-4 or a name: 1 encoder.linear1"),
        (["quality", *TINY, "--layer", "5", "--steps", "2"], "unknown layer '5'"),
        (["train", *TINY, "--optimizer", "kfac", "--steps", "0"], "steps"),
        (["train", *TINY, "--optimizer", "kfac", "--steps", "2", "--download"], "built in"),
        (["train", *TINY, "--optimizer", "kfac", "--steps", "2", "--data-path", "."], "reads no"),
        (["train", "--dataset", "mnist", "--optimizer", "kfac", "--steps", "2"], "--data-path"),
        (
            ["train", "--dataset", "faces", "--optimizer", "kfac", "--steps", "2"]
            + ["--data-path", "/nonexistent/faces.mat"],
            "argument --data-path: /nonexistent/faces.mat not found",
        ),
        (
            ["train", "--dataset", "mnist", "--optimizer", "kfac", "--steps", "2"]
            + ["--data-path", ".", "--download"],
            "either --data-path or --download",
        ),
        (["compare", *TINY, "--optimizers", "kfac,foo", "--steps", "2"], "unknown optimizer"),
    ],
)
def test_bad_usage_exits_2_with_a_message(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))  # nothing downloaded
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage line, then one line of error
    assert last.startswith("python -m core ") and ": error: " in last and match in last
    assert "Traceback" not in err and "path=" not in err


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used without --download")


def test_unusable_out_and_data_files_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    garbage = tmp_path / "mnist.npz"
    garbage.write_bytes(b"not a zip")
    base = ["train", *TINY, "--optimizer", "kfac", "--steps", "2"]
    mnist = ["train", "--dataset", "mnist", "--optimizer", "kfac", "--steps", "2"]
    for argv, match in [
        ([*base, "--out", str(a_file / "sub")], "argument --out: cannot create"),
        ([*base, "--out", "/proc/kronoscope/out"], "argument --out: cannot create"),
        ([*mnist, "--data-path", str(garbage), "--out", str(tmp_path / "o")], "cannot be read"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("python -m core train: error: ") and match in last
        assert "Traceback" not in err


def test_download_flag_fetches_once_then_runs_offline(tmp_path, monkeypatch, capsys):
    from tests.training.test_download import _curves_mat, _idx_gz, _labels_gz, _Server

    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    server = _Server()
    try:
        server.files["digs3pts_1.mat"] = _curves_mat()
        server.files["train-images-idx3-ubyte.gz"] = _idx_gz(8)
        server.files["t10k-images-idx3-ubyte.gz"] = _idx_gz(4)
        server.files["train-labels-idx1-ubyte.gz"] = _labels_gz(8)
        server.files["t10k-labels-idx1-ubyte.gz"] = _labels_gz(4)
        monkeypatch.setenv("KRONOSCOPE_DOWNLOAD_BASE_URL", server.url)
        small = ["--widths", "784-6-3", "--batch-size", "4", "--no-progress", "--steps", "2"]
        for dataset in ("curves", "mnist"):
            argv = ["train", "--dataset", dataset, "--optimizer", "adam", *small, "--download"]
            assert main([*argv, "--out", str(tmp_path / dataset)]) == 0
        assert len(server.requests) == 5  # CURVES' file, MNIST's images and labels
    finally:
        server.close()
    cfg = json.loads((tmp_path / "curves" / "config.json").read_text())
    assert cfg["config"]["data_path"].endswith("digs3pts_1.mat")
    # later runs use the cache (hash checked) and never the network
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    argv = ["train", "--dataset", "mnist", "--optimizer", "adam", *small]
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    cached = tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes() + b"x")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "changed")])
    assert exc.value.code == 1 and "SHA-256" in capsys.readouterr().err


def test_divergence_exit_code_and_files(tmp_path, capsys):
    out = tmp_path / "div"
    args = ["train", *TINY, "--optimizer", "sgd", "--lr", "1e4", "--steps", "30"]
    assert main([*args, "--out", str(out)]) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "diverged" and "step" in cfg["message"]
    assert len(pd.read_csv(out / "metrics.csv")) >= 1
    assert "diverged" in capsys.readouterr().err


def test_module_entry_point_help():
    argv = [sys.executable, "-m", "core", "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "usage: python -m core" in done.stdout and "compare" in done.stdout


@pytest.mark.parametrize("sub", ["train", "compare", "quality"])
def test_subcommand_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: python -m core {sub}" in text
    assert "--out" in text and "--seed" in text and "--t-cov" in text


# -- the CLI and the app: the same settings, the same run ----------------------------------------


def _as_json(config) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


def _started(page: str, **link):
    """The RunConfigs the app's ``page`` starts for the settings in ``link`` (its URL)."""
    from tests.webapp.test_app import app, assert_clean

    at = app(page, **link)
    at.button(key=f"{page}.start").click().run()
    assert_clean(at)
    return [run.config for run in at.session_state[f"runs.{page}"].runs]


@pytest.mark.usefixtures("app_env")
def test_the_cli_and_the_race_page_make_the_same_runs(tmp_path):
    """Defaults (per-preset lr and damping, the optimizer's options) and explicit values."""
    common = ["--dataset", "digits", "--preset", "digits", "--seed", "4", "--steps", "3"]
    common += ["--batch-size", "64", "--eval-every", "2", "--no-progress"]
    argv = ["compare", *common, "--optimizers", "sgd,kfac", "--lrs", "kfac=0.2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    cli = json.loads((tmp_path / "config.json").read_text())["configs"]
    app = _started("race", dataset="digits", preset="digits", seed="4", steps="3", batch="64",
                   eval="2", opts="sgd,kfac", **{"lr.kfac": "0.2"})  # fmt: skip
    assert [_as_json(c) for c in app] == cli
    assert app[0].optimizer.lr == 0.01 and app[1].optimizer.damping == 0.1  # the defaults


@pytest.mark.usefixtures("app_env")
def test_the_cli_and_the_training_page_make_the_same_run(tmp_path):
    argv = ["quality", "--dataset", "digits", "--preset", "digits", "--seed", "2", "--steps", "3"]
    argv += ["--batch-size", "32", "--eval-every", "5", "--quality-every", "5", "--no-progress"]
    argv += ["--optimizer", "adam", "--lr", "0.002", "--momentum", "0.8", "--fisher-batch", "128"]
    argv += ["--layer", "encoder.linear2", "--methods", "kfac,kpsvd"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    cli = json.loads((tmp_path / "config.json").read_text())["config"]
    link = {"lr.adam": "0.002", "momentum.adam": "0.8"}
    (app,) = _started("training", dataset="digits", preset="digits", seed="2", steps="3",
                      batch="32", every="5", m="128", opt="adam", layer="encoder.linear2",
                      methods="kfac,kpsvd", **link)  # fmt: skip
    assert _as_json(app) == cli
