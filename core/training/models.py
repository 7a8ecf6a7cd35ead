"""Deep autoencoders of Hinton & Salakhutdinov (2006), the test bed of the Kronecker-factored
Fisher experiments (Martens 2010; Martens & Grosse 2015), and the project's training loss.

Architecture: encoder widths ``[d, h₁, …, h_k]``, mirrored decoder ``h_k → … → h₁ → d``; every
layer an ``nn.Linear`` with bias; ReLU after every hidden layer except the code layer (the
bottleneck ``h_k``, linear) and the output layer. The output layer returns *logits* for the
Bernoulli/BCE loss and plain values (the mean of N(μ, I)) for the squared-error loss.

Convolutional networks (issue 18; the weight-sharing layers of :mod:`core.engine.layers`):
:class:`ConvAutoencoder`, stride-2 3×3 convolutions down to a linear code and nearest-neighbour
upsampling with 3×3 convolutions back up (no transposed convolutions, which the engine does not
factor), Bernoulli/BCE or Gaussian output like the paper's autoencoders; and
:class:`ConvClassifier`, stride-2 3×3 convolutions and a linear softmax layer (the ``"ce"``
likelihood). Both take the flattened image rows the datasets hold. Their presets are in
:data:`PRESETS` beside the paper's networks (``kind``: which network a preset builds).

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
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import nn

from ..engine.layers import linear_layers, supported_layers
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
    "ConvAutoencoder",
    "ConvClassifier",
    "LayerInfo",
    "MODEL_KINDS",
    "Model",
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

    def reset_parameters(self, seed: int | None = None) -> None:
        """Weights by ``self.init`` (He-normal or Xavier-uniform), zero biases; see the class
        docstring. Uses only a local generator seeded with ``seed`` (default: ``self.seed``)."""
        self.seed = self.seed if seed is None else seed
        _initialise(self, self.init, self.seed)

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


def _check_channels(channels: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(c) for c in channels)
    if not out or any(c < 1 for c in out):
        raise ValueError(f"channels must be one or more positive integers, got {out}")
    return out


def _image_shape(input_dim: int, image_shape: tuple[int, int] | None) -> tuple[int, int]:
    """``image_shape`` checked against ``input_dim``, or the square image of ``input_dim``
    pixels (``ValueError`` when it is not a square and no shape is given)."""
    if image_shape is None:
        side = math.isqrt(input_dim)
        if side * side != input_dim:
            raise ValueError(
                f"a convolutional network needs the image's shape: {input_dim} pixels is not a "
                "square, so pass image_shape=(H, W)"
            )
        return (side, side)
    h, w = (int(v) for v in image_shape)
    if h < 1 or w < 1 or h * w != input_dim:
        raise ValueError(f"image_shape {image_shape} does not hold {input_dim} pixels")
    return (h, w)


def _conv(c_in: int, c_out: int, stride: int, dtype: torch.dtype) -> nn.Conv2d:
    """A 3×3 convolution with padding 1 and bias, left uninitialised (no global-RNG draw;
    :func:`_initialise` fills it)."""
    conv: nn.Conv2d = nn.utils.skip_init(
        nn.Conv2d, c_in, c_out, 3, stride=stride, padding=1, dtype=dtype
    )
    return conv


def _linear(d_in: int, d_out: int, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` with bias, left uninitialised (see :func:`_conv`)."""
    linear: nn.Linear = nn.utils.skip_init(nn.Linear, d_in, d_out, bias=True, dtype=dtype)
    return linear


def _downsampling(channels: tuple[int, ...], dtype: torch.dtype) -> OrderedDict[str, nn.Module]:
    """``conv1, relu1, …``: 3×3 convolutions, stride 2, padding 1 (``H → ⌈H/2⌉``), from one
    input channel through ``channels``, each followed by a ReLU."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (c_in, c_out) in enumerate(zip((1, *channels), channels, strict=False)):
        modules[f"conv{i + 1}"] = _conv(c_in, c_out, 2, dtype)
        modules[f"relu{i + 1}"] = nn.ReLU()
    return modules


def _grid(shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """The feature maps' ``(H, W)`` after 0, 1, …, ``levels`` stride-2 convolutions."""
    sizes = [shape]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class _ImageModel(nn.Module):
    """What the convolutional networks share: images of ``image_shape`` given as flattened
    rows, and their seeded initialisation (set by the subclass's ``__init__``)."""

    image_shape: tuple[int, int]
    init: str
    seed: int

    def reset_parameters(self, seed: int | None = None) -> None:
        """Weights by ``self.init``, zero biases, from a local generator (``seed``, default
        ``self.seed``); see :class:`Autoencoder`."""
        self.seed = self.seed if seed is None else seed
        _initialise(self, self.init, self.seed)

    @property
    def input_dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


