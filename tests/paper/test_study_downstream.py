"""``python -m core reproduce --experiment compress|prune`` (core/paper/study_downstream.py):
the quick study through the CLI into a folder, its files, and the numbers behind its verdicts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.__main__ import main
from core.paper.studies import StudyOptions, run_study
from core.paper.study_downstream import spearman


@pytest.fixture(scope="module", params=["compress", "prune"])
def study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    argv = ["reproduce", "--experiment", request.param, "--dataset", "digits", "--quick"]
    assert main([*argv, "--out", str(out)]) == 0
    return request.param, out


def test_files_and_settings(study):
    job, out = study
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == job and settings["training_optimizer"] == "kfac"
    assert settings["preset"] == "digits" and settings["quick"] is True
    assert settings["layers"] == ["decoder.linear2"]  # the largest with ≤ 600 weights
    html = (out / "report.html").read_text()
    assert "QUICK run" in html and "Spearman" in html
    x_name = "rank_k" if job == "compress" else "sparsity"
    assert (out / f"mean_loss_increase_by_method_and_{x_name}.csv").exists()
    assert (out / "rank_correlation_per_case.csv").exists()


def test_numbers(study):
    job, out = study
    table = pd.read_csv(out / "results.csv")
    baselines = {"svd", "fwsvd"} if job == "compress" else {"magnitude"}
    assert baselines | {"exact", "kfac", "kpsvd", "eva", "shampoo"} <= set(table["method"])
    # the measured increase is the loss with the new W minus the trained one's
    assert np.allclose(table["loss"] - table["base_loss"], table["loss_increase"], atol=1e-5)
    # exact: error 0; registry methods: an error in (0, 1]; baselines: none
    err = table.groupby("method")["relative_error"].first()
    assert err["exact"] == 0.0 and err[list(baselines)].isna().all()
    assert ((err.drop(["exact", *baselines]) > 0) & (err.drop(["exact", *baselines]) <= 1)).all()
    # the exact block's solution minimises the damped exact quadratic: its ½ ΔWᵀFΔW is never
    # (beyond the damping's share) above the curvature-free baseline's
    base = "svd" if job == "compress" else "magnitude"
    by = table.set_index(["method", "x"])["fisher_increase"]
    assert (by["exact"] <= by[base] * 1.01 + 1e-6).all()
    # more compression (smaller k) or more pruning never lowers the exact prediction
    steps = np.diff(by["exact"].to_numpy())
    assert (steps <= 1e-9).all() if job == "compress" else (steps >= -1e-9).all()
    if job == "compress":
        assert sorted(set(table["x"])) == [1.0, 2.0, 4.0]
    else:
        assert sorted(set(table["x"].round(2))) == [0.25, 0.5, 0.75]


def test_verdicts_follow_the_correlations(study):
    _job, out = study
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.columns) == ["claim", "criterion", "verdict", "detail"]
    cases = pd.read_csv(out / "rank_correlation_per_case.csv")
    table = pd.read_csv(out / "results.csv")
    for _, case in cases.iterrows():  # each ρ recomputed from the results table
        part = table[(table["x"] == case["x"]) & table["relative_error"].notna()]
        rho = spearman(part["relative_error"].to_numpy(), part["loss_increase"].to_numpy())
        assert rho == pytest.approx(case["spearman_rho"], nan_ok=True)
    mean = cases["spearman_rho"].mean()
    expected = (
        "holds"
        if mean >= 0.5 and (cases["spearman_rho"] > 0).mean() >= 2 / 3
        else ("does not hold" if mean <= 0 else "mixed")
    )
    assert verdicts["verdict"].iloc[0] == expected
    assert f"mean ρ = {mean:.2f}" in verdicts["detail"].iloc[0]


def test_spearman():
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 20, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1.0, 2, 3]), np.array([5.0, 5, 5])))
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 1, 2, 3])) == pytest.approx(
        pd.Series([1.0, 2, 3, 4]).corr(pd.Series([1.0, 1, 2, 3]), method="spearman")
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(dataset="nope"), "unknown dataset 'nope'; choose from curves"),
        (dict(dataset="digits", preset="nope"), "unknown preset 'nope'; choose from"),
        (dict(dataset="digits", preset="digits-cnn"), "is a classifier"),
        (dict(dataset="digits", optimizers=("adam",)), "trains with kfac only"),
        (dict(dataset="digits", layers=("99",)), "unknown layer '99' for --layers"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        run_study(StudyOptions(name="prune", quick=True, **options))
