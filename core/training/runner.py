"""Training runs: one autoencoder, one optimizer, per-step records; runnable in a thread.

A :class:`TrainingRun` trains the seed paper's autoencoder for a dataset with one optimizer and
emits one record per step:

* ``optimizer``, ``step`` (0-based), ``epoch`` (epochs of data consumed once the step is done,
  fractional), ``wall_time_s`` (training time since the start: evaluation and quality tracking
  are NOT counted, so loss-against-time curves compare the optimizers alone);
* ``train_loss``: the minibatch loss (mean per-sample NLL, :func:`core.training.models.batch_loss`)
  of the parameters BEFORE this step's update;
* ``test_loss``: the mean per-sample NLL on the whole test set, same parameters, every
  ``eval_every`` steps and at the last step (``None`` elsewhere);
* with quality tracking on (``quality_layer``), every ``quality_every`` steps and at the last
  step: ``rel_error_<method>`` = ‖F − F̃‖_F/‖F‖_F and ``spectrum_error_<method>`` for each method
  in ``quality_methods`` (all engine methods when empty), on a Fisher minibatch of the chosen
  layer (the seed paper's approximation-quality-over-training experiment); NaN when the
  layer's Fisher block is zero on that minibatch (dead units: nothing to approximate).

Reproducibility: the model's initialisation, the minibatch order, the Fisher minibatches (and
the true Fisher's sampled targets) and the quality minibatches come from generators seeded with
``seed`` (separate streams, so turning quality tracking on does not change the training). The
same config gives the same records apart from ``wall_time_s`` (on one device and thread count).
The data are always the dataset's seed-0 sample/split.

A non-finite loss (or gradient, or update), or a finite loss above ``BLOWUP`` times the first
step's (a run that has left every sensible region but not yet overflowed: seen at 8e16 on
curves-small without the KL-clip), stops the run with status ``"diverged"`` and a message naming
the step; the records so far are kept (plus the diverged step's record with its loss), and the
model is put back to the last parameters whose loss was finite and below that bound.

Server limits (:class:`RunLimits`, only for runs the web app creates:
``RunConfig.from_settings(..., server_limits=True)``; the command line is never limited): a run
takes at most ``max_steps`` steps (a longer request is cut, and ``RunConfig.notice`` /
``TrainingRun.notice`` say so), and a run whose wall time (since it began, evaluation included)
reaches ``wall_s`` seconds stops after its current step (it always takes one) with status
``"timed_out"`` and a message naming the steps done; its records are kept and the model holds
its last step's parameters.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import traceback
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import settings as host_settings
from ..engine.capture import capture
from ..engine.fisher import LayerFisher
from ..engine.layers import supported_layers
from ..engine.methods import METHODS, approximate, canonical_name
from .data import load_dataset
from .datasets import DATASET_SPECS, Dataset
from .models import PRESETS, Model, batch_loss, build_model, per_sample_nll
from .optim import (
    NonFiniteError,
    OptimizerConfig,
    TrainingOptimizer,
    all_finite,
    build_optimizer,
    default_damping,
    default_lr,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RunConfig",
    "RunLimits",
    "TrainingRun",
    "model_loss",
    "run_comparison",
    "STATUSES",
    "resolve_device",
]

STATUSES = ("pending", "running", "finished", "stopped", "timed_out", "diverged", "failed")
DONE_STATUSES = ("finished", "stopped", "timed_out", "diverged", "failed")
BLOWUP = 1e6  # a loss this many times the first step's (and above 1) means divergence
QUALITY_BATCH = 256  # Fisher minibatch for quality tracking when the optimizer sets none


def resolve_device(device: str | None) -> torch.device:
    """``None`` → ``"cuda"`` when available, else ``"cpu"``; a CUDA request without CUDA fails."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")


@dataclass(frozen=True)
class RunLimits:
    """What a server allows one run: at most ``max_steps`` steps and ``wall_s`` seconds of
    wall time (``None``: no limit). :meth:`server` reads the host's settings."""

    max_steps: int | None = None
    wall_s: float | None = None

    @classmethod
    def server(cls) -> RunLimits:
        """This server's limits per run (``KRONOSCOPE_RUN_MAX_STEPS``,
        ``KRONOSCOPE_RUN_BUDGET_S``)."""
        return cls(
            host_settings.get("KRONOSCOPE_RUN_MAX_STEPS"),
            host_settings.get("KRONOSCOPE_RUN_BUDGET_S"),
        )


