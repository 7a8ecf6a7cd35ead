"""Per-sample layer inputs ``ā_i`` and output gradients ``g_i`` of every ``nn.Linear``.

For a linear layer ``s = W ā`` (``W`` of shape ``(dg, da)``, bias as the last column, ``ā``
with a trailing ``1`` when the layer has a bias) and one minibatch of ``m`` samples,
:func:`capture` returns, per layer,

* ``a``: the ``(m, da)`` matrix with rows ``ā_iᵀ``;
* ``g``: the ``(m, dg)`` matrix with rows ``g_iᵀ``, ``g_i = ∂ℓ_i/∂s_i``, where ``ℓ_i`` is the
  negative log-likelihood of ONE sample (summed over output units, never averaged).

The per-sample weight gradient is then ``∇_W ℓ_i = g_i ā_iᵀ`` (``vec(g āᵀ) = ā ⊗ g``), and the
layer's Fisher block is ``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)``.

Scaling: autograd on a batch mean hands each sample g_i/m; we undo it. Concretely, the backward
pass is run on the SUM over the batch of per-sample NLLs, ``L = Σ_i ℓ_i``. Samples do not
interact (each row of the batch only reaches its own row of every layer output), so
``∂L/∂s_i = ∂ℓ_i/∂s_i = g_i`` exactly, with no ``1/m`` factor.

Likelihoods (``loss=``, looked up by :func:`core.engine.likelihoods.likelihood`, which also holds
their sampling, target checks and output Fisher), per sample, with model output ``z`` of shape
``(d_out,)``:

* ``"bce"``: ``z`` are logits, ``y_k ~ Bernoulli(σ(z_k))`` independently,
  ``ℓ = Σ_k BCEWithLogits(z_k, y_k)``; at the output ``g = σ(z) − y``.
* ``"mse"``: ``z = μ``, ``y ~ N(μ, I)``, ``ℓ = ½‖y − μ‖²``; at the output ``g = μ − y``.
* ``"ce"``: ``z`` are logits of a Categorical, ``y ~ Cat(softmax(z))``,
  ``ℓ = −log softmax(z)_y``; at the output ``g = softmax(z) − e_y``.

Fisher kind (``fisher=``): ``"true"`` (default) draws the targets from the model's own predictive
distribution with the caller's ``torch.Generator`` (the global RNG is never touched), giving a
Monte-Carlo estimate of the true Fisher; ``"empirical"`` uses the data's targets.

Hooks: forward hooks on the captured layers record ``ā`` and keep the output ``s``; the
gradients ``∂L/∂s`` come from ``torch.autograd.grad`` w.r.t. those outputs, so parameters'
``.grad`` are never written. Hooks are removed in a ``finally`` block.

Threads: a web server captures on one shared (cached, read-only) model from many sessions at
once. Hooks live on the module, so two overlapping captures would each see the other's forward
pass. Captures on the same model are therefore serialised by a per-model lock, and a hook
records only the forward pass of the thread that registered it (a plain forward of another
thread, e.g. an evaluation, passes through untouched).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import is_plain_linear, linear_layers
from .likelihoods import LOSS_KINDS, likelihood
from .validation import NonFiniteValueError

__all__ = [
    "CaptureResult",
    "LayerCapture",
    "UnsupportedLayerError",
    "capture",
    "linear_layer_names",
    "LOSS_KINDS",
    "FISHER_KINDS",
]

FISHER_KINDS: tuple[str, ...] = ("true", "empirical")

_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.Lock:
    """The lock that serialises captures on ``model`` (see the module docstring)."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class UnsupportedLayerError(ValueError):
    """A module owns parameters the engine cannot factor (anything but ``nn.Linear``)."""


@dataclass(frozen=True)
class LayerCapture:
    """Captured statistics of one linear layer ``s = W ā`` on a minibatch of ``m`` samples.

    ``a``: ``(m, da)``, rows ``ā_iᵀ`` (last column all ones iff ``has_bias``), detached.
    ``g``: ``(m, dg)``, rows ``g_iᵀ = (∂ℓ_i/∂s_i)ᵀ`` of ONE sample's NLL, detached.
    """

    name: str
    a: torch.Tensor
    g: torch.Tensor
    has_bias: bool


