"""``reproduce --experiment step --quick`` (issue 21): the written files and the numbers in them.

Checked against the study's own records, independently of core.paper.step_report: the rank
correlation of the Frobenius error is recomputed here with scipy from the records and the
training runs; the exact block's measures are perfect; EKFAC's step errors are the same in both
damping modes (it damps exactly either way) while KFAC's differ; the KFAC exact-damping table is
the mean of its runs; every verdict follows from its table by the stated rule.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from core.__main__ import main
from core.paper.studies import StudyOptions
from core.paper.study_step import QUICK_METHODS, RHO_FAILS, RHO_HOLDS, run


def _rule(rho: float) -> str:
    return "holds" if rho >= RHO_HOLDS else "does not hold" if rho < RHO_FAILS else "mixed"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("step") / "step"
    argv = ["reproduce", "--experiment", "step", "--dataset", "curves-small"]
    assert main([*argv, "--quick", "--seeds", "1,2", "--out", str(out)]) == 0
    return out


def test_settings_and_records(out):
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == "step" and settings["options"]["quick"] is True
    assert settings["preset"] == "curves-small" and settings["methods"] == list(QUICK_METHODS)
    assert settings["kfac_tuned_damping"] in settings["train_dampings"]
    rec = pd.read_csv(out / "records_one_row_per_checkpoint_layer_and_method.csv")
    assert set(rec["method"]) == set(QUICK_METHODS)
    assert rec["layer"].nunique() == 6  # curves-small's six linear layers
    exact = rec[rec["method"] == "exact"]
    assert np.allclose(exact[["relative_error", "step_error", "exact_step_error"]], 0, atol=1e-8)
    assert np.allclose(exact["step_cosine"], 1, atol=1e-8)
    approx = rec[rec["method"] != "exact"]
    assert (approx["relative_error"] > 0).all() and (approx["step_cosine"].abs() <= 1 + 1e-9).all()
    for lam in settings["sweep_dampings"]:
        ekfac = rec[rec["method"] == "ekfac"]
        kfac = rec[rec["method"] == "kfac"]
        assert np.allclose(ekfac[f"error_factored@{lam:g}"], ekfac[f"error_exact@{lam:g}"])
        assert not np.allclose(kfac[f"error_factored@{lam:g}"], kfac[f"error_exact@{lam:g}"])


def test_frobenius_correlation_recomputed_and_verdicts_follow(out):
    rec = pd.read_csv(out / "records_one_row_per_checkpoint_layer_and_method.csv")
    runs = pd.read_csv(out / "training_runs_one_row_per_method_damping_mode_and_seed.csv")
    factored = runs[runs["damping_mode"] == "factored"]
    tuned = rec.groupby("method")["damping"].first()
    loss = (
        factored[factored["damping"] == factored["method"].map(tuned)]
        .groupby("method")["train_loss"]
        .mean()
    )
    rhos = []
    for _, group in rec[rec["method"] != "exact"].groupby(["seed", "step", "layer"]):
        g = group.set_index("method")["relative_error"]
        rhos.append(spearmanr(g, loss.reindex(g.index)).statistic)
    results = pd.read_csv(out / "results.csv").set_index("measure")
    frob = results.loc["relative Frobenius error"]
    assert frob["rho approximations"] == pytest.approx(float(np.mean(rhos)))
    assert frob["n approximations"] == len(rhos)
    assert results[["rho approximations", "rho with exact"]].abs().le(1 + 1e-9).all().all()
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert verdicts.iloc[0]["verdict"] == _rule(frob["rho approximations"])
    step = results.loc["step error, optimizer's damping", "rho approximations"]
    assert verdicts.iloc[1]["verdict"] == _rule(step)
    # KFAC exact vs factored: the table is the runs' mean, exact damping changed the training
    table = pd.read_csv(out / "kfac_with_factored_vs_exact_damping_at_the_tuned_lambda.csv")
    table = table.set_index("damping_mode")
    lam = table.loc["exact", "damping"]
    kfac = runs[(runs["method"] == "kfac") & (runs["damping"] == lam)]
    by_mode = kfac.groupby("damping_mode")["train_loss"]
    for mode in ("factored", "exact"):
        assert table.loc[mode, "train_loss_mean"] == pytest.approx(by_mode.mean()[mode])
        assert table.loc[mode, "train_loss_sd"] == pytest.approx(by_mode.std()[mode])
    assert by_mode.mean()["exact"] != pytest.approx(by_mode.mean()["factored"], rel=1e-6)
    gap = table.loc["factored", "train_loss_mean"] - table.loc["exact", "train_loss_mean"]
    spread = table["train_loss_sd"].sum()
    want = "holds" if gap > spread else "does not hold" if gap <= 0 else "mixed"
    assert verdicts.iloc[2]["verdict"] == want
    assert "What predicts training speed" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dampings": {"*": 0.1}}, "does not take --dampings"),
        ({"optimizers": ("kpsvd", "ekfac", "shampoo")}, "must name kfac"),
        ({"optimizers": ("kfac", "nope", "ekfac")}, "unknown method"),
        ({"preset": "mnist"}, "give --dataset mnist"),
    ],
)
def test_bad_options_are_refused(changes, match):
    options = StudyOptions("step", "curves-small", quick=True, **changes)
    with pytest.raises(ValueError, match=match):
        run(options, log=lambda _t: None)
