"""The ``step`` experiment (issue 21): which property of a Fisher approximation predicts how fast
it trains?

The seed paper (Koroko et al. 2022) ranks approximations by how close F̃ is to the Fisher block
F (relative Frobenius and spectrum error). An optimizer never uses F̃ itself, only its damped
inverse applied to the gradient (Martens & Grosse 2015, §6: factored damping), so this experiment
measures, along a training trajectory, everything between "F̃ is close to F" and "the loss went
down", for every layer and every method of the registry plus the exact block:

* ``relative_error`` ‖F − F̃‖_F/‖F‖_F and ``spectrum_error`` (the paper's measures);
* at the method's tuned damping λ (:func:`core.training.defaults.default_damping`), the damped
  step x̃ against the exact damped natural gradient x = (F + λI)⁻¹V of the minibatch's loss
  gradient V (:mod:`core.engine.direction`): ``step_error`` ‖x̃ − x‖/‖x‖, ``step_cosine``,
  ``step_norm_ratio`` with the optimizers' factored damping, ``exact_step_error`` and
  ``exact_step_cosine`` with exact damping; and ``error_factored@λ``/``error_exact@λ`` over
  the sweep ``StepSpec.dampings``;
* ``decrease_same``/``decrease_held``: the one-step look-ahead. From the same parameters, every
  layer moves by −lr·ν·x̃ (the method's tuned lr, the optimizers' KL-clip ν, no momentum) on a
  COPY of the model; the loss decrease on the same minibatch and on a held-out test batch.

Simplifications, each stated in the report: F is the current Fisher batch's block (the
optimizer itself preconditions with an exponential average of past blocks), the trajectory is
one optimizer's (``StepSpec.trainer``, KFAC), and the look-ahead has no momentum.

The methods' training ranking comes from short training runs of each optimizer with its tuned
lr at each damping of ``StepSpec.train_dampings`` (:func:`training_losses`); the verdict
(:mod:`core.paper.step_verdict`) correlates each measure with it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine.capture import capture
from ..engine.direction import direction_metrics
from ..engine.fisher import LayerFisher, NaturalGradientAgreement
from ..engine.layers import linear_layers
from ..engine.methods import SHOWN, approximate
from ..engine.step_fit import fit_step_inverse
from ..training.data import load_dataset
from ..training.datasets import Dataset
from ..training.defaults import default_damping, default_lr
from ..training.models import PRESETS, batch_loss
from ..training.runner import RunConfig, TrainingRun

__all__ = ["STEP_FIT", "StepSpec", "trajectory_records", "training_losses", "look_ahead"]

#: The records' name for :mod:`core.engine.step_fit`'s preconditioner (KFAC's lr and damping).
STEP_FIT = "step_fit"

Log = Callable[[str], None]


@dataclass(frozen=True)
class StepSpec:
    """One ``step`` experiment. ``epochs``/``checkpoints``/``seeds``: the trajectory of
    ``trainer`` and where it is measured (``checkpoints`` evenly spaced, the first at
    initialisation). ``fisher_batch``: samples of each Fisher block; ``batch``: the minibatch
    whose gradient is preconditioned; ``held_batch``: the held-out (test) batch of the
    look-ahead. ``dampings``: the measures' λ sweep. ``train_epochs``/``train_seeds``/
    ``train_dampings``: the training runs that rank the methods. ``exact_limit``: exact damping
    of a sum of ≥ 2 Kronecker products (MINRES) is skipped above this many weights."""

    preset: str = "curves-small"
    epochs: float = 4.0
    checkpoints: int = 5
    seeds: tuple[int, ...] = (0,)
    trainer: str = "kfac"
    methods: tuple[str, ...] = SHOWN
    fisher_batch: int = 256
    batch: int = 128
    held_batch: int = 500
    dampings: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    train_epochs: float = 10.0
    train_seeds: tuple[int, ...] = (1, 2)
    train_dampings: tuple[float, ...] = (1e-2, 1e-1, 1.0)
    n_train: int | None = None
    exact_limit: int = 20_000
    step_fit: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        unknown = [m for m in (*self.methods, self.trainer) if m not in SHOWN]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(SHOWN)}")
        if self.checkpoints < 2 or self.epochs <= 0 or self.train_epochs <= 0:
            raise ValueError("the step experiment needs ≥ 2 checkpoints and epochs > 0")
        if not self.seeds or not self.train_seeds or not self.dampings:
            raise ValueError("give at least one seed, one training seed and one damping")
        if any(not (math.isfinite(d) and d > 0) for d in (*self.dampings, *self.train_dampings)):
            raise ValueError("every damping must be a finite number > 0")

    @property
    def dataset(self) -> str:
        return PRESETS[self.preset].dataset

    def load(self) -> Dataset:
        return load_dataset(self.dataset, seed=0, n_train=self.n_train)


# -- one checkpoint ----------------------------------------------------------------------------


def _batches(dataset: Dataset, spec: StepSpec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    def draw(x: torch.Tensor, n: int) -> torch.Tensor:
        return x[torch.randperm(x.shape[0], generator=gen)[: min(n, x.shape[0])]]

    return {
        "fisher": draw(dataset.x_train, spec.fisher_batch),
        "same": draw(dataset.x_train, spec.batch),
        "held": draw(dataset.x_test, spec.held_batch),
    }


def _fishers(model: nn.Module, x: torch.Tensor, loss: str, gen: torch.Generator) -> dict:
    """Each linear layer's exact Fisher block on ``x`` (true Fisher, sampled targets)."""
    result = capture(model, x, loss=loss, fisher="true", targets=x, generator=gen)
    return {
        name: LayerFisher(lc.a.detach().to(torch.float64), lc.g.detach().to(torch.float64))
        for name, lc in result.layers.items()
    }


