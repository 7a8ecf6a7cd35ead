"""Per-sample, per-position layer inputs ``ā`` and output gradients ``γ`` of every factored layer.

The factored layers (:mod:`core.engine.layers`) are plain ``nn.Linear`` and ``nn.Conv2d``
(``groups = 1``); each applies one weight ``W`` (shape ``(dg, da)``, bias as the last column)
at ``T`` positions per sample, ``s_t = W ā_t``. For one minibatch of ``m`` samples,
:func:`capture` returns, per layer,

* ``a``: the inputs ``ā`` (a trailing ``1`` when the layer has a bias), detached;
* ``g``: the output gradients ``γ = ∂ℓ_n/∂s``, where ``ℓ_n`` is the negative log-likelihood of
  ONE sample (summed over output units, never averaged), detached;

shaped by the layer's input:

* a linear layer on ``(m, d)`` (one position per sample, ``T = 1``): ``a`` is ``(m, da)`` and
  ``g`` is ``(m, dg)``, as always; the per-sample gradient is ``g_n ā_nᵀ``;
* a linear layer on a sequence ``(m, t₁, …, d)``: ``a`` is ``(m, T, da)``, ``g`` is
  ``(m, T, dg)`` with ``T = t₁·…`` (the tokens, row-major);
* a 2-D convolution: ``a`` is ``(m, T, C_in·kh·kw [+1])``, the unfolded input patches in
  ``torch.nn.functional.unfold``'s order (:func:`core.engine.layers.conv_patches`), and ``g``
  is ``(m, T, C_out)``, with ``T = H_out·W_out`` (row-major).

With ``A_n`` (``T × da``) and ``Γ_n`` (``T × dg``) one sample's slices, its weight gradient is
``D_n = Γ_nᵀ A_n = Σ_t γ_t ā_tᵀ`` (``W = conv.weight.reshape(C_out, -1)`` for a convolution),
and the layer's Fisher block is ``F = (1/m) Σ_n vec(D_n) vec(D_n)ᵀ`` (Grosse & Martens 2016,
*A Kronecker-factored approximate Fisher matrix for convolution layers*, §3).

Scaling: autograd on a batch mean hands each sample γ/m; we undo it. Concretely, the backward
pass is run on the SUM over the batch of per-sample NLLs, ``L = Σ_n ℓ_n``. Samples do not
interact (each sample only reaches its own slice of every layer output), so
``∂L/∂s_n = ∂ℓ_n/∂s_n`` exactly, with no ``1/m`` factor.

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

Hooks: forward hooks on the captured layers record their input and keep the output ``s``; the
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

from .layers import conv_patches, supported_layers, unsupported_reason
from .likelihoods import LOSS_KINDS, likelihood
from .validation import NonFiniteValueError

__all__ = [
    "CaptureResult",
    "LayerCapture",
    "UnsupportedLayerError",
    "capture",
    "layer_names",
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
    """A module owns parameters the engine cannot factor (anything but plain ``nn.Linear`` and
    ``groups = 1`` ``nn.Conv2d``); the message names it and says why."""


@dataclass(frozen=True)
class LayerCapture:
    """Captured statistics of one layer ``s_t = W ā_t`` on a minibatch of ``m`` samples.

    ``a``: ``(m, da)`` rows ``ā_nᵀ`` (one position per sample), or ``(m, T, da)`` for ``T``
    positions sharing ``W`` (last entry of each ``ā`` a one iff ``has_bias``), detached.
    ``g``: ``(m, dg)`` or ``(m, T, dg)``, ``γ = ∂ℓ_n/∂s`` of ONE sample's NLL, detached.
    """

    name: str
    a: torch.Tensor
    g: torch.Tensor
    has_bias: bool

    @property
    def positions(self) -> int:
        """``T``: positions per sample sharing the weight (1 for a 2-D batch)."""
        return 1 if self.a.dim() == 2 else int(self.a.shape[1])


@dataclass(frozen=True)
class CaptureResult:
    """Captures of the selected layers, in the order they ran in the forward pass.

    ``unsupported``: ``(qualified name, type name)`` of modules owning parameters that were NOT
    captured (only non-empty with ``strict=False``). ``loss``: mean per-sample NLL
    ``(1/m) Σ_i ℓ_i`` of the batch w.r.t. the targets used (sampled or given).
    """

    layers: dict[str, LayerCapture]
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    loss: float = float("nan")


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's factored layers (plain ``nn.Linear`` and supported
    ``nn.Conv2d``, :func:`core.engine.layers.supported_layers`), in registration order."""
    return [name for name, _ in supported_layers(model)]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's plain linear layers only, in registration order."""
    return [name for name, mod in supported_layers(model) if isinstance(mod, nn.Linear)]


