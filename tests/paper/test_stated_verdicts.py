"""Stated answers for the paper reproductions' verdicts (issue 22): what a tie says in the
training and quality verdicts, with data built so that the rule's two sides are exactly equal
(sd with ddof = 1 of {1, 2, 3} is exactly 1).
"""

from __future__ import annotations

import pandas as pd
import pytest

from core.paper.verdicts import quality_verdicts, training_verdicts

# -- (j) verdict ties -----------------------------------------------------------


def _runs(losses: dict[str, list[float]], steps: int = 4, per_epoch: int = 2) -> pd.DataFrame:
    """Records of finished runs, one seed per loss; every record of a run has that loss."""
    rows = []
    for name, per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            for step in range(steps):
                rows.append(
                    {
                        "optimizer": name,
                        "seed": seed,
                        "status": "finished",
                        "step": step,
                        "epoch": (step + 1) / per_epoch,
                        "wall_time_s": 0.1 * (step + 1),
                        "train_loss": loss,
                    }
                )
    return pd.DataFrame(rows)


def _verdict(df: pd.DataFrame, claim: str) -> list[tuple[str, str]]:
    rows = df[df["claim"] == claim]
    assert len(rows) == 2, rows  # equal epochs and equal wall time
    return list(zip(rows["verdict"], rows["detail"], strict=True))


@pytest.mark.parametrize(
    ("method", "base"),
    [
        ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]),  # identical losses, no spread
        ([1.0, 2.0, 3.0], [3.0, 4.0, 5.0]),  # mean + sd of X = mean − sd of B = 3
        ([3.0, 4.0, 5.0], [1.0, 2.0, 3.0]),  # mean + sd of B = mean − sd of X = 3
    ],
)
def test_a_training_tie_is_within_the_seed_spread(method, base):
    df = training_verdicts(_runs({"kpsvd": method, "kfac": base}))
    for verdict, detail in _verdict(df, "kpsvd trains faster than kfac"):
        assert verdict == "not reproduced"
        assert detail.startswith("within the seed spread"), detail


def test_a_training_win_just_past_the_spread_is_reproduced():
    df = training_verdicts(_runs({"kpsvd": [1.0, 2.0, 3.0], "kfac": [3.25, 4.25, 5.25]}))
    for verdict, detail in _verdict(df, "kpsvd trains faster than kfac"):
        assert verdict == "reproduced", detail
        assert detail.startswith("kpsvd lower by 2.25"), detail
    df = training_verdicts(_runs({"kpsvd": [3.25, 4.25, 5.25], "kfac": [1.0, 2.0, 3.0]}))
    for verdict, detail in _verdict(df, "kpsvd trains faster than kfac"):
        assert verdict == "not reproduced" and detail.startswith("kfac lower by 2.25"), detail


def _quality(method: list[float], kfac: list[float]) -> pd.DataFrame:
    n = len(kfac)
    return pd.DataFrame(
        {
            "layer": ["enc.1"] * n,
            "step": list(range(n)),
            "seed": [0] * n,
            "rel_error_kpsvd": method,
            "rel_error_kfac": kfac,
            "spectrum_error_kpsvd": method,
            "spectrum_error_kfac": kfac,
        }
    )


def _qverdicts(df: pd.DataFrame) -> list[tuple[str, str]]:
    out = quality_verdicts(df)
    rows = out[out["claim"].str.startswith("kpsvd approximates F better than kfac")]
    assert len(rows) == 2, out  # relative and spectrum error
    return list(zip(rows["verdict"], rows["detail"], strict=True))


def test_a_quality_tie_is_not_lower():
    for verdict, detail in _qverdicts(_quality([0.5] * 10, [0.5] * 10)):
        assert verdict == "not reproduced" and detail == "kpsvd lower at 0% of the points"


@pytest.mark.parametrize(
    ("lower", "verdict"), [(10, "reproduced"), (9, "reproduced"), (8, "not reproduced")]
)
def test_quality_share_at_and_below_ninety_percent(lower, verdict):
    """9 of 10 points lower is exactly the 90 % the rule asks for; ties count as not lower."""
    method = [0.4] * lower + [0.5] * (10 - lower)
    for got, detail in _qverdicts(_quality(method, [0.5] * 10)):
        assert got == verdict, detail
        assert detail == f"kpsvd lower at {lower * 10}% of the points"
