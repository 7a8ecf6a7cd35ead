"""Issue 21 on the paper's CURVES network: KFAC with factored vs exact damping vs Adam vs the
exact block, at equal epochs AND at equal wall time.

Every run uses the reproduction's paper settings (:meth:`core.paper.spec.ReproduceSpec.run_config`:
batch 128, Fisher batch 32, T_cov = T_inv = 100, EMA 0.95, KL-clip 1e-2, momentum 0.9, weight
decay 1e-3) except the initialisation: the runs build their own model, with the runner's default
He-normal initialisation (the reproduction uses Xavier-uniform), the same for every optimizer of
a seed; and each optimizer's tuned CURVES lr and damping
(:mod:`core.training.defaults`), except that KFAC is also run with ``damping_mode="exact"``,
``(R ⊗ S + λI)⁻¹`` (:mod:`core.training.curvature`), at its tuned λ and at the λ values of
``--exact-dampings``. The reproduction's training experiment has no damping-mode option, so
this bench builds the runs itself.

Per seed, KFAC with factored damping trains ``--epochs`` epochs first; its training wall time W
is the budget: every other run trains its epochs and then on until its own training wall time
reaches W (a run slower than KFAC stops at its epochs). Reported per run: the mean minibatch
training loss over the last epoch of steps and the full test-set loss, at the end of
``--epochs`` epochs and at wall time W; mean ± sd over seeds.

    python bench/step_curves_compare.py [--epochs 3] [--seeds 1,2] [--n-train 20000]
        [--exact-dampings 0.1] [--out bench/results-step/curves-compare.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch

from core.paper.runner import _schedule
from core.paper.spec import ReproduceSpec
from core.training.data import load_dataset
from core.training.datasets import Dataset
from core.training.defaults import default_damping
from core.training.models import batch_loss
from core.training.runner import TrainingRun


def _loss(run: TrainingRun, x: torch.Tensor, loss: str) -> float:
    with torch.no_grad():
        return float(batch_loss(run.model(x), x, loss))


def train(spec, sched, dataset: Dataset, name: str, mode: str, damping: float | None,
          seed: int, budget_s: float | None) -> dict:  # fmt: skip
    """One run: its epochs, then (with ``budget_s``) on until its wall time reaches it."""
    steps = sched["steps"]
    cfg = spec.run_config(name, {**sched, "steps": steps * 50 if budget_s else steps}, seed)
    opt = cfg.optimizer
    cfg.optimizer = dataclasses.replace(
        opt, damping=opt.damping if damping is None else damping, damping_mode=mode
    )
    run = TrainingRun(cfg, dataset=dataset)
    at_epochs: dict[str, float] = {}
    per_epoch = sched["steps_per_epoch"]

    def on_step(record: dict) -> None:
        done = record["step"] + 1
        if done == steps:
            last = [r["train_loss"] for r in run.records()[-per_epoch:]]
            at_epochs["train"] = statistics.mean(last)
            at_epochs["test"] = _loss(run, dataset.x_test, dataset.loss)
            at_epochs["wall"] = record["wall_time_s"]
        if done >= steps and (budget_s is None or record["wall_time_s"] >= budget_s):
            run.stop()

    run.on_step = on_step
    run.run()
    records = run.records()
    if run.status == "diverged" or not at_epochs:
        return {"status": run.status, "message": run.message}
    return {
        "status": "finished",
        "train_epochs": at_epochs["train"],
        "test_epochs": at_epochs["test"],
        "wall_epochs": at_epochs["wall"],
        "train_wall": statistics.mean(r["train_loss"] for r in records[-per_epoch:]),
        "test_wall": _loss(run, dataset.x_test, dataset.loss),
        "wall": records[-1]["wall_time_s"],
        "epochs_at_wall": records[-1]["epoch"],
        "damping": cfg.optimizer.damping,
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--n-train", type=int, default=None, help="training subset (all: 20,000)")
    parser.add_argument("--exact-dampings", default="0.1", help="extra λ for KFAC exact damping")
    parser.add_argument("--out", default="bench/results-step/curves-compare.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [float(d) for d in args.exact_dampings.split(",") if d.strip()]
    began = time.time()
    print(f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()}", flush=True)  # fmt: skip
    spec = ReproduceSpec(
        "training", "curves", epochs=args.epochs, seeds=tuple(seeds), n_train=args.n_train,
        optimizers=("kfac", "adam", "exact"),
    )  # fmt: skip
    dataset = load_dataset("curves", seed=0, n_train=args.n_train)
    sched = _schedule(spec, dataset)
    print(f"{dataset.n_train} training images, {sched['steps']} steps", flush=True)
    kfac_l = default_damping("kfac", "curves")
    runs = [("kfac", "factored", None), ("kfac", "exact", None)]
    runs += [("kfac", "exact", d) for d in extra if d != kfac_l]
    runs += [("adam", "factored", None), ("exact", "factored", None)]
    rows = []
    for seed in seeds:
        budget = None
        for i, (name, mode, damping) in enumerate(runs):
            t0 = time.perf_counter()
            out = train(spec, sched, dataset, name, mode, damping, seed, budget)
            if budget is None:
                budget = out.get("wall")  # KFAC factored's wall time: the others' budget
            rows.append({"run": i, "method": name, "mode": mode, "seed": seed, **out})
            took = time.perf_counter() - t0
            print(f"seed {seed} {name} {mode}: {out} ({took:.0f} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    print()
    print(f"| method | damping | train loss @ {args.epochs:g} ep | test loss @ {args.epochs:g} ep "
          "| train loss @ W | test loss @ W | epochs @ W | wall (s) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for i, (name, mode, damping) in enumerate(runs):
        mine = [r for r in rows if r["run"] == i and r["status"] == "finished"]
        lam = mine[0]["damping"] if mine else damping
        label = {"adam": "—", "exact": f"λ = {lam:g} (exact block, Woodbury)"}.get(
            name, f"{mode}, λ = {lam:g}"
        )
        keys = ("train_epochs", "test_epochs", "train_wall", "test_wall", "epochs_at_wall", "wall")
        cells = " | ".join(_cell([r[k] for r in mine]) for k in keys)
        print(f"| {name} | {label} | {cells} |")
    print(f"\n{(time.time() - began) / 60:.1f} min; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
