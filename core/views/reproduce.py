"""The seed paper's experiments in one command (``python -m core reproduce``), their verdicts,
and the results folders they leave behind (read again by the app's "Paper reproductions" page).

The seed paper (Koroko et al. 2022, "Efficient approximations of the Fisher matrix in neural
networks using Kronecker product singular value decomposition") makes two claims on the deep
autoencoders of Hinton & Salakhutdinov (2006) (CURVES 784-400-200-100-50-25-6, MNIST
784-1000-500-250-30, FACES 625-2000-1000-500-30; :data:`core.training.models.PRESETS`):

1. the KPSVD family (``kpsvd``, ``deflation``, ``lanczos``, ``kfac_corrected``) approximates a
   layer's Fisher block better than KFAC, in relative Frobenius error ‖F − F̃‖_F/‖F‖_F and in
   spectrum error ‖λ(F) − λ(F̃)‖₂/‖λ(F)‖₂, over training (experiment ``quality``);
2. the KPSVD family trains these autoencoders faster than KFAC, Adam and SGD, against epochs
   and against wall time (experiment ``training``).

Settings: the paper's network for the dataset; where the paper is silent, the defaults of the
authors' public training script: minibatch 128, Fisher minibatch a quarter of it (32),
T_cov = T_inv = 100, EMA 0.95 (of the Kronecker factors, ``ema_mode="factors"``, as their code
does), KL-clip 1e-2, momentum 0.9, weight decay 1e-3, Xavier-uniform initialisation with zero biases
(``init="xavier_uniform"`` of :func:`core.training.models.build_model`), 100 epochs. One of their
settings is NOT reproduced, and every written ``settings.json`` says so (``deviations``): their
80/20 train/validation split (here the whole training set trains and the test set gives the test
loss). ``ReproduceSpec.ema_mode`` can replace the factor EMA by another curvature average
(:data:`core.training.optim.EMA_MODES`), e.g. to compare them. Learning rates and dampings are each
optimizer's per-preset defaults (:func:`core.training.optim.default_lr`,
:func:`core.training.optim.default_damping`) unless given. The quality experiment measures on the
paper's Fisher minibatches (:data:`QUALITY_FISHER_BATCH`: 256 CURVES, 512 MNIST, 1024 FACES);
because :class:`core.training.runner.TrainingRun` draws its quality minibatch with the training
optimizer's Fisher batch size, that optimizer (KFAC by default) uses the same Fisher batch there.

Verdict rules (:func:`training_verdicts`, :func:`quality_verdicts`; each verdict row carries the
numbers that decide it):

* training, "at equal epochs": per run (optimizer, seed) the final training loss is the mean
  minibatch loss over the last epoch of steps (at least one step); a run that diverged scores
  +inf. Across seeds: mean ± sd (ddof 1). Method X trains faster than baseline B when
  ``mean_X + sd_X < mean_B − sd_B`` (one-sd intervals apart): **reproduced**; otherwise **not
  reproduced** (the detail says whether B was lower or the two are within the seed spread).
  **Not testable here** when X or B was not run, or with fewer than two seeds (no spread).
* training, "at equal wall time": the same rule on the training loss at the time budget T
  every run was given: each run trains its epochs and then on until its training time reaches
  T (:func:`_budgeted`), so every optimizer, fast or slow, has had T seconds. T is given
  (``--time-budget-s S``) or, by default (``auto``), the longest time any optimizer needed for
  the epochs on the first seed (the faster runs of that seed are rerun to T). Per run: the mean
  minibatch loss over the last epoch of steps that ended by T; a run that diverged before T
  scores +inf. With ``--time-budget-s off`` the runs stop at their epochs and T is the
  shortest total training time among the finished runs of X and B. The equal-epochs verdict
  reads only the steps of the epochs asked for, however long a run went on.
* quality: at every tracked (step, seed) point of a layer, X's error is compared with KFAC's on
  the same Fisher minibatch; **reproduced** when X is lower at ≥ 90 % of the points
  (:data:`QUALITY_SHARE`), **not reproduced** otherwise (the detail gives the share and the
  mean errors); **not testable here** when X or KFAC was not tracked.

A results folder holds ``settings.json`` (every setting, the verdict rules, the environment),
``results.csv`` (one row per step and run), ``verdicts.csv`` and ``report.html`` (plotly.js
inlined, works offline). :func:`load_report` reads one back for the app: only the names
:func:`list_reports` found in the host's ``$KRONOSCOPE_RESULTS_DIR``, never through a link that
leads out of that folder, each file size-capped (:mod:`core.views.report_files`), parsed once
per change of its files, every value that reaches a figure or a table checked, failures as one
sentence that names the file and what is wrong in it, and no server path.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import settings
from ..engine.methods import KPSVD_FAMILY, METHODS
from ..training.datasets import DATASET_SPECS, Dataset
from ..training.defaults import OPTIMIZERS
from ..training.models import PRESETS, build_model, describe_layers
from ..training.optim import EMA_MODES
from ..training.runner import RunConfig, TrainingRun
from .report import mean_sd_figure, write_html_report
from .report_files import ReportCache, ReportError, read_capped, real_file, real_inside, stamp

__all__ = [
    "BASELINES",
    "BUDGET_STEP_FACTOR",
    "EXPERIMENTS",
    "PAPER_DEFAULTS",
    "QUALITY_FISHER_BATCH",
    "QUALITY_LAYERS",
    "REPRO_DATASETS",
    "RESULTS_DIR_ENV",
    "TRAINING_OPTIMIZERS",
    "ReportError",
    "Reproduction",
    "ReproduceSpec",
    "list_reports",
    "load_report",
    "quality_verdicts",
    "report_figures",
    "results_dir",
    "run_reproduction",
    "summary_table",
    "TIME_BUDGETS",
    "training_verdicts",
    "verdicts",
    "write_reproduction",
]

EXPERIMENTS = ("quality", "training")
REPRO_DATASETS = ("curves", "mnist", "faces")
BASELINES = ("kfac", "adam", "sgd")
# Lanczos is left out by default: on the engine's Gram route it computes the same two terms as
# Deflation, so as an optimizer it gives the same updates (core/training/optim.py); --optimizers
# adds it.
TRAINING_OPTIMIZERS = ("sgd", "adam", "kfac", "kpsvd", "deflation", "kfac_corrected")
# The authors' public training script, where the paper itself is silent.
PAPER_DEFAULTS = {
    "epochs": 100,
    "batch_size": 128,
    "fisher_batch_fraction": 0.25,
    "t_cov": 100,
    "t_inv": 100,
    "ema": 0.95,
    "ema_mode": "factors",
    "kl_clip": 1e-2,
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "init": "xavier_uniform",
}
# The paper's Fisher minibatches for the approximation-quality experiment.
QUALITY_FISHER_BATCH = {"curves": 256, "mnist": 512, "faces": 1024}
# One small layer per network (the paper tracks "one small layer"; which one is our choice):
# CURVES' 50→25 layer (1,275 parameters: every method's spectrum is exact there), the 250→30
# and 500→30 code layers of MNIST and FACES. --layers picks others.
QUALITY_LAYERS = {
    "curves": ("encoder.linear5",),
    "mnist": ("encoder.linear4",),
    "faces": ("encoder.linear4",),
}
QUALITY_SHARE = 0.9
RESULTS_DIR_ENV = "KRONOSCOPE_RESULTS_DIR"
SETTINGS_FILE, RESULTS_FILE = "settings.json", "results.csv"
VERDICTS_FILE, REPORT_FILE = "verdicts.csv", "report.html"
#: The command exactly as given (server paths included); never served (not a REPORT_FILE).
RERUN_FILE = "rerun.json"
# settings.json is a page of text: a tighter cap than the other files' report_max_bytes()
MAX_SETTINGS_BYTES = 1 << 20
# reports listed, and entries of the results folder looked at to find them
MAX_LISTED = 200
MAX_SCANNED = 10_000
_LAYER_NAME = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
TRAINING_RULE = (
    "Training (each criterion): per run the mean minibatch training loss over its last epoch of "
    "steps (a diverged run: +inf); per optimizer mean ± sd over seeds; 'reproduced' when "
    "mean_X + sd_X < mean_B − sd_B; 'not testable here' with fewer than 2 seeds or a missing "
    "run. Equal wall time: the loss over the last epoch of steps ended by T: the time budget "
    "every run was given (--time-budget-s) when set, else the shortest total time among the "
    "finished runs of the pair."
)
QUALITY_RULE = (
    f"Quality: X's error against KFAC's at every tracked (step, seed) point of the layer; "
    f"'reproduced' when X is lower at ≥ {QUALITY_SHARE:.0%} of the points."
)


# -- what to run ----------------------------------------------------------------------------


#: The named time budgets of the training experiment (besides a number of seconds).
TIME_BUDGETS = ("auto", "off")

#: With a time budget, a run that finished its epochs goes on at most this many times its
#: epoch steps (a bound on the records of a very fast optimizer under a long budget).
BUDGET_STEP_FACTOR = 100


def _check_seconds(value, name: str) -> None:
    """A budget in seconds must be a finite number > 0 (``name`` as the CLI spells it)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass
class ReproduceSpec:
    """One reproduction. ``optimizers``: those compared (training) or the one that trains the
    model (quality). ``n_train``/``n_test``: a subset of the data (``None``: all of it);
    ``max_steps``: a cap on each run's steps (both for quick checks, recorded in the settings).
    ``lrs``/``dampings``: per-optimizer overrides of the per-preset defaults. ``ema_mode``: the
    natural-gradient methods' curvature average (the authors' factor EMA by default).
    ``time_budget_s``: training only, seconds every optimizer's run trains for at least (after
    its epochs it goes on to this wall time, at most :data:`BUDGET_STEP_FACTOR` × its epoch
    steps), and the wall-time verdict compares them at it; ``"auto"`` (the training default):
    the longest time an optimizer needed for the epochs on the first seed; ``"off"``: runs stop
    at their epochs and the wall-time verdict uses the shortest run's time.
    ``metric_budget_s``: quality only, a measure (one method on one layer) whose estimated
    time (:func:`metric_cost_s`) exceeds it is skipped, with a notice in the settings and the
    report."""

    experiment: str
    dataset: str
    epochs: float = PAPER_DEFAULTS["epochs"]
    seeds: tuple[int, ...] = (1, 2, 3)
    optimizers: tuple[str, ...] = ()
    data_path: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    max_steps: int | None = None
    layers: tuple[str, ...] = ()
    quality_every: int | None = None
    eval_every: int | None = None
    device: str | None = None
    lrs: dict[str, float] = field(default_factory=dict)
    dampings: dict[str, float] = field(default_factory=dict)
    ema_mode: str = PAPER_DEFAULTS["ema_mode"]
    time_budget_s: float | str | None = None
    metric_budget_s: float = 60.0

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(
                f"unknown experiment {self.experiment!r}; choose from {', '.join(EXPERIMENTS)}"
            )
        if self.dataset not in REPRO_DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r} for a reproduction; choose from "
                f"{', '.join(REPRO_DATASETS)}"
            )
        if not (isinstance(self.epochs, int | float) and math.isfinite(self.epochs)) or (
            self.epochs <= 0
        ):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs!r}")
        self.seeds = tuple(self.seeds)
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be integers ≥ 0, got {list(self.seeds)}")
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds must differ, got {list(self.seeds)}")
        default = TRAINING_OPTIMIZERS if self.experiment == "training" else ("kfac",)
        self.optimizers = tuple(self.optimizers) or default
        unknown = [n for n in self.optimizers if n not in OPTIMIZERS]
        if unknown:
            raise ValueError(
                f"unknown optimizer(s) {', '.join(unknown)}; choose from {', '.join(OPTIMIZERS)}"
            )
        if len(set(self.optimizers)) < len(self.optimizers):
            raise ValueError(f"optimizers must differ, got {', '.join(self.optimizers)}")
        if self.experiment == "quality" and len(self.optimizers) != 1:
            raise ValueError(
                "the quality experiment trains with one optimizer (it measures every "
                f"approximation on the way); got {', '.join(self.optimizers)}"
            )
        for name in ("n_train", "n_test", "max_steps", "quality_every", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name.replace('_', '-')} must be an integer ≥ 1, got {value!r}")
        for table in (self.lrs, self.dampings):
            stray = [k for k in table if k != "*" and k not in self.optimizers]
            if stray:
                raise ValueError(
                    f"learning rate or damping given for {', '.join(stray)}, which is not run "
                    f"here ({', '.join(self.optimizers)})"
                )
        if self.ema_mode not in EMA_MODES:
            raise ValueError(
                f"unknown ema_mode {self.ema_mode!r}; choose from {', '.join(EMA_MODES)}"
            )
        _check_seconds(self.metric_budget_s, "metric-budget-s")
        if self.experiment != "training":
            if self.time_budget_s is not None:
                raise ValueError("--time-budget-s applies to the training experiment only")
        elif self.time_budget_s is None:
            self.time_budget_s = "auto"
        elif self.time_budget_s not in TIME_BUDGETS:
            _check_seconds(self.time_budget_s, "time-budget-s")
        if self.experiment == "training" and (self.layers or self.quality_every is not None):
            raise ValueError("--layers and --quality-every apply to the quality experiment only")
        self.layers = tuple(self.layers) or QUALITY_LAYERS[self.dataset]

    @property
    def preset(self) -> str:
        return self.dataset

    def run_config(self, name: str, sched: dict, seed: int, layer: str | None = None) -> RunConfig:
        """The run of optimizer ``name`` with the paper's settings (see the module docstring)
        for ``seed``; ``layer``: the layer whose approximation quality it tracks."""
        if self.experiment == "quality":
            fisher_batch = QUALITY_FISHER_BATCH[self.dataset]
        else:
            fisher_batch = max(
                1, round(sched["batch_size"] * PAPER_DEFAULTS["fisher_batch_fraction"])
            )
        return RunConfig.from_settings(
            self.dataset,
            name,
            lr=self.lrs.get(name, self.lrs.get("*")),  # None: the preset's default
            damping=self.dampings.get(name, self.dampings.get("*")),
            t_cov=PAPER_DEFAULTS["t_cov"],
            t_inv=PAPER_DEFAULTS["t_inv"],
            ema=PAPER_DEFAULTS["ema"],
            ema_mode=self.ema_mode,
            kl_clip=PAPER_DEFAULTS["kl_clip"],
            momentum=PAPER_DEFAULTS["momentum"],
            weight_decay=PAPER_DEFAULTS["weight_decay"],
            fisher_batch=fisher_batch,
            preset=self.preset,
            steps=sched["steps"],
            batch_size=sched["batch_size"],
            seed=seed,
            eval_every=sched["eval_every"],
            quality_layer=layer,
            quality_methods=METHODS if layer is not None else (),
            quality_every=sched["quality_every"],
            data_path=self.data_path,
            device=self.device,
        )


