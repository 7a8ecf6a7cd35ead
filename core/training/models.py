"""Deep autoencoders of Hinton & Salakhutdinov (2006), the test bed of the Kronecker-factored
Fisher experiments (Martens 2010; Martens & Grosse 2015), and the project's training loss.

Architecture: encoder widths ``[d, h₁, …, h_k]``, mirrored decoder ``h_k → … → h₁ → d``; every
layer an ``nn.Linear`` with bias; ReLU after every hidden layer except the code layer (the
bottleneck ``h_k``, linear) and the output layer. The output layer returns *logits* for the
Bernoulli/BCE loss and plain values (the mean of N(μ, I)) for the squared-error loss.

Loss convention (one definition for the whole project, in :mod:`core.engine.likelihoods`): the
per-sample loss is the sample's negative log-likelihood **summed over output units**, and a
minibatch loss is its **mean over samples**:

* ``"bce"``: ``ℓ_i = Σ_j softplus(z_ij) − x_ij z_ij`` (BCE with logits ``z``, summed over pixels),
* ``"mse"``: ``ℓ_i = ½ Σ_j (μ_ij − x_ij)²`` (the N(μ, I) NLL without its constant).

So ``g_i = ∂ℓ_i/∂s`` is a single sample's gradient; autograd on :func:`batch_loss` hands each
sample ``g_i / m`` (see ``core/__init__.py`` and :mod:`core.engine.capture`).
:func:`per_sample_nll`, :func:`batch_loss` (from :mod:`core.engine.likelihoods`) and
:func:`linear_layers` (from :mod:`core.engine.layers`) are re-exported here.
"""

from __future__ import annotations

import math
import operator
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import torch
from torch import nn

from ..engine.layers import is_plain_linear, linear_layers
from ..engine.likelihoods import (
    AUTOENCODER_LOSSES,
    LOSS_KINDS,
    Loss,
    batch_loss,
    likelihood,
    per_sample_nll,
)

__all__ = [
    "INITS",
    "PRESETS",
    "Autoencoder",
    "LayerInfo",
    "ModelPreset",
    "batch_loss",
    "build_model",
    "describe_layers",
    "linear_layers",
    "parse_widths",
    "per_sample_nll",
    "validate_widths",
]


# Weight initialisations (biases are zero in both): He-normal (the default) and the
# Xavier-uniform of the seed paper's authors' public code; see :class:`Autoencoder`.
INITS: tuple[str, ...] = ("he_normal", "xavier_uniform")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _is_autoencoder_loss(loss: str) -> TypeGuard[Loss]:
    return loss in AUTOENCODER_LOSSES


def _check_loss(loss: str) -> Loss:
    """An autoencoder's loss: a likelihood whose targets are the inputs."""
    if not _is_autoencoder_loss(loss):
        raise ValueError(f"loss must be one of {AUTOENCODER_LOSSES}, got {loss!r}")
    return loss


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def validate_widths(widths: Iterable[int], input_dim: int | None = None) -> list[int]:
    """Check an encoder width list and return it as ``list[int]``: at least two positive
    integers, the first equal to ``input_dim`` when given. Raises ``ValueError``."""
    try:
        if isinstance(widths, str | bytes):
            raise TypeError
        items = list(widths)
    except TypeError:
        raise ValueError(f"widths must be a list of integers, got {widths!r}") from None
    out: list[int] = []
    for w in items:
        try:
            if isinstance(w, bool):
                raise TypeError
            out.append(operator.index(w))
        except TypeError:
            raise ValueError(f"widths must be integers, got {w!r} in {items}") from None
    if len(out) < 2:
        raise ValueError(
            f"widths needs at least 2 entries (input and code size), got {out}; "
            f"e.g. [784, 400, 200, 100, 50, 25, 6]"
        )
    if any(w <= 0 for w in out):
        raise ValueError(f"widths must be positive, got {out}")
    if input_dim is not None and out[0] != input_dim:
        raise ValueError(
            f"the first width must equal the dataset's input dimension {input_dim}, got {out[0]} "
            f"(widths {out})"
        )
    return out


def parse_widths(text: str) -> list[int]:
    """Parse ``"784-400-200"``, ``"784, 400, 200"`` or ``"784 400 200"`` into a list of ints
    (validated by :func:`validate_widths`, without an input dimension)."""
    parts = [p for p in re.split(r"[\s,\-–]+", text.strip()) if p]
    try:
        widths = [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"cannot read widths from {text!r}: write integers separated by '-', ',' or spaces, "
            f"e.g. '784-400-200-100-50-25-6'"
        ) from None
    return validate_widths(widths)


