"""``reproduce --experiment two_level --quick`` (issue 19): the written files and the numbers in
them (the study's verdict follows from its own table; the network-level errors are errors)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.__main__ import main
from core.paper.studies import StudyOptions
from core.paper.study_two_level import CONTROL, CONTROLLED, GAIN_THRESHOLD, run
from core.training.defaults import TWO_LEVEL_OPTIMIZERS


def test_quick_study_writes_consistent_numbers(tmp_path):
    out = tmp_path / "two_level"
    argv = ["reproduce", "--experiment", "two_level", "--dataset", "curves-small"]
    assert main([*argv, "--quick", "--seeds", "1,2", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == "two_level" and settings["options"]["quick"] is True
    assert settings["coarse_spaces"]["kfac_two_level"] == "kfac_direction"
    results = pd.read_csv(out / "results.csv").set_index("optimizer")
    assert set(results.index) == {"kfac", *TWO_LEVEL_OPTIMIZERS, "adam"}
    assert (results["runs"] == 2).all()
    runs = pd.read_csv(out / "runs_one_row_per_optimizer_and_seed.csv")
    n_opt = len(TWO_LEVEL_OPTIMIZERS) + 2
    assert len(runs) == 2 * n_opt and (runs["status"] == "finished").all()
    # the summary is the runs' mean, and the gain is relative to KFAC's mean
    mean = runs.groupby("optimizer")["final_train_loss"].mean()
    assert results["final_train_loss_mean"].to_dict() == pytest.approx(mean.to_dict())
    kfac = results.loc["kfac", "final_train_loss_mean"]
    gain = (kfac - results["final_train_loss_mean"]) / kfac
    assert results["gain_over_kfac"].to_dict() == pytest.approx(gain.to_dict())
    # the verdict follows from the table
    verdicts = pd.read_csv(out / "verdicts.csv")
    two = results.loc[[n for n in TWO_LEVEL_OPTIMIZERS if n != CONTROL]]  # the paper's variants
    best = two.loc[two["gain_over_kfac"].idxmax()]
    spread = 2 * max(best["final_train_loss_std"], results.loc["kfac", "final_train_loss_std"])
    diff = kfac - best["final_train_loss_mean"]
    gains = best["gain_over_kfac"] > GAIN_THRESHOLD and diff > spread
    assert verdicts.iloc[0]["verdict"] == ("does not hold" if gains else "holds")
    # network-level rows: every run's end and every seed's init; errors are errors
    net = pd.read_csv(out / "network_level_direction_errors_every_run.csv")
    assert set(net["checkpoint"]) == {"init", "end"}
    assert (net["relative_error"] > 0).all() and (net["cosine"].abs() <= 1 + 1e-9).all()
    assert (net["parameters"] == 30612).all()  # curves-small's whole network
    mean = net.groupby("direction")["relative_error"].mean()
    variants = {f"two_level:{v}" for v in settings["coarse_spaces"].values()}
    assert {"kfac", "exact_block", *variants} <= set(mean.index)
    closer = [mean[k] < mean["kfac"] for k in mean.index if k.startswith("two_level:")]
    want = "holds" if all(closer) else "mixed" if any(closer) else "does not hold"
    assert verdicts.iloc[1]["verdict"] == want
    # the control: the share of the Nicolaides gain that remains without cross-layer terms
    nic, ctl = results.loc[CONTROLLED, "gain_over_kfac"], results.loc[CONTROL, "gain_over_kfac"]
    want = "not measured" if not nic > 0 else "holds" if ctl / nic < 0.5 else "does not hold"
    assert verdicts.iloc[2]["verdict"] == want
    assert (out / "report.html").read_text().count("Two-level KFAC") >= 1


def test_the_study_refuses_a_comparison_without_kfac_or_two_level():
    for names in (("adam", "kfac_two_level"), ("kfac", "adam"), ("kfac", "nope")):
        options = StudyOptions("two_level", "curves-small", optimizers=names, quick=True)
        with pytest.raises(ValueError, match="optimizer"):
            run(options, log=lambda _t: None)
