"""Running a reproduction (:func:`run_reproduction`): one training per optimizer and seed,
sequential so that wall times do not share the CPU, each seed's runs from the same initial
parameters and minibatch order.

* training: each optimizer trains its epochs and, with a time budget, on to the same wall time
  (:func:`_budgeted`; ``"auto"``: the slowest first-seed run's time, the faster runs of that
  seed trained again to it);
* quality: one training per seed measures every tracked layer at each checkpoint
  (:class:`_LayersRun`), skipping measures whose estimated (:func:`metric_cost_s`) or measured
  time exceeds the metric budget.

What the runs were and how they ended becomes ``settings.json`` (:mod:`core.paper.record`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import pandas as pd

from ..training.datasets import DATASET_SPECS, Dataset
from ..training.models import build_model
from ..training.runner import TrainingRun
from .record import settings_record
from .spec import BUDGET_STEP_FACTOR, PAPER_DEFAULTS, ReproduceSpec, resolve_layers

__all__ = ["ASSUMED_FLOPS", "metric_cost_s", "run_reproduction"]


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
#: CPU), set so that the estimate stays above KFAC's and KPSVD's measured times on MNIST's
#: first layer (785 × 1000) at m = 512. The iterative second terms (deflation, Lanczos,
#: KFAC-corrected) can cost far more on flat spectra: the estimate is a floor for them, not a
#: bound.
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
        **({"notices": run.notices} if isinstance(run, _LayersRun) else {}),
    }


def _last_wall_time(run: TrainingRun) -> float | None:
    records = run.records()
    return float(records[-1]["wall_time_s"]) if records else None


def _quality_seed(spec, dataset, model, sched, layers, *, seed, progress, log) -> dict:
    """The quality experiment's one training for ``seed``: optimizer name → its finished
    :class:`_LayersRun`, which measured every layer of ``layers`` at each checkpoint."""
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
    return {name: run}


def _training_seed(spec, dataset, model, sched, *, seed, budget_s, progress, log):
    """The training experiment's runs for ``seed``: (optimizer name → finished
    :class:`TrainingRun`, the time budget now in force). Under the ``"auto"`` budget the first
    seed sets it (:func:`_auto_budget`)."""
    train = partial(_train_optimizer, spec, dataset, model, sched, seed=seed)
    done = {name: train(name, budget_s=budget_s, progress=progress) for name in spec.optimizers}
    if spec.time_budget_s == "auto" and budget_s is None:
        can_extend = _step_cap(spec, sched["steps"]) > sched["steps"]
        budget_s = _auto_budget(done, train, can_extend=can_extend, progress=progress, log=log)
    return done, budget_s


def run_reproduction(
    spec: ReproduceSpec,
    dataset: Dataset,
    *,
    progress: Callable[[str, int], Callable[[dict], None] | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Run ``spec`` on ``dataset`` (already loaded, possibly a subset); return the settings
    (everything :func:`core.paper.files.write_reproduction` writes to ``settings.json``) and
    the results table.

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
            done = _quality_seed(
                spec, dataset, model, sched, layers, seed=seed, progress=progress, log=log
            )
        else:
            done, budget_s = _training_seed(
                spec,
                dataset,
                model,
                sched,
                seed=seed,
                budget_s=budget_s,
                progress=progress,
                log=log,
            )
        for name, run in done.items():
            tracked = layers or None
            frames += _run_frames(run, seed, tracked)
            runs.append(_run_row(name, seed, run, tracked))
    results = pd.concat(frames, ignore_index=True)
    settings = settings_record(
        spec, dataset, sched, layers=layers, runs=runs, started=started, budget_s=budget_s
    )
    return settings, results
