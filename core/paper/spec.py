"""What to run: the seed paper's two experiments, their settings and how a run is asked for.

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
authors' public training script (:data:`PAPER_DEFAULTS`): minibatch 128, Fisher minibatch a
quarter of it (32), T_cov = T_inv = 100, EMA 0.95 (of the Kronecker factors,
``ema_mode="factors"``, as their code does), KL-clip 1e-2, momentum 0.9, weight decay 1e-3,
Xavier-uniform initialisation with zero biases (``init="xavier_uniform"`` of
:func:`core.training.models.build_model`), 100 epochs. One of their settings is NOT reproduced,
and every written ``settings.json`` says so (``deviations``): their 80/20 train/validation split
(here the whole training set trains and the test set gives the test loss).
``ReproduceSpec.ema_mode`` can replace the factor EMA by another curvature average
(:data:`core.training.optim.EMA_MODES`), e.g. to compare them. Learning rates and dampings are
each optimizer's per-preset defaults (:func:`core.training.defaults.default_lr`,
:func:`core.training.defaults.default_damping`) unless given. The quality experiment measures on
the paper's Fisher minibatches (:data:`QUALITY_FISHER_BATCH`: 256 CURVES, 512 MNIST, 1024
FACES); because :class:`core.training.runner.TrainingRun` draws its quality minibatch with the
training optimizer's Fisher batch size, that optimizer (KFAC by default) uses the same Fisher
batch there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..engine.methods import METHODS
from ..training.datasets import DATASET_SPECS
from ..training.defaults import OPTIMIZERS
from ..training.models import build_model, describe_layers
from ..training.optim import EMA_MODES
from ..training.runner import RunConfig

__all__ = [
    "BASELINES",
    "BUDGET_STEP_FACTOR",
    "EXPERIMENTS",
    "PAPER_DEFAULTS",
    "QUALITY_FISHER_BATCH",
    "QUALITY_LAYERS",
    "REPRO_DATASETS",
    "TIME_BUDGETS",
    "TRAINING_OPTIMIZERS",
    "ReproduceSpec",
    "resolve_layers",
]

EXPERIMENTS = ("quality", "training")
REPRO_DATASETS = ("curves", "mnist", "faces")
BASELINES = ("kfac", "adam", "sgd")
# Lanczos is left out by default: on the engine's Gram route it computes the same two terms as
# Deflation, so as an optimizer it gives the same updates (core/training/optim.py); --optimizers
# adds it.
TRAINING_OPTIMIZERS = ("sgd", "adam", "kfac", "kpsvd", "deflation", "kfac_corrected")
# The authors' public training script, where the paper itself is silent.
PAPER_DEFAULTS: dict[str, Any] = {
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
    time (:func:`core.paper.runner.metric_cost_s`) exceeds it is skipped, with a notice in the
    settings and the report."""

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