def _duration(seconds: float) -> str:
    """``900`` → ``"15 min"``, ``45`` → ``"45 s"``."""
    if seconds >= 120:
        return f"{round(seconds / 60, 1):g} min"
    return f"{round(seconds, 1):g} s"


def _cut_notice(asked: str, max_steps: int) -> str:
    return f"Steps cut from {asked} to {max_steps:,}: this server's limit per run."


@dataclass
class RunConfig:
    """One training run. ``optimizer`` may be given as a name: then with the default lr and
    damping of the model preset (:func:`core.training.optim.default_lr`, ``default_damping``).

    ``preset``: a :data:`core.training.models.PRESETS` name (``None``: the dataset's own preset);
    ``widths``: a custom encoder width list (overrides ``preset``). Exactly one of ``steps`` and
    ``epochs``. ``device``: ``None`` → CUDA when available, else CPU.

    ``limits`` (:class:`RunLimits`, none by default) and ``notice`` (what applying them
    changed, e.g. steps cut; ``""`` when nothing) are set by
    ``from_settings(..., server_limits=True)``. They are attributes, not fields: they bound how
    a run executes on a server, not what it computes, so they are not part of
    :meth:`to_dict` or of equality (and :func:`dataclasses.replace` drops them).
    """

    dataset: str
    optimizer: OptimizerConfig
    preset: str | None = None
    widths: list[int] | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    seed: int = 0
    eval_every: int = 10
    quality_layer: str | None = None
    quality_methods: tuple[str, ...] = ()
    quality_every: int = 10
    data_path: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self.limits: RunLimits = RunLimits()  # attributes, not fields (see above)
        self.notice: str = ""
        if self.dataset not in DATASET_SPECS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASET_SPECS)}"
            )
        if isinstance(self.optimizer, str):
            self.optimizer = _optimizer(self.optimizer, self._defaults_preset, {})
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ValueError(
                f"optimizer must be an OptimizerConfig or a name, got {type(self.optimizer)}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(
                f"unknown model preset {self.preset!r}; valid names: {', '.join(PRESETS)}"
            )
        if self.widths is not None:
            self.widths = [int(w) for w in self.widths]
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        if self.steps is not None:
            _positive_int(self.steps, "steps")
        if self.epochs is not None and (
            isinstance(self.epochs, bool)
            or not isinstance(self.epochs, (int, float))
            or not math.isfinite(self.epochs)
            or self.epochs <= 0
        ):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs!r}")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.eval_every, "eval_every")
        _positive_int(self.quality_every, "quality_every")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {self.seed!r}")
        self.quality_methods = tuple(self.quality_methods)
        unknown = [m for m in self.quality_methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"unknown quality method(s) {unknown}; choose from {', '.join(METHODS)}"
            )
        resolve_device(self.device)

    @classmethod
    def from_settings(
        cls, dataset: str, optimizer: str, *, server_limits: bool = False, **settings: Any
    ) -> RunConfig:
        """The run configuration for ``settings``: the one place where settings (the CLI's
        options, the app's widgets, a reproduction's paper settings) become a run, so that
        every caller gets the same defaults.

        ``settings`` are the fields of :class:`RunConfig` (``preset``, ``widths``, ``steps``,
        ``batch_size``, ``seed``, …) and of :class:`~core.training.optim.OptimizerConfig`
        (``lr``, ``damping``, ``t_cov``, ``kl_clip``, …), flat: their names do not overlap.
        ``lr`` and ``damping`` left out or ``None`` are the model preset's defaults
        (:func:`~core.training.optim.default_lr`, :func:`~core.training.optim.default_damping`
        of ``preset``, else of the dataset's own preset; a custom ``widths`` list gets the
        methods' general defaults); any other setting left out is the dataclass default,
        and one given as ``None`` is kept (``kl_clip=None``: no clipping). An unknown setting,
        optimizer, dataset or preset, or an invalid value, raises ``ValueError`` naming it.

        ``server_limits=True`` (the web app's runs; never the command line's) applies this
        server's :meth:`RunLimits.server`: ``steps`` above the step limit are cut to it and
        ``notice`` says so (``"Steps cut from 20,000 to 5,000: this server's limit per
        run."``), and the run gets the wall-time limit (:class:`TrainingRun` stops there).
        """
        unknown = sorted(settings.keys() - _RUN_SETTINGS - _OPTIMIZER_SETTINGS)
        if unknown:
            valid = ", ".join(sorted(_RUN_SETTINGS | _OPTIMIZER_SETTINGS))
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid names: {valid}")
        run = {k: v for k, v in settings.items() if k in _RUN_SETTINGS}
        options = {k: v for k, v in settings.items() if k in _OPTIMIZER_SETTINGS}
        preset = _defaults_preset(dataset, run.get("preset"), run.get("widths"))
        limits, notice = RunLimits(), ""
        if server_limits:
            limits = RunLimits.server()
            steps = run.get("steps")
            if (
                isinstance(steps, int)
                and not isinstance(steps, bool)
                and limits.max_steps is not None
                and steps > limits.max_steps
            ):
                notice = _cut_notice(f"{steps:,}", limits.max_steps)
                run["steps"] = limits.max_steps
        config = cls(dataset, _optimizer(optimizer, preset, options), **run)
        config.limits, config.notice = limits, notice
        return config

    @property
    def model_preset(self) -> str:
        """The preset used when no widths are given."""
        return self.preset or self.dataset

    @property
    def _defaults_preset(self) -> str | None:
        return _defaults_preset(self.dataset, self.preset, self.widths)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quality_methods"] = list(self.quality_methods)
        return out