class Autoencoder(nn.Module):
    """Deep autoencoder ``widths[0] → … → widths[-1] → … → widths[0]``.

    Submodules ``encoder`` and ``decoder`` are ``nn.Sequential``s with named children
    ``linear1, relu1, linear2, …``; :func:`linear_layers` lists the linear ones in forward order.
    ``forward`` returns logits (``loss == "bce"``) or the Gaussian mean (``"mse"``); use
    :meth:`reconstruct` for images.

    Initialisation (``init``, biases zero in both):

    * ``"he_normal"`` (the default; Kaiming He et al. 2015, "Delving deep into rectifiers"):
      weights ``N(0, gain²/fan_in)`` with ``gain = √2`` for layers followed by a ReLU and
      ``gain = 1`` for the linear code and output layers;
    * ``"xavier_uniform"`` (Glorot & Bengio 2010; what the seed paper's authors' public code
      uses, so :mod:`core.paper` uses it): weights ``U(−b, b)``,
      ``b = gain·√(6/(fan_in + fan_out))`` with ``gain = 1`` for every layer (variance b²/3).

    Drawn from a local ``torch.Generator`` seeded with ``seed``, layer by layer in forward
    order, so the global RNG is untouched and the same seed gives the same weights. (Martens'
    2010 sparse initialisation was designed for logistic units; with ReLU it makes activations
    grow with depth.)
    """

    def __init__(
        self,
        widths: Sequence[int],
        loss: str = "bce",
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        init: str = "he_normal",
    ) -> None:
        super().__init__()
        checked_loss = _check_loss(loss)
        _check_init(init)
        self.widths: list[int] = validate_widths(widths)
        self.loss: Loss = checked_loss
        self.init = init
        self.seed = seed
        enc_dims = self.widths
        dec_dims = self.widths[::-1]
        self.encoder = self._stack(enc_dims, dtype)
        self.decoder = self._stack(dec_dims, dtype)
        self.reset_parameters(seed)

    @staticmethod
    def _stack(dims: list[int], dtype: torch.dtype) -> nn.Sequential:
        """Linear layers ``dims[0] → … → dims[-1]``, ReLU between them, none after the last."""
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        n = len(dims) - 1
        for i in range(n):
            # skip_init: no default (global-RNG) initialisation; reset_parameters fills them.
            modules[f"linear{i + 1}"] = nn.utils.skip_init(
                nn.Linear, dims[i], dims[i + 1], bias=True, dtype=dtype
            )
            if i < n - 1:
                modules[f"relu{i + 1}"] = nn.ReLU()
        return nn.Sequential(modules)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Weights by ``self.init`` (He-normal or Xavier-uniform), zero biases; see the class
        docstring. Uses only a local generator seeded with ``seed`` (default: ``self.seed``)."""
        seed = self.seed if seed is None else seed
        generator = torch.Generator().manual_seed(seed)
        for _, layer, followed_by_relu in _linear_layers_with_activation(self):
            shape = layer.weight.shape
            if self.init == "xavier_uniform":
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                u = torch.rand(shape, generator=generator, dtype=torch.float64)
                w = (2 * u - 1) * bound
            else:
                gain = math.sqrt(2.0) if followed_by_relu else 1.0
                std = gain / math.sqrt(layer.in_features)
                w = torch.randn(shape, generator=generator, dtype=torch.float64) * std
            layer.weight.copy_(w)
            layer.bias.zero_()
        self.seed = seed

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def code_dim(self) -> int:
        return self.widths[-1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code (bottleneck activations, linear), ``(batch, widths[-1])``."""
        code: torch.Tensor = self.encoder(x.reshape(x.shape[0], -1))
        return code

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Logits (bce) or means (mse) from a code."""
        out: torch.Tensor = self.decoder(code)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (``loss == "bce"``) or Gaussian means (``"mse"``), ``(batch, input_dim)``.
        Images ``(batch, H, W)`` are flattened."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions in data space: ``sigmoid(logits)`` for bce, the mean for mse."""
        return likelihood(self.loss).mean(self(x))

    def extra_repr(self) -> str:
        return f"widths={self.widths}, loss={self.loss!r}, init={self.init!r}, seed={self.seed}"


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _linear_layers_with_activation(model: nn.Module) -> list[tuple[str, nn.Linear, bool]]:
    """``(name, module, followed_by_relu)`` for every ``nn.Linear`` in registration order."""
    modules = list(model.named_modules())
    out = []
    for i, (name, module) in enumerate(modules):
        if is_plain_linear(module):
            nxt = modules[i + 1][1] if i + 1 < len(modules) else None
            out.append((name, module, isinstance(nxt, nn.ReLU)))
    return out


