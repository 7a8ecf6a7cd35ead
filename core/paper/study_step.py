"""The ``step`` study (issue 21): which measure of a Fisher approximation ranks the methods the
way their training does — the fit of F (Koroko et al. 2022's relative Frobenius and spectrum
errors) or the damped step the optimizer really takes (Martens & Grosse 2015, §6)?

``python -m core reproduce --experiment step --dataset curves-small`` runs the step experiment
of :mod:`core.paper.step` (measures along a KFAC trajectory, every layer, the methods of
:data:`DEFAULT_METHODS` or ``--optimizers`` and the exact block; short training runs of each
method at each damping) and reports it with
:mod:`core.paper.step_report`'s tables (``python -m core.paper.step_report`` writes the same
analysis as markdown). On top of that it trains KFAC with ``damping_mode="exact"``
((A ⊗ G + λI)⁻¹, :mod:`core.training.curvature`) at its tuned λ, next to the factored runs.

Verdicts, each decided from the numbers (mean Spearman ρ over checkpoints, approximations only;
see :func:`core.paper.step_report.rank_correlations`):

* "the Frobenius error ranks methods as training does": holds when its mean ρ ≥
  :data:`RHO_HOLDS`, does not hold when ρ < :data:`RHO_FAILS`, mixed in between;
* "the factored step error does": the same rule for the step error with the optimizers'
  (factored) damping;
* "exact damping helps KFAC at the tuned λ": holds when KFAC's mean training loss with exact
  damping is below its factored one by more than the sum of their sds over seeds, does not hold
  when it is not below at all, mixed otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go

from ..engine.methods import EXACT, SHOWN
from ..training.defaults import default_damping
from ..training.models import PRESETS
from ..views.labels import method_label
from .step import StepSpec, training_losses, trajectory_records
from .step_report import (
    damping_correlations,
    method_means,
    rank_correlations,
    sweep_means,
    training_table,
    tuned_losses,
)
from .studies import StudyOptions, StudyResult

__all__ = ["RHO_HOLDS", "RHO_FAILS", "QUICK_METHODS", "DEFAULT_METHODS", "run"]

#: mean ρ at or above which a measure "ranks the methods as training does"
RHO_HOLDS = 0.5
#: mean ρ below which it does not (between: mixed)
RHO_FAILS = 0.3
#: --quick: methods, epochs (trajectory and training), sizes, dampings
QUICK_METHODS = ("exact", "kfac", "kpsvd", "shampoo", "ekfac")
#: the full study's methods: the registry less ``kfac_reduce`` (KFAC itself on linear layers)
#: and ``lanczos`` (Deflation on the Gram route), whose duplicate rows would tie in every ranking
DEFAULT_METHODS = (
    "exact",
    "kfac",
    "kpsvd",
    "deflation",
    "kfac_corrected",
    "ekfac",
    "shampoo",
    "eva",
)
QUICK_EPOCHS, QUICK_N_TRAIN, QUICK_FISHER_BATCH = 1.0, 256, 64
QUICK_SWEEP = (0.01, 0.1, 1.0)
FULL_EPOCHS, FULL_CHECKPOINTS = 6.0, 4
TRAIN_DAMPINGS = (0.01, 0.1, 1.0)
FROBENIUS, FACTORED_STEP = "relative Frobenius error", "step error, optimizer's damping"


def _preset(options: StudyOptions) -> str:
    preset = options.preset or options.dataset
    if preset not in PRESETS:
        raise ValueError(
            f"the step study needs a model preset; {preset!r} is none — give --preset, one of "
            f"{', '.join(PRESETS)}"
        )
    if PRESETS[preset].dataset != options.dataset:
        raise ValueError(
            f"preset {preset!r} trains on {PRESETS[preset].dataset!r}, not on "
            f"{options.dataset!r}: give --dataset {PRESETS[preset].dataset}"
        )
    return preset


def _spec(options: StudyOptions) -> StepSpec:
    """The step experiment the options describe (options it cannot honour are refused)."""
    refused = [
        flag
        for flag, value in (
            ("--lrs", options.lrs),
            ("--dampings", options.dampings),
            ("--layers", options.layers),
            ("--max-steps", options.max_steps),
            ("--n-test", options.n_test),
            ("--data-path", options.data_path),
        )
        if value
    ]
    if refused:
        raise ValueError(
            f"the step study does not take {', '.join(refused)}: every method trains at its "
            "tuned lr over a fixed λ grid, and every linear layer of the preset is measured"
        )
    preset = _preset(options)
    methods = options.optimizers or (QUICK_METHODS if options.quick else DEFAULT_METHODS)
    unknown = [m for m in methods if m not in SHOWN]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)} for the step study; choose from "
            f"{', '.join(SHOWN)}"
        )
    if "kfac" not in methods or len([m for m in methods if m not in EXACT]) < 3:
        raise ValueError(
            "the step study ranks ≥ 3 approximations and trains KFAC with exact damping: "
            "--optimizers must name kfac and at least two more approximations"
        )
    tuned = {default_damping(m, preset) for m in methods}
    epochs = options.epochs or (QUICK_EPOCHS if options.quick else FULL_EPOCHS)
    seeds = tuple(options.seeds)
    quick = options.quick
    return StepSpec(
        preset=preset,
        epochs=epochs,
        checkpoints=2 if quick else FULL_CHECKPOINTS,
        seeds=seeds[:1] if quick else seeds[:2],
        methods=tuple(methods),
        fisher_batch=QUICK_FISHER_BATCH if quick else 256,
        batch=QUICK_FISHER_BATCH if quick else 128,
        held_batch=200 if quick else 500,
        dampings=QUICK_SWEEP if quick else (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        train_epochs=epochs if quick else 10.0,
        train_seeds=seeds[:2] if quick else seeds,
        train_dampings=tuple(sorted(set(QUICK_SWEEP if quick else TRAIN_DAMPINGS) | tuned)),
        n_train=options.n_train or (QUICK_N_TRAIN if quick else None),
        step_fit=not quick,
        device=options.device or "cpu",
    )


def _rho_verdict(rhos: pd.DataFrame, measure: str, claim: str) -> dict[str, str]:
    row = rhos[rhos["measure"] == measure].to_dict("records")[0]
    rho, sd, n = row["rho approximations"], row["sd approximations"], row["n approximations"]
    criterion = (
        f"mean Spearman ρ with the training ranking over checkpoints (approximations only): "
        f"holds ≥ {RHO_HOLDS}, does not hold < {RHO_FAILS}, mixed between"
    )
    if not math.isfinite(rho):
        verdict = "not measured"
    else:
        verdict = "holds" if rho >= RHO_HOLDS else "does not hold" if rho < RHO_FAILS else "mixed"
    detail = f"ρ = {rho:.2f} ± {sd:.2f} over {int(n)} checkpoints"
    return {"claim": claim, "criterion": criterion, "verdict": verdict, "detail": detail}


def exact_damping_table(factored: pd.DataFrame, exact: pd.DataFrame, lam: float) -> pd.DataFrame:
    """KFAC's training loss at ``lam`` with factored and exact damping: mean, sd, runs."""
    rows = []
    for mode, frame in (("factored", factored), ("exact", exact)):
        part = frame[(frame["method"] == "kfac") & (frame["damping"] == lam)]["train_loss"]
        finite = part[part.map(math.isfinite)]
        rows.append(
            {
                "damping_mode": mode,
                "damping": lam,
                "runs": len(part),
                "diverged": len(part) - len(finite),
                "train_loss_mean": float(finite.mean()) if len(finite) else math.nan,
                "train_loss_sd": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            }
        )
    return pd.DataFrame(rows)


