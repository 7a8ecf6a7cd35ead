"""Where the curvature engine runs for a given training device, and in which dtype it solves.

The optimizers' engine work has two parts: the curvature refresh (captures folded into the
curvature state, :func:`core.engine.approx.approximate`, the eigendecompositions behind the
damped inverses; once per ``t_cov``/``t_inv`` steps) and the per-step solves (two products with
each layer's eigenvectors, every step). The refresh is float64 on every route; the policy picks
the device and the dtype of the per-step solves:

======================  =========  ================  =========================================
training device         engine on  per-step solves   why
======================  =========  ================  =========================================
``cpu``                 cpu        float64           float64 costs about 2× float32 there
``cuda``, compute       cuda       float64           float64 at 1/2 the float32 rate (P100,
capability 6.0, 7.0,                                 V100, A100, H100/H200)
8.0, 9.0
other ``cuda``          cuda       float32           float64 at 1/32–1/64 of float32
``mps`` and others      cpu        float64           no float64 on MPS (nor an eigensolver):
                                                     the engine stays on the CPU, as before
======================  =========  ================  =========================================

Source of the CUDA rows: the CUDA C++ Programming Guide, table "Throughput of Native Arithmetic
Instructions" (results per clock cycle per multiprocessor): 64-bit floating-point add/multiply/
fma is 32 against 64 for 32-bit on compute capability 6.0, 7.0 and 8.0, and 64 against 128 on
9.0 (ratio 1:2); 2 or 4 against 64–128 on the consumer and embedded parts (6.1, 6.2, 7.2, 7.5,
8.6, 8.7, 8.9, 12.x: 1:32 or 1:64). A capability missing from the fast list gets the float32
route: a wrong guess costs speed, not accuracy beyond what the route guarantees.

Why the refresh stays float64 on the float32 route (measured on the paper's CURVES network, m =
256, damping 1e-2; tests/engine/test_precision.py repeats it on a small network). Rounding a
Kronecker factor to float32 perturbs it by 2⁻²⁴‖A‖, which moves its small eigenvalues and mixes its
eigenvectors: the damped solve then differs by cond · 2⁻²⁴ — 1e-5 to 1.3e-4 relative for the
one-product methods (2e-6 to 2e-5 for the two-term ones), up to 1e-2 for EKFAC, whose diagonal
is refitted in the perturbed basis and solved with exact damping (an eigendecomposition in
float64 of the float32 factors does not help). Rounding the float64 eigendecomposition instead
(eigenvectors, eigenvalues, the two-term solve's generalized eigenvectors and denominators) and
doing the per-step products in float32, the preconditioned gradient differs from the float64
route's by at most 1.3e-5 (median over layers 2–3e-6), for every optimizer and EMA mode. The
averages of ``ema_mode="fisher"`` divide by square roots of Gram eigenvalues
(:mod:`core.engine.fisher_ema`): with float32 Grams they were off by 2e-2. The refresh is
amortised over ``t_cov``/``t_inv`` steps, so its float64 cost (O(m·d²) factor products and O(d³)
eigendecompositions per layer, d ≤ 2001 on the paper's networks) matters little even at 1/64
rate; the per-step products are what every step pays.

``KRONOSCOPE_ENGINE_DTYPE=float32|float64`` overrides the per-step dtype on any device (tests
force the float32 route on a CPU with it; a user with a fast-float64 part missing from the list
sets ``float64``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import settings

__all__ = ["ENV_VAR", "FAST_FLOAT64", "EnginePrecision", "choose_precision", "engine_precision"]

ENV_VAR = "KRONOSCOPE_ENGINE_DTYPE"
# CUDA compute capabilities whose float64 throughput is half their float32 throughput.
FAST_FLOAT64: frozenset[tuple[int, int]] = frozenset({(6, 0), (7, 0), (8, 0), (9, 0)})
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class EnginePrecision:
    """Where the engine runs (``device``: curvature state and refresh, float64), the dtype of
    its per-step solves (``solve_dtype``), and why (for logs and reports)."""

    device: torch.device
    solve_dtype: torch.dtype
    reason: str


def choose_precision(
    device_type: str, capability: tuple[int, int] | None = None, override: str | None = None
) -> tuple[str, torch.dtype, str]:
    """(engine device type, per-step solve dtype, reason) for a training device type
    (``"cpu"``, ``"cuda"``, ``"mps"``, …), its CUDA compute capability (``None`` elsewhere) and
    the value of :data:`ENV_VAR` (``None`` or empty: unset). A pure function, so the table is
    testable without the device. Raises ``ValueError`` for an override other than ``float32``
    or ``float64``, and for a CUDA device without a capability."""
    where = device_type if device_type in ("cpu", "cuda") else "cpu"
    if device_type == "cuda" and capability is None:
        raise ValueError("a CUDA device needs its compute capability (major, minor)")
    if override is not None and override.strip():
        key = override.strip().lower()
        if key not in _DTYPES:
            raise ValueError(
                f"{ENV_VAR}={override!r} is not a dtype the engine solves in; "
                f"use one of {', '.join(_DTYPES)} (or leave it unset for the device's default)"
            )
        return where, _DTYPES[key], f"{device_type}: {ENV_VAR}={key}"
    if device_type == "cpu":
        return where, torch.float64, "cpu: float64"
    if device_type == "cuda" and capability is not None:  # None was refused above
        cc = f"{capability[0]}.{capability[1]}"
        if (capability[0], capability[1]) in FAST_FLOAT64:
            return where, torch.float64, f"cuda, compute capability {cc}: fast float64"
        return where, torch.float32, f"cuda, compute capability {cc}: float32 per-step solves"
    return where, torch.float64, f"{device_type}: no float64 there, engine on the cpu"


def engine_precision(device: torch.device | str) -> EnginePrecision:
    """:func:`choose_precision` for ``device`` (the training device), reading its compute
    capability and the environment."""
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    where, dtype, reason = choose_precision(device.type, capability, settings.get(ENV_VAR))
    return EnginePrecision(device if where == device.type else torch.device(where), dtype, reason)
