"""Optimizers: SGD, Adam, and natural gradient preconditioned by every engine approximation.

A natural-gradient optimizer here is a :class:`Preconditioner` (per-layer curvature state, the
engine's approximations and their damped inverses) plus ``torch.optim.SGD`` for the final
momentum step. One training step, after ``loss.backward()``:

1. every ``t_cov`` steps: capture ``ā`` and ``γ`` of every factored layer (``nn.Linear``, and
   ``nn.Conv2d`` as its unfolded patches, ``T`` positions per sample) on a Fisher minibatch
   (:func:`core.engine.capture.capture`, true or empirical Fisher, a seeded ``torch.Generator``) and
   fold them into the curvature average (:mod:`core.training.averages`);
2. every ``t_inv`` steps: rebuild each layer's approximation F̃ from that state and its damped
   inverse (eigendecompositions, cached until the next refresh);
3. add ``weight_decay · θ`` to the gradient (the natural gradient of the L2-regularised loss);
4. precondition each layer's gradient matrix ``V = [∇W | ∇b]`` of shape (dg, da) (bias as the
   last column, the engine's convention; a convolution's ``∇W`` reshaped to
   ``(C_out, C_in·kh·kw)``, the order of its captured patches) — ``P = (F̃ + damping)⁻¹ V``,
   reshaped back to the weight's shape;
5. KL-clipping (Martens & Grosse 2015, §10; Ba et al. 2017): scale every update by
   ``ν = min(1, sqrt(kl_clip / (lr² Σ_layers ⟨V, P⟩)))``;
6. ``torch.optim.SGD(lr, momentum)`` on the clipped, preconditioned gradients.

The curvature side is :mod:`core.training.curvature` (damping convention per method, precision
and device) and :mod:`core.training.averages` (the curvature averages, one per ``ema_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..engine.approx import SOLVE_MODES, KroneckerSum
from ..engine.capture import FISHER_KINDS
from ..engine.layers import supported_layers
from ..engine.methods import FISHER_EMA_METHODS, canonical_name
from ..engine.validation import NonFiniteValueError
from .averages import EMA_MODES, WINDOW_CAPTURES, WINDOW_SAMPLES, curvature_average
from .curvature import Preconditioner
from .defaults import NATURAL_OPTIMIZERS, OPTIMIZERS, check_optimizer, default_damping, default_lr
from .swan import Swan
from .two_level import TWO_LEVEL_VARIANTS, spectral_vectors, two_level_directions

__all__ = [
    "OPTIMIZERS",
    "NATURAL_OPTIMIZERS",
    "EMA_MODES",
    "FISHER_EMA_METHODS",
    "OptimizerConfig",
    "default_lr",
    "default_damping",
    "TrainingOptimizer",
    "build_optimizer",
    "NonFiniteError",
    "all_finite",
]


class NonFiniteError(FloatingPointError):
    """A gradient or update became NaN/inf (the run has diverged)."""


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite (no NaN, no ±inf): one ``isfinite`` over
    their concatenation and one wait for the device, where a test per tensor costs two kernels
    and a wait each (0.15–0.3 ms a step for the 12 parameters of the curves-small model, 4–7 %
    of its KFAC step, measured at 1 thread)."""
    flat = [t.detach().reshape(-1) for t in tensors]
    return not flat or bool(torch.isfinite(torch.cat(flat)).all())


