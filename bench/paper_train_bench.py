"""The seed paper's second claim at its own scale on this CPU: the CURVES autoencoder
(784-400-200-100-50-25-6, mirrored) on the generated 20,000-image CURVES, every optimizer.

    .venv/bin/python bench/paper_train_bench.py [--budget-min 100] [--jobs 2] [--resume]
    .venv/bin/python bench/paper_train_bench.py --quick      # smoke test, < 2 minutes

Why: the claim (the KPSVD family trains faster than KFAC, Adam and SGD) was tested only on the
small ``curves-small`` preset (bench/train_bench.py). Here every run is a
:func:`core.paper.runner.run_reproduction` with the paper's settings (:data:`PAPER_DEFAULTS`:
batch 128, Fisher batch 32, T_cov = T_inv = 100, EMA 0.95 of the factors, KL-clip 1e-2, momentum
0.9, weight decay 1e-3, Xavier-uniform initialisation), and the verdicts are
:func:`core.paper.verdicts.training_verdicts` / :func:`core.paper.verdicts.quality_verdicts`, so
this script only chooses what to run and writes the tables.

The unit of work is a *cell*: one optimizer, one (lr, damping, ema_mode), one seed, one length.
Cells run ``--jobs`` at a time, one process and one thread each (so on an otherwise idle
machine each has a core), in the order of :meth:`Bench.jobs`; a cell waits until the tuning it
needs is done. Every finished cell is written to ``RUNS_DIR/cells/KEY/`` (settings, results,
seconds, commit, load); ``--resume`` takes cells already there instead of rerunning them.
Time budget: a cell whose estimated end (its optimizer's measured seconds per step × its
steps) falls past ``--budget-min`` minutes is not started and is listed as not run.

What runs, in priority order:

1. Tuning on seed 0 of every optimizer on a stated grid (:data:`GRID_LR` for SGD/Adam,
   :data:`NATURAL_LR` × :data:`NATURAL_DAMPING` for the natural-gradient methods), each cell
   :data:`TUNE_EPOCHS` epochs (an earlier 1-epoch tuning picked KFAC's damping 0.01, which blew
   up later on other seeds: a tuning run must see several epochs). Criterion: the
   reproduction's final-loss rule (mean minibatch training loss over the last epoch of steps;
   a diverged run scores +inf). ``lanczos`` is not tuned or trained: on the engine's Gram route
   it computes Deflation's two terms; the check of phase 7 measures how far apart they are.
2. The claim: :data:`CLAIM_OPTIMIZERS` at their tuned settings, ``--epochs`` epochs, seeds
   :data:`SEEDS` (not the tuning seed).
3. Same settings: where a KPSVD-family method's tuned (lr, damping) differ from KFAC's, KFAC
   at the method's and the method at KFAC's, same seeds and length, so the claim is also
   compared between approximations at equal settings, not only between tunings.
4. Approximation quality over training (the reproduction's ``quality`` experiment: KFAC trains
   with its tuned settings and Fisher batch 256, every method is measured on CURVES' 50→25
   layer every half epoch), ``--quality-epochs`` epochs, seed 1.
5. Curvature averages (``ema_mode``): kpsvd "window" and "fisher" at its tuned settings, seeds
   :data:`SEEDS`, ``--ema-epochs`` epochs, against the phase-2 "factors" runs cut at the same
   epoch (same initialisation and minibatches).
6. The comparison rows :data:`EXTRA_OPTIMIZERS`, tuned and trained like phases 1-2.
7. Lanczos against Deflation: ``lanczos`` at Deflation's tuned settings, seed 1,
   :data:`LANCZOS_EPOCHS` epochs, step by step against Deflation's phase-2 run.

Writes ``--out`` (markdown: machine, load, settings, every table as measured, verdicts;
rewritten after every cell, so an interrupted bench leaves its partial results, labelled as
such; anything after the line :data:`MARKER`, e.g. a hand-written analysis, is kept) and the
reproduction folders ``training`` and ``quality`` (settings.json, results.csv, verdicts.csv,
report.html with the loss against epoch and wall time) under ``--runs-dir`` at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.engine.methods import KPSVD_FAMILY  # noqa: E402
from core.paper.contents import summary_table  # noqa: E402
from core.paper.files import RESULTS_FILE, SETTINGS_FILE, write_reproduction  # noqa: E402
from core.paper.runner import run_reproduction  # noqa: E402
from core.paper.spec import PAPER_DEFAULTS, ReproduceSpec  # noqa: E402
from core.paper.verdicts import final_losses, quality_verdicts, training_verdicts  # noqa: E402
from core.training.data import load_dataset  # noqa: E402
from core.training.defaults import FIRST_ORDER  # noqa: E402

GRID_LR = {"sgd": (1e-4, 3e-4, 1e-3, 3e-3), "adam": (3e-4, 1e-3, 3e-3, 1e-2)}
NATURAL_LR = (0.03, 0.3)
NATURAL_DAMPING = (0.01, 0.1, 1.0)
TUNE_EPOCHS = 5.0
TUNE_SEED = 0
SEEDS = (1, 2, 3)
CLAIM_OPTIMIZERS = ("kfac", "kpsvd", "deflation", "kfac_corrected", "adam", "sgd")
EXTRA_OPTIMIZERS = ("exact", "ekfac", "shampoo")
EMA_RUNS = (("kpsvd", "window"), ("kpsvd", "fisher"))
LANCZOS_EPOCHS = 2.0
EPOCH_MARKS = (1, 2, 5, 10, 15, 20)
MARKER = "<!-- paper_train_bench.py keeps everything below this line -->"
QUICK = {
    "grid_lr": {"sgd": (1e-3, 3e-3), "adam": (1e-3,)},
    "natural_lr": (0.3,),
    "natural_damping": (0.1, 1.0),
    "tune_epochs": 0.25,
    "claim": ("kfac", "kpsvd", "sgd"),
    "seeds": (1, 2),
    "extra": (),
    "ema": (("kpsvd", "window"),),
    "lanczos_epochs": 0.25,
}


@dataclass(frozen=True)
class Cell:
    """One run: ``optimizer`` at (lr, damping, ema_mode) for ``epochs`` epochs on ``seed``."""

    experiment: str
    optimizer: str
    lr: float
    damping: float | None
    ema_mode: str
    epochs: float
    seed: int

    @property
    def key(self) -> str:
        """The folder name: every field, so a changed setting is a different cell."""
        damping = "none" if self.damping is None else f"{self.damping:g}"
        return (f"{self.experiment}-{self.optimizer}-lr{self.lr:g}-d{damping}-{self.ema_mode}"
                f"-e{self.epochs:g}-s{self.seed}")  # fmt: skip

    @property
    def settings(self) -> tuple[float, float | None]:
        return self.lr, self.damping


@dataclass
class Outcome:
    """A finished cell: the reproduction's settings and results, its time and conditions."""

    cell: Cell
    settings: dict
    df: pd.DataFrame
    seconds: float
    load: float  # 1-min load average when it finished
    commit: str

    @property
    def loss(self) -> float:
        return final_losses(self.df, self.cell.optimizer)[self.cell.seed]


