"""Tune every optimizer's learning rate (and damping λ) on the convolutional classroom presets
(issue 18), the grid behind their entries in core/training/defaults.py.

    .venv/bin/python bench/conv_tuning.py [--presets digits-conv,digits-cnn] [--epochs 5]
        [--seeds 1,2] [--quick]

Each (preset, optimizer, lr, λ) trains with the app's classroom settings
(:meth:`core.training.runner.RunConfig.from_settings`, batch 128) on DIGITS for ``--epochs``
from the same seeded initialisations; the score is the final test loss, mean over the seeds
(a diverged run scores +inf). Prints, per preset, one row per optimizer: its best setting,
the score (mean ± sd) and the runner-up, as a markdown table, with the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.training.data import load_dataset
from core.training.defaults import FIRST_ORDER, OPTIMIZERS
from core.training.runner import RunConfig, TrainingRun

NATURAL_LRS = (0.03, 0.1, 0.3)
DAMPINGS = (0.1, 1.0)
FIRST_ORDER_LRS = (0.003, 0.01, 0.03, 0.1)


def score(preset: str, name: str, lr: float, damping: float | None, epochs: float, seeds) -> list:
    """Final test losses (inf for a run that did not finish) over ``seeds``."""
    ds = load_dataset("digits", seed=0)
    steps = max(1, round(epochs * (ds.n_train // 128)))
    out = []
    for seed in seeds:
        settings = {"lr": lr, "preset": preset, "steps": steps, "seed": seed, "eval_every": steps}
        if damping is not None:
            settings["damping"] = damping
        run = TrainingRun(RunConfig.from_settings("digits", name, **settings), dataset=ds)
        run.run()
        tests = [r["test_loss"] for r in run.records() if r["test_loss"] is not None]
        ok = run.status == "finished" and tests and math.isfinite(tests[-1])
        out.append(float(tests[-1]) if ok else math.inf)
    return out


def shown(losses: list[float]) -> str:
    if not all(math.isfinite(v) for v in losses):
        return "diverged"
    sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
    return f"{statistics.fmean(losses):.4f} ± {sd:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="digits-conv,digits-cnn")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--quick", action="store_true", help="one lr, one seed, 0.2 epochs")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    epochs = 0.2 if args.quick else args.epochs
    print(f"load average at start: {os.getloadavg()}; epochs {epochs}, seeds {seeds}")
    for preset in args.presets.split(","):
        print(f"\n### {preset}\n")
        print("| optimizer | best lr | best λ | final test loss | runner-up | seconds |")
        print("|---|---:|---:|---:|---|---:|")
        for name in args.optimizers.split(","):
            first = name in FIRST_ORDER
            lrs = FIRST_ORDER_LRS if first else NATURAL_LRS
            grid = [
                (lr, None if first else lam)
                for lr in lrs
                for lam in (DAMPINGS[:1] if first else DAMPINGS)
            ]
            if args.quick:
                grid = grid[:1]
            started = time.perf_counter()
            runs = [(lr, lam, score(preset, name, lr, lam, epochs, seeds)) for lr, lam in grid]
            results = sorted(
                ((statistics.fmean(losses), lr, lam, losses) for lr, lam, losses in runs),
                key=lambda r: r[0],
            )
            best, runner = results[0], results[1] if len(results) > 1 else None
            second = f"lr {runner[1]:g}, λ {runner[2]}: {shown(runner[3])}" if runner else ""
            lam = "—" if best[2] is None else f"{best[2]:g}"
            print(
                f"| {name} | {best[1]:g} | {lam} | {shown(best[3])} | {second} | "
                f"{time.perf_counter() - started:.0f} |",
                flush=True,
            )
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