@dataclass(frozen=True)
class LayerInfo:
    """One linear layer as the Fisher code sees it.

    ``W`` has shape ``(dg, da)`` with ``da = in_features + 1`` when the layer has a bias (the
    bias is the last column); the layer's Fisher block is ``n_params × n_params`` with
    ``n_params = dg·da``, its KFAC factors are ``A`` (``da × da``) and ``G`` (``dg × dg``).

    People see layers numbered from 1 in forward order (:attr:`number`: layer 1 is
    ``encoder.linear1``, as the names count), in the app, the command line and reports;
    ``index`` is the 0-based position for code that indexes lists.
    """

    index: int
    name: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # "relu", "linear" (code layer), "logits"/"linear output" (last layer)

    @property
    def dg(self) -> int:
        return self.out_features

    @property
    def da(self) -> int:
        return self.in_features + (1 if self.bias else 0)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dg, self.da)

    @property
    def n_params(self) -> int:
        return self.dg * self.da

    @property
    def number(self) -> int:
        """The layer's number as people see it: 1 for the first linear layer."""
        return self.index + 1

    @property
    def label(self) -> str:
        """Short text for a UI list, e.g.
        ``"layer 6 · encoder.linear6: 25→6, W 6×26, 156 params"``."""
        return (
            f"layer {self.number} · {self.name}: {self.in_features}→{self.out_features}, "
            f"W {self.dg}×{self.da}, {self.n_params:,} params"
        )


def describe_layers(model: nn.Module) -> list[LayerInfo]:
    """A :class:`LayerInfo` per linear layer, in forward order (numbered from 1)."""
    layers = _linear_layers_with_activation(model)
    loss = getattr(model, "loss", None)
    infos = []
    for i, (name, module, relu) in enumerate(layers):
        if relu:
            activation = "relu"
        elif i == len(layers) - 1:
            known = isinstance(loss, str) and loss in LOSS_KINDS
            activation = likelihood(str(loss)).output_activation if known else "linear output"
        else:
            activation = "linear"
        infos.append(
            LayerInfo(
                index=i,
                name=name,
                in_features=module.in_features,
                out_features=module.out_features,
                bias=module.bias is not None,
                activation=activation,
            )
        )
    return infos


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPreset:
    """A named encoder width list and the dataset it is for (a ``core.training.datasets``
    registry name)."""

    name: str
    widths: tuple[int, ...]
    dataset: str
    description: str


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "curves",
            (784, 400, 200, 100, 50, 25, 6),
            "curves",
            "Paper: CURVES autoencoder 784-400-200-100-50-25-6 (mirrored), sigmoid + BCE.",
        ),
        ModelPreset(
            "mnist",
            (784, 1000, 500, 250, 30),
            "mnist",
            "Paper: MNIST autoencoder 784-1000-500-250-30 (mirrored), sigmoid + BCE.",
        ),
        ModelPreset(
            "faces",
            (625, 2000, 1000, 500, 30),
            "faces",
            "Paper: FACES autoencoder 625-2000-1000-500-30 (mirrored), linear + squared error.",
        ),
        ModelPreset(
            "digits",
            (64, 32, 16, 8),
            "digits",
            "Classroom: 8×8 digits 64-32-16-8 (mirrored); trains in seconds on a CPU.",
        ),
        ModelPreset(
            "curves-small",
            (196, 64, 32, 16),
            "curves-small",
            "Classroom: 14×14 CURVES 196-64-32-16 (mirrored); trains in seconds on a CPU.",
        ),
    )
}


def build_model(
    preset_or_widths: str | ModelPreset | Sequence[int],
    *,
    input_dim: int,
    loss: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    init: str = "he_normal",
) -> Autoencoder:
    """Build an :class:`Autoencoder` from a preset name, a :class:`ModelPreset` or a custom
    encoder width list. ``input_dim`` is the dataset's (checked against the first width),
    ``loss`` its ``"bce"``/``"mse"``, ``init`` one of :data:`INITS`; raises ``ValueError`` on a
    mismatch, bad widths or an unknown ``init``."""
    if isinstance(preset_or_widths, str):
        preset = PRESETS.get(preset_or_widths)
        if preset is None:
            raise ValueError(
                f"unknown model preset {preset_or_widths!r}; valid names: {', '.join(PRESETS)}, "
                f"or pass a list of widths"
            )
        widths: Sequence[int] = preset.widths
    elif isinstance(preset_or_widths, ModelPreset):
        widths = preset_or_widths.widths
    else:
        widths = preset_or_widths
    return Autoencoder(validate_widths(widths, input_dim), loss, seed=seed, dtype=dtype, init=init)
