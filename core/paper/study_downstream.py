"""The downstream studies of issue 19: ``--experiment compress`` and ``--experiment prune``.

The question: does a better Kronecker-factored Fisher approximation (lower relative Frobenius
error ‖F − F̃‖_F / ‖F‖_F on the layer's block) also compress or prune the trained network
better (a smaller increase of the held-out loss)?

Per seed: train the dataset's preset (the paper's network for curves, mnist and faces;
:data:`core.training.models.PRESETS`) for the given epochs with KFAC at its per-preset tuned lr
and damping (:func:`core.training.defaults.default_lr`; KFAC is the paper's training optimizer
for the quality experiment, :mod:`core.paper.spec`). Then for each chosen layer run
:func:`core.views.downstream.compress_sweep` (rank k: the rank-k W closest to the trained one in
each curvature's norm — plain SVD, FWSVD's diagonal Fisher (Hsu et al. 2022), every registry
approximation (the Generalized Fisher-Weighted SVD of Chekalina et al. 2025 for the KPSVD
family), and the exact block where it fits) or :func:`core.views.downstream.prune_sweep`
(optimal brain surgeon with each curvature, as in The LLM Surgeon, van der Ouderaa et al.
2023, against magnitude pruning), and measure each method's relative Frobenius error on the
same Fisher batch.

Verdict (decided from the numbers): for every (seed, layer, k or sparsity) the Spearman rank
correlation ρ across the registry's approximations (and the exact block, error 0) between
relative Frobenius error and held-out loss increase; the claim "a better approximation gives a
smaller loss increase" holds when the mean ρ ≥ 0.5 and ρ > 0 in at least two thirds of the
cases, does not hold when the mean ρ ≤ 0, and is mixed in between. Cases where every method
gives the same loss (ρ undefined, e.g. k = full rank) are left out and counted in the detail.
A second verdict compares the curvature-weighted methods with the curvature-free baseline
(plain SVD / magnitude) point by point.

Defaults (recorded in settings.json): 1 epoch on the paper's networks, 5 on the small presets;
the layers of :func:`default_layers`; ranks 1, 4, 16, … up to half of min(dg, da) (at full
rank every method returns W); sparsities 0.1 … 0.9, unstructured and whole rows; a 512-image
true-Fisher batch from the training set, 2,000 held-out test images, λ = 1e-3
(:data:`SWEEP_DAMPING`). ``--quick``: 512/256 images, at most 20 steps, one seed, ranks
1, 2, 4, sparsities 0.25, 0.5, 0.75, unstructured only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from ..engine.capture import capture
from ..engine.fisher import LayerFisher
from ..engine.methods import approximate
from ..engine.weight_metric import DENSE_LIMIT
from ..training.data import load_dataset
from ..training.datasets import DATASET_SPECS
from ..training.models import PRESETS, describe_layers
from ..training.runner import RunConfig, TrainingRun, model_loss
from ..views.downstream import (
    COMPRESS_METHODS,
    PRUNE_METHODS,
    DownstreamResult,
    compress_sweep,
    prune_sweep,
)
from ..views.downstream_figures import downstream_figures, downstream_label
from .studies import StudyOptions, StudyResult

__all__ = ["run", "default_layers", "spearman", "TRAINING_OPTIMIZER"]

TRAINING_OPTIMIZER = "kfac"
BASELINES = {"compress": ("svd", "fwsvd"), "prune": ("magnitude",)}
_DEFAULT_EPOCHS = {"curves": 1.0, "mnist": 1.0, "faces": 1.0}  # the paper's networks: large
_SMALL_EPOCHS = 5.0
_QUICK = {"n_train": 512, "n_test": 256, "max_steps": 20, "m": 128, "n_eval": 256}
_FULL = {"m": 512, "n_eval": 2000}
SWEEP_DAMPING = 1e-3  # λ of every curvature in the sweeps (the explorer's default)
SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
QUICK_SPARSITIES = (0.25, 0.5, 0.75)
LARGE_LAYER = 25_000  # default layers: the largest below this, and the largest with an exact block


def _linear_infos(model: nn.Module) -> list[Any]:
    return [i for i in describe_layers(model) if i.kind == "linear"]


def default_layers(model: nn.Module, *, quick: bool) -> list[str]:
    """The layers swept by default, in model order. Quick: the largest linear layer with at
    most 600 weights. Otherwise the largest with an exact block (≤ DENSE_LIMIT weights, so the
    exact curvature is compared too) and the largest with at most :data:`LARGE_LAYER`."""
    infos = _linear_infos(model)
    limits = (600,) if quick else (DENSE_LIMIT, LARGE_LAYER)
    chosen = set()
    for limit in limits:
        fits = [i for i in infos if i.n_params <= limit]
        if fits:
            chosen.add(max(fits, key=lambda i: i.n_params).name)
    if not chosen:  # every layer is larger: the smallest
        chosen.add(min(infos, key=lambda i: i.n_params).name)
    return [i.name for i in infos if i.name in chosen]


def _resolve_layers(model: nn.Module, asked: tuple[str, ...], quick: bool) -> list[str]:
    infos = _linear_infos(model)
    if not asked:
        return default_layers(model, quick=quick)
    names = [i.name for i in infos]
    out = []
    for item in asked:
        if item.isdigit() and 1 <= int(item) <= len(names):
            out.append(names[int(item) - 1])
        elif item in names:
            out.append(item)
        else:
            raise ValueError(
                f"unknown layer {item!r} for --layers; choose linear layer names or numbers "
                f"from 1 to {len(names)}: {', '.join(names)}"
            )
    return list(dict.fromkeys(out))


def _check(options: StudyOptions) -> str:
    """The preset to train (the dataset's own by default); a ValueError for bad options."""
    if options.name not in ("compress", "prune"):
        raise ValueError(f"study_downstream serves compress and prune, not {options.name!r}")
    if options.dataset not in DATASET_SPECS:
        raise ValueError(
            f"unknown dataset {options.dataset!r}; choose from {', '.join(DATASET_SPECS)}"
        )
    preset = options.preset or options.dataset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if "classifier" in PRESETS[preset].kind:
        raise ValueError(
            f"the {options.name} study measures autoencoders (the paper's networks); {preset!r} "
            "is a classifier: choose an autoencoder preset"
        )
    if options.optimizers and tuple(options.optimizers) != (TRAINING_OPTIMIZER,):
        raise ValueError(
            f"the {options.name} study trains with {TRAINING_OPTIMIZER} only (its tuned default); "
            "leave --optimizers out"
        )
    return preset


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ: Pearson's correlation of the average ranks (ties share their mean rank);
    NaN when either side is constant."""
    rx = pd.Series(x).rank().to_numpy(dtype=float)
    ry = pd.Series(y).rank().to_numpy(dtype=float)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _train(options: StudyOptions, preset: str, seed: int, log: Callable[[str], None]):
    quick = options.quick
    n_train = options.n_train or (_QUICK["n_train"] if quick else None)
    n_test = options.n_test or (_QUICK["n_test"] if quick else None)
    max_steps = options.max_steps or (_QUICK["max_steps"] if quick else None)
    ds = load_dataset(
        options.dataset, path=options.data_path, seed=0, n_train=n_train, n_test=n_test
    )
    epochs = options.epochs or _DEFAULT_EPOCHS.get(preset, _SMALL_EPOCHS)
    settings: dict[str, Any] = dict(preset=preset, seed=seed, device=options.device)
    if max_steps is not None:
        per_epoch = max(1, ds.n_train // 128)
        settings["steps"] = min(max_steps, max(1, round(epochs * per_epoch)))
    else:
        settings["epochs"] = epochs
    lr = options.lrs.get(TRAINING_OPTIMIZER, options.lrs.get("*"))
    damping = options.dampings.get(TRAINING_OPTIMIZER, options.dampings.get("*"))
    config = RunConfig.from_settings(
        options.dataset, TRAINING_OPTIMIZER, lr=lr, damping=damping, **settings
    )
    run = TrainingRun(config, dataset=ds)
    began = time.perf_counter()
    run.run()
    if run.status != "finished":
        raise ValueError(f"training seed {seed} ended {run.status}: {run.message}")
    log(f"seed {seed}: trained {preset} ({run.total_steps} steps, {TRAINING_OPTIMIZER}, "
        f"lr {config.optimizer.lr:g}, damping {config.optimizer.damping:g}) in "
        f"{time.perf_counter() - began:.0f} s")  # fmt: skip
    return run, ds, config, epochs


def _relative_errors(result: DownstreamResult, model, layer, x, loss, seed) -> dict[str, float]:
    """Each registry method's ‖F − F̃‖_F / ‖F‖_F on the sweep's Fisher batch (exact: 0)."""
    generator = torch.Generator().manual_seed(seed)  # the sweep's targets: the same batch
    cap = capture(model, x, loss=loss, fisher="true", layers=[layer], generator=generator)
    a, g = cap.layers[layer].a.to(torch.float64), cap.layers[layer].g.to(torch.float64)
    fisher = LayerFisher(a, g)
    out: dict[str, float] = {}
    for method in result.methods:
        if method == "exact":
            out[method] = 0.0
        elif method not in ("svd", "fwsvd", "magnitude"):
            out[method] = float(fisher.relative_error(approximate(method, a, g)))
    return out


def _sweep_values(job: str, quick: bool, top_rank: int) -> tuple[float, ...]:
    if job == "prune":
        return QUICK_SPARSITIES if quick else SPARSITIES
    ranks, r = [], 1
    limit = max(1, top_rank // 2)  # below full rank: at full rank every method returns W
    while r <= limit:
        ranks.append(r)
        r *= 4 if not quick else 2
    return tuple(float(k) for k in ranks[: 3 if quick else 6])


def run(options: StudyOptions, *, log: Callable[[str], None]) -> StudyResult:
    """Train, sweep, measure and decide (see the module docstring)."""
    preset = _check(options)
    job = options.name
    seeds = options.seeds[:1] if options.quick else options.seeds
    sizes = _QUICK if options.quick else _FULL
    rows: list[dict[str, Any]] = []
    figures: list[go.Figure] = []
    notes: list[str] = []
    skipped: dict[str, str] = {}
    layers_used: list[str] = []
    lr_used = damping_used = None
    epochs_used = None
    structures = (
        ("unstructured",) if job == "compress" or options.quick else ("unstructured", "rows")
    )
    for seed in seeds:
        run_, ds, config, epochs_used = _train(options, preset, seed, log)
        lr_used, damping_used = config.optimizer.lr, config.optimizer.damping
        model = run_.model.cpu().eval()
        loss = model_loss(model, ds)
        layers_used = _resolve_layers(model, options.layers, options.quick)
        gen = torch.Generator().manual_seed(seed)
        x_fisher = ds.x_train[torch.randperm(ds.n_train, generator=gen)[: sizes["m"]]]
        x_eval = ds.x_test[: sizes["n_eval"]]
        for layer in layers_used:
            for structure in structures:
                began = time.perf_counter()
                result = _one_sweep(job, model, layer, x_fisher, x_eval, loss, seed, structure,
                                    options.quick)  # fmt: skip
                errors = _relative_errors(result, model, layer, x_fisher, loss, seed)
                log(f"seed {seed}, {layer} ({structure}): {len(result.points)} points in "
                    f"{time.perf_counter() - began:.0f} s")  # fmt: skip
                skipped.update({f"{layer}: {downstream_label(m)}": w
                                for m, w in result.skipped.items()})  # fmt: skip
                for p in result.points:
                    rows.append({
                        "seed": seed, "layer": layer,
                        "shape": f"{result.shape[0]}x{result.shape[1]}",
                        "structure": structure if job == "prune" else "",
                        "method": p.method, "label": downstream_label(p.method),
                        "x": p.x, "base_loss": result.base_loss, "loss": p.loss,
                        "loss_increase": p.loss_increase, "fisher_increase": p.fisher_increase,
                        "relative_error": errors.get(p.method, float("nan")),
                        "seconds": p.seconds,
                    })  # fmt: skip
                if seed == seeds[0]:
                    figs, caption = downstream_figures(result)
                    figures += figs
                    notes.append(f"{layer} ({structure}): {caption}")
    table = pd.DataFrame(rows)
    verdicts, cases = _verdicts(table, job)
    figures.append(_scatter(table, job))
    x_name = "rank k" if job == "compress" else "sparsity"
    summary = (
        table.groupby(["layer", "structure", "label", "x"], sort=False)
        .agg(loss_increase=("loss_increase", "mean"), relative_error=("relative_error", "mean"))
        .reset_index()
        .rename(columns={"x": x_name})
    )
    notes += [
        f"Trained with {TRAINING_OPTIMIZER} (lr {lr_used}, damping {damping_used}) for "
        f"{epochs_used} epochs" + (f", at most {options.max_steps or _QUICK['max_steps']} steps"
                                    if options.quick or options.max_steps else "") + ".",
        "Relative Frobenius error is measured on the same Fisher batch as the sweep's "
        "curvature (true Fisher, sampled targets); the baselines have none (NaN).",
    ]  # fmt: skip
    if skipped:
        notes.append("Not computed: " + "; ".join(f"{k} ({v})" for k, v in sorted(skipped.items())))
    if options.quick:
        notes.append("QUICK run: a small subset, a few steps, one seed — a smoke test, not a "
                     "result.")  # fmt: skip
    settings = {
        "preset": preset,
        "training_optimizer": TRAINING_OPTIMIZER,
        "lr": lr_used,
        "damping": damping_used,
        "epochs": epochs_used,
        "layers": layers_used,
        "seeds": list(seeds),
        "fisher_batch": sizes["m"],
        "eval_batch": sizes["n_eval"],
        "sweep_damping": SWEEP_DAMPING,
        "structures": list(structures),
        "quick": options.quick,
    }
    return StudyResult(
        title=f"{'Compression' if job == 'compress' else 'Pruning'} with Fisher approximations: "
        f"{options.dataset} / {preset}",
        verdicts=verdicts,
        tables={
            "results": table,
            f"Mean loss increase by method and {x_name}": summary,
            "Rank correlation per case": cases,
        },
        figures=figures,
        settings=settings,
        notes=notes,
    )


def _one_sweep(job, model, layer, x_fisher, x_eval, loss, seed, structure, quick):
    if job == "compress":
        dg, da = (int(s) for s in _shape(model, layer))
        ranks = [int(k) for k in _sweep_values(job, quick, min(dg, da))]
        return compress_sweep(
            model, layer, x_fisher, x_eval, loss=loss, ranks=ranks, methods=COMPRESS_METHODS,
            seed=seed, damping=SWEEP_DAMPING,
        )  # fmt: skip
    return prune_sweep(
        model, layer, x_fisher, x_eval, loss=loss, sparsities=_sweep_values(job, quick, 0),
        structure=structure, methods=PRUNE_METHODS, seed=seed, damping=SWEEP_DAMPING,
    )  # fmt: skip


def _shape(model: nn.Module, layer: str) -> tuple[int, int]:
    module = dict(model.named_modules())[layer]
    assert isinstance(module, nn.Linear)
    return module.out_features, module.in_features + (module.bias is not None)


def _verdicts(table: pd.DataFrame, job: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two verdicts and the per-case correlations behind the first."""
    measured = table[table["relative_error"].notna()]
    cases = []
    for (seed, layer, structure, x), group in measured.groupby(
        ["seed", "layer", "structure", "x"], sort=False
    ):
        rho = spearman(group["relative_error"].to_numpy(), group["loss_increase"].to_numpy())
        cases.append({"seed": seed, "layer": layer, "structure": structure, "x": x,
                      "methods": len(group), "spearman_rho": rho})  # fmt: skip
    cases_df = pd.DataFrame(cases)
    rhos = cases_df["spearman_rho"].dropna() if len(cases_df) else pd.Series(dtype=float)
    undefined = len(cases_df) - len(rhos)
    if len(rhos) == 0:
        verdict, detail = "not measured", "no case with two distinct errors and losses"
    else:
        mean, positive = float(rhos.mean()), float((rhos > 0).mean())
        if mean >= 0.5 and positive >= 2 / 3:
            verdict = "holds"
        elif mean <= 0:
            verdict = "does not hold"
        else:
            verdict = "mixed"
        detail = (
            f"mean ρ = {mean:.2f} over {len(rhos)} cases (seed × layer × "
            f"{'k' if job == 'compress' else 'sparsity'}), ρ > 0 in {positive:.0%}"
            + (f"; {undefined} case(s) with ties only left out" if undefined else "")
        )
    rows = [{
        "claim": "a better Fisher approximation (lower relative Frobenius error) gives a "
        "smaller loss increase",
        "criterion": "Spearman ρ(relative error, held-out loss increase) across the registry's "
        "approximations per case: mean ≥ 0.5 and > 0 in ≥ 2/3 of cases",
        "verdict": verdict,
        "detail": detail,
    }]  # fmt: skip
    base = BASELINES[job][0]
    keyed = table.set_index(["seed", "layer", "structure", "x", "method"])["loss_increase"]
    wins = total = 0
    for index, value in keyed.items():
        seed, layer, structure, x, method = cast(tuple[Any, ...], index)
        if method in BASELINES[job] or method == "exact":
            continue
        ref = keyed.get((seed, layer, structure, x, base))
        if ref is None or not np.isfinite(value):
            continue
        total += 1
        wins += bool(value <= ref)
    share = wins / total if total else float("nan")
    rows.append({
        "claim": f"curvature beats {downstream_label(base)}",
        "criterion": f"share of (seed, layer, x, method) where a registry approximation's loss "
        f"increase ≤ {downstream_label(base)}'s: holds ≥ 75%, does not hold < 50%",
        "verdict": "not measured" if not total else
        "holds" if share >= 0.75 else "does not hold" if share < 0.5 else "mixed",
        "detail": f"{wins} of {total} ({share:.0%})" if total else "no points",
    })  # fmt: skip
    return pd.DataFrame(rows), cases_df


def _scatter(table: pd.DataFrame, job: str) -> go.Figure:
    """Relative Frobenius error against the mean held-out loss increase (over seeds and x),
    one point per method and layer."""
    fig = go.Figure()
    measured = table[table["relative_error"].notna()]
    means = measured.groupby(["layer", "label"], sort=False)[
        ["relative_error", "loss_increase"]
    ].mean()
    for layer in dict.fromkeys(means.index.get_level_values(0)):
        part = means.loc[layer]
        fig.add_trace(go.Scatter(
            x=part["relative_error"], y=part["loss_increase"], mode="markers+text",
            text=list(part.index), textposition="top center", name=layer,
        ))  # fmt: skip
    fig.update_layout(
        title=f"{job.capitalize()}: approximation error against the mean loss increase",
        xaxis_title="relative Frobenius error ‖F − F̃‖/‖F‖",
        yaxis_title="mean held-out loss increase",
        template="plotly_white",
    )
    return fig