@dataclass
class Job:
    """Cells of one phase for one optimizer, made once the tuning of ``needs`` is done."""

    label: str
    needs: tuple[str, ...]
    cells: Callable[[], list[Cell]]


@dataclass
class Plan:
    """What to run (the defaults above; ``--quick`` shrinks it)."""

    grid_lr: dict = field(default_factory=lambda: dict(GRID_LR))
    natural_lr: tuple[float, ...] = NATURAL_LR
    natural_damping: tuple[float, ...] = NATURAL_DAMPING
    tune_epochs: float = TUNE_EPOCHS
    claim: tuple[str, ...] = CLAIM_OPTIMIZERS
    seeds: tuple[int, ...] = SEEDS
    extra: tuple[str, ...] = EXTRA_OPTIMIZERS
    ema: tuple[tuple[str, str], ...] = EMA_RUNS
    lanczos_epochs: float = LANCZOS_EPOCHS
    epochs: float = 20.0
    ema_epochs: float = 10.0
    quality_epochs: float = 20.0

    def grid(self, name: str) -> list[tuple[float, float | None]]:
        """(lr, damping) cells for ``name`` (damping ``None``: first-order, none to tune)."""
        if name in FIRST_ORDER:
            return [(lr, None) for lr in self.grid_lr[name]]
        return [(lr, d) for d in self.natural_damping for lr in self.natural_lr]


# -- the worker processes -----------------------------------------------------------------------

_DATASET = None


def _start_worker() -> None:
    global _DATASET
    torch.set_num_threads(1)
    _DATASET = load_dataset("curves", seed=0)


def run_cell(cell: Cell) -> tuple[dict, pd.DataFrame, float]:
    """One :func:`run_reproduction` of ``cell`` (in a worker): (settings, results, seconds)."""
    name = cell.optimizer
    spec = ReproduceSpec(
        cell.experiment,
        "curves",
        epochs=cell.epochs,
        seeds=(cell.seed,),
        optimizers=(name,),
        lrs={name: cell.lr},
        dampings={} if cell.damping is None else {name: cell.damping},
        ema_mode=cell.ema_mode,
        device="cpu",
    )
    t0 = time.perf_counter()
    settings, df = run_reproduction(spec, _DATASET)
    return settings, df, time.perf_counter() - t0


