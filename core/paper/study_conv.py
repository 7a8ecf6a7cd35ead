"""The ``conv`` study (issue 18): how well each Kronecker approximation fits the Fisher blocks of
convolutional layers, the comparison the KPSVD paper (Koroko et al. 2022) makes for fully
connected layers only.

A convolution shares its weight W (C_out × C_in·kh·kw [+1]) over T output positions; its
per-sample gradient is D_n = Γ_nᵀA_n and the exact block F = (1/m) Σ_n vec(D_n)vec(D_n)ᵀ
(:mod:`core.engine.shared_batch`). KFAC has two generalisations: KFAC-expand (KFC, Grosse &
Martens 2016; the engine's ``kfac``) sums over positions in both factors, KFAC-reduce
(Eschenhagen et al. 2023; ``kfac_reduce``) averages the inputs and sums the gradients over
positions first. The KPSVD family fits ℛ(F)'s symmetric block (matrix-free Lanczos).

Run: each conv preset of the dataset (``--preset`` picks one) trains with KFAC (its per-preset
defaults) over the seeds; at each checkpoint (initialisation, then every quarter of the run)
one seeded Fisher minibatch (true Fisher: targets sampled from the model) is captured on every
convolutional layer, and each method is measured against the exact block: relative Frobenius
error ‖F − F̃‖_F/‖F‖_F, spectrum error, and the cosine between its damped natural-gradient
direction (F̃ + λI)⁻¹∇ and the exact (F + λI)⁻¹∇ at the trainer's λ (exact damping of both, so
that the fit alone is compared; :meth:`core.engine.fisher.LayerFisher.natural_gradient_agreement`).

Verdicts, decided from the measurements per layer (mean over checkpoints and seeds):
the KPSVD family fits better than KFAC-expand, and than KFAC-reduce; KFAC-expand fits better
than KFAC-reduce; a better fit gives a better direction (Spearman ρ between the methods'
errors and their cosines, per checkpoint, layer and seed, mean ≤ −0.5: holds; ≥ −0.2: does
not hold; between: mixed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from scipy.stats import spearmanr

from ..engine.shared_batch import product_route
from ..training.data import load_dataset
from ..training.datasets import DATASET_SPECS, Dataset
from ..training.defaults import default_damping
from ..training.models import PRESETS, LayerInfo, build_model, describe_layers
from ..training.runner import RunConfig, TrainingRun
from ..views.explorer import analyse_method
from ..views.labels import method_label
from .studies import VERDICT_COLUMNS, StudyOptions, StudyResult

__all__ = ["FAMILY", "METHODS", "conv_presets", "run"]

#: The methods measured: both KFAC generalisations, the KPSVD family, and two for context.
METHODS = ("kfac", "kfac_reduce", "kpsvd", "deflation", "lanczos", "kfac_corrected", "ekfac")
FAMILY = ("kpsvd", "deflation", "lanczos", "kfac_corrected")
CHECKPOINTS = 4  # measured at step 0 and every quarter of the run
FISHER_BATCH, QUICK_FISHER_BATCH = 256, 32
DEFAULT_EPOCHS = 10.0


def conv_presets(dataset: str, *, labelled: bool) -> list[str]:
    """The convolutional presets whose input fits ``dataset`` (classifiers only when the data
    has class labels)."""
    dim = DATASET_SPECS[dataset].input_dim
    return [
        name
        for name, p in PRESETS.items()
        if p.kind.startswith("conv_") and p.widths[0] == dim and (labelled or not p.classifier)
    ]


class _ConvLayersRun(TrainingRun):
    """A KFAC training that measures every method on every convolutional layer at each quality
    checkpoint (one captured minibatch for all layers)."""

    def __init__(self, cfg: RunConfig, *, dataset: Dataset, model, layers: list[LayerInfo]):
        super().__init__(cfg, dataset=dataset, model=model)
        self.layers = layers
        self.measured: list[dict[str, Any]] = []

    def _quality(self, x_train: torch.Tensor, gen: torch.Generator) -> dict[str, Any]:
        step = len(self._records)
        fishers = self._quality_fishers(x_train, gen, [info.name for info in self.layers])
        damping = self.config.optimizer.resolved_damping
        for info in self.layers:
            fisher = fishers[info.name]
            if not fisher.frobenius_sq() > 0.0:  # every unit after the layer dead: undefined
                continue
            for method in METHODS:
                result = analyse_method(fisher, method, damping=damping, compute_slow=True)
                self.measured.append(
                    {
                        "step": step,
                        "layer": info.name,
                        "method": method,
                        "relative_error": result.relative_error,
                        "spectrum_error": result.spectrum_error,
                        "ng_cosine": result.ng_cosine,
                        "seconds": result.seconds,
                    }
                )
        return {}


def _schedule(options: StudyOptions, ds: Dataset) -> tuple[int, int, int]:
    """(steps, quality_every, fisher batch) of each training."""
    batch = min(128, ds.n_train)
    per_epoch = max(1, ds.n_train // batch)
    epochs = options.epochs if options.epochs is not None else DEFAULT_EPOCHS
    steps = max(1, round(epochs * per_epoch))
    if options.quick:
        steps = min(steps, 4)
    if options.max_steps is not None:
        steps = min(steps, options.max_steps)
    every = max(1, steps // CHECKPOINTS)
    return steps, every, QUICK_FISHER_BATCH if options.quick else FISHER_BATCH


def _layer_row(preset: str, info: LayerInfo, fisher_batch: int) -> dict[str, Any]:
    kh, kw = info.kernel
    t = info.positions or 1
    return {
        "preset": preset,
        "layer": info.name,
        "C_in": info.in_channels,
        "C_out": info.out_channels,
        "kernel": f"{kh}×{kw}",
        "T": t,
        "weights": info.n_params,
        "route": product_route(t, info.da, info.dg),
        "m": fisher_batch,
    }


def _measure_preset(options: StudyOptions, ds: Dataset, preset: str, log) -> pd.DataFrame:
    steps, every, fisher_batch = _schedule(options, ds)
    frames = []
    for seed in options.seeds:
        model = build_model(preset, input_dim=ds.input_dim, loss=ds.loss, seed=seed)
        layers = [info for info in describe_layers(model) if info.kind == "conv2d"]
        if options.layers:
            layers = [
                i for i in layers if i.name in options.layers or str(i.number) in options.layers
            ]
        if not layers:
            raise ValueError(
                f"no convolutional layer of {preset} matches --layers {','.join(options.layers)}"
            )
        config = RunConfig.from_settings(
            ds.name, "kfac", preset=preset, steps=steps, seed=seed, eval_every=steps,
            fisher_batch=fisher_batch, quality_layer=layers[0].name, quality_methods=(),
            quality_every=every, lr=options.lrs.get("kfac", options.lrs.get("*")),
            damping=options.dampings.get("kfac", options.dampings.get("*")),
            device=options.device,
        )  # fmt: skip
        run = _ConvLayersRun(config, dataset=ds, model=model, layers=layers)
        run.run()
        if run.status not in ("finished", "stopped"):
            raise ValueError(f"{preset} seed {seed}: the KFAC training {run.status}: {run.message}")
        log(f"{preset} seed {seed}: {len(run.measured)} measures over {steps} steps")
        shapes = pd.DataFrame([_layer_row(preset, info, fisher_batch) for info in layers])
        frame = pd.DataFrame(run.measured).merge(shapes, on="layer")
        frames.append(frame.assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def _mean_sd(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return ""
    sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return f"{values.mean():.4f}" + ("" if math.isnan(sd) else f" ± {sd:.4f}")


def quality_table(records: pd.DataFrame) -> pd.DataFrame:
    """The "approximation quality on conv layers" table: per preset, layer and method, the
    mean (± sd over checkpoints and seeds) relative error and cosine, and the mean spectrum
    error."""
    keys = ["preset", "layer", "C_in", "C_out", "kernel", "T", "route", "method"]
    rows = []
    for key, part in records.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        row["method"] = method_label(str(row["method"]))
        rows.append(
            {
                **row,
                "relative error": _mean_sd(part["relative_error"]),
                "spectrum error": f"{part['spectrum_error'].mean():.4f}",
                "NG cosine": _mean_sd(part["ng_cosine"]),
                "points": len(part),
            }
        )
    return pd.DataFrame(rows)


def _layer_means(records: pd.DataFrame) -> pd.DataFrame:
    return records.groupby(["preset", "layer", "method"], sort=False)[
        ["relative_error", "ng_cosine"]
    ].mean()


def _fit_verdict(means: pd.DataFrame, better: tuple[str, ...], than: str, claim: str) -> dict:
    wins, lines = 0, []
    layers = list(dict.fromkeys((preset, layer) for preset, layer, _ in means.index))
    for preset, layer in layers:
        part = means.loc[(preset, layer)]["relative_error"]
        best = min(better, key=lambda m: part[m])
        won = all(part[m] < part[than] for m in better)
        wins += won
        if len(better) == 1:
            lines.append(
                f"{preset} {layer}: {method_label(best)} {part[best]:.4f} vs "
                f"{method_label(than)} {part[than]:.4f}"
            )
        else:
            lines.append(
                f"{preset} {layer}: {method_label(than)} {part[than]:.4f}, "
                f"{'every one' if won else 'not every one'} lower (best {method_label(best)} "
                f"{part[best]:.4f})"
            )
    verdict = "holds" if wins == len(layers) else "does not hold" if wins == 0 else "mixed"
    return {
        "claim": claim,
        "criterion": "mean relative Frobenius error lower on every conv layer",
        "verdict": verdict,
        "detail": f"{wins} of {len(layers)} layers; " + "; ".join(lines),
    }


def _direction_verdict(records: pd.DataFrame) -> dict:
    rhos = []
    for _, part in records.groupby(["preset", "seed", "step", "layer"]):
        if part["relative_error"].nunique() > 1 and part["ng_cosine"].nunique() > 1:
            rho = spearmanr(part["relative_error"], part["ng_cosine"]).statistic
            if np.isfinite(rho):
                rhos.append(float(rho))
    if not rhos:
        verdict, detail = "not measured", "no checkpoint with distinct errors and cosines"
    else:
        mean = float(np.mean(rhos))
        verdict = "holds" if mean <= -0.5 else "does not hold" if mean >= -0.2 else "mixed"
        detail = (
            f"mean Spearman ρ(error, cosine) = {mean:.2f} over {len(rhos)} checkpoints × layers "
            f"(range {min(rhos):.2f} to {max(rhos):.2f}); −1 would mean the fit ranks the "
            "directions exactly"
        )
    return {
        "claim": "a better Frobenius fit gives a better natural-gradient direction on conv layers",
        "criterion": "mean ρ ≤ −0.5 holds, ≥ −0.2 does not hold",
        "verdict": verdict,
        "detail": detail,
    }


def verdicts(records: pd.DataFrame) -> pd.DataFrame:
    """The study's verdicts from its records (see the module docstring)."""
    means = _layer_means(records)
    rows = [
        _fit_verdict(
            means, FAMILY, "kfac", "the KPSVD family fits conv blocks better than KFAC-expand"
        ),
        _fit_verdict(
            means,
            FAMILY,
            "kfac_reduce",
            "the KPSVD family fits conv blocks better than KFAC-reduce",
        ),
        _fit_verdict(means, ("kfac",), "kfac_reduce", "KFAC-expand fits better than KFAC-reduce"),
        _direction_verdict(records),
    ]
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def _figure(records: pd.DataFrame, column: str, title: str) -> go.Figure:
    means = records.groupby(["preset", "layer", "method"], sort=False)[column].mean().reset_index()
    x = [f"{p} {layer}" for p, layer in dict.fromkeys(zip(means["preset"], means["layer"]))]
    fig = go.Figure()
    for method in METHODS:
        part = means[means["method"] == method]
        fig.add_trace(
            go.Bar(
                name=method_label(method),
                x=[f"{p} {layer}" for p, layer in zip(part["preset"], part["layer"])],
                y=part[column],
            )
        )
    fig.update_layout(
        title=title, barmode="group", xaxis={"categoryorder": "array", "categoryarray": x},
        yaxis_title=column.replace("_", " "), template="plotly_white", height=420,
    )  # fmt: skip
    return fig