_RUN_SETTINGS = {f.name for f in fields(RunConfig)} - {"dataset", "optimizer"}
_OPTIMIZER_SETTINGS = {f.name for f in fields(OptimizerConfig)} - {"name"}


def _defaults_preset(dataset: str, preset: str | None, widths: object) -> str | None:
    """The preset whose default lr and damping apply: ``preset``, else the dataset's own;
    ``None`` (the methods' general defaults) for a custom width list or an unknown name
    (which :class:`RunConfig` then rejects with its own message)."""
    if widths is not None:
        return None
    name = preset or dataset
    return name if name in PRESETS else None


def _optimizer(name: str, preset: str | None, options: dict[str, Any]) -> OptimizerConfig:
    """``name``'s configuration with ``options``; ``lr`` and ``damping`` missing or ``None``
    are ``preset``'s defaults. The only place those defaults are applied to a run."""
    if not isinstance(name, str):
        raise ValueError(f"optimizer must be an OptimizerConfig or a name, got {name!r}")
    name = canonical_name(name)  # default_lr rejects an unknown name
    options = dict(options)
    if options.get("lr") is None:
        options["lr"] = default_lr(name, preset)
    if options.get("damping") is None:
        options["damping"] = default_damping(name, preset)
    return OptimizerConfig(name, **options)