# -- helpers for the report ---------------------------------------------------------------------


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "core"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" (core/ modified)" if dirty.stdout.strip() else "")


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


def merged_settings(outcomes: list[Outcome]) -> dict:
    """One reproduction's settings for several cells (their runs, optimizers and times)."""
    settings = copy.deepcopy(outcomes[0].settings)
    settings["runs"], settings["optimizers"] = [], {}
    for o in outcomes:
        settings["runs"] += o.settings["runs"]
        settings["optimizers"].update(o.settings["optimizers"])
    settings["seeds"] = sorted({o.cell.seed for o in outcomes})
    settings["total_time_s"] = round(sum(o.settings["total_time_s"] for o in outcomes), 3)
    return settings


class Bench:
    """Runs the cells of the module docstring, keeps every result, writes the report."""

    def __init__(self, plan: Plan, budget_s, out: Path, runs_dir: Path, jobs: int, *, quick,
                 resume):  # fmt: skip
        self.plan, self.budget_s, self.out, self.runs_dir = plan, budget_s, out, runs_dir
        self.n_jobs, self.quick, self.resume = jobs, quick, resume
        self.started = time.time()
        self.load_start = load_text()
        self.commit = git_commit()
        self.dataset = load_dataset("curves", seed=0)
        self.per_epoch = self.dataset.n_train // PAPER_DEFAULTS["batch_size"]
        self.done: dict[str, Outcome] = {}
        self.best: dict[str, tuple[float, float | None]] = {}
        self.untunable: set[str] = set()
        self.skipped: list[str] = []
        self.skipped_keys: set[str] = set()
        self.reused = 0
        self.phase = "starting"

    # -- what to run -------------------------------------------------------------------------
    def tuning_cells(self, name: str) -> list[Cell]:
        return [Cell("training", name, lr, d, "factors", self.plan.tune_epochs, TUNE_SEED)
                for lr, d in self.plan.grid(name)]  # fmt: skip

    def runs(self, name, settings=None, *, mode="factors", epochs=None, seeds=None,
             experiment="training") -> list[Cell]:  # fmt: skip
        """``name``'s cells at ``settings`` (default: its tuned ones)."""
        lr, damping = settings or self.best[name]
        epochs = self.plan.epochs if epochs is None else epochs
        return [Cell(experiment, name, lr, damping, mode, epochs, s)
                for s in (self.plan.seeds if seeds is None else seeds)]  # fmt: skip

    def controls(self, method: str) -> list[Cell]:
        """KFAC at ``method``'s tuned settings and ``method`` at KFAC's, when they differ."""
        if self.best[method] == self.best["kfac"]:
            return []
        return self.runs("kfac", self.best[method]) + self.runs(method, self.best["kfac"])

    def jobs(self) -> list[Job]:
        """Every job, highest priority first (the phases of the module docstring)."""
        p = self.plan
        tuned = [*p.claim, *p.extra]
        family = [m for m in p.claim if m in KPSVD_FAMILY]

        def tuning(names) -> list[Job]:
            return [Job(f"tuning {n}", (), lambda n=n: self.tuning_cells(n)) for n in names]

        def training(names) -> list[Job]:
            return [Job(f"{n}, seeds {p.seeds}", (n,), lambda n=n: self.runs(n)) for n in names]

        def quality() -> list[Cell]:
            return self.runs("kfac", epochs=p.quality_epochs, seeds=p.seeds[:1],
                             experiment="quality")  # fmt: skip

        def lanczos() -> list[Cell]:
            return self.runs("lanczos", self.best["deflation"], epochs=p.lanczos_epochs,
                             seeds=p.seeds[:1])  # fmt: skip

        jobs = tuning(p.claim) + training(p.claim)
        if "kfac" in p.claim:
            jobs += [Job(f"control: kfac at {m}'s settings", ("kfac", m),
                         lambda m=m: self.controls(m)) for m in family]  # fmt: skip
        if "kfac" in tuned:
            jobs.append(Job("quality experiment", ("kfac",), quality))
        jobs += [Job(f"{n} ema_mode={m}", (n,), lambda n=n, m=m: self.runs(
            n, mode=m, epochs=p.ema_epochs)) for n, m in p.ema if n in tuned]  # fmt: skip
        jobs += tuning(p.extra) + training(p.extra)
        if "deflation" in tuned:
            jobs.append(Job("lanczos check", ("deflation",), lanczos))
        return jobs

    # -- running -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:7.0f} s] {msg}", flush=True)

    def seconds_per_step(self, name: str) -> float:
        """Measured elapsed seconds per step of ``name`` (else of the slowest optimizer of its
        kind measured so far; 0 before any)."""
        own = [o for o in self.done.values() if o.cell.optimizer == name]
        if own:
            return sum(o.seconds for o in own) / sum(len(o.df) for o in own)
        kind = name in FIRST_ORDER
        rates = [self.seconds_per_step(n) for n in {o.cell.optimizer for o in self.done.values()}
                 if (n in FIRST_ORDER) == kind]  # fmt: skip
        return max(rates, default=0.0)

    def estimate(self, cell: Cell) -> float:
        extra = 1.25 if cell.ema_mode != "factors" or cell.experiment == "quality" else 1.0
        return extra * self.seconds_per_step(cell.optimizer) * cell.epochs * self.per_epoch

    def cached(self, cell: Cell) -> Outcome | None:
        folder = self.runs_dir / "cells" / cell.key
        if not (self.resume and (folder / "meta.json").is_file()):
            return None
        meta = json.loads((folder / "meta.json").read_text())
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        df = pd.read_csv(folder / RESULTS_FILE)
        return Outcome(cell, settings, df, meta["seconds"], meta["load"], meta["commit"])

    def record(self, outcome: Outcome, *, save: bool) -> None:
        cell = outcome.cell
        self.done[cell.key] = outcome
        if save:
            folder = self.runs_dir / "cells" / cell.key
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SETTINGS_FILE).write_text(json.dumps(outcome.settings, default=str))
            outcome.df.to_csv(folder / RESULTS_FILE, index=False)
            meta = {"cell": asdict(cell), "seconds": outcome.seconds, "load": outcome.load,
                    "commit": outcome.commit}  # fmt: skip
            (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        else:
            self.reused += 1
        status = ", ".join(r["status"] for r in outcome.settings["runs"])
        self.log(f"{cell.key}: {status}, loss {outcome.loss:.2f}, {outcome.seconds:.0f} s"
                 + ("" if save else " (reused)"))  # fmt: skip
        self.settle_tuning(cell.optimizer)

    def settle_tuning(self, name: str) -> None:
        """Pick ``name``'s best cell once its whole grid is done (or given up)."""
        if name in self.best or name in self.untunable or name == "lanczos":
            return
        cells = self.tuning_cells(name)
        missing = [c for c in cells if c.key not in self.done]
        if any(c.key not in self.skipped_keys for c in missing):
            return
        scored = [(self.done[c.key].loss, c) for c in cells if c.key in self.done]
        finite = [(loss, c) for loss, c in scored if math.isfinite(loss)]
        if finite:
            self.best[name] = min(finite, key=lambda t: t[0])[1].settings
            self.log(f"{name} tuned: lr, damping = {self.best[name]}")
        else:
            self.untunable.add(name)

    def main(self) -> None:
        self.log(f"load at start {self.load_start}; budget {self.budget_s / 60:.0f} min, "
                 f"{self.n_jobs} jobs, commit {self.commit}")  # fmt: skip
        pending = list(enumerate(self.jobs()))
        queue: list[tuple[int, Cell]] = []
        seen: set[str] = set()
        running = {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.n_jobs, mp_context=context,
                                 initializer=_start_worker) as pool:  # fmt: skip
            while pending or queue or running:
                for item in list(pending):
                    prio, job = item
                    if any(n in self.untunable for n in job.needs):
                        pending.remove(item)
                        self.skipped.append(f"{job.label}: its tuning did not finish")
                    elif all(n in self.best for n in job.needs):
                        pending.remove(item)
                        fresh = [c for c in job.cells() if c.key not in seen]
                        seen.update(c.key for c in fresh)
                        queue += [(prio, c) for c in fresh]
                queue.sort(key=lambda t: t[0])
                while queue and len(running) < self.n_jobs:
                    prio, cell = queue.pop(0)
                    self.phase = cell.key
                    if (outcome := self.cached(cell)) is not None:
                        self.record(outcome, save=False)
                        continue
                    need = self.estimate(cell)
                    if time.time() + need > self.started + self.budget_s:
                        self.skipped_keys.add(cell.key)
                        self.skipped.append(f"{cell.key}: needs about {need / 60:.0f} min, "
                                            f"{self.left() / 60:.0f} min left")  # fmt: skip
                        self.log(f"SKIPPED {self.skipped[-1]}")
                        self.settle_tuning(cell.optimizer)
                        continue
                    running[pool.submit(run_cell, cell)] = cell
                if not running:
                    ready = any(all(n in self.best for n in j.needs) for _, j in pending)
                    if pending and not queue and not ready:  # tuning that will never come
                        for _, job in pending:
                            self.skipped.append(f"{job.label}: its tuning did not finish")
                        pending.clear()
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell = running.pop(future)
                    settings, df, seconds = future.result()
                    self.record(Outcome(cell, settings, df, seconds, os.getloadavg()[0],
                                        self.commit), save=True)  # fmt: skip
                self.write()
        self.phase = "done"
        self.write()
        self.log(f"done; report {self.out}")

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    # -- the results -------------------------------------------------------------------------
    def outcomes(self, experiment="training", mode="factors", epochs=None) -> list[Outcome]:
        """Finished cells of ``experiment`` / ``mode`` / ``epochs`` (default: the claim's)
        on the plan's seeds (so not the tuning runs)."""
        epochs = self.plan.epochs if epochs is None else epochs
        return [o for o in self.done.values() if o.cell.experiment == experiment
                and o.cell.ema_mode == mode and o.cell.epochs == epochs
                and o.cell.seed in self.plan.seeds and o.cell.optimizer != "lanczos"]  # fmt: skip

    def claim_outcomes(self) -> list[Outcome]:
        """Phases 2 and 4: each optimizer at its tuned settings."""
        return [o for o in self.outcomes() if self.best.get(o.cell.optimizer) == o.cell.settings]

    def runs_at(self, name: str, settings: tuple[float, float | None]) -> list[Outcome]:
        """``name``'s claim-length runs at ``settings`` (tuned or not)."""
        return [o for o in self.outcomes() if o.cell.optimizer == name
                and o.cell.settings == settings]  # fmt: skip

    def quality_outcome(self) -> Outcome | None:
        found = self.outcomes("quality", epochs=self.plan.quality_epochs)
        return found[0] if found else None

    @staticmethod
    def frame(outcomes: list[Outcome]) -> pd.DataFrame | None:
        return pd.concat([o.df for o in outcomes], ignore_index=True) if outcomes else None

    # -- the report ------------------------------------------------------------------------
    def write(self) -> None:
        """Rewrite the report (keeping anything after :data:`MARKER`); once every cell is done,
        write the result folders (an interrupted bench leaves its cells for ``--resume``)."""
        lines = self.report()
        kept = ""
        if self.out.is_file():
            old = self.out.read_text(encoding="utf-8")
            kept = old[old.index(MARKER) + len(MARKER) :] if MARKER in old else ""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join([*lines, "", MARKER]) + kept, encoding="utf-8")
        if self.phase != "done":
            return
        claim = self.claim_outcomes()
        if claim:
            write_reproduction(self.runs_dir / "training", merged_settings(claim),
                               self.frame(claim))  # fmt: skip
        if (quality := self.quality_outcome()) is not None:
            write_reproduction(self.runs_dir / "quality", quality.settings, quality.df)

    def report(self) -> list[str]:
        done = self.phase == "done"
        elapsed = time.time() - self.started
        loads = [o.load for o in self.done.values()]
        status = (
            "Complete."
            if done
            else f"**PARTIAL RESULTS: the bench was still running (at {self.phase}) when "
            f"this file was written; tables below hold only the runs finished by then.**"
        )
        batch = PAPER_DEFAULTS["batch_size"]
        lines = [
            "# Paper-scale training benchmark: CURVES (issue 10)"
            + (" — QUICK SMOKE RUN" if self.quick else ""),
            "",
            status,
            "",
            f"Generated by `bench/paper_train_bench.py{' --quick' if self.quick else ''}` at "
            f"commit {self.commit} (runs made at "
            f"{', '.join(sorted({o.commit for o in self.done.values()})) or '—'}), started "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.started))}. Machine: "
            f"{platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'a CUDA GPU present but not used' if torch.cuda.is_available() else 'no GPU'}; "
            f"torch {torch.__version__}, float32 training (curvature in float64). "
            f"{self.n_jobs} runs at a time, each its own process on one thread. Load average "
            f"at the start: {self.load_start}; when runs finished: "
            + (f"{min(loads):.2f}–{max(loads):.2f} (1 min)" if loads else "—")
            + f"; at this writing: {load_text()}. "
            f"{'Total wall time' if done else 'Wall time so far'}: {elapsed / 60:.1f} min "
            f"(budget {self.budget_s / 60:.0f} min)."
            + (
                f" {self.reused} run(s) read back from an earlier start (`--resume`)."
                if self.reused
                else ""
            ),  # fmt: skip
            "",
            "## Setup",
            "",
            f"Dataset: {self.dataset.label}, {self.dataset.n_train:,} training and "
            f"{self.dataset.n_test:,} test images (28×28), BCE loss (mean per-sample NLL summed "
            f"over pixels). Network: preset `curves` (784-400-200-100-50-25-6, mirrored; ReLU; "
            f"sigmoid + BCE), {PAPER_DEFAULTS['init']} initialisation, zero biases. "
            f"Batch {batch} ({self.per_epoch} steps per epoch), Fisher batch "
            f"{round(batch * PAPER_DEFAULTS['fisher_batch_fraction'])} (true Fisher), "
            f"T_cov = T_inv = {PAPER_DEFAULTS['t_cov']}, EMA {PAPER_DEFAULTS['ema']} "
            f'(`ema_mode="{PAPER_DEFAULTS["ema_mode"]}"` unless stated), KL-clip '
            f"{PAPER_DEFAULTS['kl_clip']}, momentum {PAPER_DEFAULTS['momentum']}, weight decay "
            f"{PAPER_DEFAULTS['weight_decay']}; CPU. Every run is a "
            "`core.paper.runner.run_reproduction`; wall time is training time only "
            "(evaluation excluded).",
            "",
        ]
        for section in (
            self.tuning_section,
            self.claim_section,
            self.control_section,
            self.quality_section,
            self.ema_section,
            self.lanczos_section,
        ):
            lines += section()  # fmt: skip
        lines += ["## Not run", ""]
        lines += [f"- {s}" for s in self.skipped] or ["- nothing skipped by the time budget"]
        if not done:
            lines.append("- (bench still running)")
        return lines

    def tuning_section(self) -> list[str]:
        p = self.plan

        def values(xs) -> str:
            return "{" + ", ".join(f"{v:g}" for v in xs) + "}"

        first = "; ".join(f"{n} lr ∈ {values(p.grid_lr[n])}" for n in p.grid_lr)
        lines = [
            f"## 1. Tuning (seed {TUNE_SEED}) and time per step",
            "",
            f"Grid: {first}; every natural-gradient method lr ∈ {values(p.natural_lr)} × "
            f"damping ∈ {values(p.natural_damping)}. Every tuning run: {p.tune_epochs:g} "
            "epochs; criterion: mean minibatch training loss over the last epoch of steps (the "
            "reproduction's final-loss rule; a diverged run: inf). lanczos is not tuned (see "
            "section 6). s/step: elapsed seconds per step over all of the optimizer's runs, "
            "refreshes and evaluation included.",
            "",
        ]
        rows = []
        for name in [*p.claim, *p.extra]:
            cells = [c for c in self.tuning_cells(name) if c.key in self.done]
            if not cells:
                continue
            lr, damping = self.best.get(name, (math.nan, None))
            grid = "; ".join(
                f"{c.lr:g}" + ("" if c.damping is None else f"/{c.damping:g}")
                + f": {self.done[c.key].loss:.2f}" for c in cells
            )  # fmt: skip
            rows.append([name, f"{lr:g}", "—" if damping is None else f"{damping:g}",
                         f"{self.seconds_per_step(name):.3f}", grid])  # fmt: skip
        lines += md_table(["optimizer", "lr", "damping", "s/step", "grid (lr/damping: loss)"], rows)
        return lines + [""]

    def claim_section(self) -> list[str]:
        outcomes = self.claim_outcomes()
        if not outcomes:
            return ["## 2. The claim", "", "No run finished yet.", ""]
        df = self.frame(outcomes)
        settings = merged_settings(outcomes)
        lines = [
            "## 2. Training: final loss, loss against epoch and wall time",
            "",
            f"{self.plan.epochs:g} epochs, each optimizer at its tuned settings; seeds per "
            "optimizer as listed (n). Summary from `core.paper.contents.summary_table` (final "
            "train loss: mean minibatch loss over the last epoch of steps; mean ± sd over "
            "seeds, ddof 1).",
            "",
        ]
        lines += frame_table(summary_table(settings, df))
        lines += self.speed_table(outcomes)
        lines += self.epoch_table(df)
        lines += self.wall_time_table(df)
        lines += ["", "### Verdicts (`core.paper.verdicts.training_verdicts`)", "",
                  "Rule: " + settings["rules"]["training"], ""]  # fmt: skip
        lines += frame_table(training_verdicts(df))
        return lines + [""]

    def speed_table(self, outcomes: list[Outcome]) -> list[str]:
        per: dict[str, list[float]] = {}
        for o in outcomes:
            per.setdefault(o.cell.optimizer, []).append(
                1000 * o.df["wall_time_s"].max() / len(o.df)
            )
        ms = {n: sum(v) / len(v) for n, v in per.items()}
        kfac = ms.get("kfac")
        rows = [[n, f"{v:.1f}", f"{v / kfac:.2f}" if kfac else "—"] for n, v in ms.items()]
        return ["", "Training time per step (mean over its seeds, whole runs, refreshes "
                "amortized, evaluation excluded):", ""] + md_table(
            ["optimizer", "ms/step", "× kfac"], rows)  # fmt: skip

    def epoch_table(self, df: pd.DataFrame) -> list[str]:
        marks = [e for e in EPOCH_MARKS if e <= self.plan.epochs] or [self.plan.epochs]
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
        return ["", "Loss against epoch: mean minibatch training loss over epoch e (mean ± sd "
                "over seeds), and the mean training wall time at its end (s):", ""] + md_table(
            ["optimizer", *[f"epoch {e:g}" for e in marks]], rows)  # fmt: skip

    def wall_time_table(self, df: pd.DataFrame) -> list[str]:
        kfac_t = df[df["optimizer"] == "kfac"].groupby("seed")["wall_time_s"].max()
        if not len(kfac_t):
            return []
        t_marks = [round(float(kfac_t.mean()) * f) for f in (0.125, 0.25, 0.5, 1.0)]
        rows = []
        for name, part in df.groupby("optimizer", sort=False):
            end = part.groupby("seed")["wall_time_s"].max().min()
            rows.append([name] + [mean_sd(final_losses(df, name, until=t).values())
                                  + (" (ended)" if end < t else "") for t in t_marks])  # fmt: skip
        return ["", "Loss against wall time: per run the mean minibatch loss over the last "
                "epoch of steps ended by T (`core.paper.verdicts.final_losses(until=T)`), "
                "T = 1/8, 1/4, 1/2 and 1 × KFAC's mean training time; '(ended)' where a run's "
                "training had ended before T:", ""] + md_table(
            ["optimizer", *[f"T = {t} s" for t in t_marks]], rows)  # fmt: skip

    def control_section(self) -> list[str]:
        """Each KPSVD-family method against KFAC at the same (lr, damping) (phase 3)."""
        rows = []
        for m in [m for m in KPSVD_FAMILY if m in self.best and "kfac" in self.best]:
            for settings in dict.fromkeys((self.best[m], self.best["kfac"])):
                pair = self.runs_at(m, settings) + self.runs_at("kfac", settings)
                if {o.cell.optimizer for o in pair} != {m, "kfac"}:
                    continue
                table = training_verdicts(self.frame(pair))
                table = table[table["claim"] == f"{m} trains faster than kfac"]
                at = f"lr {settings[0]:g}, damping {settings[1]:g}"
                columns = ["claim", "criterion", "method", "baseline", "verdict", "detail"]
                rows += [[at, *r] for r in table[columns].values.tolist()]
        if not rows:
            return []
        lines = [
            "## 3. Same settings: each KPSVD-family method against KFAC",
            "",
            "Section 2 compares each optimizer at its own tuned settings, so a gap there can "
            f"come from the tuning (seed {TUNE_SEED}, {self.plan.tune_epochs:g} epochs) rather "
            "than the approximation. Here each "
            "method and KFAC run at the same (lr, damping) — the method's tuned settings and "
            "KFAC's —, same seeds and epochs, so they differ only in the Fisher approximation. "
            "Rule as in section 2 (where both tunings agree, the rows repeat section 2's).",
            "",
        ]
        lines += md_table(["at", "claim", "criterion", "method", "kfac", "verdict", "detail"], rows)
        return lines + [""]

    def quality_section(self) -> list[str]:
        outcome = self.quality_outcome()
        if outcome is None:
            return []
        settings, df, cell = outcome.settings, outcome.df, outcome.cell
        q = settings["quality"]
        layers = ", ".join(f"layer {x['number']} ({x['name']})" for x in q["layers"])
        lines = [
            "## 4. Approximation quality over training",
            "",
            f"The reproduction's `quality` experiment: KFAC (tuned lr/damping "
            f"{cell.lr:g}/{cell.damping:g}, Fisher batch {q['fisher_batch']}) trains for "
            f"{cell.epochs:g} epochs, seed {cell.seed}; every {q['every_steps']} steps every "
            f"method is measured on {layers} on a fresh Fisher minibatch of "
            f"{q['fisher_batch']}. Mean errors over the tracked points:",
            "",
        ]
        lines += frame_table(summary_table(settings, df))
        lines += ["", "Verdicts (`core.paper.verdicts.quality_verdicts`; rule: "
                  + settings["rules"]["quality"] + "):", ""]  # fmt: skip
        lines += frame_table(quality_verdicts(df))
        return lines + [""]

    def ema_section(self) -> list[str]:
        rows = []
        e = self.plan.ema_epochs
        for name in dict.fromkeys(n for n, _ in self.plan.ema):
            if name not in self.best:
                continue
            factors = [o for o in self.claim_outcomes() if o.cell.optimizer == name]
            cut = self.frame(factors)
            if cut is not None:
                rows.append(self.ema_row(name, "factors", cut[cut["epoch"] <= e + 1e-9]))
            for _, mode in [r for r in self.plan.ema if r[0] == name]:
                runs = [o for o in self.outcomes(mode=mode, epochs=e) if o.cell.optimizer == name
                        and o.cell.settings == self.best[name]]  # fmt: skip
                if runs:
                    rows.append(self.ema_row(name, mode, self.frame(runs)))
        if not rows:
            return []
        return [
            "## 5. Curvature averages (`ema_mode`)",
            "",
            f"Tuned settings (tuned with `factors`), {e:g} epochs, seeds as listed; `factors` "
            "is the claim's run of the same seed cut at the same epoch (same initialisation "
            "and minibatches). Loss: mean minibatch training loss over the last epoch of steps "
            "(mean ± sd over seeds); time: training time.",
            "",
            *md_table(
                ["method", "ema_mode", f"loss at epoch {e:g}", "per seed", "time (s)", "status"],
                rows,
            ),  # fmt: skip
            "",
        ]

    @staticmethod
    def ema_row(name: str, mode: str, df: pd.DataFrame) -> list:
        losses = final_losses(df, name)
        times = df.groupby("seed")["wall_time_s"].max()
        per_seed = ", ".join(f"{s}: {v:.2f}" for s, v in sorted(losses.items()))
        return [name, mode, mean_sd(losses.values()), per_seed, mean_sd(times.values),
                ", ".join(sorted(df["status"].unique()))]  # fmt: skip

    def lanczos_section(self) -> list[str]:
        checks = [o for o in self.done.values() if o.cell.optimizer == "lanczos"]
        ref = [
            o
            for o in self.claim_outcomes()
            if o.cell.optimizer == "deflation" and checks and o.cell.seed == checks[0].cell.seed
        ]
        if not checks or not ref:
            return []
        a = checks[0].df.sort_values("step").reset_index(drop=True)
        b = ref[0].df.sort_values("step").reset_index(drop=True).iloc[: len(a)]
        gap = (a["train_loss"] - b["train_loss"]).abs()
        rel = gap / b["train_loss"].abs()
        first = int(a["step"][gap > 0].iloc[0]) if (gap > 0).any() else None
        return [
            "## 6. Lanczos against Deflation",
            "",
            f"`lanczos` at Deflation's tuned settings, seed {checks[0].cell.seed}, "
            f"{checks[0].cell.epochs:g} epochs ({len(a)} steps), against the same steps of "
            f"Deflation's run: largest |Δ minibatch loss| {gap.max():.3g} (relative "
            f"{rel.max():.2g}); first step that differs: "
            f"{'none' if first is None else first}. Time per step: lanczos "
            f"{1000 * a['wall_time_s'].iloc[-1] / len(a):.1f} ms, deflation "
            f"{1000 * b['wall_time_s'].iloc[-1] / len(b):.1f} ms.",
            "",
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (< 2 minutes)")
    parser.add_argument("--budget-min", type=float, default=100.0)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one per core)")
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--ema-epochs", type=float, default=10.0)
    parser.add_argument("--quality-epochs", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs-dir", type=Path)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="take runs already in RUNS_DIR/cells instead of rerunning them",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        plan = Plan(**QUICK, epochs=1.0, ema_epochs=0.5, quality_epochs=0.5)
        out = args.out or ROOT / "runs" / "paper-train-bench-quick" / "RESULTS.md"
        runs_dir = args.runs_dir or ROOT / "runs" / "paper-train-bench-quick"
    else:
        plan = Plan(epochs=args.epochs, ema_epochs=args.ema_epochs,
                    quality_epochs=args.quality_epochs)  # fmt: skip
        out = args.out or Path(__file__).with_name("RESULTS-paper-training.md")
        runs_dir = args.runs_dir or ROOT / "runs" / "paper-train-bench"
    Bench(plan, args.budget_min * 60, out, runs_dir, args.jobs, quick=args.quick,
          resume=args.resume).main()  # fmt: skip


if __name__ == "__main__":
    main()
