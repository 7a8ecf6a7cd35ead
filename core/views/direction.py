"""What the step sees: each approximation's damped natural-gradient direction against the exact
one, over a range of dampings λ (the explorer's "Damped step" section; issue 21).

A natural-gradient optimizer applies ``(F̃ + λ)⁻¹`` to the gradient, never F̃ itself, so how close
F̃ is to F in Frobenius norm need not say how good its step is. For one layer's block this module
sweeps λ over :data:`STEP_DAMPINGS` and records, per method, the measures of
:mod:`core.engine.direction` (relative error of the damped inverse applied to the batch gradient,
cosine and norm ratio against the exact damped natural gradient ``(F + λI)⁻¹∇``) in both solve
modes: the optimizers' factored damping and exact damping.

What it shows on the default layers: with factored damping every Kronecker method's step is
about equally far from the exact one, whatever its Frobenius error (the damping's cross terms
``√λ (π I ⊗ S + R/π ⊗ I)`` are a perturbation of their own, the same for every method); with exact
damping the better Frobenius fits give the better step only at large λ, while at small λ the
indefinite second term of a two-term sum leaves near-null directions that the damped inverse
blows up. :func:`caption` says this with the layer's own numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engine.approx import Approximation
from ..engine.direction import DIRECTION_MODES, damping_sweep, log_grid
from ..engine.fisher import LayerFisher
from .labels import method_label

__all__ = [
    "STEP_DAMPINGS",
    "DEFAULT_STEP_DAMPING",
    "MODE_LABELS",
    "DirectionCurve",
    "direction_curve",
    "direction_table",
    "caption",
    "labelled",
    "direction_arrays",
]

#: The dampings swept: half-decades from 1e-6 to 1e2 (the λ slider's stops and URL values).
STEP_DAMPINGS: tuple[float, ...] = log_grid(1e-6, 1e2, 17)
DEFAULT_STEP_DAMPING = 1e-3
MODE_LABELS = {"factored": "optimizer's damping", "exact": "exact damping"}


@dataclass(frozen=True)
class DirectionCurve:
    """One method's direction measures at every damping of ``dampings``, per solve mode
    (``error[mode]``, ``cosine[mode]``, ``norm_ratio[mode]``); a mode in ``skipped`` was not
    computed (NaN): exact damping of a sum of Kronecker products on a large layer needs MINRES
    per damping, which waits for the slow-metrics switch."""

    method: str
    dampings: tuple[float, ...]
    error: Mapping[str, np.ndarray]
    cosine: Mapping[str, np.ndarray]
    norm_ratio: Mapping[str, np.ndarray]
    skipped: tuple[str, ...] = ()

    def at(self, damping: float, mode: str) -> tuple[float, float, float]:
        """(error, cosine, norm ratio) at the swept damping nearest ``damping`` (log scale)."""
        k = int(np.argmin([abs(math.log(d / damping)) for d in self.dampings]))
        return (
            float(self.error[mode][k]),
            float(self.cosine[mode][k]),
            float(self.norm_ratio[mode][k]),
        )


def direction_curve(
    fisher: LayerFisher,
    approx: Approximation,
    dampings: tuple[float, ...] = STEP_DAMPINGS,
    *,
    skip_exact: bool = False,
) -> DirectionCurve:
    """``approx``'s direction measures over ``dampings`` in both modes (exact damping left out,
    NaN, when ``skip_exact``: the caller's slow-metrics rule, cf. ``explorer.is_slow``)."""
    modes = ("factored",) if skip_exact else DIRECTION_MODES
    sweep = damping_sweep(fisher, approx, dampings, modes=modes)
    nan = np.full(len(dampings), np.nan)
    table = {mode: {s.damping: s for s in sweep if s.mode == mode} for mode in modes}

    def column(field: str) -> dict[str, np.ndarray]:
        return {
            mode: np.array([getattr(table[mode][d], field) for d in dampings])
            if mode in table
            else nan.copy()
            for mode in DIRECTION_MODES
        }

    return DirectionCurve(
        method=approx.method,
        dampings=tuple(dampings),
        error=column("error"),
        cosine=column("cosine"),
        norm_ratio=column("norm_ratio"),
        skipped=tuple(m for m in DIRECTION_MODES if m not in modes),
    )


DIRECTION_COLUMNS = {
    "method": "Method",
    "relative_error": "Relative Frobenius error",
    "step_error": "Step error (optimizer's damping)",
    "step_cosine": "Step cosine (optimizer's damping)",
    "step_norm_ratio": "Step norm ratio (optimizer's damping)",
    "exact_step_error": "Step error (exact damping)",
    "exact_step_cosine": "Step cosine (exact damping)",
}


def direction_table(
    curves: Mapping[str, DirectionCurve], frobenius: Mapping[str, float], damping: float
) -> pd.DataFrame:
    """One row per method at ``damping``: its Frobenius error next to its step's error, cosine
    and norm ratio (optimizer's damping) and its step's error and cosine with exact damping."""
    rows = []
    for method, curve in curves.items():
        err, cos, ratio = curve.at(damping, "factored")
        exact_err, exact_cos, _ = curve.at(damping, "exact")
        rows.append(
            {
                "method": method,
                "relative_error": frobenius.get(method, math.nan),
                "step_error": err,
                "step_cosine": cos,
                "step_norm_ratio": ratio,
                "exact_step_error": exact_err,
                "exact_step_cosine": exact_cos,
            }
        )
    return pd.DataFrame(rows, columns=list(DIRECTION_COLUMNS))


def _span(values: list[float]) -> str:
    kept = [v for v in values if math.isfinite(v)]
    return f"{min(kept):.2f}–{max(kept):.2f}" if kept else "—"


def caption(table: pd.DataFrame, damping: float) -> str:
    """Two sentences on what the "error vs λ" figure shows, with this layer's numbers at
    ``damping`` (``table``: :func:`direction_table`'s rows for the methods shown)."""
    # the methods whose factored damping is not exact damping (EKFAC and Eva damp exactly)
    kron = table[~np.isclose(table["step_error"], table["exact_step_error"], rtol=1e-9, atol=0)]
    frob, step = _span(list(kron["relative_error"])), _span(list(kron["step_error"]))
    return (
        f"At λ = {damping:g}, with the damping the optimizers really apply (solid lines), the "
        f"Kronecker methods' steps miss the exact damped natural gradient by {step} while "
        f"their Frobenius errors span {frob}: factored damping adds √λ(πI⊗S + R/π⊗I), an error "
        "of its own, the same for every method, which drowns most of their differences. With "
        "exact damping (dashed) the methods separate as λ shrinks, and not in their Frobenius "
        "order: a two-term sum's indefinite second term can leave near-null directions that "
        "the damped inverse blows up."
    )


def labelled(method: str, mode: str) -> str:
    """A curve's legend name: the method's label and the damping it was solved with."""
    return f"{method_label(method)} ({MODE_LABELS[mode]})"


def direction_arrays(curves: Mapping[str, DirectionCurve]) -> dict[str, np.ndarray]:
    """The arrays behind the "error vs λ" figure, named for the explorer's ``.npz`` download."""
    arrays: dict[str, np.ndarray] = {}
    for method, curve in curves.items():
        arrays["step_dampings"] = np.asarray(curve.dampings)
        for mode in DIRECTION_MODES:
            for field in ("error", "cosine", "norm_ratio"):
                arrays[f"{method}_step_{field}_{mode}"] = getattr(curve, field)[mode]
    return arrays