def _unsupported_modules(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(name, type name, why)`` of modules that own parameters the engine does not factor,
    plus batch norms in training mode (they couple the samples of a batch, so no per-sample
    gradient exists)."""
    found: list[tuple[str, str, str]] = []
    for name, mod in model.named_modules():
        why = unsupported_reason(mod)
        if why is None and isinstance(mod, _BatchNorm) and mod.training:
            why = "batch norm in training mode couples the samples of a batch"
        if why is not None:
            found.append((name or "<root>", type(mod).__name__, why))
    return found


def _select_layers(model: nn.Module, layers: Iterable[str] | None) -> list[str]:
    """Names of the layers to capture (validated against the model)."""
    valid = layer_names(model)
    if layers is None:
        if not valid:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer to capture")
        return valid
    requested = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in requested if n not in valid]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; valid layer names: {valid}")
    selected = list(dict.fromkeys(requested))
    if not selected:
        raise ValueError(f"layers= selects no layer; valid layer names: {valid}")
    return selected


def _check_x(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"x must be at least 2-D (m, d_in) or (m, C, H, W), got shape {tuple(x.shape)}"
        )
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
        listed = "; ".join(f"{name} ({typ}): {why}" for name, typ, why in unsupported)
        raise UnsupportedLayerError(
            "only nn.Linear and nn.Conv2d (groups=1) layers, and parameter-free modules, are "
            f"supported; found: {listed}. Pass strict=False to capture the supported layers "
            "and list these in `unsupported`."
        )
    return [(name, typ) for name, typ, _ in unsupported]


def _check_input(name: str, module: nn.Module, inp: Any, m: int) -> torch.Tensor:
    """``inp`` if it is what the layer takes: ``(m, …, d)`` for a linear layer,
    ``(m, C, H, W)`` for a convolution; else ``ValueError``."""
    conv = isinstance(module, nn.Conv2d)
    if (
        isinstance(inp, torch.Tensor)
        and inp.shape[:1] == (m,)
        and (inp.dim() == 4 if conv else inp.dim() >= 2)
    ):
        return inp
    shape = tuple(inp.shape) if isinstance(inp, torch.Tensor) else None
    expected = "4-D (m, C, H, W)" if conv else "at least 2-D (m, …, d)"
    raise ValueError(
        f"layer {name!r} got input of shape {shape}; expected {expected} with batch {m}"
    )


class _Recorder:
    """Forward hooks that record each selected layer's input and output ``s`` of one forward
    pass of ``m`` samples, on the thread that created the recorder only."""

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
            inp = _check_input(name, module, args[0] if args else kwargs.get("input"), self.m)
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


def _positions(
    layer: nn.Module, inp: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's ``(a, g)`` without the bias column: ``(m, da)``/``(m, dg)`` for a linear
    layer on ``(m, d)``, else ``(m, T, da)``/``(m, T, dg)`` (patches for a convolution)."""
    m = inp.shape[0]
    if isinstance(layer, nn.Conv2d):
        return conv_patches(layer, inp), grad.reshape(m, grad.shape[1], -1).transpose(1, 2)
    if inp.dim() == 2:
        return inp, grad
    return inp.reshape(m, -1, inp.shape[-1]), grad.reshape(m, -1, grad.shape[-1])


def _layer_captures(
    modules: dict[str, nn.Module], recorder: _Recorder, grads: tuple[torch.Tensor, ...]
) -> dict[str, LayerCapture]:
    """One :class:`LayerCapture` per recorded layer, in forward order: ``ā`` with the bias
    entry of one, ``γ`` zero where the loss does not reach the layer."""
    captured: dict[str, LayerCapture] = {}
    for name, grad in zip(recorder.outputs, grads, strict=True):
        layer = modules[name]
        has_bias = layer.bias is not None
        out = recorder.outputs[name]
        full_grad = torch.zeros_like(out) if grad is None else grad
        a, g = _positions(layer, recorder.inputs[name], full_grad.detach())
        if has_bias:
            a = torch.cat([a, a.new_ones((*a.shape[:-1], 1))], dim=-1)
        captured[name] = LayerCapture(name=name, a=a, g=g, has_bias=has_bias)
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
    """Capture ``ā`` and ``γ = ∂ℓ_n/∂s`` of the selected ``nn.Linear`` and ``nn.Conv2d``
    layers (all of them by default; shapes in the module docstring).

    One forward pass on ``x`` (``(m, …)``, whatever the model takes), targets either sampled
    from the model (``fisher="true"``, needs ``generator``; given ``targets`` are then ignored)
    or the data's (``fisher="empirical"``, needs ``targets``: same shape as the output for
    ``"bce"``/``"mse"``, ``(m,)`` class indices for ``"ce"``), then ``torch.autograd.grad`` of
    ``Σ_n ℓ_n`` w.r.t. the layer outputs. The model's mode, parameters and ``.grad`` are left
    untouched.

    Raises ``UnsupportedLayerError`` (strict) for modules with parameters that are not factored
    (naming each and why), and ``ValueError`` for bad inputs, unknown kinds or layer names.
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
                # Σ_n ℓ_n, not the mean: each sample's slice of ∂L/∂s is its own γ (no 1/m).
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