class ConvAutoencoder(_ImageModel):
    """A small convolutional autoencoder of images given as flattened rows ``(m, H·W)``.

    ``encoder``: ``conv1, relu1, …`` (3×3, stride 2, padding 1: ``1 → channels[0] → …``),
    ``flatten``, ``linear1`` to the code (linear, like the paper's code layers). ``decoder``:
    ``linear1`` back to the last feature map, ``relu1``, ``unflatten``, then per level
    ``up{j}`` (nearest-neighbour upsampling to the encoder's map of that level) and ``conv{j}``
    (3×3, padding 1) with a ReLU between levels and none after the last, which has one channel:
    the logits (``"bce"``) or Gaussian means (``"mse"``) of the pixels, flattened to
    ``(m, H·W)``. Every parameterised layer is an ``nn.Conv2d`` or ``nn.Linear`` the engine
    factors (:mod:`core.engine.layers`); upsampling has no weights, so no transposed convolution
    is needed. Initialisation as :class:`Autoencoder` (``fan_in = C_in·3·3`` for a convolution).
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        channels: Sequence[int],
        code_dim: int,
        loss: str = "bce",
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        init: str = "he_normal",
    ) -> None:
        super().__init__()
        self.loss: Loss = _check_loss(loss)
        _check_init(init)
        self.channels = _check_channels(channels)
        if code_dim < 1:
            raise ValueError(f"code_dim must be a positive integer, got {code_dim}")
        self.image_shape = _image_shape(image_shape[0] * image_shape[1], image_shape)
        self.code_dim, self.init, self.seed = int(code_dim), init, seed
        grid = _grid(self.image_shape, len(self.channels))
        last = (self.channels[-1], *grid[-1])
        encoder = _downsampling(self.channels, dtype)
        encoder["flatten"] = nn.Flatten()
        encoder["linear1"] = _linear(math.prod(last), self.code_dim, dtype)
        self.encoder = nn.Sequential(encoder)
        self.decoder = nn.Sequential(self._upsampling(grid, last, dtype))
        self.reset_parameters(seed)

    def _upsampling(
        self, grid: list[tuple[int, int]], last: tuple[int, int, int], dtype: torch.dtype
    ) -> OrderedDict[str, nn.Module]:
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        modules["linear1"] = _linear(self.code_dim, math.prod(last), dtype)
        modules["relu1"] = nn.ReLU()
        modules["unflatten"] = nn.Unflatten(1, last)
        outs = (*self.channels[-2::-1], 1)
        for j, (c_in, c_out) in enumerate(zip(self.channels[::-1], outs, strict=True)):
            modules[f"up{j + 1}"] = nn.Upsample(size=grid[-2 - j], mode="nearest")
            modules[f"conv{j + 1}"] = _conv(c_in, c_out, 1, dtype)
            if j < len(outs) - 1:
                modules[f"relu{j + 2}"] = nn.ReLU()
        return modules

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code, ``(batch, code_dim)``, of images ``(batch, H·W)`` or ``(batch, H, W)``."""
        code: torch.Tensor = self.encoder(x.reshape(x.shape[0], 1, *self.image_shape))
        return code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (``"bce"``) or Gaussian means (``"mse"``), ``(batch, H·W)``."""
        out: torch.Tensor = self.decoder(self.encode(x))
        return out.flatten(1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions in data space: ``sigmoid(logits)`` for bce, the mean for mse."""
        return likelihood(self.loss).mean(self(x))

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, channels={list(self.channels)}, "
            f"code_dim={self.code_dim}, loss={self.loss!r}, init={self.init!r}, seed={self.seed}"
        )


class _Classifier(_ImageModel):
    """What the softmax classifiers share: the ``"ce"`` likelihood over ``n_classes`` (≥ 2)
    class logits of images given as flattened rows."""

    n_classes: int

    def _classify(self, image_shape: tuple[int, int], n_classes: int, init: str, seed: int) -> None:
        """Check and set what every classifier holds (called first by ``__init__``)."""
        _check_init(init)
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.loss: Loss = "ce"
        self.image_shape = _image_shape(image_shape[0] * image_shape[1], image_shape)
        self.n_classes, self.init, self.seed = int(n_classes), init, seed