@dataclass(frozen=True)
class CaptureResult:
    """Captures of the selected linear layers, in the order they ran in the forward pass.

    ``unsupported``: ``(qualified name, type name)`` of modules owning parameters that were NOT
    captured (only non-empty with ``strict=False``). ``loss``: mean per-sample NLL
    ``(1/m) Σ_i ℓ_i`` of the batch w.r.t. the targets used (sampled or given).
    """

    layers: dict[str, LayerCapture]
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    loss: float = float("nan")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's plain linear layers
    (:func:`core.engine.layers.is_plain_linear`), in registration order."""
    return [name for name, _ in linear_layers(model)]


def _unsupported_modules(model: nn.Module) -> list[tuple[str, str]]:
    """Modules other than ``nn.Linear`` that own parameters directly, plus batch norms in
    training mode (they couple the samples of a batch, so no per-sample gradient exists)."""
    found: list[tuple[str, str]] = []
    for name, mod in model.named_modules():
        if is_plain_linear(mod):
            continue
        owns_params = any(True for _ in mod.parameters(recurse=False))
        couples_samples = isinstance(mod, _BatchNorm) and mod.training
        if owns_params or couples_samples:
            found.append((name or "<root>", type(mod).__name__))
    return found


def _select_layers(model: nn.Module, layers: Iterable[str] | None) -> list[str]:
    """Names of the Linear layers to capture (validated against the model)."""
    valid = linear_layer_names(model)
    if layers is None:
        if not valid:
            raise ValueError("the model has no nn.Linear layer to capture")
        return valid
    requested = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in requested if n not in valid]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; valid nn.Linear names: {valid}")
    selected = list(dict.fromkeys(requested))
    if not selected:
        raise ValueError(f"layers= selects no layer; valid nn.Linear names: {valid}")
    return selected


def _check_x(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (m, d_in), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has 0 samples")
    if not torch.isfinite(x).all():
        raise NonFiniteValueError("x contains NaN or inf")


def _check_kinds(
    fisher: str, targets: torch.Tensor | None, generator: torch.Generator | None
) -> None:
    """``fisher`` is a known kind, with the targets or generator it needs."""
    if fisher not in FISHER_KINDS:
        raise ValueError(f"unknown fisher kind {fisher!r}; expected one of {FISHER_KINDS}")
    if fisher == "empirical" and targets is None:
        raise ValueError("fisher='empirical' needs the data's targets: pass targets=")
    if fisher == "true" and not isinstance(generator, torch.Generator):
        raise ValueError(
            "fisher='true' samples targets from the model and needs a torch.Generator "
            "(generator=torch.Generator().manual_seed(seed)); the global RNG is never used"
        )


def _check_supported(model: nn.Module, strict: bool) -> list[tuple[str, str]]:
    """The modules with parameters the engine cannot capture (an error when ``strict``)."""
    unsupported = _unsupported_modules(model)
    if unsupported and strict:
        listed = ", ".join(f"{name} ({typ})" for name, typ in unsupported)
        raise UnsupportedLayerError(
            f"only nn.Linear layers (and parameter-free modules) are supported; found: {listed}. "
            "Pass strict=False to capture the Linear layers and list these in `unsupported`."
        )
    return unsupported


class _Recorder:
    """Forward hooks that record each selected layer's input ``ā`` and output ``s`` of one
    forward pass of ``m`` samples, on the thread that created the recorder only."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.owner = threading.get_ident()
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}  # in forward order

    def hook(self, name: str) -> Callable[..., torch.Tensor | None]:
        def record(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor
        ) -> torch.Tensor | None:
            if threading.get_ident() != self.owner:
                return None  # another thread's forward pass on the same model
            if name in self.outputs:
                raise ValueError(
                    f"layer {name!r} ran more than once in one forward pass (shared weights); "
                    "per-sample capture needs exactly one call per layer"
                )
            inp = args[0] if args else kwargs.get("input")
            if inp is None or inp.dim() != 2 or inp.shape[0] != self.m:
                shape = None if inp is None else tuple(inp.shape)
                raise ValueError(
                    f"layer {name!r} got input of shape {shape}; expected 2-D with batch {self.m}"
                )
            if not out.requires_grad:
                # Nothing upstream needs a gradient (frozen weights, constant input):
                # make s a leaf so that ∂L/∂s still exists; no graph is cut.
                out = out.detach().requires_grad_(True)
            self.inputs[name] = inp.detach()
            self.outputs[name] = out
            return out

        return record