def run(options: StudyOptions, *, log: Callable[[str], None]) -> StudyResult:
    """The ``conv`` study (module docstring)."""
    ds = load_dataset(
        options.dataset, path=options.data_path, seed=0, n_train=options.n_train,
        n_test=options.n_test,
    )  # fmt: skip
    available = conv_presets(options.dataset, labelled=ds.n_classes is not None)
    if options.preset is not None:
        if options.preset not in available:
            raise ValueError(
                f"--preset {options.preset} is not a convolutional preset for {options.dataset}"
                f"{' with its labels' if ds.n_classes is None else ''}; choose from "
                f"{', '.join(available) or 'none'}"
            )
        presets = [options.preset]
    else:
        presets = available
    if not presets:
        raise ValueError(f"no convolutional preset fits the dataset {options.dataset}")
    records = pd.concat([_measure_preset(options, ds, p, log) for p in presets], ignore_index=True)
    steps, every, fisher_batch = _schedule(options, ds)
    notes = [
        "Each method is measured against the exact block on the same captured minibatch "
        "(true Fisher). The KPSVD family fits the symmetric block of ℛ(F) (its skew block has "
        "no usable Kronecker product); KFAC is KFAC-expand, KFAC-reduce the reduce variant.",
        "route: how the engine applies ℛ(F) for this layer (core/engine/shared_batch.py "
        "product_route): 'positions' costs m·[T(da² + dg²) + T²(da + dg)] and grows like T², "
        "'gradients' forms D_n = Γ_nᵀA_n once (m·da·dg·(da + dg), whatever T).",
    ]
    if options.quick:
        notes.append("Quick version (--quick): a few steps and a small Fisher batch, for checks.")
    return StudyResult(
        title=f"Approximation quality on convolutional layers ({options.dataset})",
        verdicts=verdicts(records),
        tables={
            "Approximation quality on conv layers": quality_table(records),
            "Records (every checkpoint, layer, method, seed)": records,
        },
        figures=[
            _figure(records, "relative_error", "Relative Frobenius error (mean), per conv layer"),
            _figure(records, "ng_cosine", "Natural-gradient cosine (mean), per conv layer"),
        ],
        settings={
            "presets": presets,
            "trainer": "kfac",
            "damping": {p: default_damping("kfac", p) for p in presets},
            "steps": steps,
            "quality_every": every,
            "fisher_batch": fisher_batch,
            "fisher": "true",
            "methods": list(METHODS),
        },
        notes=notes,
    )