def _exact_verdict(table: pd.DataFrame) -> dict[str, str]:
    by_mode = {str(r["damping_mode"]): r for r in table.to_dict("records")}
    f, e = by_mode["factored"], by_mode["exact"]
    claim = "exact damping helps KFAC at the tuned λ"
    criterion = (
        "KFAC's mean training loss with exact damping below the factored one by more than the "
        "sum of their sds over seeds (holds); not below (does not hold); else mixed"
    )
    if not (math.isfinite(f["train_loss_mean"]) and math.isfinite(e["train_loss_mean"])):
        verdict = "not measured" if not math.isfinite(f["train_loss_mean"]) else "does not hold"
    else:
        gap = f["train_loss_mean"] - e["train_loss_mean"]
        spread = f["train_loss_sd"] + e["train_loss_sd"]
        verdict = "holds" if gap > spread else "does not hold" if gap <= 0 else "mixed"
    detail = (
        f"λ = {f['damping']:g}: factored {f['train_loss_mean']:.3f} ± {f['train_loss_sd']:.3f}, "
        f"exact {e['train_loss_mean']:.3f} ± {e['train_loss_sd']:.3f} "
        f"({int(f['runs'])} seeds; diverged: {int(f['diverged'])} / {int(e['diverged'])})"
    )
    return {"claim": claim, "criterion": criterion, "verdict": verdict, "detail": detail}


