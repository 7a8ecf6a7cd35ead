"""Shared by the reproduction tests: a tiny budget, and what a self-contained report holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.__main__ import main

# A subset of the generated CURVES-like set and a few steps of the paper's 784-…-6 network.
TINY = ["--dataset", "curves", "--n-train", "256", "--n-test", "64", "--no-progress"]


def self_contained(html: str) -> None:
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None  # nothing loaded from a CDN
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js inlined


def make_outputs(base: Path) -> tuple[Path, Path]:
    """One training and one quality reproduction under ``base`` (the caller sets
    ``KRONOSCOPE_CACHE_DIR``)."""
    training = base / "results" / "curves-training"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "2"]
    argv += ["--max-steps", "3", "--seeds", "1,2", "--optimizers", "sgd,kfac,kpsvd"]
    assert main([*argv, "--out", str(training)]) == 0
    quality = base / "results" / "curves-quality"
    argv = ["reproduce", "--experiment", "quality", *TINY, "--max-steps", "2"]
    argv += ["--seeds", "1", "--layers", "6", "--quality-every", "1"]
    assert main([*argv, "--out", str(quality)]) == 0
    return training, quality


def run_records(name, seed, losses, seconds_per_step, status="finished", per_epoch=5):
    """Records of one run: ``losses`` per step, ``seconds_per_step`` apart, ``per_epoch`` steps
    an epoch."""
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


def two_runs_table(kpsvd_final, kfac_final, *, kpsvd_speed=1.0, kfac_speed=1.0, seeds=(1, 2, 3)):
    """10 steps per run, 5 per epoch: first epoch at 20, last epoch at the given loss."""
    frames = []
    for i, seed in enumerate(seeds):
        for name, final, speed in (
            ("kpsvd", kpsvd_final[i], kpsvd_speed),
            ("kfac", kfac_final[i], kfac_speed),
        ):
            frames.append(run_records(name, seed, [20.0] * 5 + [final] * 5, speed))
    return pd.concat(frames, ignore_index=True)