def resolve_layers(spec: ReproduceSpec) -> list[tuple[int, str]]:
    """``(number, name)`` of each layer of ``spec.layers`` (names, or numbers from 1)."""
    ds = DATASET_SPECS[spec.dataset]
    model = build_model(spec.preset, input_dim=ds.input_dim, loss=ds.loss)
    infos = describe_layers(model)
    out = []
    for wanted in spec.layers:
        match = [i for i in infos if wanted in (i.name, str(i.number))]
        if not match:
            listed = ", ".join(f"{i.number} {i.name}" for i in infos)
            raise ValueError(
                f"unknown layer {wanted!r} of the {spec.dataset} network; give a number "
                f"1-{len(infos)} or a name: {listed}"
            )
        out.append((match[0].number, match[0].name))
    if len({name for _, name in out}) < len(out):
        raise ValueError(f"layers must differ, got {', '.join(spec.layers)}")
    return out


# -- running --------------------------------------------------------------------------------


def _schedule(spec: ReproduceSpec, dataset: Dataset) -> dict:
    batch = min(PAPER_DEFAULTS["batch_size"], dataset.n_train)
    per_epoch = max(1, dataset.n_train // batch)  # as core.training.runner.TrainingRun counts
    steps = max(1, round(spec.epochs * per_epoch))
    if spec.max_steps is not None:
        steps = min(steps, spec.max_steps)
    return {
        "batch_size": batch,
        "steps_per_epoch": per_epoch,
        "steps": steps,
        "epochs_run": steps / per_epoch,
        "eval_every": spec.eval_every or per_epoch,
        "quality_every": spec.quality_every or max(1, per_epoch // 2),
    }


#: Floating-point operations per second assumed by :func:`metric_cost_s` (float64, a 2-core
#: CPU), fitted to KFAC and KPSVD (0.3-0.4 s measured on a 785 × 1000 layer at m = 512, 1.7 s
#: estimated). The iterative second terms (deflation, Lanczos, KFAC-corrected) can cost far
#: more on flat spectra: the estimate is a floor for them, not a bound.
ASSUMED_FLOPS = 1e10


def metric_cost_s(m: int, da: int, dg: int) -> float:
    """Estimated seconds of one measure (one method's approximation, relative error and
    spectrum error) on a layer with inputs of size ``da``, outputs ``dg`` and a Fisher
    minibatch of ``m``: the matrix-free route forms ``m × m`` Gram matrices (``m²(da + dg)``,
    a few dozen power iterations on them) and eigendecomposes ``da × da`` and ``dg × dg``
    factors (``~10 (da³ + dg³)``); the dense block, ``(da·dg)²`` entries, is never formed."""
    flops = 4 * m * m * (da + dg) + 50 * m * m + 10 * (da**3 + dg**3)
    return flops / ASSUMED_FLOPS


class _LayersRun(TrainingRun):
    """A :class:`TrainingRun` that measures EVERY layer of ``layers`` at each quality checkpoint
    (one training for all layers, not one per layer): the minibatch is captured once for all
    of them. Its quality columns are ``"<layer>\t<column>"``; :func:`run_reproduction` splits
    them into one row per layer. ``log(text)`` receives, per checkpoint and layer, each
    method's measured time. A measure (one method on one layer) is skipped (NaN), with a
    notice in ``notices`` and to ``log``, when its :func:`metric_cost_s` estimate exceeds
    ``budget_s`` or, from the next checkpoint on, once it took longer than ``budget_s`` (the
    estimate is only a floor for the iterative second terms)."""

    def __init__(self, cfg, *, dataset, model, layers, budget_s, log=None) -> None:
        super().__init__(cfg, dataset=dataset, model=model)
        self.layers = layers
        self.budget_s = budget_s
        self.log = log
        self.notices: list[str] = []
        self.too_slow: dict[str, set[str]] = {name: set() for _, name in layers}

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        if self.log is not None:
            self.log(text)

    def _quality(self, x_train, gen) -> dict:
        fishers = self._quality_fishers(x_train, gen, [name for _, name in self.layers])
        step = len(self._records)
        out: dict = {}
        for number, name in self.layers:
            fisher = fishers[name]
            where = f"layer {number} ({name}, m={fisher.m}, da={fisher.da}, dg={fisher.dg})"
            cost = metric_cost_s(fisher.m, fisher.da, fisher.dg)
            slow = self.too_slow[name]
            if cost > self.budget_s and not slow:
                slow.update(self.quality_methods)
                self._notice(
                    f"{where}: each measure is estimated at {cost:.3g} s, over the budget of "
                    f"{self.budget_s:g} s (--metric-budget-s); not measured"
                )
            seconds: dict[str, float] = {}
            out.update(self._measure(fisher, prefix=f"{name}\t", skip=slow, seconds=seconds))
            for method, took in seconds.items():
                if took > self.budget_s:
                    slow.add(method)
                    self._notice(
                        f"{where}: {method} took {took:.3g} s at step {step}, over the budget "
                        f"of {self.budget_s:g} s (--metric-budget-s); not measured from the "
                        "next checkpoint on"
                    )
            if self.log is not None:
                timed = ", ".join(f"{m} {t:.2f} s" for m, t in seconds.items()) or "nothing"
                self.log(f"step {step}: {where}: {timed} (estimated {cost:.3g} s each)")
        return out


def _split_layers(df: pd.DataFrame, layers: list[tuple[int, str]]) -> list[pd.DataFrame]:
    """The table of a :class:`_LayersRun` as one table per layer, with ``layer`` and
    ``layer_number`` columns and the quality columns under their usual names."""
    shared = [c for c in df.columns if "\t" not in c]
    parts = []
    for number, name in layers:
        own = {c: c.split("\t", 1)[1] for c in df.columns if c.startswith(f"{name}\t")}
        part = df[shared + list(own)].rename(columns=own)
        part.insert(1, "layer", name)
        part.insert(2, "layer_number", number)
        parts.append(part)
    return parts


def _budgeted(run: TrainingRun, budget_s: float | None, epoch_steps: int, on_step):
    """``run``'s ``on_step``: calls ``on_step`` and, with a time budget, stops the run once it
    has done its ``epoch_steps`` and its training wall time has reached ``budget_s``."""
    if budget_s is None:
        return on_step

    def step(record: dict) -> None:
        if on_step is not None:
            on_step(record)
        if record["step"] + 1 >= epoch_steps and record["wall_time_s"] >= budget_s:
            run.stop()

    return step


def _train_optimizer(spec, dataset, model, sched, name, *, seed, budget_s, progress) -> TrainingRun:
    """One training run of optimizer ``name`` for ``seed``: its epochs (``sched["steps"]``) and,
    with ``budget_s``, on until its training time reaches ``budget_s`` (:func:`_budgeted`);
    ``run.message`` says how it ended."""
    steps = sched["steps"]
    extended = steps if budget_s is None else _step_cap(spec, steps)
    run = TrainingRun(
        spec.run_config(name, {**sched, "steps": extended}, seed), dataset=dataset, model=model
    )
    on_step = None if progress is None else progress(f"{name} (seed {seed})", run.total_steps)
    run.on_step = _budgeted(run, budget_s, steps, on_step)
    run.run()
    if budget_s is not None and run.status in ("stopped", "finished"):
        wall = _last_wall_time(run)
        if run.status == "stopped":
            run.status = "finished"  # stopped by the budget, as asked: a complete run
        if wall is not None and wall < budget_s:
            run.message = f"reached its step cap ({extended:,} steps) before the time budget"
        elif run.records()[-1]["step"] + 1 > steps:
            run.message = f"trained its epochs, then on to the time budget of {budget_s:.3g} s"
        else:
            run.message = f"its epochs took {wall:.3g} s, past the time budget of {budget_s:.3g} s"
    return run


def _step_cap(spec: ReproduceSpec, steps: int) -> int:
    """The most steps a run with a time budget may take: ``--max-steps`` when given (a quick
    check stays quick), else :data:`BUDGET_STEP_FACTOR` × its epochs' ``steps``."""
    return max(steps, spec.max_steps) if spec.max_steps else steps * BUDGET_STEP_FACTOR


def _auto_budget(done: dict, train, *, can_extend: bool, progress, log) -> float | None:
    """The "auto" time budget from the first seed's runs ``done`` (optimizer → finished
    :class:`TrainingRun`): the longest training time among them. Runs that took less are
    trained again with ``train(name, budget_s=..., progress=...)`` to that time, in place in
    ``done`` (the same seed: the same steps as before, then on to the budget), unless their
    step cap leaves no room to go on (``can_extend`` false)."""
    times = [_last_wall_time(r) for r in done.values() if r.status == "finished"]
    budget_s = max((t for t in times if t is not None), default=None)
    if budget_s is None:
        return None
    for name, run in done.items():
        wall = _last_wall_time(run)
        if can_extend and run.status == "finished" and wall is not None and wall < budget_s:
            if log is not None:
                log(f"{name}: trained again, on to the time budget of {budget_s:.3g} s")
            done[name] = train(name, budget_s=budget_s, progress=progress)
        elif run.status == "finished" and wall == budget_s:
            run.message = f"its epochs took {wall:.3g} s and set the time budget"
    return budget_s


def _run_frames(run: TrainingRun, seed: int, tracked) -> list[pd.DataFrame]:
    """``run``'s records as result tables (one per tracked layer) with ``seed`` and status."""
    df = run.dataframe()
    parts = [df] if tracked is None else _split_layers(df, tracked)
    for part in parts:
        part.insert(1, "seed", seed)
        part.insert(2, "status", run.status)
    return parts


def _run_row(name: str, seed: int, run: TrainingRun, tracked) -> dict:
    """How one run ended, for ``settings.json``'s ``runs``."""
    return {
        "optimizer": name,
        "seed": seed,
        **({"layers": [n for _, n in tracked]} if tracked else {}),
        "status": run.status,
        "message": run.message,
        "device": str(run.device),
        **({"notices": run.notices} if tracked else {}),
    }


def _last_wall_time(run: TrainingRun) -> float | None:
    records = run.records()
    return float(records[-1]["wall_time_s"]) if records else None


def run_reproduction(
    spec: ReproduceSpec,
    dataset: Dataset,
    *,
    progress: Callable[[str, int], Callable[[dict], None] | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Run ``spec`` on ``dataset`` (already loaded, possibly a subset); return the settings
    (everything :func:`write_reproduction` writes to ``settings.json``) and the results table.

    ``progress(description, total_steps)`` is called before each run and may return an
    ``on_step`` callback for it. Runs are sequential (so their wall times do not share the
    CPU); for each seed every run starts from the same initial parameters and minibatch order.
    The quality experiment trains once per seed and measures every layer at each checkpoint;
    ``log(text)`` receives per checkpoint and layer what was measured and its time.
    """
    sched = _schedule(spec, dataset)
    layers = resolve_layers(spec) if spec.experiment == "quality" else []
    ds_spec = DATASET_SPECS[spec.dataset]
    budget = spec.time_budget_s
    budget_s = budget if isinstance(budget, int | float) else None  # "auto": set by seed 1
    frames, runs = [], []
    started = time.time()
    for seed in spec.seeds:
        model = build_model(
            spec.preset,
            input_dim=ds_spec.input_dim,
            loss=ds_spec.loss,
            seed=seed,
            init=PAPER_DEFAULTS["init"],
        )
        if spec.experiment == "quality":
            name = spec.optimizers[0]
            run = _LayersRun(
                spec.run_config(name, sched, seed, layers[0][1]),
                dataset=dataset,
                model=model,
                layers=layers,
                budget_s=spec.metric_budget_s,
                log=log,
            )
            where = ",".join(str(n) for n, _ in layers)
            if progress is not None:
                run.on_step = progress(f"{name} (layers {where}, seed {seed})", run.total_steps)
            run.run()
            done = {name: run}
        else:
            train = partial(_train_optimizer, spec, dataset, model, sched, seed=seed)
            done = {
                name: train(name, budget_s=budget_s, progress=progress) for name in spec.optimizers
            }
            if budget == "auto" and budget_s is None:
                can_extend = _step_cap(spec, sched["steps"]) > sched["steps"]
                budget_s = _auto_budget(
                    done, train, can_extend=can_extend, progress=progress, log=log
                )
        for name, run in done.items():
            tracked = layers or None
            frames += _run_frames(run, seed, tracked)
            runs.append(_run_row(name, seed, run, tracked))
    results = pd.concat(frames, ignore_index=True)
    settings = _settings(spec, dataset, sched, layers, runs, started, budget_s)
    return settings, results


def data_files(path: str | os.PathLike[str]) -> list[dict]:
    """Name, size and SHA-256 of the data file at ``path``, or of each file directly inside
    the folder ``path``: what identifies the data of a run without naming a server path."""
    root = Path(path).expanduser()
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    out = []
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        out.append({"name": file.name, "size": file.stat().st_size, "sha256": digest.hexdigest()})
    return out


def _settings(spec, dataset, sched, layers, runs, started, budget_s) -> dict:
    configs = {
        name: spec.run_config(name, sched, spec.seeds[0]).optimizer for name in spec.optimizers
    }
    first = configs[spec.optimizers[0]]
    optimizers = {
        name: {
            "lr": configs[name].lr,
            "damping": configs[name].damping,
            "lr_source": "given" if name in spec.lrs or "*" in spec.lrs else "per-preset default",
        }
        for name in spec.optimizers
    }
    return {
        "experiment": spec.experiment,
        "dataset": spec.dataset,
        "dataset_label": dataset.label,
        # the file's name only: a results folder may be shown to web visitors (the app's
        # reports page), who learn no server path from it; data_files identify the data
        "data_file": None if spec.data_path is None else Path(spec.data_path).name,
        "data_files": [] if spec.data_path is None else data_files(spec.data_path),
        "n_train": dataset.n_train,
        "n_test": dataset.n_test,
        "subset": spec.n_train is not None or spec.n_test is not None,
        "model": {"preset": spec.preset, "widths": list(PRESETS[spec.preset].widths)},
        "loss": dataset.loss,
        "init": PAPER_DEFAULTS["init"],
        "initialisation": "Xavier-uniform weights U(−b, b), b = √(6/(fan_in + fan_out)), "
        "zero biases (as the authors' code)",
        "epochs_requested": spec.epochs,
        "max_steps": spec.max_steps,
        "time_budget_s": budget_s,
        "time_budget": (
            None
            if spec.experiment != "training"
            else "off (runs stop at their epochs)"
            if spec.time_budget_s == "off"
            else "auto: the longest time an optimizer needed for the epochs on seed "
            f"{spec.seeds[0]}"
            if spec.time_budget_s == "auto"
            else "given (--time-budget-s)"
        ),
        **sched,
        "seeds": list(spec.seeds),
        "optimizers": optimizers,
        "optimizer_settings": {
            k: v for k, v in first.to_dict().items() if k not in ("name", "lr", "damping")
        },
        "fisher": "true (targets sampled from the model)",
        "quality": (
            {
                "layers": [{"number": n, "name": name} for n, name in layers],
                "methods": list(METHODS),
                "fisher_batch": min(QUALITY_FISHER_BATCH[spec.dataset], dataset.n_train),
                "every_steps": sched["quality_every"],
                "metric_budget_s": spec.metric_budget_s,
                "skipped": sorted({n for r in runs for n in r.get("notices", [])}),
            }
            if layers
            else None
        ),
        "deviations": [
            "validation: the authors hold out 20 % of the training set; here the whole "
            "training set trains and the test set gives the test loss",
            *(
                [
                    f"subset: {dataset.n_train:,} training and {dataset.n_test:,} test images "
                    "(--n-train/--n-test), not the full dataset"
                ]
                if spec.n_train is not None or spec.n_test is not None
                else []
            ),
            *(
                [f"steps capped at {spec.max_steps} per run (--max-steps)"]
                if spec.max_steps is not None
                and sched["steps"] < round(spec.epochs * sched["steps_per_epoch"])
                else []
            ),
        ],
        "rules": {"training": TRAINING_RULE, "quality": QUALITY_RULE},
        "runs": runs,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "total_time_s": round(time.time() - started, 3),
    }


# -- verdicts -------------------------------------------------------------------------------


def _window_mean(part: pd.DataFrame, per_epoch: int) -> float:
    """Mean training loss over the last ``per_epoch`` rows of one run (rows by step)."""
    loss = pd.to_numeric(part["train_loss"], errors="coerce").tail(max(1, per_epoch))
    if loss.empty or not np.isfinite(loss.to_numpy(dtype=float)).all():
        return math.inf
    return float(loss.mean())


def _steps_per_epoch(part: pd.DataFrame) -> int:
    """From ``epoch = (step + 1) / steps_per_epoch`` (core.training.runner's records)."""
    last = part.iloc[-1]
    return max(1, round((float(last["step"]) + 1) / float(last["epoch"])))


def _runs(df: pd.DataFrame, name: str) -> dict[int, pd.DataFrame]:
    part = df[df["optimizer"] == name]
    return {int(s): p.sort_values("step") for s, p in part.groupby("seed", sort=True)}


def final_losses(
    df: pd.DataFrame, name: str, until: float | None = None, steps: int | None = None
) -> dict[int, float]:
    """Per seed: the final training loss of ``name``'s run — of its first ``steps`` records
    when given (the epochs asked for, though a time budget took it further) — or (``until`` =
    T) its training loss at wall time T. Record k holds the loss BEFORE step k's update and the
    time AFTER it, so after the j records that ended by T the parameters' loss is record j's:
    the window is the epoch of records ending at record j (record 0 alone: the initial loss)."""
    out = {}
    for seed, part in _runs(df, name).items():
        per_epoch = _steps_per_epoch(part)
        diverged = bool((part["status"] == "diverged").any())
        if until is None:
            if steps is not None:
                part = part[pd.to_numeric(part["step"]) < steps]
            out[seed] = math.inf if diverged else _window_mean(part, per_epoch)
            continue
        done = int((part["wall_time_s"] <= until + 1e-12).sum())
        if diverged and done + 1 >= len(part):  # it diverged by T
            out[seed] = math.inf
        else:
            out[seed] = _window_mean(part.iloc[: done + 1], per_epoch)
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=float)
    if not np.isfinite(arr).all():
        return math.inf, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def _shown(mean: float, sd: float, n: int) -> str:
    if math.isinf(mean):
        return f"diverged (n={n})"
    return f"{mean:.4g} ± {sd:.2g} (n={n})" if not math.isnan(sd) else f"{mean:.4g} (n={n})"


def _compare(x: dict[int, float], b: dict[int, float], xname: str, bname: str) -> tuple:
    """(verdict, detail) for "x is lower than b" by the one-sd rule of the module docstring."""
    if not x or not b:
        missing = xname if not x else bname
        return "not testable here", f"{missing} was not run"
    if min(len(x), len(b)) < 2:
        return "not testable here", "fewer than 2 seeds: no spread to judge a difference by"
    (mx, sx), (mb, sb) = _mean_sd(x.values()), _mean_sd(b.values())
    if math.isinf(mx):
        return "not reproduced", f"{xname} diverged in at least one seed"
    if math.isinf(mb):
        return "reproduced", f"{bname} diverged in at least one seed, {xname} did not"
    if mx + sx < mb - sb:
        return "reproduced", f"{xname} lower by {mb - mx:.4g} (> sd sum {sx + sb:.2g})"
    if mb + sb < mx - sx:
        return "not reproduced", f"{bname} lower by {mx - mb:.4g} (> sd sum {sx + sb:.2g})"
    return (
        "not reproduced",
        f"within the seed spread (difference {mb - mx:+.4g}, sd sum {sx + sb:.2g})",
    )


def _common_time(df: pd.DataFrame, names: Sequence[str]) -> float | None:
    ends = [
        float(part["wall_time_s"].max())
        for name in names
        for part in _runs(df, name).values()
        if (part["status"] == "finished").all()
    ]
    return min(ends) if ends else None


def training_verdicts(
    df: pd.DataFrame, time_budget_s: float | None = None, steps: int | None = None
) -> pd.DataFrame:
    """Claim 2 per (KPSVD-family method, baseline, criterion) for the optimizers in ``df``
    (rows: ``optimizer``, ``seed``, ``status``, ``step``, ``epoch``, ``wall_time_s``,
    ``train_loss``); the rule is :data:`TRAINING_RULE`. The equal-epochs criterion reads each
    run's first ``steps`` records (all when ``None``). The wall-time criterion compares at
    ``time_budget_s`` when every optimizer had that budget, else at the shortest finished
    run's time; its detail says which."""
    present = list(dict.fromkeys(df["optimizer"]))
    family = [m for m in KPSVD_FAMILY if m in present] or ["kpsvd"]
    rows = []
    for method in family:
        for base in BASELINES:
            claim = f"{method} trains faster than {base}"
            for criterion in ("equal epochs", "equal wall time"):
                until = None
                if criterion == "equal wall time":
                    until = time_budget_s or _common_time(df, (method, base))
                    if until is None and method in present and base in present:
                        rows.append(
                            _row(
                                claim,
                                method,
                                base,
                                criterion,
                                {},
                                {},
                                "not testable here",
                                "no finished run to set a common time",
                            )
                        )
                        continue
                x = final_losses(df, method, until, steps) if method in present else {}
                b = final_losses(df, base, until, steps) if base in present else {}
                verdict, detail = _compare(x, b, method, base)
                if until is not None:
                    which = "the time budget" if time_budget_s else "the shortest run's time"
                    detail += f"; T = {until:.3g} s ({which})"
                rows.append(_row(claim, method, base, criterion, x, b, verdict, detail))
    return pd.DataFrame(rows)


def _row(claim, method, base, criterion, x, b, verdict, detail) -> dict:
    return {
        "claim": claim,
        "criterion": criterion,
        "method": _shown(*_mean_sd(x.values()), len(x)) if x else "not run",
        "baseline": _shown(*_mean_sd(b.values()), len(b)) if b else "not run",
        "verdict": verdict,
        "detail": detail,
    }


def quality_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Claim 1 per (layer, error kind, KPSVD-family method) against KFAC, for the error
    columns in ``df``; the rule is :data:`QUALITY_RULE`."""
    rows = []
    kinds = {"rel_error": "relative Frobenius error", "spectrum_error": "spectrum error"}
    for layer, part in df.groupby("layer", sort=False):
        for kind, label in kinds.items():
            base_col = f"{kind}_kfac"
            for method in KPSVD_FAMILY:
                col = f"{kind}_{method}"
                claim = f"{method} approximates F better than kfac ({label}, {layer})"
                if col not in part or base_col not in part:
                    missing = method if col not in part else "kfac"
                    rows.append(
                        _qrow(
                            claim,
                            "not run",
                            "not run",
                            "not testable here",
                            f"{missing} was not tracked",
                        )
                    )
                    continue
                both = part[[col, base_col]].apply(pd.to_numeric, errors="coerce").dropna()
                if both.empty:
                    rows.append(
                        _qrow(
                            claim, "no points", "no points", "not testable here", "no tracked step"
                        )
                    )
                    continue
                lower = float((both[col] < both[base_col]).mean())
                verdict = "reproduced" if lower >= QUALITY_SHARE else "not reproduced"
                rows.append(
                    _qrow(
                        claim,
                        f"{both[col].mean():.4g} (mean of {len(both)} points)",
                        f"{both[base_col].mean():.4g}",
                        verdict,
                        f"{method} lower at {lower:.0%} of the points",
                    )
                )
    return pd.DataFrame(rows)


def per_layer_claims(df: pd.DataFrame) -> pd.DataFrame:
    """Claim 1 as a table claim × layer: each cell says whether the claim holds on that layer
    (by :data:`QUALITY_RULE`), with the mean errors, the share of points where the method is
    lower, and the steps where it is not — where an advantage fades, not only whether."""
    kinds = {"rel_error": "relative Frobenius error", "spectrum_error": "spectrum error"}
    cells: dict[str, dict[str, str]] = {}
    for layer, part in df.groupby("layer", sort=False):
        for kind, label in kinds.items():
            for method in KPSVD_FAMILY:
                col, base_col = f"{kind}_{method}", f"{kind}_kfac"
                if col not in part or base_col not in part:
                    continue
                cols = part[["step", col, base_col]].apply(pd.to_numeric, errors="coerce")
                both = cols.dropna()
                if both.empty:
                    continue
                is_lower = both[col] < both[base_col]
                lower = float(is_lower.mean())
                holds = "holds" if lower >= QUALITY_SHARE else "does not hold"
                missed = sorted(set(both.loc[~is_lower, "step"].astype(int)))
                text = (
                    f"{holds}: {both[col].mean():.4g} vs kfac {both[base_col].mean():.4g}, "
                    f"lower at {lower:.0%}"
                )
                if missed:
                    shown = ", ".join(map(str, missed[:8])) + (" …" if len(missed) > 8 else "")
                    text += f" (not at step {shown})"
                claim = f"{method} approximates F better than kfac ({label})"
                cells.setdefault(claim, {})[str(layer)] = text
    table = pd.DataFrame.from_dict(cells, orient="index").fillna("not measured")
    return table.rename_axis("claim").reset_index()


def _qrow(claim, method, base, verdict, detail) -> dict:
    return {
        "claim": claim,
        "criterion": "every tracked step",
        "method": method,
        "baseline": base,
        "verdict": verdict,
        "detail": detail,
    }


def verdicts(settings: dict, df: pd.DataFrame) -> pd.DataFrame:
    """The verdict table of a reproduction (by its experiment)."""
    if settings.get("experiment") == "quality":
        return quality_verdicts(df)
    return training_verdicts(df, settings.get("time_budget_s"), settings.get("steps"))


def summary_table(settings: dict, df: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer (training) or per layer and method (quality), mean ± sd over seeds."""
    rows = []
    if settings.get("experiment") == "quality":
        for layer, part in df.groupby("layer", sort=False):
            for method in METHODS:
                cols = [f"rel_error_{method}", f"spectrum_error_{method}"]
                if not all(c in part for c in cols):
                    continue
                rel, spec = (pd.to_numeric(part[c], errors="coerce").dropna() for c in cols)
                rows.append(
                    {
                        "layer": layer,
                        "method": method,
                        "relative Frobenius error (mean)": float(rel.mean()),
                        "spectrum error (mean)": float(spec.mean()),
                        "points": int(len(rel)),
                    }
                )
        return pd.DataFrame(rows)
    steps = settings.get("steps")
    budget_s = settings.get("time_budget_s")
    for name in dict.fromkeys(df["optimizer"]):
        runs = _runs(df, name)
        loss = final_losses(df, name, steps=steps)
        at_budget = final_losses(df, name, until=budget_s) if budget_s else {}
        times = [
            float(p["wall_time_s"][pd.to_numeric(p["step"]) < (steps or len(p))].max())
            for p in runs.values()
        ]
        tests = [
            float(pd.to_numeric(p["test_loss"], errors="coerce").dropna().iloc[-1])
            for p in runs.values()
            if pd.to_numeric(p["test_loss"], errors="coerce").notna().any()
        ]
        statuses = sorted({str(s) for p in runs.values() for s in p["status"].unique()})
        rows.append(
            {
                "optimizer": name,
                "final train loss": _shown(*_mean_sd(loss.values()), len(loss)),
                **(
                    {
                        f"train loss at {budget_s:.3g} s": _shown(
                            *_mean_sd(at_budget.values()), len(at_budget)
                        )
                    }
                    if budget_s
                    else {}
                ),
                "last test loss": _shown(*_mean_sd(tests), len(tests)) if tests else "",
                "time for the epochs (s)": _shown(*_mean_sd(times), len(times)),
                "status": ", ".join(statuses),
            }
        )
    return pd.DataFrame(rows)


# -- figures and files ----------------------------------------------------------------------


def report_figures(settings: dict, df: pd.DataFrame) -> list:
    """The report's figures, rebuilt from ``results.csv`` (mean ± sd bands over seeds)."""
    if settings.get("experiment") == "quality":
        figures = []
        for layer, part in df.groupby("layer", sort=False):
            for kind, label in (
                ("rel_error", "Relative Frobenius error"),
                ("spectrum_error", "Spectrum error"),
            ):
                cols = [c for c in part.columns if c.startswith(f"{kind}_")]
                long = part.melt(
                    id_vars=["seed", "step"], value_vars=cols, var_name="method", value_name="error"
                ).dropna(subset=["error"])
                long["method"] = long["method"].str.slice(len(kind) + 1)
                figures.append(
                    mean_sd_figure(
                        long,
                        x="step",
                        y="error",
                        group="method",
                        title=f"{label} over training, {layer}",
                        y_title=label.lower(),
                    )
                )
        return figures
    per_epoch = int(settings.get("steps_per_epoch") or 1)
    smooth = max(1, min(per_epoch, 50))
    return [
        mean_sd_figure(
            df,
            x=x,
            y="train_loss",
            group="optimizer",
            smooth=smooth,
            title=f"Training loss against {title} (mean ± sd over seeds)",
            y_title="training loss (mean per-sample NLL)",
        )
        for x, title in (("epoch", "epoch"), ("wall_time_s", "wall time"))
    ]


def _title(settings: dict) -> str:
    what = "approximation quality" if settings["experiment"] == "quality" else "training"
    return f"Paper reproduction: {what} on {settings.get('dataset_label', settings['dataset'])}"


def settings_table(settings: dict) -> pd.DataFrame:
    """``settings.json`` flattened to (setting, value) rows of text (runs left out)."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows.append((prefix, "; ".join(json.dumps(v, ensure_ascii=False) for v in value)))
        elif isinstance(value, list):
            rows.append((prefix, ", ".join(map(str, value))))
        else:
            rows.append((prefix, "" if value is None else str(value)))

    walk("", {k: v for k, v in settings.items() if k != "runs"})
    return pd.DataFrame(rows, columns=["setting", "value"])


def overshoot_notes(df: pd.DataFrame) -> list[str]:
    """One sentence per layer where KFAC's relative Frobenius error exceeds 1. That is genuine,
    not a bug: ``‖F − A⊗G‖ > ‖F‖`` exactly when ``‖A⊗G‖² > 2⟨F, A⊗G⟩``, which happens when the
    sizes of ``ā`` and ``g`` anti-correlate across samples (``A⊗G`` pairs one sample's large
    input with another's large gradient, products ``F`` never contains)."""
    if "rel_error_kfac" not in df or "layer" not in df:
        return []
    notes = []
    for layer, part in df.groupby("layer", sort=False):
        errors = pd.to_numeric(part["rel_error_kfac"], errors="coerce")
        over = part[errors > 1]
        if len(over):
            steps = ", ".join(str(s) for s in sorted(set(over["step"]))[:10])
            notes.append(
                f"KFAC's A ⊗ G overshoots F in scale here (error > 1): layer {layer}, "
                f"step(s) {steps}, largest error {errors.max():.3g}"
            )
    return notes


def write_reproduction(
    out: Path, settings: dict, df: pd.DataFrame, rerun: dict | None = None
) -> pd.DataFrame:
    """Write ``settings.json``, ``results.csv``, ``verdicts.csv`` and ``report.html`` into
    ``out``, and ``rerun`` (the command exactly as given, paths included) into
    ``rerun.json``; return the verdict table. ``rerun.json`` is not one of
    :data:`REPORT_FILES`: the reports page never reads or shows it, so its server paths stay
    on the server, while the served files identify the data by name, size and SHA-256."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rerun is not None:
        (out / RERUN_FILE).write_text(
            json.dumps(rerun, indent=2, ensure_ascii=False), encoding="utf-8"
        )
    table = verdicts(settings, df)
    (out / SETTINGS_FILE).write_text(
        json.dumps(settings, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    df.to_csv(out / RESULTS_FILE, index=False)
    table.to_csv(out / VERDICTS_FILE, index=False)
    rules = settings["rules"]["quality" if settings["experiment"] == "quality" else "training"]
    write_html_report(
        out / REPORT_FILE,
        title=_title(settings),
        figures=report_figures(settings, df),
        tables=[
            ("Verdicts", table),
            *(
                [("Per layer: where each claim holds", per_layer_claims(df))]
                if settings["experiment"] == "quality"
                else []
            ),
            ("Summary", summary_table(settings, df)),
            ("Settings", settings_table(settings)),
        ],
        notes=[
            rules,
            *(
                [
                    f"To rerun: {settings['command']} — paths shown by their last part; "
                    "--data-path names a folder (or file) holding the data files listed in the "
                    "settings (name, size, SHA-256), and rerun.json next to this report keeps "
                    "the command exactly as given"
                ]
                if settings.get("command")
                else []
            ),
            *(f"Deviation — {d}" for d in settings.get("deviations", [])),
            *(f"Skipped — {n}" for n in (settings.get("quality") or {}).get("skipped", [])),
            *overshoot_notes(df),
        ],
    )
    return table


# -- results folders (the app) --------------------------------------------------------------

#: The files of a report: the first two must be there, the others may.
REPORT_FILES = (SETTINGS_FILE, RESULTS_FILE, VERDICTS_FILE, REPORT_FILE)
#: Reports kept parsed (:class:`~core.views.report_files.ReportCache`): at most this many, and
#: at most this many bytes of their files.
REPORT_CACHE_ENTRIES = 8
REPORT_CACHE_BYTES = 256 << 20
#: ``settings.json`` written here nests 3 levels deep; deeper is refused.
MAX_SETTINGS_DEPTH = 16
#: Fields of ``settings.json`` that hold integers (each may be absent or null).
_INT_FIELDS = (
    "n_train",
    "n_test",
    "max_steps",
    "batch_size",
    "steps_per_epoch",
    "steps",
    "eval_every",
    "quality_every",
)
_RESULT_COLUMNS = (
    "optimizer",
    "seed",
    "status",
    "step",
    "epoch",
    "wall_time_s",
    "train_loss",
    "test_loss",
)
_CACHE = ReportCache(REPORT_CACHE_ENTRIES, REPORT_CACHE_BYTES)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Reproduction:
    """One results folder read back and checked, with everything the page shows made once
    (:meth:`build`). One instance serves every visitor until a file of the folder changes, so
    nothing may modify it."""

    name: str
    settings: dict
    results: pd.DataFrame
    title: str
    rule: str  # the verdict rule of its experiment, as written in the settings ("" if none)
    verdicts: pd.DataFrame
    summary: pd.DataFrame
    figures: list
    settings_table: pd.DataFrame

    @classmethod
    def build(cls, name: str, settings: dict, results: pd.DataFrame) -> Reproduction:
        """The report ``name`` from its checked settings and results (see :func:`load_report`)."""
        return cls(
            name=name,
            settings=settings,
            results=results,
            title=_title(settings),
            rule=settings.get("rules", {}).get(settings["experiment"], ""),
            verdicts=verdicts(settings, results),
            summary=summary_table(settings, results),
            figures=report_figures(settings, results),
            settings_table=settings_table(settings),
        )


def results_dir() -> Path | None:
    """The host's folder of reproductions, ``$KRONOSCOPE_RESULTS_DIR`` (``None``: unset)."""
    return settings.get(RESULTS_DIR_ENV)


def _report_files(root_real: str, name: str) -> dict[str, str] | None:
    """The real paths of the files of report ``name`` (a folder of the results folder whose real
    path is ``root_real``), by file name. ``None`` when the folder or any of
    :data:`REPORT_FILES` there leads out of the results folder (a link), is not a folder or a
    regular file, or when settings.json or results.csv is missing: such a report is neither
    listed nor read."""
    folder = os.path.join(root_real, name)
    folder_real = real_inside(folder, root_real)
    if folder_real is None or not os.path.isdir(folder_real):
        return None
    files = {}
    for file in REPORT_FILES:
        path = os.path.join(folder, file)
        if not os.path.lexists(path) and file not in (SETTINGS_FILE, RESULTS_FILE):
            continue
        real = real_file(path, root_real)
        if real is None:
            return None
        files[file] = real
    return files


def list_reports(directory: str | os.PathLike[str]) -> list[str]:
    """Names of the reports in ``directory``: its sub-folders (top level only, hidden names
    skipped, at most :data:`MAX_SCANNED` entries looked at) that :func:`_report_files` accepts;
    sorted, at most :data:`MAX_LISTED`. A missing directory gives ``[]``."""
    root = Path(directory)
    if not root.is_dir():
        return []
    root_real = os.path.realpath(root)
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in itertools.islice(entries, MAX_SCANNED)]
    except OSError:
        return []
    found = [n for n in names if not n.startswith(".") and _report_files(root_real, n)]
    return sorted(found)[:MAX_LISTED]


def load_report(directory: str | os.PathLike[str], name: str) -> Reproduction:
    """The report ``name`` (one of :func:`list_reports`), read and checked once per change of
    its files: the parsed report is kept, process-wide, until the size or modification time of
    its settings.json or results.csv changes (:class:`~core.views.report_files.ReportCache`).

    Checked: each file is at most its size cap; the settings are a JSON object, not nested
    deeper than :data:`MAX_SETTINGS_DEPTH`, with a known experiment and dataset and integers
    where integers belong; the results have the columns of the experiment, whole seeds and
    steps, positive epochs, numeric losses and errors, each step once per run, and only the
    optimizer, method and layer names this code knows (they become figure legends). Any failure
    is a :class:`~core.views.report_files.ReportError` whose message is one sentence naming the
    report's file and what is wrong in it: no server path, no exception text."""
    root_real = os.path.realpath(directory)
    files = _report_files(root_real, name) if name in list_reports(directory) else None
    if files is None:
        raise ReportError("There is no such report here: choose one of the reports listed.")
    try:
        stamps = tuple(stamp(files[f]) for f in (SETTINGS_FILE, RESULTS_FILE))
    except OSError:
        raise ReportError(f"The files of report {name} cannot be read by the server.") from None
    return _CACHE.get(os.path.join(root_real, name), stamps, lambda: _read_report(name, files))


def _read_report(name: str, files: dict[str, str]) -> Reproduction:
    """Read, check and build the report ``name`` from its files' real paths. A failure that the
    checks did not foresee is logged for the host and reported as one sentence."""
    try:
        label = f"{SETTINGS_FILE} of report {name}"
        settings = _parse_settings(
            label, read_capped(files[SETTINGS_FILE], label, MAX_SETTINGS_BYTES)
        )
        label = f"{RESULTS_FILE} of report {name}"
        results = _parse_results(
            label, settings["experiment"], read_capped(files[RESULTS_FILE], label)
        )
        return Reproduction.build(name, settings, results)
    except ReportError:
        raise
    except Exception:
        _log.exception("report %s could not be read", name)
        raise ReportError(
            f"Report {name} could not be read: an unexpected error, described in the server's log."
        ) from None


def _describe(value) -> str:
    """A value read from a report, in a few words for a message (short texts quoted)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return json.dumps(float(value))  # NaN, Infinity, -Infinity
    if isinstance(value, int | np.integer):
        return str(value) if abs(value) < 10**15 else "a very large integer"
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:39] + "…", ensure_ascii=False)
    return "a list" if isinstance(value, list) else "an object"


def _too_deep(value, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parse_settings(label: str, data: bytes) -> dict:
    """``settings.json``'s object, checked (see :func:`load_report`); ``label`` names the file
    in messages."""
    try:
        settings = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{label} is not valid: it is not UTF-8 text.") from None
    except RecursionError:
        raise ReportError(f"{label} is not valid: nested too deeply.") from None
    except json.JSONDecodeError as err:
        raise ReportError(
            f"{label} is not valid JSON (line {err.lineno}, column {err.colno})."
        ) from None
    except ValueError:  # Python's cap on the digits of an integer
        raise ReportError(
            f"{label} is not valid: it holds an integer with too many digits."
        ) from None
    if not isinstance(settings, dict):
        raise ReportError(f"{label} is not valid: it holds {_describe(settings)}, not an object.")
    if _too_deep(settings, MAX_SETTINGS_DEPTH):
        raise ReportError(f"{label} is not valid: nested too deeply.")

    def wrong(key: str, expected: str) -> ReportError:
        return ReportError(
            f"{label} is not valid: field {key} holds {_describe(settings[key])}, expected "
            f"{expected}."
        )

    for key, allowed in (("experiment", EXPERIMENTS), ("dataset", REPRO_DATASETS)):
        if key not in settings:
            raise ReportError(f"{label} is not valid: it lacks the field {key}.")
        if not isinstance(settings[key], str) or settings[key] not in allowed:
            raise wrong(key, f"one of {', '.join(allowed)}")
    if not isinstance(settings.get("dataset_label", ""), str):
        raise wrong("dataset_label", "a text")
    for key in _INT_FIELDS:
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong(key, "an integer")
    seeds = settings.get("seeds", [])
    if not isinstance(seeds, list):
        raise wrong("seeds", "a list of integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ReportError(
                f"{label} is not valid: field seeds holds {_describe(seed)}, expected an integer."
            )
    rules = settings.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, str) for v in rules.values()):
        raise wrong("rules", "an object of texts")
    return settings


def _parse_results(label: str, experiment: str, data: bytes) -> pd.DataFrame:
    """``results.csv``'s table for ``experiment``, checked (see :func:`load_report`);
    ``label`` names the file in messages."""
    try:
        df = pd.read_csv(io.BytesIO(data), dtype={"optimizer": str, "status": str, "layer": str})
    except UnicodeDecodeError:
        raise ReportError(f"{label} is not valid: it is not UTF-8 text.") from None
    except pd.errors.EmptyDataError:
        raise ReportError(f"{label} is empty.") from None
    except (ValueError, pd.errors.ParserError):
        raise ReportError(f"{label} is not a readable CSV table.") from None
    need = [*_RESULT_COLUMNS, *(["layer"] if experiment == "quality" else [])]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ReportError(f"{label} is not valid: it lacks the column(s) {', '.join(missing)}.")
    if df.empty:
        raise ReportError(f"{label} is not valid: it holds no rows.")

    def check(column: str, ok: pd.Series, expected: str) -> None:
        bad = np.flatnonzero(~ok.to_numpy(dtype=bool))
        if len(bad):
            value = df[column].iloc[bad[0]]
            raise ReportError(
                f"{label} is not valid: column {column} holds {_describe(value)} on line "
                f"{bad[0] + 2}, expected {expected}."
            )

    def numbers(column: str) -> pd.Series:
        return pd.to_numeric(df[column], errors="coerce")

    check("optimizer", df["optimizer"].isin(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}")
    for column in ("seed", "step"):
        values = numbers(column)
        check(
            column,
            np.isfinite(values) & (values == values.round()) & (values >= 0),
            "an integer ≥ 0",
        )
    epoch, wall = numbers("epoch"), numbers("wall_time_s")
    check("epoch", np.isfinite(epoch) & (epoch > 0), "a number > 0")
    check("wall_time_s", np.isfinite(wall) & (wall >= 0), "a number ≥ 0")
    errors = [c for c in df.columns if c.startswith(("rel_error_", "spectrum_error_"))]
    unknown = [c for c in errors if c.split("_error_", 1)[1] not in METHODS]
    if unknown:
        raise ReportError(
            f"{label} is not valid: column {_describe(unknown[0])} names a method this version "
            "does not know."
        )
    for column in ("train_loss", "test_loss", *errors):  # NaN and ±inf allowed (divergence)
        check(column, numbers(column).notna() | df[column].isna(), "a number")
    df[["seed", "step", "epoch", "wall_time_s"]] = df[
        ["seed", "step", "epoch", "wall_time_s"]
    ].apply(pd.to_numeric)
    if experiment == "quality":
        layer_ok = df["layer"].map(lambda v: isinstance(v, str) and bool(_LAYER_NAME.fullmatch(v)))
        check("layer", layer_ok, "a layer name (letters, digits, _ and .)")
    run = ["optimizer", "seed", *(["layer"] if experiment == "quality" else [])]
    repeated = np.flatnonzero(df.duplicated([*run, "step"]).to_numpy())
    if len(repeated):
        raise ReportError(
            f"{label} is not valid: line {repeated[0] + 2} repeats a step of its run."
        )
    df["status"] = df["status"].astype(str)
    return df