def _gradients(model: nn.Module, x: torch.Tensor, loss: str) -> dict[str, torch.Tensor]:
    """Each linear layer's loss gradient on ``x`` as the engine's (dg, da) matrix [∇W | ∇b]."""
    layers = linear_layers(model)
    params = [p for _, layer in layers for p in (layer.weight, layer.bias) if p is not None]
    grads = iter(torch.autograd.grad(batch_loss(model(x), x, loss), params))
    out = {}
    for name, layer in layers:
        gw = next(grads)
        v = gw if layer.bias is None else torch.cat([gw, next(grads)[:, None]], dim=1)
        out[name] = v.detach().to(torch.float64)
    return out


def look_ahead(
    model: nn.Module,
    directions: dict[str, torch.Tensor],
    gradients: dict[str, torch.Tensor],
    *,
    lr: float,
    kl_clip: float | None,
    batches: list[torch.Tensor],
    loss: str,
) -> list[float]:
    """The loss decrease on each of ``batches`` after one step −lr·ν·P on a copy of ``model``
    (P: ``directions``, (dg, da) per linear layer; ν = min(1, √(kl_clip / (lr² Σ⟨V, P⟩))), the
    optimizers' KL-clip). ``model`` is left untouched."""
    vg = sum(float((gradients[n] * p).sum()) for n, p in directions.items())
    nu = 1.0
    if kl_clip is not None and vg > 0:
        nu = min(1.0, math.sqrt(kl_clip / (lr**2 * vg)))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in linear_layers(moved):
            p = (lr * nu * directions[name]).to(layer.weight.dtype)
            layer.weight.sub_(p[:, : layer.weight.shape[1]])
            if layer.bias is not None:
                layer.bias.sub_(p[:, -1])
        return [
            float(batch_loss(model(x), x, loss)) - float(batch_loss(moved(x), x, loss))
            for x in batches
        ]


def _block_measures(
    fisher: LayerFisher, approx: Any, v: torch.Tensor, damping: float, spec: StepSpec
) -> dict[str, float]:
    """The paper's measures and the step's, for one block (see the module docstring)."""
    skip_exact = (approx.n_terms or 0) > 1 and approx.n > spec.exact_limit
    out: dict[str, float] = {"relative_error": fisher.relative_error(approx)}
    out["spectrum_error"] = fisher.spectrum_error(approx)[0]
    tuned = direction_metrics(fisher, approx, damping, mode="factored", v=v)
    out |= {"step_error": tuned.error, "step_cosine": tuned.cosine}
    out["step_norm_ratio"] = tuned.norm_ratio
    exact = None if skip_exact else direction_metrics(fisher, approx, damping, mode="exact", v=v)
    out["exact_step_error"] = math.nan if exact is None else exact.error
    out["exact_step_cosine"] = math.nan if exact is None else exact.cosine
    for lam in spec.dampings:
        out[f"error_factored@{lam:g}"] = direction_metrics(
            fisher, approx, lam, mode="factored", v=v
        ).error
        out[f"error_exact@{lam:g}"] = (
            math.nan
            if skip_exact
            else direction_metrics(fisher, approx, lam, mode="exact", v=v).error
        )
    return out


def checkpoint_records(
    model: nn.Module, dataset: Dataset, spec: StepSpec, *, gen: torch.Generator, tag: dict
) -> list[dict[str, Any]]:
    """Every method on every linear layer of ``model`` at this checkpoint (``tag``: the
    record's seed and step)."""
    batches = _batches(dataset, spec, gen)
    fishers = _fishers(model, batches["fisher"], dataset.loss, gen)
    grads = _gradients(model, batches["same"], dataset.loss)
    rows = []
    for method in spec.methods:
        lam, lr = default_damping(method, spec.preset), default_lr(method, spec.preset)
        approxes = {n: approximate(method, f.a, f.g) for n, f in fishers.items()}
        directions = {n: approxes[n].solve(grads[n], lam, mode="factored") for n in fishers}
        same, held = look_ahead(
            model, directions, grads, lr=lr, kl_clip=1e-2, loss=dataset.loss,
            batches=[batches["same"], batches["held"]],
        )  # fmt: skip
        for name, fisher in fishers.items():
            measures = _block_measures(fisher, approxes[name], grads[name], lam, spec)
            rows.append(
                {**tag, "layer": name, "method": method, "damping": lam, "lr": lr}
                | measures
                | {"decrease_same": same, "decrease_held": held}
            )
    if spec.step_fit:
        rows += _step_fit_rows(model, fishers, grads, batches, spec, tag, dataset.loss)
    return rows


