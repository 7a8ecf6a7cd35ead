"""Which optimizers exist, and each one's default learning rate and damping per model preset.

Optimizers: the gradient-only ``sgd``, ``adam`` and ``swan`` (stateless normalised and whitened
gradients, :mod:`core.training.swan`; no Fisher capture, no damping), then one natural-gradient
optimizer per block the engine builds (:mod:`core.engine.methods`: every approximation, then the
exact block), keyed by the engine's method names, then the two-level KFAC optimizers (KFAC plus
a coarse correction between layers, :mod:`core.training.two_level`). The order is the order of
every list of optimizers shown.

Defaults: a learning rate and a damping λ per optimizer, tuned on the curves-small preset, and
per-preset overrides where a preset's network needs other ones, chosen so that no optimizer
diverges with its defaults on any preset (first-order steps shrink with the paper's wider and
deeper networks; KL-clipping bounds the natural-gradient steps, but a small damping stalls KFAC
and the KPSVD family on the paper's CURVES network). Why each value, with the grids and runs
behind it: bench/RESULTS-training.md (curves-small), bench/RESULTS-paper-training.md and
bench/RESULTS-paper-training-1epoch-tuning.md (the paper's CURVES network), and the defaults
check's section of bench/RESULTS-training.md (every preset, ``bench/defaults_check.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..engine.methods import EXACT, METHODS
from .models import PRESETS

__all__ = [
    "FIRST_ORDER",
    "OPTIMIZERS",
    "NATURAL_OPTIMIZERS",
    "TWO_LEVEL_OPTIMIZERS",
    "Defaults",
    "DEFAULTS",
    "check_optimizer",
    "default_lr",
    "default_damping",
]

FIRST_ORDER: tuple[str, ...] = ("sgd", "adam", "swan")
# KFAC plus a coarse correction between layers, one name per coarse space
# (core.training.two_level; Koroko et al. 2023; the last one a control without cross-layer
# terms): natural-gradient optimizers that are not engine methods.
TWO_LEVEL_OPTIMIZERS: tuple[str, ...] = (
    "kfac_two_level",
    "kfac_two_level_grad",
    "kfac_two_level_nicolaides",
    "kfac_two_level_residual",
    "kfac_two_level_spectral",
    "kfac_two_level_krylov",
    "kfac_two_level_krylov_residual",
    "kfac_two_level_tselepidis",
    "kfac_two_level_nicolaides_layerwise",
)
NATURAL_OPTIMIZERS: tuple[str, ...] = METHODS + EXACT + TWO_LEVEL_OPTIMIZERS
OPTIMIZERS: tuple[str, ...] = FIRST_ORDER + NATURAL_OPTIMIZERS


@dataclass(frozen=True)
class Defaults:
    """One optimizer's default ``lr`` and ``damping`` (curves-small's), and the per-preset
    overrides ``preset_lr`` and ``preset_damping`` (preset name → value)."""

    lr: float = 0.3
    damping: float = 0.1
    preset_lr: Mapping[str, float] = field(default_factory=dict)
    preset_damping: Mapping[str, float] = field(default_factory=dict)


# The paper's CURVES network: lr 0.03 and damping 1 for KFAC and the KPSVD family (with damping
# 0.1 or below they sit on a plateau there; bench/RESULTS-paper-training.md).
def _paper_curves() -> Defaults:
    return Defaults(preset_lr={"curves": 0.03}, preset_damping={"curves": 1.0})


DEFAULTS: dict[str, Defaults] = {
    # first-order: the damping is unused
    "sgd": Defaults(lr=0.01, damping=0.0, preset_lr={"curves": 1e-3, "mnist": 1e-3, "faces": 1e-4}),
    "adam": Defaults(
        lr=0.01, damping=0.0, preset_lr={"curves": 3e-3, "mnist": 1e-3, "faces": 3e-4}
    ),
    "swan": Defaults(lr=0.03, damping=0.0),
    "kfac": _paper_curves(),
    "kfac_reduce": _paper_curves(),  # KFAC's (equal to KFAC on one-position layers)
    "kpsvd": _paper_curves(),
    "deflation": _paper_curves(),
    "lanczos": _paper_curves(),
    "kfac_corrected": _paper_curves(),
    "ekfac": Defaults(lr=0.03),
    "shampoo": Defaults(lr=0.1),
    "eva": Defaults(lr=0.1, damping=1.0),
    "exact": Defaults(lr=0.1),
    # KFAC's defaults (the coarse correction adds to KFAC's step; KL-clipping bounds the sum)
    **{name: _paper_curves() for name in TWO_LEVEL_OPTIMIZERS},
}

# The weight-sharing classroom presets (issue 18): each optimizer's best (lr, λ) on
# bench/conv_tuning.py's grid (lr 0.03/0.1/0.3 × λ 0.1/1 for the natural-gradient methods,
# lr 0.003–0.1 for the first-order ones; 5 epochs, seeds 1 and 2, final test loss; the tables
# in bench/RESULTS-training.md). Where KL-clipping bounds every step, several lrs score alike.
_TUNED: dict[str, dict[str, tuple[float, float]]] = {
    "digits-conv": {
        "sgd": (0.003, 0.0), "adam": (0.01, 0.0), "swan": (0.1, 0.0), "kfac": (0.3, 0.1),
        "kfac_reduce": (0.03, 0.1), "kpsvd": (0.03, 0.1), "deflation": (0.1, 0.1),
        "lanczos": (0.1, 0.1), "kfac_corrected": (0.03, 0.1), "ekfac": (0.3, 0.1),
        "shampoo": (0.03, 0.1), "eva": (0.03, 1.0), "exact": (0.1, 1.0),
        "kfac_two_level": (0.03, 0.1), "kfac_two_level_grad": (0.03, 0.1),
        "kfac_two_level_nicolaides": (0.3, 0.1),
    },
    "digits-cnn": {
        "sgd": (0.1, 0.0), "adam": (0.03, 0.0), "swan": (0.1, 0.0), "kfac": (0.1, 0.1),
        "kfac_reduce": (0.03, 0.1), "kpsvd": (0.1, 0.1), "deflation": (0.1, 0.1),
        "lanczos": (0.1, 0.1), "kfac_corrected": (0.1, 0.1), "ekfac": (0.03, 0.1),
        "shampoo": (0.03, 0.1), "eva": (0.03, 0.1), "exact": (0.1, 0.1),
        "kfac_two_level": (0.03, 0.1), "kfac_two_level_grad": (0.1, 0.1),
        "kfac_two_level_nicolaides": (0.1, 0.1),
    },
    "digits-seq": {
        "sgd": (0.1, 0.0), "adam": (0.03, 0.0), "swan": (0.1, 0.0), "kfac": (0.1, 0.1),
        "kfac_reduce": (0.1, 0.1), "kpsvd": (0.3, 0.1), "deflation": (0.3, 0.1),
        "lanczos": (0.3, 0.1), "kfac_corrected": (0.1, 0.1), "ekfac": (0.03, 0.1),
        "shampoo": (0.3, 0.1), "eva": (0.03, 0.1), "exact": (0.03, 0.1),
        "kfac_two_level": (0.03, 0.1), "kfac_two_level_grad": (0.03, 0.1),
        "kfac_two_level_nicolaides": (0.1, 0.1),
    },
}  # fmt: skip
# The MNIST convolutional presets are not tuned (MNIST is not on the tuning machine): they take
# their DIGITS counterparts' values.
_TUNED_LIKE = {"mnist-conv": "digits-conv", "mnist-cnn": "digits-cnn"}


def _with_tuned(name: str, defaults: Defaults) -> Defaults:
    """``defaults`` with the per-preset values of :data:`_TUNED` for optimizer ``name``."""
    lrs, dampings = dict(defaults.preset_lr), dict(defaults.preset_damping)
    for preset, tuned in (*_TUNED.items(), *((p, _TUNED[q]) for p, q in _TUNED_LIKE.items())):
        if name in tuned:
            lrs[preset], damping = tuned[name]
            if name not in FIRST_ORDER:
                dampings[preset] = damping
    return replace(defaults, preset_lr=lrs, preset_damping=dampings)


DEFAULTS = {name: _with_tuned(name, d) for name, d in DEFAULTS.items()}


def check_optimizer(name: str) -> str:
    """``name`` if it is an optimizer (``ValueError`` naming the choices if not)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return name


def _check_preset(preset: str | None) -> str | None:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def default_lr(name: str, preset: str | None = None) -> float:
    """The default learning rate of optimizer ``name`` on model ``preset`` (``None``:
    curves-small's)."""
    defaults = DEFAULTS[check_optimizer(name)]
    key = _check_preset(preset)
    return defaults.lr if key is None else defaults.preset_lr.get(key, defaults.lr)


def default_damping(name: str, preset: str | None = None) -> float:
    """The default damping λ of optimizer ``name`` on model ``preset`` (``None``: curves-small's;
    0 for sgd and adam, which do not use it)."""
    defaults = DEFAULTS[check_optimizer(name)]
    key = _check_preset(preset)
    return defaults.damping if key is None else defaults.preset_damping.get(key, defaults.damping)
