"""Stated answers for the views (issue 22): heatmap colour scales whose largest magnitude is a
negative entry, and what a tie says in ``reproduce``'s training and quality verdicts.

Scales are compared with the value computed here from the matrices; verdicts with data built
so that the rule's two sides are exactly equal (sd with ddof = 1 of {1, 2, 3} is exactly 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.views.figures import block_heatmaps, factor_heatmaps
from core.views.reproduce import quality_verdicts, training_verdicts

# -- (h) heatmaps: the colour range is symmetric around 0 and reaches the largest |entry| -------


def _block(seed: int, n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.0, 1.0, (n, n))
    return m + m.T


def test_block_heatmaps_scale_reaches_a_negative_extreme():
    exact = _block(0)
    approx = _block(1)
    exact[1, 2] = exact[2, 1] = -9.0  # the largest magnitude, negative
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac")
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-9.0, 9.0, 0.0)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, float), exact, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[1].z, float), approx, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[2].z, float), approx - exact, rtol=1e-6)


def test_block_heatmaps_scale_when_the_approximation_holds_the_extreme():
    exact = _block(2)
    approx = _block(3)
    approx[0, 0] = -4.5
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac")
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-4.5, 4.5)


def test_block_heatmaps_saturated_scale_is_a_quantile_of_magnitudes():
    exact = -_block(4)  # every entry negative
    approx = _block(5)
    fig = block_heatmaps(exact, approx, [f"c{i}" for i in range(4)], method="kfac", saturate=0.5)
    want = float(np.quantile(np.abs(np.concatenate([exact.ravel(), approx.ravel()])), 0.5))
    assert fig.layout.coloraxis.cmax == pytest.approx(want, rel=1e-12)
    assert fig.layout.coloraxis.cmin == pytest.approx(-want, rel=1e-12)


def test_factor_heatmaps_each_on_its_own_symmetric_scale():
    neg = np.array([[1.0, -7.0], [-7.0, 2.0]])  # extreme negative
    pos = np.array([[0.5, 0.1], [0.1, 3.0]])
    fig = factor_heatmaps([("R", neg), ("S", pos)])
    assert (fig.data[0].zmin, fig.data[0].zmax, fig.data[0].zmid) == (-7.0, 7.0, 0.0)
    assert (fig.data[1].zmin, fig.data[1].zmax) == (-3.0, 3.0)


# -- (j) verdict ties in reproduce -----------------------------------------------------------


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