@dataclass
class OptimizerConfig:
    """Options of one optimizer; validated on construction (clear ``ValueError`` messages).

    ``lr``: learning rate (> 0). ``damping``: λ > 0 for the natural-gradient methods (ignored,
    but still ≥ 0, for sgd/adam/swan); ``None`` picks :func:`default_damping`. ``t_cov`` and
    ``t_inv``: curvature refresh and inverse periods, in steps. ``ema``: decay ρ ∈ [0, 1) of
    the curvature estimate. ``kl_clip``: KL-clipping bound (> 0), or ``None`` for none.
    ``momentum`` ∈ [0, 1) (Adam's β₁; unused by the stateless ``swan``). ``weight_decay`` ≥ 0.
    ``fisher_batch``: Fisher minibatch size (``None``: the training minibatch). ``fisher``:
    ``"true"`` (targets sampled from the model) or ``"empirical"`` (the data's targets).
    ``ema_mode``: ``"factors"`` (EMA of each refresh's Kronecker factors, as KFAC; the
    default), ``"window"`` (approximate a truncated EMA of the Fisher) or ``"fisher"`` (the
    EMA of the Fisher in rearranged low-rank form, for the KPSVD family; kfac, shampoo and
    ekfac keep their factor EMA there); see :mod:`core.training.averages`. ``exact`` uses the
    window in every mode. ``damping_mode``: ``"factored"`` (Martens–Grosse factored damping of
    the Kronecker methods; the default) or ``"exact"`` (``(F̃ + λI)⁻¹``), the engine's solve
    mode, natural-gradient optimizers only (:mod:`core.training.curvature`).
    """

    name: str
    lr: float
    damping: float | None = None  # None: default_damping(name), the tuned per-method default
    t_cov: int = 10
    t_inv: int = 10
    ema: float = 0.95
    kl_clip: float | None = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    fisher_batch: int | None = None
    fisher: str = "true"
    ema_mode: str = "factors"
    damping_mode: str = "factored"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"optimizer name must be a string, got {self.name!r}")
        self.name = check_optimizer(canonical_name(self.name))
        if self.damping is None:
            self.damping = default_damping(self.name)
        if not _finite(self.lr) or self.lr <= 0:
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not _finite(self.damping) or self.damping < 0:
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        if self.name in NATURAL_OPTIMIZERS and self.damping <= 0:
            raise ValueError(
                f"damping must be > 0 for the natural-gradient optimizer {self.name!r} "
                f"(it keeps (F̃ + damping) invertible), got {self.damping!r}"
            )
        for key in ("t_cov", "t_inv"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer ≥ 1 (steps), got {value!r}")
        if not _finite(self.ema) or not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema!r}")
        if self.kl_clip is not None and (not _finite(self.kl_clip) or self.kl_clip <= 0):
            raise ValueError(f"kl_clip must be a finite number > 0 or None, got {self.kl_clip!r}")
        if not _finite(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay!r}")
        fb = self.fisher_batch
        if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or fb < 1):
            raise ValueError(f"fisher_batch must be an integer ≥ 1 or None, got {fb!r}")
        if self.fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {FISHER_KINDS}, got {self.fisher!r}")
        if isinstance(self.ema_mode, str):
            self.ema_mode = self.ema_mode.strip().lower()
        if self.ema_mode not in EMA_MODES:
            raise ValueError(f"ema_mode must be one of {EMA_MODES}, got {self.ema_mode!r}")
        if isinstance(self.damping_mode, str):
            self.damping_mode = self.damping_mode.strip().lower()
        if self.damping_mode not in SOLVE_MODES:
            raise ValueError(
                f"damping_mode must be one of {SOLVE_MODES}, got {self.damping_mode!r}"
            )
        if self.damping_mode != "factored" and self.name not in NATURAL_OPTIMIZERS:
            raise ValueError(
                f"damping_mode={self.damping_mode!r} needs a natural-gradient optimizer "
                f"({', '.join(NATURAL_OPTIMIZERS)}); {self.name!r} solves no damped system — "
                f"leave damping_mode at 'factored'"
            )

    @property
    def resolved_damping(self) -> float:
        """``damping`` as a number: ``__post_init__`` replaces ``None`` by the default."""
        if self.damping is None:
            raise ValueError("damping is unset")
        return self.damping

    @property
    def natural(self) -> bool:
        return self.name in NATURAL_OPTIMIZERS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the optimizer -------------------------------------------------------------------------


