"""The one definition of the layers the engine factors: plain ``nn.Linear`` and ``nn.Conv2d``.

Every such layer applies one weight ``W`` (``dg × da``, the bias as its last column) at ``T``
positions of each sample: ``s_t = W ā_t`` with ``ā_t`` the position's input (a trailing ``1``
for the bias) and ``γ_t = ∂ℓ/∂s_t``. The per-sample weight gradient is then
``∇_W ℓ = Σ_t γ_t ā_tᵀ = Γᵀ A`` (``A``: ``T × da``, ``Γ``: ``T × dg``), which is what the
Kronecker factorisations rest on (Martens & Grosse 2015, *Optimizing neural networks with
Kronecker-factored approximate curvature*, §3, for ``T = 1``; Grosse & Martens 2016, *A
Kronecker-factored approximate Fisher matrix for convolution layers*, §3, for convolutions):

* a plain linear layer (``nn.Linear`` or a subclass keeping its forward ``x Wᵀ + b``) on a
  ``(m, d)`` input: ``T = 1``; on ``(m, t₁, …, d)`` (a sequence): ``T = t₁·…``, one position
  per token;
* a plain 2-D convolution (``nn.Conv2d``, ``groups = 1``, any kernel, stride, dilation, padding
  and padding mode, with or without bias): ``T = H_out·W_out``, ``ā_t`` the input patch under
  the kernel at output position ``t``, flattened in ``torch.nn.functional.unfold``'s order
  (channel, then kernel row, then kernel column), so that ``W = weight.reshape(C_out, -1)``
  (:func:`conv_patches`).

A subclass that overrides ``forward`` may compute anything, so it is neither. Other modules
with parameters (grouped or transposed convolutions, 1-D and 3-D convolutions, normalisation
layers, …) are not factored; :func:`unsupported_reason` says why, by name. The model code,
capture and the optimizers all use this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "conv_patches",
    "is_plain_conv2d",
    "is_plain_linear",
    "is_supported_layer",
    "linear_layers",
    "supported_layers",
    "unsupported_reason",
]

# Parameterised module kinds the engine does not factor, and why (checked in this order).
_UNSUPPORTED_KINDS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    (
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
        "transposed convolutions are not supported",
    ),
    (nn.Conv1d, "1-D convolutions are not supported (only nn.Conv2d)"),
    (nn.Conv3d, "3-D convolutions are not supported (only nn.Conv2d)"),
)


def is_plain_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (or a subclass that keeps its forward ``x Wᵀ + b``)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def is_plain_conv2d(module: nn.Module) -> bool:
    """``nn.Conv2d`` (or a subclass that keeps its forward), of any geometry: see
    :func:`is_supported_layer` for the ones the engine factors."""
    return isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward


def unsupported_reason(module: nn.Module) -> str | None:
    """Why the engine cannot factor ``module`` (a short phrase), or ``None`` when it can or
    when the module owns no parameters of its own."""
    if is_plain_linear(module):
        return None
    if is_plain_conv2d(module):
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            return f"groups={module.groups} (only groups=1 convolutions are supported)"
        return None
    for kind, why in _UNSUPPORTED_KINDS:
        if isinstance(module, kind):
            return why
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return "its class overrides forward, so its gradient need not be Γᵀ A"
    if any(True for _ in module.parameters(recurse=False)):
        return "only nn.Linear and nn.Conv2d layers are factored"
    return None


def is_supported_layer(module: nn.Module) -> bool:
    """A plain linear layer or a plain ``groups = 1`` 2-D convolution."""
    return (is_plain_linear(module) or is_plain_conv2d(module)) and (
        unsupported_reason(module) is None
    )


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(qualified name, module)`` for every plain linear layer, in registration order (for
    :class:`core.training.models.Autoencoder`, registration order is forward order). Names work with
    ``model.get_submodule(name)``."""
    return [(name, mod) for name, mod in model.named_modules() if is_plain_linear(mod)]


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """``(qualified name, module)`` for every layer the engine factors (plain linear layers and
    supported convolutions), in registration order."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and is_supported_layer(mod)
    ]


def _same_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zero-padding of ``conv``'s input, as its forward pads:
    ``padding="same"`` puts ``d(k−1)//2`` before and the rest after, per axis."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for d, k in zip(conv.dilation[::-1], conv.kernel_size[::-1], strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input patches of ``conv`` on ``x`` (``(m, C_in, H, W)``): ``(m, T, C_in·kh·kw)``
    with ``T = H_out·W_out`` in row-major output order, each row in ``unfold``'s order, so
    that ``conv(x)[n, :, t] = W A_n[t] + b`` with ``W = conv.weight.reshape(C_out, -1)``.

    Padding is applied first with the layer's own mode (``zeros`` → constant 0, else
    ``reflect``/``replicate``/``circular``), as ``nn.Conv2d.forward`` does, then the patches
    are cut without padding."""
    pads = _same_padding(conv)
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    return cols.transpose(1, 2)