@dataclass
class _Clock:
    """Accumulates training time only (paused around evaluation)."""

    total: float = 0.0
    _since: float | None = field(default=None, repr=False)

    def resume(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None


def _run_model(config: RunConfig, dataset: Dataset, model: nn.Module | None) -> nn.Module:
    """A copy of ``model``, or the config's architecture built for ``dataset`` (seeded);
    checked to take images as wide as the dataset's: its ``input_dim``, else its first layer's
    ``nn.Linear`` input width."""
    if model is None:
        arch = config.widths if config.widths is not None else config.model_preset
        model = build_model(
            arch,
            input_dim=dataset.input_dim,
            loss=dataset.loss,
            seed=config.seed,
            image_shape=dataset.image_shape,
        )
    else:
        model = copy.deepcopy(model)
    layers = supported_layers(model)
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer")
    width = getattr(model, "input_dim", None)
    first = layers[0][1]
    if not isinstance(width, int) and isinstance(first, nn.Linear):
        width = first.in_features
    if width != dataset.input_dim:
        raise ValueError(
            f"the model's input width {width} does not match the dataset "
            f"{dataset.name!r} ({dataset.input_dim} pixels)"
        )
    return model


def model_loss(model: nn.Module, dataset: Dataset) -> str:
    """The run's likelihood: ``"ce"`` for a classifier (a model whose ``loss`` is ``"ce"``,
    e.g. :class:`core.training.models.ConvClassifier`), which needs the dataset's class labels
    (``ValueError`` without them or with more classes than the model has outputs); else the
    dataset's pixel likelihood, the autoencoders'."""
    if getattr(model, "loss", None) != "ce":
        return dataset.loss
    n_classes = dataset.n_classes
    if n_classes is None:
        raise ValueError(
            f"the model is a classifier and needs class labels, but the dataset "
            f"{dataset.name!r} has none here (DIGITS has); choose an autoencoder preset"
        )
    outputs = getattr(model, "n_classes", n_classes)
    if isinstance(outputs, int) and n_classes > outputs:
        raise ValueError(
            f"the dataset {dataset.name!r} has {n_classes} classes, the model only "
            f"{outputs} outputs"
        )
    return "ce"


class _Batches:
    """The training minibatches: one seeded permutation of ``x`` (and its targets ``y``) per
    epoch of ``steps_per_epoch`` steps, cut into ``size`` rows per step."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, *, size: int, steps_per_epoch: int, seed: int
    ) -> None:
        self.x = x
        self.y = y
        self.size = size
        self.steps_per_epoch = steps_per_epoch
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = step % self.steps_per_epoch
        if k == 0:
            self.order = torch.randperm(self.x.shape[0], generator=self.generator)
        idx = self.order[k * self.size : (k + 1) * self.size].to(self.x.device)
        xb = self.x[idx]
        return xb, (xb if self.y is self.x else self.y[idx])


class _LastFinite:
    """A copy of the parameters of the last step whose loss was finite (``step``; ``None``:
    the initial ones), put back when the run diverges."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.copies = [p.detach().clone() for p in params]
        self.step: int | None = None

    @torch.no_grad()
    def save(self, step: int) -> None:
        for keep, p in zip(self.copies, self.params, strict=True):
            keep.copy_(p)
        self.step = step

    @torch.no_grad()
    def restore(self) -> None:
        for keep, p in zip(self.copies, self.params, strict=True):
            p.copy_(keep)

    def params_finite(self) -> bool:
        return all_finite(self.params)


class TrainingRun:
    """One training run (see the module docstring). ``dataset``/``model`` may be passed in
    (e.g. cached by the app); the model is deep-copied, so the caller's stays untouched.

    ``on_step``: optional callable, called with each new record (from the training thread).

    ``notice``: what the server's limits changed before the run began (the config's, or an
    ``epochs`` request cut to the step limit here); ``""`` when nothing.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        dataset: Dataset | None = None,
        model: nn.Module | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(config, RunConfig):
            raise ValueError(f"config must be a RunConfig, got {type(config).__name__}")
        self.config = config
        self.device = resolve_device(config.device)
        self.on_step = on_step
        self.status = "pending"
        self.message = ""
        self.traceback = ""
        self.progress = 0.0
        self.diverged_step: int | None = None
        self._first_loss: float | None = None  # the first step's training loss (BLOWUP)
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        if dataset is None:
            dataset = load_dataset(config.dataset, path=config.data_path, seed=0)
        self.dataset = dataset
        self.model: nn.Module = _run_model(config, dataset, model).to(self.device)
        self.loss_kind = model_loss(self.model, dataset)
        self._y_train: torch.Tensor | None = None  # the classifier's labels, set by _train
        names = [n for n, _ in supported_layers(self.model)]
        if config.quality_layer is not None and config.quality_layer not in names:
            raise ValueError(f"unknown quality layer {config.quality_layer!r}; layers: {names}")
        self.quality_methods = tuple(config.quality_methods) or (
            METHODS if config.quality_layer else ()
        )
        n_train = dataset.n_train
        self.batch_size = min(config.batch_size, n_train)
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        if config.steps is not None:
            self.total_steps = int(config.steps)
        else:  # RunConfig has exactly one of steps and epochs
            assert config.epochs is not None
            self.total_steps = max(1, round(config.epochs * self.steps_per_epoch))
        self.notice = config.notice
        max_steps = config.limits.max_steps
        if max_steps is not None and self.total_steps > max_steps:
            asked = f"{self.total_steps:,}"
            if config.epochs is not None:
                asked += f" ({config.epochs:g} epochs)"
            self.notice = self.notice or _cut_notice(asked, max_steps)
            self.total_steps = max_steps

    # -- public API --------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """A snapshot (copies) of the records so far; safe to call from any thread."""
        with self._lock:
            return [dict(r) for r in self._records]

    def dataframe(self) -> pd.DataFrame:
        import pandas as pd

        records = self.records()
        columns = ["optimizer", "step", "epoch", "wall_time_s", "train_loss", "test_loss"]
        df = pd.DataFrame(records)
        if df.empty:
            return pd.DataFrame(columns=columns)
        rest = [c for c in df.columns if c not in columns]
        return df[columns + rest]

    def start(self) -> None:
        """Run in a background daemon thread."""
        if self._thread is not None:
            raise RuntimeError("this run was already started")
        self._thread = threading.Thread(target=self.run, name="kronoscope-run", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the run to stop after the current step (status becomes "stopped")."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    def run(self) -> None:
        """Train synchronously; never raises (failures set status "failed" and ``message``)."""
        if self.status != "pending":
            raise RuntimeError(f"a run can only be run once (status {self.status!r})")
        self.status = "running"
        try:
            self._train()
        except Exception as err:  # reported through status/message, not raised
            self.status = "failed"
            self.message = f"{type(err).__name__}: {err}"
            self.traceback = traceback.format_exc()

    # -- training loop -----------------------------------------------------------------
    def _train(self) -> None:
        began = time.monotonic()
        cfg = self.config
        x_train = self.dataset.x_train.to(self.device)
        x_test = self.dataset.x_test.to(self.device)
        y_train, y_test = x_train, x_test  # an autoencoder's targets are its inputs
        if self.loss_kind == "ce":
            assert self.dataset.y_train is not None and self.dataset.y_test is not None
            y_train = self._y_train = self.dataset.y_train.to(self.device)
            y_test = self.dataset.y_test.to(self.device)
        batches = _Batches(
            x_train,
            y_train,
            size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            seed=cfg.seed,
        )
        quality_gen = torch.Generator().manual_seed(cfg.seed + 2_000_003)
        opt = build_optimizer(
            self.model,
            cfg.optimizer,
            loss=self.loss_kind,
            seed=cfg.seed + 1_000_003,
            fisher_data=(x_train, y_train),
        )
        kept = _LastFinite(list(self.model.parameters()))
        clock = _Clock()
        self.model.train()
        for step in range(self.total_steps):
            if self._halted(step, began):
                return
            xb, yb = batches.batch(step)
            record = self._record(step, test=(x_test, y_test), x_train=x_train, gen=quality_gen)
            clock.resume()
            record["train_loss"], diverged = self._step(opt, xb, yb, kept=kept, step=step)
            clock.pause()
            record["wall_time_s"] = clock.total
            self._append(record, step)
            if diverged is not None:
                self._diverge(diverged, kept, step)
                return
        self.status = "finished"
        self.message = f"finished {self.total_steps} step(s)"

    def _halted(self, step: int, began: float) -> bool:
        """Whether the run ends before ``step``: stopped by the user, or at the server's wall
        time (after at least one step); sets the status and message."""
        wall_s = self.config.limits.wall_s
        if self._stop.is_set():
            self.status = "stopped"
            self.message = f"stopped by the user after {step} step(s)"
            return True
        if wall_s is not None and step > 0 and time.monotonic() - began >= wall_s:
            self.status = "timed_out"
            self.message = (
                f"stopped at this server's time limit per run ({_duration(wall_s)}) "
                f"after {step:,} of {self.total_steps:,} step(s); the records so far are "
                "kept and the model holds the parameters of its last step"
            )
            return True
        return False

    def _record(
        self,
        step: int,
        *,
        test: tuple[torch.Tensor, torch.Tensor],
        x_train: torch.Tensor,
        gen: torch.Generator,
    ) -> dict[str, Any]:
        """Step ``step``'s record before its update: test loss and quality where due (with the
        parameters before the update), the training columns still empty."""
        cfg = self.config
        last = step == self.total_steps - 1
        record = {
            "optimizer": cfg.optimizer.name,
            "step": step,
            "epoch": (step + 1) / self.steps_per_epoch,
            "wall_time_s": 0.0,
            "train_loss": None,
            "test_loss": None,
        }
        if step % cfg.eval_every == 0 or last:
            record["test_loss"] = self._evaluate(*test)
        if cfg.quality_layer is not None and (step % cfg.quality_every == 0 or last):
            record.update(self._quality(x_train, gen))
        return record

    def _step(
        self,
        opt: TrainingOptimizer,
        xb: torch.Tensor,
        yb: torch.Tensor,
        *,
        kept: _LastFinite,
        step: int,
    ) -> tuple[float, str | None]:
        """One update on the minibatch ``xb`` (targets ``yb``): its loss before the update, and
        why the run
        diverged (``None`` if it did not). A finite loss first keeps the parameters."""
        opt.zero_grad()
        loss = batch_loss(self.model(xb), yb, self.loss_kind)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value, f"the training loss became {value} at step {step}"
        if self._first_loss is None:
            self._first_loss = value
        bound = BLOWUP * max(self._first_loss, 1.0)
        if value > bound:
            return value, (
                f"the training loss grew to {value:.3g} at step {step}, over {BLOWUP:.0e} times "
                f"the first step's ({self._first_loss:.3g})"
            )
        kept.save(step)
        loss.backward()
        try:
            opt.step(xb, yb)
        except NonFiniteError as err:
            return value, f"{err} (training loss {value:.6g})"
        if not kept.params_finite():
            return value, f"the parameters became non-finite at step {step}"
        return value, None

    def _diverge(self, why: str, kept: _LastFinite, step: int) -> None:
        """End the run as diverged at ``step``, the model back at the last finite parameters."""
        kept.restore()
        held = (
            "the initial parameters"
            if kept.step is None
            else f"the parameters of step {kept.step} (the last with a finite loss below "
            "the divergence bound)"
        )
        self.status = "diverged"
        self.message = (
            f"{why}. The run stopped; the records so far are kept and the "
            f"model holds {held}. Lower the learning rate or raise the damping."
        )
        self.diverged_step = step

    def _append(self, record: dict[str, Any], step: int) -> None:
        with self._lock:
            self._records.append(record)
            self.progress = (step + 1) / self.total_steps
        if self.on_step is not None:
            self.on_step(record)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
        total = 0.0
        for i in range(0, x.shape[0], chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            total += float(per_sample_nll(self.model(xb), yb, self.loss_kind).sum())
        return total / x.shape[0]

    def _quality(self, x_train: torch.Tensor, gen: torch.Generator) -> dict[str, Any]:
        layer = self.config.quality_layer
        assert layer is not None  # called only for a run with a quality layer
        return self._measure(self._quality_fishers(x_train, gen, [layer])[layer])

    def _quality_fishers(
        self, x_train: torch.Tensor, gen: torch.Generator, layers: list[str]
    ) -> dict[str, LayerFisher]:
        """The exact Fisher block of each of ``layers`` on one seeded minibatch of
        ``fisher_batch`` (or :data:`QUALITY_BATCH`) training images, captured in one pass."""
        cfg = self.config
        m = min(cfg.optimizer.fisher_batch or QUALITY_BATCH, x_train.shape[0])
        idx = torch.randperm(x_train.shape[0], generator=gen)[:m].to(x_train.device)
        xb = x_train[idx]
        yb = xb if self._y_train is None else self._y_train[idx]
        result = capture(
            self.model, xb, loss=self.loss_kind, fisher=cfg.optimizer.fisher, targets=yb,
            generator=gen, layers=layers,
        )  # fmt: skip
        return {
            name: LayerFisher(
                result.layers[name].a.detach().to("cpu", torch.float64),
                result.layers[name].g.detach().to("cpu", torch.float64),
            )
            for name in layers
        }

    def _measure(
        self,
        fisher: LayerFisher,
        prefix: str = "",
        skip: Container[str] = (),
        seconds: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """``{prefix}rel_error_<method>`` and ``{prefix}spectrum_error_<method>`` of every
        quality method against ``fisher``; NaN for the methods in ``skip`` (not measured) or
        when F = 0 on this minibatch (every unit after the layer dead, or its inputs all 0: a
        relative error is undefined, so NaN, not a crash that ends the run). ``seconds``, when
        given, receives each measured method's time (approximation and both errors)."""
        out: dict[str, Any] = {}
        empty = not fisher.frobenius_sq() > 0.0
        for method in self.quality_methods:
            rel = spectrum = math.nan
            if not empty and method not in skip:
                started = time.perf_counter()
                approx = approximate(method, fisher.a, fisher.g)
                rel, spectrum = fisher.relative_error(approx), fisher.spectrum_error(approx)[0]
                if seconds is not None:
                    seconds[method] = time.perf_counter() - started
            out[f"{prefix}rel_error_{method}"] = rel
            out[f"{prefix}spectrum_error_{method}"] = spectrum
        return out