def _kfac_factors(pre: Preconditioner) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's KFAC factors ``(A, G)`` from the preconditioner's current inverses (what
    the spectral coarse space of :mod:`core.training.two_level` is built from)."""
    out = {}
    for name, inverse in pre.inverses.items():
        approx = inverse.approx
        if isinstance(approx, KroneckerSum) and approx.n_terms == 1:
            out[name] = approx.terms[0]
    return out


def _factored_modules(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    return dict(supported_layers(model))


class TrainingOptimizer:
    """One optimizer object for every method; ``step(x, y)`` after ``loss.backward()``.

    ``x``, ``y``: the current training minibatch (used as the Fisher minibatch when no
    ``fisher_data`` is given; ``y`` are the data targets, needed for the empirical Fisher).
    ``fisher_data``: ``(x_train, y_train)`` to draw Fisher minibatches of ``fisher_batch`` rows
    from, with the seeded generator. ``loss``: the likelihood kind (``"bce"``, ``"mse"``,
    ``"ce"``), as in :func:`core.engine.capture.capture`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: OptimizerConfig,
        *,
        loss: str,
        seed: int = 0,
        fisher_data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        window_captures: int = WINDOW_CAPTURES,
        window_samples: int = WINDOW_SAMPLES,
    ) -> None:
        self.model = model
        self.config = config
        self.loss = loss
        self.fisher_data = fisher_data
        self.steps = 0
        self.last_kl_scale = 1.0
        self.generator = torch.Generator().manual_seed(int(seed))
        params = [p for p in model.parameters() if p.requires_grad]
        c = config
        # the two-level optimizers' coarse space (core.training.two_level); None for the others
        self.coarse_space: str | None = TWO_LEVEL_VARIANTS.get(c.name)
        self._spectral: dict[str, torch.Tensor] | None = None  # "spectral": since the refresh
        self.preconditioner: Preconditioner | None = None
        if c.name == "adam":
            self.base: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay
            )
        elif c.name == "sgd":
            self.base = torch.optim.SGD(
                params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        elif c.name == "swan":
            self.base = Swan(model, lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.base = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)
            average = curvature_average(
                self._curvature_method(),
                c.ema_mode,
                ema=c.ema,
                window_captures=window_captures,
                window_samples=window_samples,
            )
            self.preconditioner = Preconditioner(
                model,
                average,
                loss=loss,
                fisher=c.fisher,
                damping=c.resolved_damping,
                generator=self.generator,
                damping_mode=c.damping_mode,
            )
        self.layers = _factored_modules(model)

    @property
    def name(self) -> str:
        return self.config.name

    def _curvature_method(self) -> str:
        """The engine method whose curvature this optimizer keeps (its own name; the
        two-level optimizers keep KFAC's and add a coarse correction to its directions,
        :mod:`core.training.two_level`)."""
        return "kfac" if self.coarse_space is not None else self.config.name

    def zero_grad(self) -> None:
        self.base.zero_grad(set_to_none=True)

    def _fisher_minibatch(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fb = self.config.fisher_batch
        if self.fisher_data is not None and fb is not None:
            fx, fy = self.fisher_data
            n = fx.shape[0]
            if fb >= n:
                return fx, fy
            idx = torch.randperm(n, generator=self.generator)[:fb].to(fx.device)
            return fx[idx], (None if fy is None else fy[idx])
        if fb is not None and fb < x.shape[0]:
            return x[:fb], (None if y is None else y[:fb])
        return x, y

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Apply one update from the gradients in ``.grad`` (call after ``backward()``)."""
        pre = self.preconditioner
        if pre is None:
            self._check_grads()
            self.base.step()
            self.steps += 1
            return
        self._refresh(pre, x, y)
        self._check_grads()
        with torch.no_grad():
            c = self.config
            if c.weight_decay:
                for p in self.base.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.grad.add_(p, alpha=c.weight_decay)
            vg = self._precondition_grads(pre)
            if not math.isfinite(vg):
                raise NonFiniteError(
                    f"the preconditioned gradient became non-finite at step {self.steps}"
                )
            nu = 1.0
            if c.kl_clip is not None and vg > 0:
                nu = min(1.0, math.sqrt(c.kl_clip / (c.lr**2 * vg)))
            self.last_kl_scale = nu
            if nu != 1.0:
                for p in self.base.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.grad.mul_(nu)
        self.base.step()
        self.steps += 1

    def _refresh(self, pre: Preconditioner, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """The curvature every ``t_cov`` steps, the inverses every ``t_inv`` (and the first)."""
        c = self.config
        if self.steps % c.t_cov == 0:
            try:
                pre.update_curvature(*self._fisher_minibatch(x, y))
            except NonFiniteValueError as err:  # the engine's finiteness checks
                raise NonFiniteError(
                    f"the Fisher capture became non-finite at step {self.steps}: {err}"
                ) from err
        if self.steps % c.t_inv == 0 or not pre.inverses:
            pre.update_inverses()
            if self.coarse_space == "spectral":  # its vectors change with the factors only
                self._spectral = spectral_vectors(_kfac_factors(pre))

    def _precondition_grads(self, pre: Preconditioner) -> float:
        """Replace each factored layer's gradient ``V`` by ``P = (F̃ + damping)⁻¹ V`` (in place,
        under ``no_grad``; a two-level optimizer adds its coarse correction to KFAC's ``P``,
        :func:`core.training.two_level.two_level_directions`); return the KL sum
        ``Σ ⟨V, P⟩``, in which the parameters outside those layers (none in this project's
        networks) keep their gradient and count with the identity metric."""
        grads: dict[str, torch.Tensor] = {}
        dirs: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            w = layer.weight
            b: torch.Tensor | None = layer.bias  # None for a layer without bias
            w_grad = w.grad
            if name not in pre.inverses or w_grad is None:
                continue
            b_grad = None if b is None else b.grad
            if b is not None and b_grad is None:
                raise ValueError(f"layer {name!r}: its weight has a gradient but not its bias")
            v = w_grad.reshape(w.shape[0], -1)  # a convolution's (C_out, C_in·kh·kw)
            if b_grad is not None:
                v = torch.cat([v, b_grad[:, None]], dim=1)
            grads[name] = v.to(torch.float64)
            dirs[name] = pre.precondition(name, grads[name])
        if self.coarse_space is not None and dirs:
            assert pre.last_capture is not None  # _refresh captured first
            try:
                captures, damping = pre.last_capture.layers, self.config.resolved_damping
                dirs = two_level_directions(self.coarse_space, grads, dirs, captures, damping,
                                            precondition=pre.precondition,
                                            spectral=self._spectral)  # fmt: skip
            except ValueError as err:  # a non-finite coarse vector
                raise NonFiniteError(
                    f"the coarse correction failed at step {self.steps}: {err}"
                ) from err
        vg = 0.0
        handled: set[int] = set()
        for name, p64 in dirs.items():
            w, b = self.layers[name].weight, self.layers[name].bias
            vg += float((grads[name] * p64).sum())
            p32 = p64.to(w.dtype)
            assert w.grad is not None
            if b is not None and b.grad is not None:
                w.grad.copy_(p32[:, :-1].reshape(w.shape))
                b.grad.copy_(p32[:, -1])
                handled.add(id(b))
            else:
                w.grad.copy_(p32.reshape(w.shape))
            handled.add(id(w))
        for p in self.base.param_groups[0]["params"]:
            if id(p) not in handled and p.grad is not None:
                vg += float((p.grad.to(torch.float64) ** 2).sum())
        return vg

    def _check_grads(self) -> None:
        grads = (p.grad for p in self.base.param_groups[0]["params"] if p.grad is not None)
        if not all_finite(grads):
            raise NonFiniteError(f"the gradient became non-finite at step {self.steps}")

    def diagnostics(self) -> dict[str, Any]:
        """Counters for logs: steps, refreshes, last KL scale, safeguard engagements."""
        out = {"steps": self.steps, "kl_scale": self.last_kl_scale}
        if self.preconditioner is not None:
            out["curvature_updates"] = self.preconditioner.curvature_updates
            out["inverse_updates"] = self.preconditioner.inverse_updates
            out.update(
                {f"safeguard_{k}": v for k, v in self.preconditioner.safeguard_counts().items()}
            )
        return out


def build_optimizer(
    model: nn.Module,
    config: OptimizerConfig,
    *,
    loss: str,
    seed: int = 0,
    fisher_data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> TrainingOptimizer:
    """The optimizer for ``config`` over ``model``'s parameters (see :class:`TrainingOptimizer`)."""
    return TrainingOptimizer(model, config, loss=loss, seed=seed, fisher_data=fisher_data)