class SequenceClassifier(_Classifier):
    """A classifier that reads an image as a sequence of its rows: a linear layer shared by the
    ``H`` row tokens (a sequence ``nn.Linear``, weight-sharing with ``T = H`` positions, like a
    token-wise layer of a transformer or an RNN's input map), then a linear softmax layer.

    ``tokens``: ``linear1`` (``W → width``, applied to every row of ``W`` pixels) and ``relu1``,
    then ``flatten`` (``H·width``); ``classifier``: ``linear1`` to ``n_classes`` logits of a
    softmax likelihood (``"ce"``). Initialisation as :class:`Autoencoder`."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        width: int,
        n_classes: int,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        init: str = "he_normal",
    ) -> None:
        super().__init__()
        self._classify(image_shape, n_classes, init, seed)
        if width < 1:
            raise ValueError(f"the token width must be at least 1, got {width}")
        self.width = int(width)
        rows, cols = self.image_shape
        self.tokens = nn.Sequential(
            OrderedDict(
                [("linear1", _linear(cols, self.width, dtype)), ("relu1", nn.ReLU()),
                 ("flatten", nn.Flatten())]
            )
        )  # fmt: skip
        self.classifier = nn.Sequential(
            OrderedDict([("linear1", _linear(rows * self.width, self.n_classes, dtype))])
        )
        self.reset_parameters(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(batch, n_classes)``, of images ``(batch, H·W)`` or ``(batch, H, W)``."""
        out: torch.Tensor = self.classifier(self.tokens(x.reshape(x.shape[0], *self.image_shape)))
        return out

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, width={self.width}, n_classes={self.n_classes}, "
            f"init={self.init!r}, seed={self.seed}"
        )