def _step_fit_rows(
    model: nn.Module,
    fishers: dict[str, LayerFisher],
    grads: dict[str, torch.Tensor],
    batches: dict[str, torch.Tensor],
    spec: StepSpec,
    tag: dict,
    loss: str,
) -> list[dict[str, Any]]:
    """The fitted damped inverse's step measures and look-ahead, at KFAC's lr and damping (it
    fits no F: its Frobenius and spectrum errors are NaN; its step is its only mode)."""
    lam, lr = default_damping("kfac", spec.preset), default_lr("kfac", spec.preset)
    directions = {n: fit_step_inverse(f, lam).apply(grads[n]) for n, f in fishers.items()}
    same, held = look_ahead(
        model, directions, grads, lr=lr, kl_clip=1e-2, loss=loss,
        batches=[batches["same"], batches["held"]],
    )  # fmt: skip
    rows = []
    for name, fisher in fishers.items():
        agree = NaturalGradientAgreement.of(fisher.solve(grads[name], lam), directions[name])
        step = {"step_error": agree.relative_difference, "step_cosine": agree.cosine}
        rows.append(
            {**tag, "layer": name, "method": STEP_FIT, "damping": lam, "lr": lr}
            | {"relative_error": math.nan, "spectrum_error": math.nan}
            | step
            | {"step_norm_ratio": agree.norm_ratio}
            | {"exact_step_error": step["step_error"], "exact_step_cosine": agree.cosine}
            | {"decrease_same": same, "decrease_held": held}
        )
    return rows


# -- the trajectory and the training ranking ------------------------------------------------


def trajectory_records(spec: StepSpec, dataset: Dataset, seed: int, log: Log) -> list[dict]:
    """The checkpoints' records along ``spec.trainer``'s run with ``seed`` (its tuned lr and
    damping, the run settings' defaults), the first at initialisation."""
    config = RunConfig.from_settings(
        spec.dataset, spec.trainer, preset=spec.preset, epochs=spec.epochs, seed=seed,
        eval_every=10**9, device=spec.device,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed + 4_000_037)
    records: list[dict[str, Any]] = []
    run = TrainingRun(config, dataset=dataset)
    total = run.total_steps
    marks = {round(k * total / (spec.checkpoints - 1)) - 1 for k in range(1, spec.checkpoints)}

    def measure(step: int) -> None:
        began = time.perf_counter()
        tag = {"seed": seed, "step": step, "epoch": step / run.steps_per_epoch}
        model = copy.deepcopy(run.model).to("cpu")
        records.extend(checkpoint_records(model, dataset, spec, gen=gen, tag=tag))
        log(f"seed {seed} step {step}/{total}: measured in {time.perf_counter() - began:.1f} s")

    def on_step(record: dict[str, Any]) -> None:
        if record["step"] in marks:
            measure(record["step"] + 1)

    measure(0)
    run.on_step = on_step
    run.run()
    if run.status != "finished":
        raise RuntimeError(f"the {spec.trainer} trajectory did not finish: {run.message}")
    return records


def training_losses(
    spec: StepSpec,
    dataset: Dataset,
    log: Log,
    *,
    damping_mode: str = "factored",
    methods: tuple[str, ...] | None = None,
    dampings: tuple[float, ...] | None = None,
) -> list[dict[str, Any]]:
    """Full training-set loss after ``spec.train_epochs`` of each method's optimizer (its tuned
    lr) at each damping of ``spec.train_dampings`` and each training seed (``inf``: diverged).
    ``damping_mode``: the optimizers' (:class:`core.training.optim.OptimizerConfig`; "exact":
    (F̃ + λI)⁻¹ instead of factored damping); ``methods``/``dampings``: subsets (default: the
    spec's)."""
    rows = []
    for lam in spec.train_dampings if dampings is None else dampings:
        for method in spec.methods if methods is None else methods:
            for seed in spec.train_seeds:
                config = RunConfig.from_settings(
                    spec.dataset, method, preset=spec.preset, epochs=spec.train_epochs,
                    seed=seed, damping=lam, eval_every=10**9, device=spec.device,
                    damping_mode=damping_mode,
                )  # fmt: skip
                run = TrainingRun(config, dataset=dataset)
                began = time.perf_counter()
                run.run()
                loss = math.inf
                if run.status == "finished":
                    with torch.no_grad():
                        x = dataset.x_train.to(run.device)
                        loss = float(batch_loss(run.model(x), x, dataset.loss))
                seconds = time.perf_counter() - began
                rows.append(
                    {"method": method, "damping": lam, "damping_mode": damping_mode,
                     "seed": seed, "train_loss": loss, "seconds": seconds, "status": run.status}
                )  # fmt: skip
                log(f"train {method} λ={lam:g} ({damping_mode}) seed {seed}: {loss:.3f} "
                    f"({seconds:.1f} s)")  # fmt: skip
    return rows
