"""The method registry: every optimizer and engine approximation, one :class:`MethodSpec` each.

Everything Kronoscope knows about a method by its name lives here, and every other module reads
it from here: the engine (:func:`core.engine.approx.approximate` builds through ``spec.build``), the
optimizers (:mod:`core.training.optim`: which names exist, defaults, curvature modes), the explorer
and figures (labels, factor names, colour order), the command line and the pages.

To add a method: write its class or builder in :mod:`core.engine.approx` (the math goes in that
module's docstring) and add one :class:`MethodSpec` to ``SPECS`` below. Nothing else.

Three kinds: ``"first_order"`` (sgd, adam: optimizers only), ``"approximation"`` (an engine
approximation, also a natural-gradient optimizer) and ``"exact"`` (the exact Fisher block: the
reference the explorer compares with, and an optimizer; same interface as the approximations).

Default learning rates and dampings were tuned on the curves-small preset (bench/train_bench.py
→ bench/RESULTS-training.md: 20 epochs, T_cov = T_inv = 10, KL-clip 1e-2, momentum 0.9,
ema_mode "factors"; grid lr × damping, seed 0). With ema_mode="window" the KPSVD family was best
at lr 0.1, damping 1. Per-preset overrides (``preset_lr``, ``preset_damping``) are chosen so that
no optimizer diverges with its defaults on any preset (bench/defaults_check.py):
first-order steps shrink with the paper's wider/deeper networks (SGD with momentum 0.9 at 0.01
diverges within 10 steps on curves, mnist and faces; Adam at 0.01 spikes 77× on mnist, 10⁸× on
faces). The natural-gradient methods' KL-clipping bounds their steps: curves-small's lr and
damping did not diverge on curves or mnist (faces: see RESULTS-training.md), but on the paper's
CURVES network they stall KFAC and the KPSVD family (see :func:`_paper_curves_defaults`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from . import approx, fisher

__all__ = [
    "KINDS",
    "MethodSpec",
    "SPECS",
    "method_spec",
    "OPTIMIZERS",
    "FIRST_ORDER",
    "METHODS",
    "KPSVD_FAMILY",
    "FISHER_EMA_METHODS",
    "SHOWN",
    "METHOD_LABELS",
    "OPTIMIZER_LABELS",
]

KINDS = ("first_order", "approximation", "exact")


@dataclass(frozen=True)
class MethodSpec:
    """What Kronoscope knows about one method.

    ``build(method, a, g, *, rank, solver, tol, max_iter, psd_floor, centered)`` returns the
    engine's block (an :class:`~core.engine.approx.Approximation`; the exact block's is
    :class:`~core.engine.fisher.LayerFisher`); ``None`` for the first-order optimizers. ``terms``:
    Kronecker terms per approximation (``None`` for EKFAC, a diagonal in KFAC's eigenbasis, and for
    the exact block; kpsvd: its default rank). ``factor_names``: (input, output) names of the terms'
    factors, shown by the explorer (empty: the generic ``R_k``/``S_k``). ``kpsvd_family``: takes the
    ``solver`` option (core/engine/rearranged_svd.py). ``fisher_ema``: has an ``ema_mode="fisher"``
    state of its own (core/engine/fisher_ema.py). ``centered``: KFAC's A ⊗ G plus Kronecker terms of
    F − A ⊗ G (passed to its builder by :func:`~core.engine.approx.approximate`). ``eigenbasis``: a
    diagonal in the eigenbasis of the averaged factors, refreshed with them. ``ema_terms_from``: the
    method whose minibatch terms the optimizer's factor EMA averages (``None``: this one). ``lr``,
    ``damping``: optimizer defaults (curves-small), ``preset_lr``/``preset_damping`` the per-preset
    overrides. ``optimizer_label``: its name as an optimizer, where not ``label``.
    """

    name: str
    label: str
    kind: str = "approximation"
    build: Callable[..., approx.Approximation] | None = None
    terms: int | None = None
    factor_names: tuple[tuple[str, str], ...] = ()
    kpsvd_family: bool = False
    fisher_ema: bool = False
    centered: bool = False
    eigenbasis: bool = False
    ema_terms_from: str | None = None
    lr: float = 0.3
    damping: float = 0.1
    preset_lr: Mapping[str, float] = field(default_factory=dict)
    preset_damping: Mapping[str, float] = field(default_factory=dict)
    optimizer_label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.build is None) != (self.kind == "first_order"):
            raise ValueError(f"{self.name}: every block (approximation or exact) has a builder")

    def default_lr(self, preset: str | None = None) -> float:
        return self.preset_lr.get(preset, self.lr)

    def default_damping(self, preset: str | None = None) -> float:
        return self.preset_damping.get(preset, self.damping)


_KFAC_NAMES = ("A (inputs)", "G (output gradients)")


def _paper_curves_defaults() -> dict:
    """lr 0.03, damping 1 on the paper's CURVES network for KFAC and the KPSVD family: tuned
    over 5 epochs with the paper's settings (T_cov = T_inv = 100; bench/paper_train_bench.py →
    bench/RESULTS-paper-training.md, seed 0). With damping 0.1 or 0.01 (the curves-small
    defaults and below) KFAC, KPSVD and KFAC-corrected sit on a plateau at loss ≈ 175 after 5
    epochs, where an earlier run found the reconstruction no longer depending on the input
    (bench/RESULTS-paper-training-1epoch-tuning.md); with damping 1 they reach 114-121
    (Deflation: 127 at damping 0.1 and 1 alike)."""
    return {"preset_lr": {"curves": 0.03}, "preset_damping": {"curves": 1.0}}


# The order is the order of every list shown: optimizers, methods, colours.
SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "sgd",
        "SGD",
        kind="first_order",
        lr=0.01,
        damping=0.0,  # unused
        preset_lr={"curves": 1e-3, "mnist": 1e-3, "faces": 1e-4},
    ),
    MethodSpec(
        "adam",
        "Adam",
        kind="first_order",
        lr=0.01,
        damping=0.0,  # unused
        preset_lr={"curves": 3e-3, "mnist": 1e-3, "faces": 3e-4},
    ),
    MethodSpec(
        "kfac",
        "KFAC",
        build=approx.build_kfac,
        terms=1,
        factor_names=(_KFAC_NAMES,),
        **_paper_curves_defaults(),
    ),
    MethodSpec(
        "kpsvd",
        "KPSVD",
        build=partial(approx.build_kronecker_svd, svd_terms=None),
        terms=1,
        kpsvd_family=True,
        fisher_ema=True,
        **_paper_curves_defaults(),
    ),
    MethodSpec(
        "deflation",
        "Deflation",
        build=partial(approx.build_kronecker_svd, svd_terms=2),
        terms=2,
        kpsvd_family=True,
        fisher_ema=True,
        **_paper_curves_defaults(),
    ),
    MethodSpec(
        "lanczos",
        "Lanczos",
        build=partial(approx.build_kronecker_svd, svd_terms=2, algorithm="lanczos"),
        terms=2,
        kpsvd_family=True,
        fisher_ema=True,
        **_paper_curves_defaults(),
    ),
    MethodSpec(
        "kfac_corrected",
        "KFAC-corrected",
        build=partial(approx.build_kronecker_svd, svd_terms=1),
        terms=2,
        factor_names=(_KFAC_NAMES, ("R (correction)", "S (correction)")),
        kpsvd_family=True,
        fisher_ema=True,
        centered=True,
        **_paper_curves_defaults(),
    ),
    MethodSpec(
        "ekfac",
        "EKFAC",
        build=approx.build_ekfac,
        terms=None,
        eigenbasis=True,
        ema_terms_from="kfac",
        lr=0.03,
    ),
    MethodSpec(
        "shampoo",
        "Shampoo",
        build=approx.build_shampoo,
        terms=1,
        factor_names=(("L (inputs, ‖g‖²-weighted)", "R (outputs, ‖ā‖²-weighted)"),),
        lr=0.1,
    ),
    MethodSpec(
        "exact",
        "Exact F",
        kind="exact",
        build=fisher.build_exact,
        lr=0.1,
        optimizer_label="Exact block Fisher",
    ),
)
_BY_NAME = {spec.name: spec for spec in SPECS}

# Views over the registry (what other modules and tests import).
OPTIMIZERS: tuple[str, ...] = tuple(_BY_NAME)
FIRST_ORDER: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "first_order")
METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "approximation")
KPSVD_FAMILY: tuple[str, ...] = tuple(s.name for s in SPECS if s.kpsvd_family)
FISHER_EMA_METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.fisher_ema)
# What the explorer shows: the exact block first, then every approximation.
SHOWN: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "exact") + METHODS
METHOD_LABELS: dict[str, str] = {name: _BY_NAME[name].label for name in SHOWN}
OPTIMIZER_LABELS: dict[str, str] = {s.name: s.optimizer_label or s.label for s in SPECS}


def method_spec(name: str) -> MethodSpec:
    """The spec of method or optimizer ``name`` (``ValueError`` naming the choices if unknown)."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return spec