class ConvClassifier(_Classifier):
    """A small convolutional classifier of images given as flattened rows ``(m, H·W)``.

    ``features``: ``conv1, relu1, …`` (3×3, stride 2, padding 1: ``1 → channels[0] → …``),
    ``flatten``; ``classifier``: ``linear1`` to ``n_classes`` logits of a softmax
    (Categorical) likelihood, the ``"ce"`` loss of :mod:`core.engine.likelihoods`.
    Initialisation as :class:`Autoencoder`.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        channels: Sequence[int],
        n_classes: int,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        init: str = "he_normal",
    ) -> None:
        super().__init__()
        self._classify(image_shape, n_classes, init, seed)
        self.channels = _check_channels(channels)
        grid = _grid(self.image_shape, len(self.channels))
        features = _downsampling(self.channels, dtype)
        features["flatten"] = nn.Flatten()
        self.features = nn.Sequential(features)
        width = self.channels[-1] * math.prod(grid[-1])
        self.classifier = nn.Sequential(
            OrderedDict([("linear1", _linear(width, self.n_classes, dtype))])
        )
        self.reset_parameters(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(batch, n_classes)``, of images ``(batch, H·W)`` or ``(batch, H, W)``."""
        h = self.features(x.reshape(x.shape[0], 1, *self.image_shape))
        out: torch.Tensor = self.classifier(h)
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each image, ``(batch,)``."""
        logits: torch.Tensor = self(x)
        return logits.argmax(dim=1)

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, channels={list(self.channels)}, "
            f"n_classes={self.n_classes}, init={self.init!r}, seed={self.seed}"
        )


Model = Autoencoder | ConvAutoencoder | ConvClassifier | SequenceClassifier
"""What :func:`build_model` builds."""


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _layers_with_activation(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d, bool]]:
    """``(name, module, followed_by_relu)`` for every factored layer (plain ``nn.Linear`` and
    ``nn.Conv2d``, :func:`core.engine.layers.supported_layers`) in registration order."""
    modules = list(model.named_modules())
    following = {name: modules[i + 1][1] for i, (name, _) in enumerate(modules[:-1])}
    return [
        (name, layer, isinstance(following.get(name), nn.ReLU))
        for name, layer in supported_layers(model)
    ]


@torch.no_grad()
def _initialise(model: nn.Module, init: str, seed: int) -> None:
    """Every factored layer's weight by ``init``, its bias zero, drawn layer by layer in
    registration order from a local generator seeded with ``seed`` (the global RNG untouched).

    ``fan_in`` and ``fan_out`` are PyTorch's: ``in·k`` and ``out·k`` with ``k`` the kernel's
    size (1 for a linear layer). He-normal: ``N(0, gain²/fan_in)``, ``gain = √2`` before a ReLU,
    else 1; Xavier-uniform: ``U(−b, b)``, ``b = √(6/(fan_in + fan_out))``.
    """
    _check_init(init)
    generator = torch.Generator().manual_seed(seed)
    for _, layer, followed_by_relu in _layers_with_activation(model):
        shape = layer.weight.shape
        kernel = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * kernel, shape[0] * kernel
        if init == "xavier_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            u = torch.rand(shape, generator=generator, dtype=torch.float64)
            w = (2 * u - 1) * bound
        else:
            gain = math.sqrt(2.0) if followed_by_relu else 1.0
            w = torch.randn(shape, generator=generator, dtype=torch.float64) * (
                gain / math.sqrt(fan_in)
            )
        layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.zero_()


@dataclass(frozen=True)
class LayerInfo:
    """One factored layer (a linear layer or a 2-D convolution) as the Fisher code sees it.

    ``W`` has shape ``(dg, da)`` with ``da = in_features + 1`` when the layer has a bias (the
    bias is the last column); the layer's Fisher block is ``n_params × n_params`` with
    ``n_params = dg·da``, its KFAC factors are ``A`` (``da × da``) and ``G`` (``dg × dg``).

    ``kind``: ``"linear"`` or ``"conv2d"``. A convolution's ``in_features`` is
    ``C_in·kh·kw`` (one patch, :func:`core.engine.layers.conv_patches`) and its
    ``out_features`` is ``C_out``, so ``W = weight.reshape(C_out, -1)``; ``kernel`` and
    ``stride`` are its geometry (``(1, 1)`` for a linear layer). ``positions``: ``T``, the
    positions per sample that share ``W`` (``H_out·W_out`` of a convolution, the tokens of a
    linear layer applied to a sequence, 1 for a plain linear layer; ``None`` when unknown: a
    model without ``input_dim`` cannot be probed). ``grid``: a convolution's ``(H_out, W_out)``.

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
    kind: str = "linear"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    positions: int | None = 1
    grid: tuple[int, int] | None = None

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
    def in_channels(self) -> int:
        """``C_in`` of a convolution (``in_features`` of a linear layer)."""
        return self.in_features // (self.kernel[0] * self.kernel[1])

    @property
    def out_channels(self) -> int:
        """``C_out`` of a convolution (``out_features`` of a linear layer)."""
        return self.out_features

    @property
    def number(self) -> int:
        """The layer's number as people see it: 1 for the first linear layer."""
        return self.index + 1

    @property
    def geometry(self) -> str:
        """What the layer maps, e.g. ``"25→6"``, ``"conv 8→16, 3×3 stride 2, T 16 (4×4)"``
        or ``"64→32 at T 9 positions"``."""
        if self.kind == "conv2d":
            (kh, kw), (sh, sw) = self.kernel, self.stride
            stride = f"{sh}" if sh == sw else f"{sh}×{sw}"
            grid = f" ({self.grid[0]}×{self.grid[1]})" if self.grid else ""
            t = "?" if self.positions is None else f"{self.positions:,}"
            return (
                f"conv {self.in_channels}→{self.out_channels}, {kh}×{kw} stride {stride}, "
                f"T {t}{grid}"
            )
        mapped = f"{self.in_features}→{self.out_features}"
        if self.positions is not None and self.positions > 1:
            mapped += f" at T {self.positions:,} positions"
        return mapped

    @property
    def label(self) -> str:
        """Short text for a UI list, e.g.
        ``"layer 6 · encoder.linear6: 25→6, W 6×26, 156 params"``."""
        return (
            f"layer {self.number} · {self.name}: {self.geometry}, "
            f"W {self.dg}×{self.da}, {self.n_params:,} params"
        )


