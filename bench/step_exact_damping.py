"""Issue 21's follow-up: train the one-product Kronecker methods with EXACT damping.

The step experiment (bench/RESULTS-step.md) finds that with factored damping every Kronecker
method's step is equally far from the exact damped natural gradient, while EKFAC, which damps
exactly, steps like KFAC would with exact damping and trains fastest. This bench trains
``kfac``, ``kpsvd`` and ``shampoo`` with their tuned lr and λ, once with factored damping (the
default) and once with the optimizers' ``damping_mode="exact"``, i.e. ``(R ⊗ S + λI)⁻¹`` in
closed form from the factors' eigendecompositions (:mod:`core.training.curvature`).

    python bench/step_exact_damping.py [--epochs 10] [--seeds 1,2,3] [--damping λ]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from core.training.data import load_dataset
from core.training.models import batch_loss
from core.training.runner import RunConfig, TrainingRun

METHODS = ("kfac", "kpsvd", "shampoo", "ekfac")


def final_loss(
    method: str, seed: int, epochs: float, dataset, damping: float | None, mode: str
) -> float:
    config = RunConfig.from_settings(
        "curves-small", method, preset="curves-small", epochs=epochs, seed=seed,
        eval_every=10**9, device="cpu", damping=damping, damping_mode=mode,
    )  # fmt: skip
    run = TrainingRun(config, dataset=dataset)
    run.run()
    if run.status != "finished":
        return float("inf")
    with torch.no_grad():
        x = dataset.x_train
        return float(batch_loss(run.model(x), x, dataset.loss))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--damping", type=float, help="λ for every method (default: tuned)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = load_dataset("curves-small", seed=0)
    print(f"λ = {args.damping or 'tuned'}; load average at the start: {os.getloadavg()}")
    print("| method | factored damping (as trained) | exact damping | seconds |")
    print("|---|---:|---:|---:|")
    for method in METHODS:
        row = []
        began = time.perf_counter()
        for mode in ("factored", "exact"):
            losses = [
                final_loss(method, s, args.epochs, dataset, args.damping, mode) for s in seeds
            ]
            row.append(f"{statistics.mean(losses):.2f} ± {statistics.stdev(losses):.2f}")
        print(f"| {method} | {row[0]} | {row[1]} | {time.perf_counter() - began:.0f} |")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
