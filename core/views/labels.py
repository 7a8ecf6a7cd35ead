"""What the views call each method and optimizer: display names, and the names of a method's
Kronecker factors, keyed by the registries' names (:mod:`core.engine.methods`,
:mod:`core.training.defaults`). The colours are :data:`core.views.figures.METHOD_COLORS`.
"""

from __future__ import annotations

__all__ = ["METHOD_LABELS", "OPTIMIZER_LABELS", "FACTOR_NAMES", "method_label"]

# Every block the engine builds, in the registry's order.
METHOD_LABELS: dict[str, str] = {
    "exact": "Exact F",
    "kfac": "KFAC",
    "kfac_reduce": "KFAC-reduce",
    "kpsvd": "KPSVD",
    "deflation": "Deflation",
    "lanczos": "Lanczos",
    "kfac_corrected": "KFAC-corrected",
    "ekfac": "EKFAC",
    "shampoo": "Shampoo",
    "eva": "Eva",
}

# Every optimizer: as a method, except where its name as an optimizer differs.
OPTIMIZER_LABELS: dict[str, str] = {
    "sgd": "SGD",
    "adam": "Adam",
    "swan": "SWAN",
    **{name: label for name, label in METHOD_LABELS.items() if name != "exact"},
    "exact": "Exact block Fisher",
    "kfac_two_level": "Two-level KFAC",
    "kfac_two_level_grad": "Two-level KFAC (gradient)",
    "kfac_two_level_nicolaides": "Two-level KFAC (Nicolaides)",
    "kfac_two_level_residual": "Two-level KFAC (residual)",
    "kfac_two_level_spectral": "Two-level KFAC (spectral)",
    "kfac_two_level_krylov": "Two-level KFAC (Krylov, Nicolaides)",
    "kfac_two_level_krylov_residual": "Two-level KFAC (Krylov, residual)",
    "kfac_two_level_tselepidis": "Two-level KFAC (Tselepidis)",
    "kfac_two_level_nicolaides_layerwise": "Two-level KFAC (Nicolaides, no cross-layer terms)",
}

_KFAC_NAMES = ("A (inputs)", "G (output gradients)")
# (input, output) names of each Kronecker term's factors, in term order; a method not listed
# gets the generic R_k, S_k (core.views.explorer.factor_views).
FACTOR_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "kfac": (_KFAC_NAMES,),
    "kfac_reduce": (("Â (position-mean inputs)", "Ĝ (position-summed output gradients)"),),
    "kfac_corrected": (_KFAC_NAMES, ("R (correction)", "S (correction)")),
    "shampoo": (("L (inputs, ‖g‖²-weighted)", "R (outputs, ‖ā‖²-weighted)"),),
    "eva": (("ā āᵀ (mean input)", "ḡ ḡᵀ (mean output gradient)"),),
}


def method_label(method: str) -> str:
    """Display name of a method (``kfac_corrected`` → ``KFAC-corrected``; an unknown name as
    it is)."""
    return METHOD_LABELS.get(method, method)