def _positions(model: nn.Module) -> dict[str, tuple[int, tuple[int, int] | None]]:
    """``T`` (and a convolution's output grid) of every factored layer, from one forward pass of
    one zero image through a model that has an ``input_dim``; empty for the others. The probe
    runs on a copy: hooks on a model that a web server shares between sessions would be seen by
    their forward passes and would make it unpicklable for the worker processes meanwhile."""
    input_dim = getattr(model, "input_dim", None)
    if not isinstance(input_dim, int) or not supported_layers(model):
        return {}
    copy = deepcopy(model)
    found: dict[str, tuple[int, tuple[int, int] | None]] = {}

    def probe(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            if name not in found:
                if isinstance(module, nn.Conv2d):
                    found[name] = (out.shape[2] * out.shape[3], (out.shape[2], out.shape[3]))
                else:
                    found[name] = (math.prod(out.shape[1:-1]), None)

        return record

    for name, module in supported_layers(copy):
        module.register_forward_hook(probe(name))
    param = next(copy.parameters())
    with torch.no_grad():
        copy(torch.zeros(1, input_dim, dtype=param.dtype, device=param.device))
    return found


def _activation(model: nn.Module, i: int, n: int, relu: bool) -> str:
    if relu:
        return "relu"
    if i < n - 1:
        return "linear"
    loss = getattr(model, "loss", None)
    known = isinstance(loss, str) and loss in LOSS_KINDS
    return likelihood(str(loss)).output_activation if known else "linear output"


def describe_layers(model: nn.Module) -> list[LayerInfo]:
    """A :class:`LayerInfo` per factored layer (linear and convolution), in registration order
    (forward order for this module's networks; numbered from 1)."""
    layers = _layers_with_activation(model)
    probed = _positions(model)
    infos = []
    for i, (name, module, relu) in enumerate(layers):
        activation = _activation(model, i, len(layers), relu)
        # unprobed (no input_dim): a linear layer is taken to act on rows, T = 1
        unknown = (None, None) if isinstance(module, nn.Conv2d) else (1, None)
        t, grid = probed.get(name, unknown)
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            sh, sw = module.stride
            infos.append(
                LayerInfo(
                    index=i,
                    name=name,
                    in_features=module.in_channels * kh * kw,
                    out_features=module.out_channels,
                    bias=module.bias is not None,
                    activation=activation,
                    kind="conv2d",
                    kernel=(kh, kw),
                    stride=(sh, sw),
                    positions=t,
                    grid=grid,
                )
            )
            continue
        infos.append(
            LayerInfo(
                index=i,
                name=name,
                in_features=module.in_features,
                out_features=module.out_features,
                bias=module.bias is not None,
                activation=activation,
                positions=t,
            )
        )
    return infos


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


MODEL_KINDS: tuple[str, ...] = (
    "autoencoder",
    "conv_autoencoder",
    "conv_classifier",
    "sequence_classifier",
)
"""What a preset builds: the paper's :class:`Autoencoder`, a :class:`ConvAutoencoder` or a
:class:`ConvClassifier`."""


@dataclass(frozen=True)
class ModelPreset:
    """A named network and the dataset it is for (a ``core.training.datasets`` registry name).

    ``kind`` (:data:`MODEL_KINDS`): ``"autoencoder"``, whose ``widths`` is the encoder width
    list; ``"conv_autoencoder"``, whose ``widths`` is ``(input_dim, code_dim)`` and
    ``channels`` its convolutions' channels; ``"conv_classifier"``, whose ``widths`` is
    ``(input_dim, n_classes)``; ``"sequence_classifier"``, whose ``widths`` is ``(input_dim,
    n_classes)`` and ``channels`` the one token width. ``widths[0]`` is always the image's pixel
    count.
    """

    name: str
    widths: tuple[int, ...]
    dataset: str
    description: str
    kind: str = "autoencoder"
    channels: tuple[int, ...] = ()

    @property
    def classifier(self) -> bool:
        """A softmax classifier (it needs class labels), not an autoencoder."""
        return self.kind.endswith("_classifier")

    @property
    def architecture(self) -> str:
        """The network in a few words, e.g. ``"64-32-16-8 (mirrored)"`` or
        ``"conv 8-16 (3×3, stride 2), code 8, mirrored"``."""
        if self.kind == "autoencoder":
            return f"{'-'.join(map(str, self.widths))} (mirrored)"
        convs = f"conv {'-'.join(map(str, self.channels))} (3×3, stride 2)"
        if self.kind == "conv_autoencoder":
            return f"{convs}, code {self.widths[-1]}, mirrored"
        if self.kind == "sequence_classifier":
            return (
                f"rows as tokens, shared linear →{self.channels[0]}, "
                f"softmax over {self.widths[-1]} classes"
            )
        return f"{convs}, softmax over {self.widths[-1]} classes"


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
        ModelPreset(
            "digits-conv",
            (64, 8),
            "digits",
            "Classroom: 8×8 digits convolutional autoencoder, 3×3 stride-2 convolutions "
            "1→8→16 (8×8→4×4→2×2), linear code 8, mirrored with upsampling, sigmoid + BCE; "
            "trains in seconds on a CPU.",
            kind="conv_autoencoder",
            channels=(8, 16),
        ),
        ModelPreset(
            "mnist-conv",
            (784, 30),
            "mnist",
            "MNIST convolutional autoencoder, 3×3 stride-2 convolutions 1→8→16 "
            "(28×28→14×14→7×7), linear code 30, mirrored with upsampling, sigmoid + BCE.",
            kind="conv_autoencoder",
            channels=(8, 16),
        ),
        ModelPreset(
            "digits-cnn",
            (64, 10),
            "digits",
            "Classroom: 8×8 digits classifier, 3×3 stride-2 convolutions 1→8→16, linear "
            "softmax over 10 classes (cross-entropy); trains in seconds on a CPU.",
            kind="conv_classifier",
            channels=(8, 16),
        ),
        ModelPreset(
            "digits-seq",
            (64, 10),
            "digits",
            "Classroom: 8×8 digits read as a sequence of 8 rows: one linear layer 8→16 shared "
            "by the 8 row tokens (T = 8), ReLU, linear softmax over 10 classes (cross-entropy); "
            "trains in seconds on a CPU.",
            kind="sequence_classifier",
            channels=(16,),
        ),
        ModelPreset(
            "mnist-cnn",
            (784, 10),
            "mnist",
            "MNIST classifier, 3×3 stride-2 convolutions 1→8→16, linear softmax over 10 "
            "classes (cross-entropy).",
            kind="conv_classifier",
            channels=(8, 16),
        ),
    )
}


