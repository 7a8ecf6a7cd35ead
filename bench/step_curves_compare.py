"""Issue 21 on the paper's CURVES network: KFAC with factored vs exact damping vs Adam vs the
exact block, at equal epochs AND at equal wall time.

Every run uses the reproduction's paper settings (:meth:`core.paper.spec.ReproduceSpec.run_config`:
batch 128, Fisher batch 32, T_cov = T_inv = 100, EMA 0.95, KL-clip 1e-2, momentum 0.9, weight
decay 1e-3) except the initialisation, ``--init``: ``he_normal`` (the default, the runner's; the
first, 3-epoch table of bench/RESULTS-step.md) or ``xavier_uniform`` (the reproduction's,
:data:`core.paper.spec.PAPER_DEFAULTS`), the same initial parameters for every optimizer of a
seed; and each optimizer's tuned CURVES lr and damping
(:mod:`core.training.defaults`), except that KFAC is also run with ``damping_mode="exact"``,
``(R ⊗ S + λI)⁻¹`` (:mod:`core.training.curvature`), at its tuned λ and at the λ values of
``--exact-dampings``. The reproduction's training experiment has no damping-mode option, so
this bench builds the runs itself.

Per seed, KFAC with factored damping trains ``--epochs`` epochs first; its training wall time W
is the budget: every other run trains its epochs and then on until its own training wall time
reaches W (a run slower than KFAC stops at its epochs). Reported per run: the mean minibatch
training loss over the last epoch of steps and the full test-set loss, at the end of
``--epochs`` epochs and at wall time W; mean ± sd over seeds. For the natural-gradient runs also
the KL-clip's scale over the first ``--epochs`` epochs (:class:`core.training.optim`'s
``ν = min(1, sqrt(kl_clip / (lr² Σ⟨V, P⟩)))``, read after each step): its mean and the fraction
of steps with ν < 1 (the clip engaged). The runner does not expose its optimizer, so the bench
wraps ``core.training.runner.build_optimizer`` to keep a reference to it (nothing else changes).
``--save-dir``: each run's parameters at the end of its ``--epochs`` epochs
(``<method>-<mode>-l<λ>-seed<S>.pt``, a state_dict), for later measurements.

    python bench/step_curves_compare.py [--epochs 3] [--seeds 1,2] [--n-train 20000]
        [--init he_normal] [--exact-dampings 0.1] [--save-dir DIR]
        [--out bench/results-step/curves-compare.csv]
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

import core.training.runner as training_runner
from core.paper.runner import _schedule
from core.paper.spec import ReproduceSpec
from core.training.data import load_dataset
from core.training.datasets import Dataset
from core.training.defaults import default_damping
from core.training.models import INITS, Model, batch_loss, build_model
from core.training.runner import TrainingRun

#: The optimizer each run built (``build_optimizer`` wrapped below), to read its KL-clip scale.
_BUILT: list = []
_build_optimizer = training_runner.build_optimizer


def _keep_optimizer(*args, **kwargs):
    opt = _build_optimizer(*args, **kwargs)
    _BUILT.append(opt)
    return opt


training_runner.build_optimizer = _keep_optimizer


def _loss(run: TrainingRun, x: torch.Tensor, loss: str) -> float:
    with torch.no_grad():
        return float(batch_loss(run.model(x), x, loss))


def train(spec, sched, dataset: Dataset, model: Model, name: str, mode: str,
          damping: float | None, seed: int, budget_s: float | None,
          save: Path | None = None, options: dict | None = None) -> dict:  # fmt: skip
    """One run from a copy of ``model``: its epochs, then (with ``budget_s``) on until its wall
    time reaches it; ``save``: where to write its parameters at the end of its epochs;
    ``options``: OptimizerConfig fields that replace the paper settings' (e.g. ``t_inv``)."""
    steps = sched["steps"]
    cfg = spec.run_config(name, {**sched, "steps": steps * 50 if budget_s else steps}, seed)
    opt = cfg.optimizer
    cfg.optimizer = dataclasses.replace(
        opt, damping=opt.damping if damping is None else damping, damping_mode=mode,
        **(options or {}),
    )  # fmt: skip
    _BUILT.clear()
    run = TrainingRun(cfg, dataset=dataset, model=model)
    at_epochs: dict[str, float] = {}
    per_epoch = sched["steps_per_epoch"]
    kl_scales: list[float] = []

    def on_step(record: dict) -> None:
        done = record["step"] + 1
        if done <= steps and _BUILT and _BUILT[-1].preconditioner is not None:
            kl_scales.append(_BUILT[-1].last_kl_scale)
        if done == steps:
            if save is not None:
                torch.save(run.model.state_dict(), save)
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
        **(
            {
                "kl_scale_mean": statistics.mean(kl_scales),
                "kl_clipped_fraction": sum(v < 1.0 for v in kl_scales) / len(kl_scales),
            }
            if kl_scales
            else {}
        ),
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--n-train", type=int, default=None, help="training subset (all: 20,000)")
    parser.add_argument("--init", default="he_normal", choices=INITS)
    parser.add_argument("--exact-dampings", default="0.1", help="extra λ for KFAC exact damping")
    parser.add_argument("--save-dir", type=Path, default=None, help="parameters after --epochs")
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
    print(f"{dataset.n_train} training images, {sched['steps']} steps, init {args.init}",
          flush=True)  # fmt: skip
    if args.save_dir is not None:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    kfac_l = default_damping("kfac", "curves")
    runs = [("kfac", "factored", None), ("kfac", "exact", None)]
    runs += [("kfac", "exact", d) for d in extra if d != kfac_l]
    runs += [("adam", "factored", None), ("exact", "factored", None)]
    rows = []
    for seed in seeds:
        budget = None
        model = build_model(
            spec.preset, input_dim=dataset.input_dim, loss=dataset.loss, seed=seed, init=args.init
        )
        for i, (name, mode, damping) in enumerate(runs):
            t0 = time.perf_counter()
            lam = default_damping(name, "curves") if damping is None else damping
            save = None
            if args.save_dir is not None:
                save = args.save_dir / f"{name}-{mode}-l{lam:g}-seed{seed}.pt"
            out = train(spec, sched, dataset, model, name, mode, damping, seed, budget, save)
            if budget is None:
                budget = out.get("wall")  # KFAC factored's wall time: the others' budget
            rows.append({"run": i, "method": name, "mode": mode, "seed": seed, **out})
            took = time.perf_counter() - t0
            print(f"seed {seed} {name} {mode}: {out} ({took:.0f} s)", flush=True)
            _write_csv(Path(args.out), rows)  # after every run: a cut-short bench keeps its rows
    print()
    print(f"| method | damping | train loss @ {args.epochs:g} ep | test loss @ {args.epochs:g} ep "
          "| train loss @ W | test loss @ W | epochs @ W | wall (s) | KL scale ν (mean) "
          "| steps clipped |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (name, mode, damping) in enumerate(runs):
        mine = [r for r in rows if r["run"] == i and r["status"] == "finished"]
        lam = mine[0]["damping"] if mine else damping
        label = {"adam": "—", "exact": f"λ = {lam:g} (exact block, Woodbury)"}.get(
            name, f"{mode}, λ = {lam:g}"
        )
        keys = ("train_epochs", "test_epochs", "train_wall", "test_wall", "epochs_at_wall", "wall")
        cells = " | ".join(_cell([r[k] for r in mine]) for k in keys)
        for k in ("kl_scale_mean", "kl_clipped_fraction"):
            cells += " | " + (_cell([r[k] for r in mine if k in r]) if name != "adam" else "—")
        print(f"| {name} | {label} | {cells} |")
    print(f"\n{(time.time() - began) / 60:.1f} min; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
