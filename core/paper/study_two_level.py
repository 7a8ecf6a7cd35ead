"""The ``two_level`` study (issue 19): does a coarse correction between layers gain over KFAC?

Koroko, Anciaux-Sedrakian, Ben Gharbia, Garès, Haddou & Tran (2023), "Analysis and comparison
of two-level KFAC methods for training deep neural networks", add to KFAC's block-diagonal
preconditioner the coarse correction ``R₀ᵀ(R₀FR₀ᵀ + λI)⁻¹R₀`` of two-level domain
decomposition and find that it "does not really improve the performance of KFAC". Here, on one
preset (curves-small by default):

1. training: KFAC, the two-level optimizers (:mod:`core.training.two_level`: the coarse spaces
   ``kfac_direction``, ``gradient``, ``nicolaides``, ``residual``, ``spectral``, ``krylov``,
   ``krylov_residual``, ``tselepidis`` and the control ``nicolaides_layerwise``) and Adam, each
   at its default learning rate and damping (KFAC's for the two-level ones), over the seeds at
   equal epochs; the final training loss (mean over the last epoch's minibatches) and test loss
   per run;
2. the network-level view (:mod:`core.views.network_fisher`) at initialisation and at the end
   of each run: on one Fisher minibatch of the training set, the damped directions of KFAC, the
   exact block diagonal and each two-level variant (KFAC's ``M`` from that minibatch) against
   the exact damped natural gradient of the WHOLE network's Fisher (relative error and cosine,
   Woodbury: no n × n matrix).

Verdicts: the paper's claim holds when no two-level variant lowers KFAC's mean final training
loss by more than :data:`GAIN_THRESHOLD` (relative), or when its gain is within two standard
deviations over seeds; it does not hold when one does both (the control
``nicolaides_layerwise`` is not one of the paper's variants and does not count). A second row
states whether the coarse correction brings the step closer to the exact natural gradient
(mean over runs and checkpoints), which says whether the cross-layer curvature it restores is
there to restore. A third row asks whether the Nicolaides variant's gain over KFAC needs the
curvature between layers: it does when the control with the cross-layer entries of the coarse
matrix removed keeps less than half of that gain.

``run(..., settings=...)`` adds run settings for every optimizer (e.g. ``{"kl_clip": None}``
for a control without KL-clipping, ``bench/two_level_controls.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from ..engine.approx import KroneckerSum
from ..engine.methods import approximate
from ..training.data import load_dataset
from ..training.defaults import OPTIMIZERS, TWO_LEVEL_OPTIMIZERS
from ..training.runner import RunConfig, TrainingRun
from ..training.two_level import (
    COARSE_SPACES,
    TWO_LEVEL_VARIANTS,
    spectral_vectors,
    two_level_directions,
)
from ..views.labels import OPTIMIZER_LABELS
from ..views.network_fisher import (
    NetworkCurvature,
    direction_errors,
    network_curvature,
    network_directions,
)
from .studies import StudyOptions, StudyResult

__all__ = ["GAIN_THRESHOLD", "CONTROL", "DEFAULT_OPTIMIZERS", "run"]

#: a two-level variant "gains" when it lowers KFAC's final training loss by more than this
GAIN_THRESHOLD = 0.05
#: the control without cross-layer terms, and the variant whose gain it tests
CONTROL, CONTROLLED = "kfac_two_level_nicolaides_layerwise", "kfac_two_level_nicolaides"
#: the paper's variants (every two-level optimizer but the control)
PAPER_VARIANTS: tuple[str, ...] = tuple(n for n in TWO_LEVEL_OPTIMIZERS if n != CONTROL)
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("kfac", *TWO_LEVEL_OPTIMIZERS, "adam")
DEFAULT_EPOCHS = 20.0
# --quick: (n_train, n_test), epochs and the network-level Fisher minibatch
QUICK_SIZES, QUICK_EPOCHS, QUICK_FISHER_BATCH = (256, 64), 2.0, 64
FISHER_BATCH = 256


def _optimizers(options: StudyOptions) -> tuple[str, ...]:
    names = options.optimizers or DEFAULT_OPTIMIZERS
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {', '.join(unknown)}; choose from {', '.join(OPTIMIZERS)}"
        )
    if "kfac" not in names or not set(names) & set(TWO_LEVEL_OPTIMIZERS):
        raise ValueError(
            "the two_level study compares KFAC with the two-level optimizers: --optimizers "
            f"must name kfac and at least one of {', '.join(TWO_LEVEL_OPTIMIZERS)}"
        )
    return tuple(names)


def _override(table: dict[str, float], name: str) -> float | None:
    return table.get(name, table.get("*"))


def _more_directions(curv: NetworkCurvature, damping: float) -> dict[str, torch.Tensor]:
    """``"two_level:<variant>"`` for the variants the network view does not compute (it has
    the coarse spaces built from ``∇`` and ``M⁻¹∇`` alone), with KFAC's ``M`` and factors
    from the same Fisher minibatch."""
    approx = {n: approximate("kfac", lc.a, lc.g) for n, lc in curv.captures.items()}
    kfac = {n: a.solve(curv.gradients[n], damping, mode="factored") for n, a in approx.items()}
    spectral = spectral_vectors(
        {n: a.terms[0] for n, a in approx.items() if isinstance(a, KroneckerSum)}
    )
    out = {}
    for variant in TWO_LEVEL_VARIANTS.values():
        if variant in COARSE_SPACES:
            continue
        dirs = two_level_directions(
            variant,
            curv.gradients,
            kfac,
            curv.captures,
            damping,
            precondition=lambda n, v: approx[n].solve(v, damping, mode="factored"),
            spectral=spectral,
        )
        out[f"two_level:{variant}"] = curv.flatten(dirs)
    return out


def _network_rows(model, x, y, *, loss, damping, fisher_seed, **labels) -> list[dict]:
    """The network-level direction errors of ``model`` on the Fisher minibatch ``x``."""
    model = copy.deepcopy(model).to("cpu").double()
    curv = network_curvature(model, x.double(), y if y.dtype == torch.long else y.double(),
                             loss=loss, seed=fisher_seed)  # fmt: skip
    dirs = network_directions(curv, damping)
    table = direction_errors({**dirs, **_more_directions(curv, damping)})
    return [{**labels, "parameters": curv.n, **row} for row in table.to_dict("records")]


def run(
    options: StudyOptions,
    *,
    log: Callable[[str], None],
    settings: Mapping[str, Any] | None = None,
) -> StudyResult:
    """The ``two_level`` study (module docstring); ``settings``: run settings added for every
    optimizer (:meth:`core.training.runner.RunConfig.from_settings` names)."""
    names = _optimizers(options)
    extra = dict(settings or {})
    epochs = options.epochs or (QUICK_EPOCHS if options.quick else DEFAULT_EPOCHS)
    n_train = options.n_train or (QUICK_SIZES[0] if options.quick else None)
    n_test = options.n_test or (QUICK_SIZES[1] if options.quick else None)
    m = QUICK_FISHER_BATCH if options.quick else FISHER_BATCH
    ds = load_dataset(options.dataset, path=options.data_path, seed=0, n_train=n_train,
                      n_test=n_test)  # fmt: skip
    gen = torch.Generator().manual_seed(12345)
    fisher_idx = torch.randperm(ds.n_train, generator=gen)[: min(m, ds.n_train)]
    x_fisher = ds.x_train[fisher_idx]
    y_fisher = x_fisher if ds.y_train is None else ds.y_train[fisher_idx]
    runs, network = [], []
    preset = options.preset
    for seed in options.seeds:
        for name in names:
            run_settings: dict[str, Any] = {"preset": preset, "epochs": epochs, "seed": seed,
                                            "device": options.device, "eval_every": 5,
                                            **extra}  # fmt: skip
            if options.max_steps is not None:
                run_settings = {**run_settings, "epochs": None, "steps": options.max_steps}
            lr, damping = _override(options.lrs, name), _override(options.dampings, name)
            config = RunConfig.from_settings(options.dataset, name, lr=lr, damping=damping,
                                             **run_settings)  # fmt: skip
            run_ = TrainingRun(config, dataset=ds)
            kfac = RunConfig.from_settings(options.dataset, "kfac",
                                           damping=_override(options.dampings, "kfac"),
                                           **run_settings)  # fmt: skip
            lam_kfac = kfac.optimizer.resolved_damping
            if name == names[0]:  # every optimizer starts from the seed's same network
                network += _network_rows(run_.model, x_fisher, y_fisher, loss=run_.loss_kind,
                                         damping=lam_kfac, fisher_seed=seed, checkpoint="init",
                                         optimizer="(init)", seed=seed)  # fmt: skip
            log(f"seed {seed}: training {name} for {run_.total_steps} steps")
            run_.run()
            df = run_.dataframe()
            last_epoch = df.tail(run_.steps_per_epoch)
            runs.append(
                {
                    "optimizer": name,
                    "seed": seed,
                    "status": run_.status,
                    "steps": len(df),
                    "lr": config.optimizer.lr,
                    "damping": config.optimizer.damping,
                    "final_train_loss": float(last_epoch["train_loss"].mean()),
                    "final_test_loss": float(df["test_loss"].dropna().iloc[-1]),
                    "train_time_s": float(df["wall_time_s"].iloc[-1]),
                }
            )
            if run_.status == "finished":
                network += _network_rows(run_.model, x_fisher, y_fisher, loss=run_.loss_kind,
                                         damping=lam_kfac, fisher_seed=seed, checkpoint="end",
                                         optimizer=name, seed=seed)  # fmt: skip
    runs_df = pd.DataFrame(runs)
    net_df = pd.DataFrame(network)
    summary = _summary(runs_df)
    notes = [
        "Final training loss: the mean minibatch loss over the last epoch; test loss: the last "
        "evaluation. Learning rates and dampings are each optimizer's defaults for the preset "
        "(the two-level optimizers take KFAC's) unless --lrs/--dampings override them.",
        f"Network-level errors: one Fisher minibatch of {len(fisher_idx)} training samples "
        "(true Fisher, targets sampled with the seed), float64, damping λ = KFAC's. "
        "'exact_block' is every layer's exact Fisher block without the cross-layer blocks; "
        "'two_level:<space>' is KFAC plus the coarse correction on that coarse space; the "
        "reference is (F + λI)⁻¹∇ with F the whole network's Fisher (Woodbury).",
        "Coarse spaces (core/training/two_level.py), all combined additively: per layer the "
        "KFAC direction (kfac_two_level), the gradient (_grad), the constant vector "
        "(_nicolaides), the preconditioned residual M⁻¹(∇ − (F+λI)M⁻¹∇) (_residual), the "
        "eigenvector of the smallest eigenvalue of KFAC's block (_spectral), {1, M⁻¹1} "
        "(_krylov), {M⁻¹r, M⁻²r} (_krylov_residual), the constant vector with a "
        "Kronecker-factored coarse matrix (_tselepidis, Tselepidis et al. 2020), and the "
        "control _nicolaides_layerwise (the constant vector, cross-layer entries of the coarse "
        "matrix removed). The variants follow the authors' public code; the paper's text "
        "beyond its abstract was not available.",
    ]
    if extra:
        notes.append(f"Run settings added for every optimizer: {extra}.")
    if options.quick:
        notes.append("Quick version (--quick): few samples and epochs, for checks only.")
    return StudyResult(
        title=f"Two-level KFAC vs KFAC ({options.preset or options.dataset})",
        verdicts=_verdicts(summary, net_df),
        tables={
            "Final losses per optimizer (mean ± std over seeds)": summary,
            "Network-level direction errors (mean over seeds)": _network_summary(net_df),
            "Runs (one row per optimizer and seed)": runs_df,
            "Network-level direction errors (every run)": net_df,
        },
        figures=[_loss_figure(runs_df), _network_figure(net_df)],
        settings={
            "optimizers": list(names),
            "epochs": epochs,
            "n_train": ds.n_train,
            "fisher_batch": len(fisher_idx),
            "gain_threshold": GAIN_THRESHOLD,
            "extra_settings": {k: str(v) for k, v in extra.items()},
            "coarse_spaces": {n: TWO_LEVEL_VARIANTS[n] for n in names if n in TWO_LEVEL_VARIANTS},
        },
        notes=notes,
    )


def _summary(runs: pd.DataFrame) -> pd.DataFrame:
    finished = runs[runs["status"] == "finished"]
    g = finished.groupby("optimizer", sort=False)
    out = pd.DataFrame(
        {
            "label": [OPTIMIZER_LABELS.get(str(n), str(n)) for n in g.groups],
            "runs": g.size().to_numpy(),
            "final_train_loss_mean": g["final_train_loss"].mean().to_numpy(),
            "final_train_loss_std": g["final_train_loss"].std(ddof=1).fillna(0.0).to_numpy(),
            "final_test_loss_mean": g["final_test_loss"].mean().to_numpy(),
            "train_time_s_mean": g["train_time_s"].mean().to_numpy(),
        },
        index=pd.Index(list(g.groups), name="optimizer"),
    ).reset_index()
    kfac = out.loc[out["optimizer"] == "kfac", "final_train_loss_mean"]
    base = float(kfac.iloc[0]) if len(kfac) else math.nan
    out["gain_over_kfac"] = (base - out["final_train_loss_mean"]) / base
    return out


def _network_summary(net: pd.DataFrame) -> pd.DataFrame:
    if net.empty:
        return net
    return (
        net.groupby(["checkpoint", "direction"], sort=False)[["relative_error", "cosine"]]
        .mean()
        .reset_index()
    )


def _verdicts(summary: pd.DataFrame, net: pd.DataFrame) -> pd.DataFrame:
    rows = []
    two = summary[summary["optimizer"].isin(PAPER_VARIANTS)]
    kfac = summary[summary["optimizer"] == "kfac"]
    claim = "two-level KFAC gains little over KFAC (Koroko et al. 2023)"
    criterion = (
        f"no two-level variant lowers KFAC's mean final training loss by more than "
        f"{GAIN_THRESHOLD:.0%} and by more than 2 std over seeds"
    )
    if two.empty or kfac.empty:
        verdict, detail = "not measured", "a KFAC or two-level run did not finish"
    else:
        best = two.iloc[int(two["gain_over_kfac"].to_numpy().argmax())]
        spread = 2 * max(float(best["final_train_loss_std"]),
                         float(kfac["final_train_loss_std"].iloc[0]))  # fmt: skip
        diff = float(kfac["final_train_loss_mean"].iloc[0]) - float(best["final_train_loss_mean"])
        gains = bool(best["gain_over_kfac"] > GAIN_THRESHOLD and diff > spread)
        verdict = "does not hold" if gains else "holds"
        kfac_loss = float(kfac["final_train_loss_mean"].iloc[0])
        detail = (
            f"best variant {best['optimizer']}: final training loss "
            f"{best['final_train_loss_mean']:.4g} vs KFAC {kfac_loss:.4g}"
            f" (gain {best['gain_over_kfac']:+.1%}; 2 std = {spread:.3g}); "
            + ", ".join(f"{r.optimizer} {r.gain_over_kfac:+.1%}" for r in two.itertuples())
        )
    rows.append({"claim": claim, "criterion": criterion, "verdict": verdict, "detail": detail})
    claim = (
        "the coarse correction brings KFAC's step closer to the whole network's natural gradient"
    )
    criterion = "mean relative direction error of a two-level variant below KFAC's"
    if net.empty:
        rows.append({"claim": claim, "criterion": criterion, "verdict": "not measured",
                     "detail": "no network-level rows"})  # fmt: skip
    else:
        mean = net.groupby("direction")["relative_error"].mean()
        two_level = mean[[i for i in mean.index if str(i).startswith("two_level:")]]
        better = two_level[two_level < mean["kfac"]]
        verdict = "holds" if len(better) == len(two_level) else "mixed" if len(better) else (
            "does not hold")  # fmt: skip
        detail = f"KFAC {mean['kfac']:.3f}, exact block {mean['exact_block']:.3f}; " + ", ".join(
            f"{str(k).split(':')[1]} {v:.3f}" for k, v in two_level.items()
        )
        rows.append({"claim": claim, "criterion": criterion, "verdict": verdict, "detail": detail})
    rows.append(_control_verdict(summary))
    return pd.DataFrame(rows)


def _control_verdict(summary: pd.DataFrame) -> dict[str, str]:
    """Does the Nicolaides variant's gain need the cross-layer curvature (module docstring)?"""
    claim = "the Nicolaides variant's gain over KFAC comes from the curvature between layers"
    criterion = (
        "the control without cross-layer terms (nicolaides_layerwise) keeps less than half of "
        "the Nicolaides variant's gain over KFAC"
    )
    gains = summary.set_index("optimizer")["gain_over_kfac"]
    if CONTROL not in gains or CONTROLLED not in gains or "kfac" not in gains:
        verdict, detail = "not measured", "the Nicolaides, control or KFAC runs are missing"
    elif not float(gains[CONTROLLED]) > 0:
        verdict = "not measured"
        detail = f"the Nicolaides variant does not gain over KFAC ({gains[CONTROLLED]:+.1%})"
    else:
        kept = float(gains[CONTROL]) / float(gains[CONTROLLED])
        verdict = "holds" if kept < 0.5 else "does not hold"
        detail = (
            f"Nicolaides {gains[CONTROLLED]:+.1%}, control {gains[CONTROL]:+.1%} "
            f"(the control keeps {kept:.0%} of the gain)"
        )
    return {"claim": claim, "criterion": criterion, "verdict": verdict, "detail": detail}


def _loss_figure(runs: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for name, group in runs.groupby("optimizer", sort=False):
        label = OPTIMIZER_LABELS.get(str(name), str(name))
        fig.add_box(y=group["final_train_loss"], name=label, boxpoints="all")
    fig.update_layout(title="Final training loss per optimizer (one point per seed)",
                      yaxis_title="training loss (last epoch)", showlegend=False)  # fmt: skip
    return fig


def _network_figure(net: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    if not net.empty:
        for checkpoint, group in net.groupby("checkpoint", sort=False):
            mean = group.groupby("direction", sort=False)["relative_error"].mean()
            fig.add_bar(x=list(mean.index), y=mean.to_numpy(), name=str(checkpoint))
    fig.update_layout(
        title="Relative error of each damped direction vs the whole network's natural gradient",
        yaxis_title="‖d − d*‖ / ‖d*‖ (mean over runs)",
        barmode="group",
    )
    return fig
