"""What a report shows: the mean ± sd figure, KFAC's scale overshoot noted."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.paper import contents
from core.views.report import mean_sd_figure


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
    (note,) = contents.overshoot_notes(df)
    assert note.startswith(
        "KFAC's A ⊗ G overshoots F in scale here (error > 1): layer l, step(s) 5"
    )
