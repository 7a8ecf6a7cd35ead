"""The seed paper's second claim at its own scale on this CPU: the CURVES autoencoder
(784-400-200-100-50-25-6, mirrored) on the generated 20,000-image CURVES, every optimizer.

    .venv/bin/python bench/paper_train_bench.py [--budget-min 92] [--reuse-tuning] [--out FILE.md]
    .venv/bin/python bench/paper_train_bench.py --quick      # smoke test, < 2 minutes

Why: the claim (the KPSVD family trains faster than KFAC, Adam and SGD) was tested only on the
small ``curves-small`` preset (bench/train_bench.py). Here every run is a
:func:`core.views.reproduce.run_reproduction` with the paper's settings (:data:`PAPER_DEFAULTS`:
batch 128, Fisher batch 32, T_cov = T_inv = 100, EMA 0.95 of the factors, KL-clip 1e-2, momentum
0.9, weight decay 1e-3, Xavier-uniform initialisation), and the verdicts are
:func:`core.views.reproduce.training_verdicts` / :func:`core.views.reproduce.quality_verdicts`, so
this script only chooses what to run and writes the tables.

Phases, in this order. Time budget: a run that would end past ``--budget-min`` minutes from the
start is skipped and listed as not run; its time is estimated from that optimizer's tuning time
per step, times the slowdown of the latest finished run against its own tuning rate (the
machine is shared, its load changes).

1. Tuning on seed 0, just before an optimizer's first run (so the comparison rows are tuned only
   if their runs are reached): each optimizer's lr (× damping for the natural-gradient methods)
   on the grid :data:`GRID_LR` / :data:`NATURAL_LR` × :data:`NATURAL_DAMPING`, for
   :data:`TUNE_EPOCHS` epochs; criterion: the reproduction's final-loss rule (mean minibatch
   training loss over the last epoch of steps; a diverged run scores +inf). ``lanczos`` is not
   tuned: on the engine's Gram route it computes the same two terms as ``deflation`` (same
   updates up to the solver tolerance, core/training/optim.py) and takes deflation's settings. These
   runs also give each optimizer's time per step. Every cell is written to ``tuning.json`` in
   ``--runs-dir``; ``--reuse-tuning`` (a restart) takes the optimizers already there.
2. The claim: :data:`CLAIM_OPTIMIZERS` (the claim's methods and baselines, plus the exact block
   Fisher; kfac and kpsvd first, the smallest pair that tests the claim), tuned settings,
   ``--epochs`` epochs, seeds 1, 2, 3 (not the tuning seed); when an optimizer's three seeds do
   not fit the budget, seeds 1 and 2 (two is the fewest that give a spread).
3. Curvature averages (``ema_mode``): kfac "window", kpsvd "window" and "fisher" at the tuned
   settings, seed 1, ``--ema-epochs`` epochs, against the "factors" run of phase 2 (same seed,
   same initialisation and minibatches) at the same epoch. (kfac's "fisher" mode is its factor
   EMA, identical to "factors": not rerun.)
4. The comparison rows ekfac, shampoo and lanczos: tuned settings, ``--epochs`` epochs, seed 1.
5. Approximation quality over training (the reproduction's ``quality`` experiment: KFAC trains
   with its tuned settings and Fisher batch 256, every method is measured on CURVES' 50→25
   layer every half epoch), ``--quality-epochs`` epochs, seed 1.

Writes ``--out`` (markdown: machine, load, settings, every table as measured, verdicts; rewritten
after every run, so an interrupted bench leaves its partial results, labelled as such; anything
after the line :data:`MARKER`, e.g. a hand-written analysis, is kept) and the
reproduction folders (settings.json, results.csv, verdicts.csv, report.html with the loss
against epoch and wall time) under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.engine.methods import FIRST_ORDER  # noqa: E402
from core.training.data import load_dataset  # noqa: E402
from core.views.reproduce import (  # noqa: E402
    PAPER_DEFAULTS,
    ReproduceSpec,
    final_losses,
    quality_verdicts,
    run_reproduction,
    summary_table,
    training_verdicts,
    write_reproduction,
)

GRID_LR = {"sgd": (1e-4, 3e-4, 1e-3, 3e-3), "adam": (3e-4, 1e-3, 3e-3, 1e-2)}
NATURAL_LR = (0.03, 0.3)
NATURAL_DAMPING = (0.01, 0.1, 1.0)
TUNE_EPOCHS = {"first_order": 5.0, "natural": 1.0}
SHARED_SETTINGS = {"lanczos": "deflation"}  # not tuned: same optimizer on the Gram route
# The claim's smallest testable pair first (the machine is shared: later runs may not fit).
CLAIM_OPTIMIZERS = ("kfac", "kpsvd", "adam", "sgd", "kfac_corrected", "deflation", "exact")
CLAIM_SEEDS = (1, 2, 3)
EXTRA_OPTIMIZERS = ("ekfac", "shampoo", "lanczos")
EMA_RUNS = (("kfac", "window"), ("kpsvd", "window"), ("kpsvd", "fisher"))
EPOCH_MARKS = (1, 2, 5, 10, 15, 20)
MARKER = "<!-- paper_train_bench.py keeps everything below this line -->"
TUNING_FILE = "tuning.json"  # every tuning cell, written as it is measured
QUICK = {
    "grid_lr": {"sgd": (1e-3, 3e-3)},
    "natural_lr": (0.3,),
    "natural_damping": (0.1, 1.0),
    "tune_epochs": {"first_order": 0.25, "natural": 0.25},
    "claim": ("sgd", "kfac"),
    "seeds": (1, 2),
    "extra": (),
    "ema": (("kfac", "window"),),
}


@dataclass
class Plan:
    """What to run (the defaults above; ``--quick`` shrinks it)."""

    grid_lr: dict = field(default_factory=lambda: dict(GRID_LR))
    natural_lr: tuple[float, ...] = NATURAL_LR
    natural_damping: tuple[float, ...] = NATURAL_DAMPING
    tune_epochs: dict = field(default_factory=lambda: dict(TUNE_EPOCHS))
    claim: tuple[str, ...] = CLAIM_OPTIMIZERS
    seeds: tuple[int, ...] = CLAIM_SEEDS
    extra: tuple[str, ...] = EXTRA_OPTIMIZERS
    ema: tuple[tuple[str, str], ...] = EMA_RUNS
    epochs: float = 20.0
    ema_epochs: float = 10.0
    quality_epochs: float = 5.0

    def grid(self, name: str) -> list[tuple[float, float | None]]:
        """(lr, damping) cells for ``name`` (damping ``None``: first-order, none to tune)."""
        if name in FIRST_ORDER:
            return [(lr, None) for lr in self.grid_lr[name]]
        return [(lr, d) for d in self.natural_damping for lr in self.natural_lr]

    def tune_epochs_for(self, name: str) -> float:
        return self.tune_epochs["first_order" if name in FIRST_ORDER else "natural"]


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def frame_table(df: pd.DataFrame) -> list[str]:
    """A DataFrame as a markdown table, floats to 4 significant digits."""
    rows = [[f"{v:.4g}" if isinstance(v, float) else v for v in row] for row in df.values]
    return md_table(list(df.columns), rows)


def mean_sd(values) -> str:
    vals = [float(v) for v in values]
    if not vals:
        return "—"
    if any(not math.isfinite(v) for v in vals):
        return f"diverged (n={len(vals)})"
    s = pd.Series(vals)
    return f"{s.mean():.2f} ± {s.std(ddof=1):.2f}" if len(vals) > 1 else f"{vals[0]:.2f} (n=1)"


class Bench:
    """Runs the phases of the module docstring, keeps every result, writes the report."""

    def __init__(self, plan: Plan, budget_s, out: Path, runs_dir: Path, quick, reuse_tuning):
        self.plan, self.budget_s, self.out, self.runs_dir = plan, budget_s, out, runs_dir
        self.quick = quick
        self.started = time.time()
        self.load_start = load_text()
        self.dataset = load_dataset("curves", seed=0)
        self.per_epoch = self.dataset.n_train // PAPER_DEFAULTS["batch_size"]
        self.tuning: dict[str, list[dict]] = {}
        self.best: dict[str, tuple[float, float]] = {}
        self.seconds_per_step: dict[str, float] = {}
        self.frames: list[pd.DataFrame] = []
        self.settings: dict | None = None
        self.ema: list[dict] = []
        self.quality: tuple[dict, pd.DataFrame] | None = None
        self.skipped: list[str] = []
        self.reuse_tuning = reuse_tuning
        self.reused: list[str] = []
        self.slowdown = 1.0
        self.phase = "starting"

    # -- running ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:7.0f} s] {msg}", flush=True)

    def need(self, name: str, epochs: float, runs: int = 1, factor: float = 1.0) -> float:
        """Estimated seconds for ``runs`` runs: the tuning runs' time per step, times the
        slowdown of the latest run against its own tuning rate (the machine is shared)."""
        rate = self.seconds_per_step.get(name, 0.0) * self.slowdown
        return factor * rate * epochs * self.per_epoch * runs

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    def fits(self, what: str, need: float) -> bool:
        """Whether ``need`` seconds fit in the budget (else noted as not run)."""
        if need <= self.left():
            return True
        self.skipped.append(
            f"{what}: needs about {need / 60:.0f} min, {self.left() / 60:.0f} min left"
        )
        self.log(f"SKIPPED {self.skipped[-1]}")
        return False

    def observe(self, name: str, elapsed: float, steps: int) -> None:
        """Update :attr:`slowdown` from a finished run of ``name``."""
        if self.seconds_per_step.get(name):
            self.slowdown = elapsed / steps / self.seconds_per_step[name]

    def run(self, name, *, epochs, seeds, lr, damping, experiment="training", ema_mode=None):
        """One :func:`run_reproduction` of one optimizer: (settings, results, seconds)."""
        spec = ReproduceSpec(
            experiment,
            "curves",
            epochs=epochs,
            seeds=tuple(seeds),
            optimizers=(name,),
            lrs={name: lr},
            dampings={} if damping is None else {name: damping},
            ema_mode=ema_mode or PAPER_DEFAULTS["ema_mode"],
            device="cpu",
        )
        t0 = time.perf_counter()
        settings, df = run_reproduction(spec, self.dataset)
        elapsed = time.perf_counter() - t0
        statuses = ", ".join(r["status"] for r in settings["runs"])
        self.log(f"{name} lr={lr:g} damping={damping} {ema_mode or ''} seeds={seeds}: "
                 f"{statuses}, {elapsed:.0f} s")  # fmt: skip
        return settings, df, elapsed

    def tune(self, names) -> None:
        """Tune each of ``names`` not tuned yet (phase 1 of the module docstring); with
        ``--reuse-tuning`` an optimizer already in ``tuning.json`` takes its cells from there."""
        self.phase = "1 (tuning)"
        cache = self.runs_dir / TUNING_FILE
        saved = json.loads(cache.read_text()) if self.reuse_tuning and cache.is_file() else {}
        for name in names:
            if name in self.tuning or name in SHARED_SETTINGS:
                continue
            if name in saved:
                self.tuning[name] = saved[name]["cells"]
                self.seconds_per_step[name] = saved[name]["seconds_per_step"]
                self.reused.append(name)
                self.log(f"{name}: tuning reused from {cache.name}")
            else:
                self.tune_one(name)
            best = min(self.tuning[name], key=lambda c: c["loss"])
            self.best[name] = (best["lr"], best["damping"])
            saved[name] = {
                "cells": self.tuning[name],
                "seconds_per_step": self.seconds_per_step[name],
            }
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(saved, indent=1))
            self.write()
        for name, source in SHARED_SETTINGS.items():
            if source in self.best:
                self.best[name] = self.best[source]
                self.seconds_per_step[name] = self.seconds_per_step[source]

    def tune_one(self, name: str) -> None:
        epochs = self.plan.tune_epochs_for(name)
        cells = []
        for lr, damping in self.plan.grid(name):
            _, df, elapsed = self.run(name, epochs=epochs, seeds=(0,), lr=lr, damping=damping)
            loss = final_losses(df, name)[0]
            cells.append({"lr": lr, "damping": damping, "loss": loss, "seconds": elapsed,
                          "steps": len(df), "status": df["status"].iloc[0]})  # fmt: skip
        self.tuning[name] = cells
        # elapsed time per step, evaluation included: what the budget guard needs
        self.seconds_per_step[name] = sum(c["seconds"] for c in cells) / sum(
            c["steps"] for c in cells
        )

    def train(self, names, seeds, phase: str) -> None:
        """``--epochs`` epochs of each of ``names`` on ``seeds``; when they do not all fit,
        on as many of the first seeds as fit (at least two when ``seeds`` has several: one
        seed gives no spread for a verdict)."""
        self.phase = phase
        self.tune(names)
        self.phase = phase
        fewest = min(2, len(seeds))
        for name in names:
            if name not in self.best:
                continue
            k = len(seeds)
            while k > fewest and self.need(name, self.plan.epochs, k) > self.left():
                k -= 1
            if k < len(seeds):
                self.skipped.append(f"{name}, seeds {seeds[k:]}: did not fit after {seeds[:k]}")
            if not self.fits(f"{name}, seeds {seeds[:k]}", self.need(name, self.plan.epochs, k)):
                continue
            lr, damping = self.best[name]
            settings, df, elapsed = self.run(
                name, epochs=self.plan.epochs, seeds=seeds[:k], lr=lr, damping=damping
            )
            self.observe(name, elapsed, len(df))
            self.frames.append(df)
            if self.settings is None:
                self.settings = settings
            else:
                self.settings["optimizers"].update(settings["optimizers"])
                self.settings["runs"] += settings["runs"]
                self.settings["seeds"] = sorted(set(self.settings["seeds"]) | set(seeds))
                self.settings["total_time_s"] += settings["total_time_s"]
            self.write()

    def ema_modes(self) -> None:
        self.phase = "3 (curvature averages)"
        seed = self.plan.seeds[0]
        for name, mode in self.plan.ema:
            if name not in self.best:
                continue
            # the window / fisher refreshes cost more than the factor EMA
            need = self.need(name, self.plan.ema_epochs, 1, factor=1.25)
            if not self.fits(f"{name} ema_mode={mode}", need):
                continue
            lr, damping = self.best[name]
            _, df, elapsed = self.run(name, epochs=self.plan.ema_epochs, seeds=(seed,), lr=lr,
                                      damping=damping, ema_mode=mode)  # fmt: skip
            self.observe(name, elapsed, len(df))
            self.ema.append({"name": name, "mode": mode, "seed": seed, "df": df})
            self.write()

    def quality_run(self) -> None:
        self.phase = "5 (approximation quality)"
        need = self.need("kfac", self.plan.quality_epochs, 1, factor=1.3)
        if "kfac" not in self.best or not self.fits("quality experiment", need):
            return
        lr, damping = self.best["kfac"]
        settings, df, _ = self.run("kfac", epochs=self.plan.quality_epochs,
                                   seeds=(self.plan.seeds[0],), lr=lr, damping=damping,
                                   experiment="quality")  # fmt: skip
        self.quality = (settings, df)
        write_reproduction(self.runs_dir / "quality", settings, df)
        self.write()

    def main(self) -> None:
        self.log(f"load at start {self.load_start}; budget {self.budget_s / 60:.0f} min")
        self.train(self.plan.claim, self.plan.seeds, "2 (the claim, seeds 1-3)")
        self.ema_modes()
        self.train(self.plan.extra, self.plan.seeds[:1], "4 (comparison rows, seed 1)")
        self.quality_run()
        self.phase = "done"
        self.write()
        self.log(f"done; report {self.out}")

    # -- the report ------------------------------------------------------------------------
    def results(self) -> pd.DataFrame | None:
        return pd.concat(self.frames, ignore_index=True) if self.frames else None

    def write(self) -> None:
        """Rewrite the report (keeping anything after :data:`MARKER`) and the training folder."""
        lines = self.report()
        kept = ""
        if self.out.is_file():
            old = self.out.read_text(encoding="utf-8")
            kept = old[old.index(MARKER) + len(MARKER) :] if MARKER in old else ""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join([*lines, "", MARKER]) + kept, encoding="utf-8")
        df = self.results()
        if df is not None and self.settings is not None:
            write_reproduction(self.runs_dir / "training", self.settings, df)

    def report(self) -> list[str]:
        done = self.phase == "done"
        elapsed = time.time() - self.started
        status = (
            "Complete."
            if done
            else f"**PARTIAL RESULTS: the bench was still running (phase {self.phase}) when "
            f"this file was written; tables below hold only the runs finished by then.**"
        )
        lines = [
            "# Paper-scale training benchmark: CURVES (issue 10)"
            + (" — QUICK SMOKE RUN" if self.quick else ""),
            "",
            status,
            "",
            f"Generated by `bench/paper_train_bench.py{' --quick' if self.quick else ''}`, "
            f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.started))}. "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
            f"{'a CUDA GPU present but not used' if torch.cuda.is_available() else 'no GPU'}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread, float32 training "
            f"(curvature in float64). Load average at the start: {self.load_start}; at this "
            f"writing: {load_text()}. {'Total wall time' if done else 'Wall time so far'}: "
            f"{elapsed / 60:.1f} min (budget {self.budget_s / 60:.0f} min).",
            "",
            "## Setup",
            "",
            f"Dataset: {self.dataset.label}, {self.dataset.n_train:,} training and "
            f"{self.dataset.n_test:,} test images (28×28), BCE loss (mean per-sample NLL summed "
            f"over pixels). Network: preset `curves` (784-400-200-100-50-25-6, mirrored; ReLU; "
            f"sigmoid + BCE), {PAPER_DEFAULTS['init']} initialisation, zero biases. "
            f"Batch {PAPER_DEFAULTS['batch_size']} ({self.per_epoch} steps per epoch), Fisher "
            f"batch {round(PAPER_DEFAULTS['batch_size'] * PAPER_DEFAULTS['fisher_batch_fraction'])}"
            f" (true Fisher), T_cov = T_inv = {PAPER_DEFAULTS['t_cov']}, EMA "
            f'{PAPER_DEFAULTS["ema"]} (`ema_mode="{PAPER_DEFAULTS["ema_mode"]}"` unless stated), '
            f"KL-clip {PAPER_DEFAULTS['kl_clip']}, momentum {PAPER_DEFAULTS['momentum']}, weight "
            f"decay {PAPER_DEFAULTS['weight_decay']}; CPU. Every run is a "
            "`core.views.reproduce.run_reproduction`; wall time is training time only (evaluation "
            "excluded), and runs are sequential on one thread.",
            "",
        ]
        lines += self.tuning_section()
        lines += self.claim_section()
        lines += self.ema_section()
        lines += self.quality_section()
        lines += ["## Not run", ""]
        lines += [f"- {s}" for s in self.skipped] or ["- nothing skipped by the time budget"]
        if not done:
            lines.append(f"- (bench still running: phase {self.phase})")
        return lines

    def tuning_section(self) -> list[str]:
        p = self.plan

        def values(xs) -> str:
            return "{" + ", ".join(f"{v:g}" for v in xs) + "}"

        first = [f"{n} lr ∈ {values(p.grid_lr[n])}" for n in p.grid_lr if n in self.tuning]
        lines = [
            "## 1. Tuning (seed 0) and time per step",
            "",
            f"Grid: {'; '.join(first)}; every natural-gradient method lr ∈ "
            f"{values(p.natural_lr)} × damping ∈ {values(p.natural_damping)}. Tuning runs: "
            f"{p.tune_epochs['first_order']:g} epochs (first-order) and "
            f"{p.tune_epochs['natural']:g} epoch(s) (natural-gradient, the expensive ones), "
            "criterion: mean minibatch training loss over the last epoch of steps (the "
            "reproduction's final-loss rule; a run shorter than an epoch: all its steps). "
            "lanczos takes deflation's settings (not tuned; same updates on the Gram route). "
            "s/step: elapsed time per step of the tuning runs, refreshes and evaluation "
            "included."
            + (
                f" Tuning of {', '.join(self.reused)} was measured by an earlier start of this "
                f"script (same code and seeds) and read back from {TUNING_FILE}."
                if self.reused
                else ""
            ),
            "",
        ]
        rows = []
        for name, cells in self.tuning.items():
            lr, damping = self.best[name]
            grid = "; ".join(
                f"{c['lr']:g}"
                + ("" if c["damping"] is None else f"/{c['damping']:g}")
                + f": {c['loss']:.2f}"
                for c in cells
            )
            rows.append([name, f"{lr:g}", "—" if damping is None else f"{damping:g}",
                         f"{self.seconds_per_step[name]:.3f}", grid])  # fmt: skip
        lines += md_table(["optimizer", "lr", "damping", "s/step", "grid (lr/damping: loss)"], rows)
        return lines + [""]

    def claim_section(self) -> list[str]:
        df = self.results()
        if df is None:
            return ["## 2. The claim", "", "No run finished yet.", ""]
        seeds = sorted(df["seed"].unique())
        lines = [
            "## 2. Training: final loss, loss against epoch and wall time",
            "",
            f"{self.plan.epochs:g} epochs, tuned settings; seeds per optimizer as listed (n). "
            "Summary from `core.views.reproduce.summary_table` (final train loss: mean minibatch "
            "loss over the last epoch of steps; mean ± sd over seeds, ddof 1).",
            "",
        ]
        lines += frame_table(summary_table({"experiment": "training"}, df))
        kfac_ms = None
        rows = []
        for name, part in df.groupby("optimizer", sort=False):
            runs = part.groupby("seed")
            ms = [1000 * p["wall_time_s"].max() / len(p) for _, p in runs]
            mean_ms = sum(ms) / len(ms)
            if name == "kfac":
                kfac_ms = mean_ms
            rows.append([name, f"{mean_ms:.1f}", mean_ms])
        lines += ["", "Training time per step (mean over its seeds, whole runs, refreshes "
                  "amortized, evaluation excluded):", ""]  # fmt: skip
        lines += md_table(
            ["optimizer", "ms/step", "× kfac"],
            [[r[0], r[1], f"{r[2] / kfac_ms:.2f}" if kfac_ms else "—"] for r in rows],
        )
        marks = [e for e in EPOCH_MARKS if e <= self.plan.epochs] or [self.plan.epochs]
        lines += ["", "Loss against epoch: mean minibatch training loss over epoch e (mean ± sd "
                  "over seeds), and the mean training wall time at its end (s):", ""]  # fmt: skip
        rows = []
        for name, part in df.groupby("optimizer", sort=False):
            row = [name]
            for e in marks:
                losses, times = [], []
                for _, run in part.groupby("seed"):
                    run = run.sort_values("step")
                    window = run[(run["step"] >= (e - 1) * self.per_epoch)
                                 & (run["step"] < e * self.per_epoch)]  # fmt: skip
                    if len(window) < self.per_epoch:
                        losses.append(math.inf)  # it stopped (diverged) before epoch e
                        continue
                    losses.append(window["train_loss"].mean())
                    times.append(window["wall_time_s"].iloc[-1])
                t = f" ({sum(times) / len(times):.0f} s)" if times else ""
                row.append(mean_sd(losses) + t)
            rows.append(row)
        lines += md_table(["optimizer", *[f"epoch {e:g}" for e in marks]], rows)
        kfac_t = df[df["optimizer"] == "kfac"].groupby("seed")["wall_time_s"].max()
        if len(kfac_t):
            t_marks = [round(float(kfac_t.mean()) * f) for f in (0.125, 0.25, 0.5, 1.0)]
            lines += ["", "Loss against wall time: per run the mean minibatch loss over the "
                      "last epoch of steps ended by T "
                      "(`core.views.reproduce.final_losses(until=T)`), "
                      "T = 1/8, 1/4, 1/2 and 1 × KFAC's mean training time; '(ended)' where a "
                      "run's training had ended before T:", ""]  # fmt: skip
            rows = []
            for name, part in df.groupby("optimizer", sort=False):
                row = [name]
                end = part.groupby("seed")["wall_time_s"].max().min()
                for t in t_marks:
                    cell = mean_sd(final_losses(df, name, until=t).values())
                    row.append(cell + (" (ended)" if end < t else ""))
                rows.append(row)
            lines += md_table(["optimizer", *[f"T = {t} s" for t in t_marks]], rows)
        lines += ["", "### Verdicts (`core.views.reproduce.training_verdicts`)", "",
                  "Rule: " + self.settings["rules"]["training"], ""]  # fmt: skip
        if len(seeds) < 2:
            lines += ["Fewer than two seeds so far: every verdict is 'not testable here'.", ""]
        lines += frame_table(training_verdicts(df))
        return lines + [""]

    def ema_section(self) -> list[str]:
        if not self.ema:
            return []
        df = self.results()
        e = self.plan.ema_epochs
        lines = [
            "## 3. Curvature averages (`ema_mode`)",
            "",
            f"Seed {self.plan.seeds[0]} only (one run per mode: no spread, no verdict), tuned "
            f"settings (tuned with `factors`), {e:g} epochs; `factors` is the phase-2 run of "
            "the same seed cut at the same epoch (same initialisation and minibatches). Loss: "
            "mean minibatch training loss over the last epoch of steps; time: training time.",
            "",
        ]
        rows = []
        for name in dict.fromkeys(r["name"] for r in self.ema):
            base = df[(df["optimizer"] == name) & (df["seed"] == self.plan.seeds[0])]
            base = base[base["epoch"] <= e + 1e-9]
            cells = {"factors": base}
            cells.update({r["mode"]: r["df"] for r in self.ema if r["name"] == name})
            for mode, part in cells.items():
                if part.empty:
                    continue
                loss = final_losses(part, name)[self.plan.seeds[0]]
                rows.append([name, mode, f"{loss:.2f}", f"{part['wall_time_s'].max():.0f}",
                             ", ".join(sorted(part["status"].unique()))])  # fmt: skip
        lines += md_table(["method", "ema_mode", f"loss at epoch {e:g}", "time (s)", "status"],
                          rows)  # fmt: skip
        return lines + [""]

    def quality_section(self) -> list[str]:
        if self.quality is None:
            return []
        settings, df = self.quality
        q = settings["quality"]
        layers = ", ".join(f"layer {x['number']} ({x['name']})" for x in q["layers"])
        lines = [
            "## 4. Approximation quality over training",
            "",
            f"The reproduction's `quality` experiment: KFAC (tuned lr/damping, Fisher batch "
            f"{q['fisher_batch']}) trains for {self.plan.quality_epochs:g} epochs, seed "
            f"{self.plan.seeds[0]}; every {q['every_steps']} steps every method is measured on "
            f"{layers} on a fresh "
            f"Fisher minibatch of {q['fisher_batch']}. Mean errors over the tracked points:",
            "",
        ]
        lines += frame_table(summary_table(settings, df))
        lines += ["", "Verdicts (`core.views.reproduce.quality_verdicts`; rule: "
                  + settings["rules"]["quality"] + "):", ""]  # fmt: skip
        lines += frame_table(quality_verdicts(df))
        return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (< 2 minutes)")
    parser.add_argument("--budget-min", type=float, default=92.0)
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--ema-epochs", type=float, default=10.0)
    parser.add_argument("--quality-epochs", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs-dir", type=Path)
    parser.add_argument(
        "--reuse-tuning",
        action="store_true",
        help=f"take the tuning of optimizers already in RUNS_DIR/{TUNING_FILE} (a restart)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    if args.quick:
        plan = Plan(**QUICK, epochs=1.0, ema_epochs=0.5, quality_epochs=0.5)
        out = args.out or root / "runs" / "paper-train-bench-quick" / "RESULTS.md"
        runs_dir = args.runs_dir or root / "runs" / "paper-train-bench-quick"
    else:
        plan = Plan(epochs=args.epochs, ema_epochs=args.ema_epochs,
                    quality_epochs=args.quality_epochs)  # fmt: skip
        out = args.out or Path(__file__).with_name("RESULTS-paper-training.md")
        runs_dir = args.runs_dir or root / "runs" / "paper-train-bench"
    Bench(plan, args.budget_min * 60, out, runs_dir, args.quick, args.reuse_tuning).main()


if __name__ == "__main__":
    main()