def _check_output(output: Any, recorder: _Recorder, selected: list[str]) -> None:
    """The model's output is a finite (m, d_out) tensor and every selected layer ran."""
    m = recorder.m
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        raise ValueError(f"model output must be a 2-D tensor (m, d_out), got {shape}")
    if output.shape[0] != m:
        raise ValueError(f"model output has batch {output.shape[0]}, but x has {m}")
    if not torch.isfinite(output).all():
        raise NonFiniteValueError("model output contains NaN or inf")
    missing = [n for n in selected if n not in recorder.outputs]
    if missing:
        raise ValueError(
            f"layer(s) {missing} did not run in the forward pass; "
            "select the layers that run with layers="
        )


def _layer_captures(
    modules: dict[str, nn.Module], recorder: _Recorder, grads: tuple[torch.Tensor, ...]
) -> dict[str, LayerCapture]:
    """One :class:`LayerCapture` per recorded layer, in forward order: ``ā`` with the bias
    column of ones, ``g`` zero where the loss does not reach the layer."""
    captured: dict[str, LayerCapture] = {}
    for name, grad in zip(recorder.outputs, grads, strict=True):
        layer = modules[name]
        has_bias = layer.bias is not None
        a = recorder.inputs[name]
        if has_bias:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], dim=1)
        g = torch.zeros_like(recorder.outputs[name]) if grad is None else grad
        captured[name] = LayerCapture(name=name, a=a, g=g.detach(), has_bias=has_bias)
    return captured


def capture(
    model: nn.Module,
    x: torch.Tensor,
    *,
    loss: str,
    fisher: str = "true",
    targets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    layers: Iterable[str] | None = None,
    strict: bool = True,
) -> CaptureResult:
    """Capture ``ā_i`` and ``g_i = ∂ℓ_i/∂s_i`` of the selected ``nn.Linear`` layers.

    One forward pass on ``x`` (``(m, d_in)``), targets either sampled from the model
    (``fisher="true"``, needs ``generator``; given ``targets`` are then ignored) or the data's
    (``fisher="empirical"``, needs ``targets``: same shape as the output for ``"bce"``/``"mse"``,
    ``(m,)`` class indices for ``"ce"``), then ``torch.autograd.grad`` of ``Σ_i ℓ_i`` w.r.t. the
    layer outputs. The model's mode, parameters and ``.grad`` are left untouched.

    Raises ``UnsupportedLayerError`` (strict) for modules with parameters other than
    ``nn.Linear``, and ``ValueError`` for bad inputs, unknown kinds or layer names.
    """
    lik = likelihood(loss)
    _check_kinds(fisher, targets, generator)
    _check_x(x)
    m = x.shape[0]
    unsupported = _check_supported(model, strict)
    selected = _select_layers(model, layers)
    modules = dict(model.named_modules())
    recorder = _Recorder(m)
    with _model_lock(model):
        handles = []
        try:
            for name in selected:
                handles.append(
                    modules[name].register_forward_hook(recorder.hook(name), with_kwargs=True)
                )
            with torch.enable_grad():
                output = model(x)
                _check_output(output, recorder, selected)
                if fisher == "true":
                    assert generator is not None
                    y = lik.sample(output, generator)
                else:
                    y = lik.check_targets(targets, output)
                nll = lik.nll(output, y)
                # Σ_i ℓ_i, not the mean: each row of ∂L/∂s is one sample's g_i (no 1/m).
                grads = torch.autograd.grad(
                    nll.sum(), list(recorder.outputs.values()), allow_unused=True
                )
        finally:
            for h in handles:
                h.remove()
    return CaptureResult(
        layers=_layer_captures(modules, recorder, grads),
        unsupported=unsupported,
        loss=float(nll.detach().mean()),
    )