def _preset(preset_or_widths: str | ModelPreset | Sequence[int]) -> ModelPreset | None:
    """The preset named or given (``None`` for a width list); ``ValueError`` for a bad name."""
    if isinstance(preset_or_widths, str):
        preset = PRESETS.get(preset_or_widths)
        if preset is None:
            raise ValueError(
                f"unknown model preset {preset_or_widths!r}; valid names: {', '.join(PRESETS)}, "
                f"or pass a list of widths"
            )
        return preset
    return preset_or_widths if isinstance(preset_or_widths, ModelPreset) else None


def build_model(
    preset_or_widths: str | ModelPreset | Sequence[int],
    *,
    input_dim: int,
    loss: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    init: str = "he_normal",
    image_shape: tuple[int, int] | None = None,
) -> Model:
    """Build the network of a preset name, a :class:`ModelPreset` or a custom encoder width
    list (an :class:`Autoencoder`). ``input_dim`` is the dataset's (checked against the first
    width), ``loss`` its ``"bce"``/``"mse"`` (the autoencoders' likelihood; a classifier's is
    always ``"ce"``), ``init`` one of :data:`INITS`, ``image_shape`` the images' ``(H, W)``
    for a convolutional network (default: square); raises ``ValueError`` on a mismatch, bad
    widths or an unknown ``init``."""
    preset = _preset(preset_or_widths)
    if preset is None or preset.kind == "autoencoder":
        widths = preset.widths if preset is not None else preset_or_widths
        assert not isinstance(widths, (str, ModelPreset))
        return Autoencoder(
            validate_widths(widths, input_dim), loss, seed=seed, dtype=dtype, init=init
        )
    validate_widths(preset.widths, input_dim)
    shape = _image_shape(input_dim, image_shape)
    if preset.kind == "conv_autoencoder":
        return ConvAutoencoder(
            shape, preset.channels, preset.widths[-1], loss, seed=seed, dtype=dtype, init=init
        )
    if preset.kind == "sequence_classifier":
        return SequenceClassifier(
            shape, preset.channels[0], preset.widths[-1], seed=seed, dtype=dtype, init=init
        )
    if preset.kind == "conv_classifier":
        return ConvClassifier(
            shape, preset.channels, preset.widths[-1], seed=seed, dtype=dtype, init=init
        )
    raise ValueError(f"preset {preset.name!r} has unknown kind {preset.kind!r}; {MODEL_KINDS}")
