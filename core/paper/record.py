"""What ``settings.json`` says about a reproduction (:func:`settings_record`): every setting of
its runs, the data (the data files by name, size and SHA-256, never a server path), the
verdict rules, where it departs from the authors' setup (``deviations``), how each run ended
and the environment it ran in."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..engine.methods import METHODS
from ..training.datasets import Dataset
from ..training.models import PRESETS
from .files import data_files
from .spec import PAPER_DEFAULTS, QUALITY_FISHER_BATCH, ReproduceSpec
from .verdicts import QUALITY_RULE, TRAINING_RULE

__all__ = ["settings_record"]


def settings_record(
    spec: ReproduceSpec,
    dataset: Dataset,
    sched: dict,
    *,
    layers: list[tuple[int, str]],
    runs: list[dict],
    started: float,
    budget_s: float | None,
) -> dict:
    """``settings.json`` of a reproduction of ``spec`` on ``dataset`` with the schedule
    ``sched``: ``layers`` tracked (quality), ``runs`` (how each ended), ``started`` (epoch
    seconds) and the time budget every training run was given (``None``: none)."""
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
        "time_budget": _time_budget_text(spec),
        **sched,
        "seeds": list(spec.seeds),
        **_optimizer_settings(spec, sched),
        "fisher": "true (targets sampled from the model)",
        "quality": _quality_settings(spec, dataset, sched, layers, runs) if layers else None,
        "deviations": _deviations(spec, dataset, sched),
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


def _time_budget_text(spec: ReproduceSpec) -> str | None:
    """How the training runs' time budget was set, in words (``None`` for quality)."""
    if spec.experiment != "training":
        return None
    if spec.time_budget_s == "off":
        return "off (runs stop at their epochs)"
    if spec.time_budget_s == "auto":
        return f"auto: the longest time an optimizer needed for the epochs on seed {spec.seeds[0]}"
    return "given (--time-budget-s)"


def _optimizer_settings(spec: ReproduceSpec, sched: dict) -> dict:
    """``optimizers`` (each one's lr, damping and where the lr came from) and
    ``optimizer_settings`` (the settings they share, as the first one's config has them)."""
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
    shared = {k: v for k, v in first.to_dict().items() if k not in ("name", "lr", "damping")}
    return {"optimizers": optimizers, "optimizer_settings": shared}


def _quality_settings(spec, dataset, sched, layers, runs) -> dict:
    """The quality experiment's ``quality`` field: layers, methods, Fisher batch, checkpoints,
    the metric budget and the measures it skipped."""
    return {
        "layers": [{"number": n, "name": name} for n, name in layers],
        "methods": list(METHODS),
        "fisher_batch": min(QUALITY_FISHER_BATCH[spec.dataset], dataset.n_train),
        "every_steps": sched["quality_every"],
        "metric_budget_s": spec.metric_budget_s,
        "skipped": sorted({n for r in runs for n in r.get("notices", [])}),
    }


def _deviations(spec: ReproduceSpec, dataset: Dataset, sched: dict) -> list[str]:
    """Where this reproduction departs from the authors' setup, one sentence each."""
    out = [
        "validation: the authors hold out 20 % of the training set; here the whole "
        "training set trains and the test set gives the test loss"
    ]
    if spec.n_train is not None or spec.n_test is not None:
        out.append(
            f"subset: {dataset.n_train:,} training and {dataset.n_test:,} test images "
            "(--n-train/--n-test), not the full dataset"
        )
    if spec.max_steps is not None and sched["steps"] < round(
        spec.epochs * sched["steps_per_epoch"]
    ):
        out.append(f"steps capped at {spec.max_steps} per run (--max-steps)")
    return out