def _rho_figure(rhos: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for label in ("approximations", "with exact"):
        fig.add_bar(
            x=rhos["measure"],
            y=rhos[f"rho {label}"],
            error_y={"type": "data", "array": rhos[f"sd {label}"]},
            name=f"ρ, {label}",
        )
    fig.update_layout(
        title="Which measure ranks the methods as training does (Spearman ρ, tuned λ)",
        yaxis_title="mean ρ over checkpoints",
        barmode="group",
    )
    return fig


def _sweep_figure(sweep: pd.DataFrame, dampings: tuple[float, ...]) -> go.Figure:
    fig = go.Figure()
    for method, row in sweep.iterrows():
        for mode, dash in (("factored", "solid"), ("exact", "dot")):
            fig.add_scatter(
                x=list(dampings),
                y=[row[f"error_{mode}@{lam:g}"] for lam in dampings],
                name=f"{method_label(str(method))} ({mode})",
                line={"dash": dash},
            )
    fig.update_layout(
        title="Step error ‖x̃ − x‖/‖x‖ against λ: factored (solid) and exact (dotted) damping",
        xaxis={"type": "log", "title": "damping λ"},
        yaxis_title="step error (mean over checkpoints and layers)",
    )
    return fig


def run(options: StudyOptions, *, log: Callable[[str], None]) -> StudyResult:
    """The ``step`` study (module docstring)."""
    spec = _spec(options)
    dataset = spec.load()
    records = pd.DataFrame(
        [r for seed in spec.seeds for r in trajectory_records(spec, dataset, seed, log)]
    )
    losses = pd.DataFrame(training_losses(spec, dataset, log))
    lam = default_damping("kfac", spec.preset)
    exact = pd.DataFrame(
        training_losses(
            spec, dataset, log, damping_mode="exact", methods=("kfac",), dampings=(lam,)
        )  # fmt: skip
    )
    loss = tuned_losses(losses, records)
    rhos = rank_correlations(records, loss)
    by_damping = damping_correlations(records, losses)
    kfac_table = exact_damping_table(losses, exact, lam)
    sweep = sweep_means(records, spec.dampings)
    verdicts = pd.DataFrame(
        [
            _rho_verdict(rhos, FROBENIUS, "the Frobenius error ranks methods as training does"),
            _rho_verdict(rhos, FACTORED_STEP, "the factored step error does"),
            _exact_verdict(kfac_table),
        ]
    )
    notes = [
        "ρ: Spearman's rank correlation between a measure's ranking of the methods at one "
        "checkpoint (seed, step, layer; the look-ahead per model) and their ranking by "
        "training loss at each method's tuned λ; every measure oriented so that lower should "
        "train better (cosines and loss decreases negated, the norm ratio as |log|).",
        f"Trajectory: {spec.trainer} for {spec.epochs:g} epochs, seeds {list(spec.seeds)}, "
        f"{spec.checkpoints} checkpoints; each block's Fisher on {spec.fisher_batch} training "
        f"images (the current block, not the optimizer's EMA). Training ranking: "
        f"{spec.train_epochs:g} epochs, seeds {list(spec.train_seeds)}, λ ∈ "
        f"{list(spec.train_dampings)}; full training-set loss.",
        f"Exact damping: KFAC trained with damping_mode='exact', (A ⊗ G + λI)⁻¹ from the "
        f"factors' eigendecompositions, at its tuned λ = {lam:g}, same seeds and epochs.",
    ]
    if options.quick:
        notes.append("Quick version (--quick): few samples, methods and epochs, for checks only.")
    return StudyResult(
        title=f"What predicts training speed: the step study ({spec.preset})",
        verdicts=verdicts,
        tables={
            "Rank correlation with the training ranking (tuned damping)": rhos,
            "How the answer moves with lambda": by_damping,
            "KFAC with factored vs exact damping at the tuned lambda": kfac_table,
            "Training loss per method and damping (mean ± sd over seeds)": training_table(
                losses
            ).reset_index(),
            "Each method's measures (mean over checkpoints and layers)": method_means(
                records, loss
            ).reset_index(),
            "Step error against lambda (mean over checkpoints and layers)": sweep.reset_index(),
            "Training runs (one row per method, damping, mode and seed)": pd.concat(
                [losses, exact], ignore_index=True
            ),
            "Records (one row per checkpoint, layer and method)": records,
        },
        figures=[_rho_figure(rhos), _sweep_figure(sweep, spec.dampings)],
        settings={
            "preset": spec.preset,
            "methods": list(spec.methods),
            "trajectory_epochs": spec.epochs,
            "checkpoints": spec.checkpoints,
            "trajectory_seeds": list(spec.seeds),
            "train_epochs": spec.train_epochs,
            "train_seeds": list(spec.train_seeds),
            "train_dampings": list(spec.train_dampings),
            "sweep_dampings": list(spec.dampings),
            "fisher_batch": spec.fisher_batch,
            "n_train": dataset.n_train,
            "kfac_tuned_damping": lam,
            "rho_holds": RHO_HOLDS,
            "rho_fails": RHO_FAILS,
        },
        notes=notes,
    )
