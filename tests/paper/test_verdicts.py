"""The verdict rules on tables whose answer is known: final-loss windows, the training and
quality rules, the per-layer claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.paper.verdicts import (
    final_losses,
    per_layer_claims,
    quality_verdicts,
    training_verdicts,
)
from tests.paper.reproductions import run_records, two_runs_table

# -- the verdict rules on tables with a known answer ------------------------------------------


def test_final_loss_windows_by_epoch_and_by_time():
    df = run_records("kfac", 1, [10.0 - k for k in range(10)], 1.0)
    assert final_losses(df, "kfac") == {1: pytest.approx(3.0)}  # steps 5..9: 5, 4, 3, 2, 1
    # by T = 3.5 s three updates are done: the loss now is record 3's; window records 0..3
    assert final_losses(df, "kfac", until=3.5) == {1: pytest.approx(8.5)}
    assert final_losses(df, "kfac", until=0.5) == {1: pytest.approx(10.0)}  # initial loss
    diverged = run_records("kfac", 1, [10.0, 9.0, math.inf], 1.0, status="diverged")
    assert final_losses(diverged, "kfac") == {1: math.inf}
    assert final_losses(diverged, "kfac", until=1.5) == {1: pytest.approx(9.5)}
    assert final_losses(diverged, "kfac", until=2.5) == {1: math.inf}


def _verdict(table, criterion, baseline="kfac"):
    rows = training_verdicts(table)
    row = rows[
        (rows.claim == f"kpsvd trains faster than {baseline}") & (rows.criterion == criterion)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_training_verdict_rule():
    clear = two_runs_table([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    row = _verdict(clear, "equal epochs")
    assert row.verdict == "reproduced" and row.method.startswith("1 ± 0.1 (n=3)")
    assert _verdict(clear, "equal epochs", "sgd").verdict == "not testable here"
    # within one sd of each other: not shown to be faster
    close = two_runs_table([1.0, 1.5, 0.5], [1.2, 1.7, 0.7])
    row = _verdict(close, "equal epochs")
    assert row.verdict == "not reproduced" and "within the seed spread" in row.detail
    worse = two_runs_table([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])
    row = _verdict(worse, "equal epochs")
    assert row.verdict == "not reproduced" and "kfac lower" in row.detail
    one_seed = two_runs_table([1.0], [2.0], seeds=(1,))
    assert _verdict(one_seed, "equal epochs").verdict == "not testable here"
    # kpsvd takes 10× longer per step: at kfac's finishing time T = 10 s it has done one
    # step and is still at 20, so it is faster per epoch but slower per second
    slow = two_runs_table([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], kpsvd_speed=10.0)
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


def test_per_layer_claims_say_where_each_claim_holds():
    df = pd.DataFrame(
        {
            "layer": ["enc"] * 4 + ["dec"] * 4,
            "step": [0, 25, 50, 75] * 2,
            "rel_error_kfac": [0.5] * 8,
            "rel_error_kpsvd": [0.4, 0.4, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6],
        }
    )
    table = per_layer_claims(df).set_index("claim")
    row = table.loc["kpsvd approximates F better than kfac (relative Frobenius error)"]
    assert row["enc"] == "holds: 0.4 vs kfac 0.5, lower at 100%"
    assert row["dec"] == "does not hold: 0.55 vs kfac 0.5, lower at 25% (not at step 25, 50, 75)"
