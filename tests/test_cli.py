"""Tests of the command line ``python -m core {train,compare,quality}`` (in-process, tiny runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

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
    # a layer may also be given by its index
    args[args.index("encoder.linear2")] = "-1"
    assert main([*args, "2", "--methods", "kfac", "--out", str(tmp_path / "q2")]) == 0
    assert json.loads((tmp_path / "q2" / "config.json").read_text())["layer"] == "decoder.linear2"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", *TINY, "--optimizer", "rmsprop", "--steps", "2"], "unknown optimizer"),
        (["train", "--dataset", "cifar", "--optimizer", "kfac", "--steps", "2"], "unknown dataset"),
        (["train", *TINY, "--optimizer", "kfac", "--lr", "-1", "--steps", "2"], "learning rate"),
        (["train", *TINY, "--optimizer", "kfac", "--damping", "0", "--steps", "2"], "damping"),
        (["quality", *TINY, "--layer", "enc.9", "--steps", "2"], "unknown layer 'enc.9'"),
        (["compare", *TINY, "--optimizers", "kfac,foo", "--steps", "2"], "unknown optimizer"),
    ],
)
def test_bad_usage_exits_2_with_a_message(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


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