def _run_label(cfg: RunConfig, configs: list[RunConfig]) -> str:
    """The run's optimizer, plus its lr and damping (and damping mode when not factored) when
    the optimizer appears more than once in ``configs``, plus its seed when those settings do
    too."""
    label = cfg.optimizer.name
    if sum(1 for c in configs if c.optimizer.name == label) > 1:
        mode = cfg.optimizer.damping_mode
        exact = ", exact damping" if mode != "factored" else ""
        label = f"{label} (lr={cfg.optimizer.lr:g}, λ={cfg.optimizer.damping:g}{exact})"
        if sum(1 for c in configs if c.optimizer == cfg.optimizer) > 1:
            label += f" seed {cfg.seed}"
    return label


def run_comparison(
    configs: list[RunConfig],
    *,
    progress_callback: Callable[[float, str], None] | None = None,
    datasets: dict[tuple[str, str | None], Dataset] | None = None,
) -> pd.DataFrame:
    """Run several configurations one after another and return all records in one DataFrame.

    Runs with the same dataset share one loaded copy; runs with the same architecture and seed
    start from the SAME initial parameters (and see the same minibatch order). A ``label``
    column names each run (the optimizer, plus its learning rate when an optimizer appears more
    than once). ``progress_callback(fraction, message)`` is called after every step.
    ``df.attrs["runs"]`` lists each run's label, status and message (a diverged run keeps its
    records and does not stop the others).
    """
    import pandas as pd

    if not configs:
        raise ValueError("run_comparison needs at least one RunConfig")
    datasets = {} if datasets is None else datasets
    models: dict[tuple[object, ...], Model] = {}
    frames, summary = [], []
    n = len(configs)
    for i, cfg in enumerate(configs):
        key = (cfg.dataset, cfg.data_path)
        if key not in datasets:
            datasets[key] = load_dataset(cfg.dataset, path=cfg.data_path, seed=0)
        ds = datasets[key]
        arch = tuple(cfg.widths) if cfg.widths is not None else cfg.model_preset
        mkey = (key, arch, cfg.seed)
        if mkey not in models:
            models[mkey] = build_model(
                list(arch) if isinstance(arch, tuple) else arch,
                input_dim=ds.input_dim,
                loss=ds.loss,
                seed=cfg.seed,
                image_shape=ds.image_shape,
            )
        label = _run_label(cfg, configs)
        run = TrainingRun(cfg, dataset=ds, model=models[mkey])
        if progress_callback is not None:

            def report(
                record: dict[str, Any], i: int = i, label: str = label, total: int = run.total_steps
            ) -> None:
                frac = (i + (record["step"] + 1) / total) / n
                progress_callback(frac, f"{label}: step {record['step'] + 1}/{total}")

            run.on_step = report
        run.run()
        df = run.dataframe()
        df.insert(0, "label", label)
        df["seed"] = cfg.seed
        frames.append(df)
        summary.append({"label": label, "status": run.status, "message": run.message})
    out = pd.concat(frames, ignore_index=True)
    out.attrs["runs"] = summary
    return out
