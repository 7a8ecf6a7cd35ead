"""The one definition of "a plain linear layer", the only layer kind the engine factors.

A plain linear layer is an ``nn.Linear`` (or a subclass) whose forward is ``nn.Linear``'s own,
``s = x Wᵀ + b``: then ``∇_W ℓ_i = g_i ā_iᵀ`` with ``ā_i`` the layer input (and a trailing ``1``
for the bias) and ``g_i = ∂ℓ_i/∂s_i``, which is what the Kronecker factorisation rests on
(Martens & Grosse 2015, *Optimizing neural networks with Kronecker-factored approximate
curvature*, §3). A subclass that overrides ``forward`` may compute anything, so it is not one.
The model code (initialisation, layer lists), capture and the optimizers all use this module.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_plain_linear", "linear_layers"]


def is_plain_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (or a subclass that keeps its forward ``x Wᵀ + b``)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(qualified name, module)`` for every plain linear layer, in registration order (for
    :class:`core.training.models.Autoencoder`, registration order is forward order). Names work with
    ``model.get_submodule(name)``."""
    return [(name, mod) for name, mod in model.named_modules() if is_plain_linear(mod)]
