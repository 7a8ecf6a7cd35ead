"""The ``step`` experiment's verdict and report (issue 21), and its command line:

    python -m core.paper.step_report --preset curves-small --out bench/RESULTS-step.md

Verdict: for every measure of :mod:`core.paper.step`, Spearman's rank correlation ρ between the
methods' values of the measure at one checkpoint (one seed, one layer; the look-ahead per
model) and the methods' training losses (:func:`core.paper.step.training_losses`, mean over the
training seeds, at each method's tuned damping). Every measure is oriented so that lower means
"should train better" (errors as they are; cosines and loss decreases negated; the norm ratio
as |log ratio|), so ρ = +1 means the measure ranks the methods exactly as training does, ρ = 0
that it says nothing. ρ is computed over the approximations only and again with the exact
block, whose every fidelity measure is perfect. How the answer moves with λ: the step errors
at each training damping against the training ranking at that damping.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ..engine.methods import EXACT, SHOWN
from ..views.labels import method_label
from .step import StepSpec, training_losses, trajectory_records

__all__ = ["MEASURES", "rank_correlations", "damping_correlations", "report", "main"]

#: measure → (what the report calls it, how it is oriented: lower "should train better").
MEASURES: dict[str, tuple[str, str]] = {
    "relative_error": ("relative Frobenius error", "value"),
    "spectrum_error": ("spectrum error", "value"),
    "step_error": ("step error, optimizer's damping", "value"),
    "step_cosine": ("step cosine, optimizer's damping", "negated"),
    "step_norm_ratio": ("step norm ratio, optimizer's damping", "|log|"),
    "exact_step_error": ("step error, exact damping", "value"),
    "exact_step_cosine": ("step cosine, exact damping", "negated"),
    "decrease_same": ("look-ahead loss decrease, same batch", "negated"),
    "decrease_held": ("look-ahead loss decrease, held-out batch", "negated"),
}
_PER_MODEL = ("decrease_same", "decrease_held")  # one value per model, not per layer


def _oriented(values: pd.Series, how: str) -> pd.Series:
    if how == "negated":
        return -values
    if how == "|log|":
        return np.log(values).abs()
    return values


def tuned_losses(losses: pd.DataFrame, records: pd.DataFrame) -> pd.Series:
    """Method → mean training loss over the training seeds at the method's tuned damping (the
    damping its records were measured with)."""
    tuned = records.groupby("method")["damping"].first()
    rows = losses[losses["damping"] == losses["method"].map(tuned)]
    return rows.groupby("method")["train_loss"].mean()


def _rho(x: pd.Series, y: pd.Series) -> float:
    keep = x.notna() & y.notna() & np.isfinite(y)
    if keep.sum() < 3 or x[keep].nunique() < 2:
        return math.nan
    return float(spearmanr(x[keep], y[keep]).statistic)


def _group_rhos(frame: pd.DataFrame, column: str, loss: pd.Series, keys: list[str]) -> list[float]:
    rhos = []
    for _, group in frame.groupby(keys):
        by_method = group.set_index("method")[column]
        rhos.append(_rho(by_method, loss.reindex(by_method.index)))
    return [r for r in rhos if math.isfinite(r)]


def rank_correlations(records: pd.DataFrame, loss: pd.Series) -> pd.DataFrame:
    """Per measure: mean, sd and count of Spearman ρ over checkpoints, with and without the exact
    block (see the module docstring)."""
    rows = []
    for measure, (name, how) in MEASURES.items():
        frame = records.assign(score=_oriented(records[measure], how))
        keys = ["seed", "step"] if measure in _PER_MODEL else ["seed", "step", "layer"]
        if measure in _PER_MODEL:
            frame = frame.drop_duplicates(["seed", "step", "method"])
        row: dict[str, object] = {"measure": name}
        for label, part in (
            ("approximations", frame[~frame["method"].isin(EXACT)]),
            ("with exact", frame),
        ):
            rhos = _group_rhos(part, "score", loss, keys)
            row[f"rho {label}"] = float(np.mean(rhos)) if rhos else math.nan
            row[f"sd {label}"] = float(np.std(rhos)) if rhos else math.nan
            row[f"n {label}"] = len(rhos)
        rows.append(row)
    return pd.DataFrame(rows)


def damping_correlations(records: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """Per training damping λ that the sweep also measured: the training ranking at λ and the
    mean ρ of the factored and exact step errors at λ with it (approximations only)."""
    rows = []
    approx = records[~records["method"].isin(EXACT)]
    for lam, part in losses.groupby("damping"):
        column = f"error_factored@{lam:g}"
        if column not in records:
            continue
        loss = part.groupby("method")["train_loss"].mean()
        row: dict[str, object] = {"damping": lam, "ranking": _ranking(loss)}
        for mode in ("factored", "exact"):
            rhos = _group_rhos(approx, f"error_{mode}@{lam:g}", loss, ["seed", "step", "layer"])
            row[f"rho {mode}"] = float(np.mean(rhos)) if rhos else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _ranking(loss: pd.Series) -> str:
    ordered = loss.sort_values()
    return " < ".join(f"{method_label(str(m))} {v:.2f}" for m, v in ordered.items())


def method_means(records: pd.DataFrame, loss: pd.Series) -> pd.DataFrame:
    """Each method's measures averaged over every checkpoint and layer, with its training loss."""
    columns = list(MEASURES)
    means = records.groupby("method", sort=False)[columns].mean()
    means.insert(0, "train loss", loss.reindex(means.index))
    return means.sort_values("train loss")


def sweep_means(records: pd.DataFrame, dampings: Sequence[float]) -> pd.DataFrame:
    """Each method's step error at every swept λ, mean over checkpoints and layers, both modes."""
    columns = [f"error_{mode}@{lam:g}" for mode in ("factored", "exact") for lam in dampings]
    return records.groupby("method", sort=False)[columns].mean()


def training_table(losses: pd.DataFrame) -> pd.DataFrame:
    """Training loss per method (rows) and damping (columns): mean ± sd over the seeds."""
    cells = losses.groupby(["method", "damping"], sort=False)["train_loss"].agg(["mean", "std"])
    text = cells.apply(
        lambda r: f"{r['mean']:.2f} ± {0.0 if pd.isna(r['std']) else r['std']:.2f}", axis=1
    )
    table = text.unstack("damping")
    table.columns = [f"λ = {lam:g}" for lam in table.columns]
    table.index.name = "method"
    return table


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table of ``frame`` (index included), numbers to ``digits`` decimals."""
    frame = frame.reset_index() if frame.index.name is not None else frame
    if "method" in frame:
        frame = frame.assign(method=frame["method"].map(method_label))
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body])


def report(
    spec: StepSpec,
    records: pd.DataFrame,
    losses: pd.DataFrame,
    *,
    command: str,
    seconds: float,
    load: tuple[str, str],
) -> str:
    """The markdown report: setup, the rank correlations, the λ dependence, the data."""
    loss = tuned_losses(losses, records)
    rhos = rank_correlations(records, loss)
    by_damping = damping_correlations(records, losses)
    lines = [
        f"# What predicts training speed: the step experiment ({spec.preset})",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} — {platform.machine()},"
        f" {os.cpu_count()} CPU cores shared with other jobs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {seconds / 60:.1f} min. Load average at the "
        f"start: {load[0]}; at the end: {load[1]}.",
        "",
        _setup(spec),
        "",
        "## Rank correlation with the training ranking (tuned damping)",
        "",
        "Spearman ρ between a measure's ranking of the methods at one checkpoint (seed, step, "
        "layer; the look-ahead per model) and their ranking by training loss; mean ± sd over "
        "checkpoints. ρ = +1: the measure orders the methods exactly as training does.",
        "",
        _table(rhos.set_index("measure"), 2),
        "",
        "## How the answer moves with λ",
        "",
        "Training ranking (mean training loss) at each damping, and mean ρ of the step error at "
        "that λ with it (approximations only).",
        "",
        _table(by_damping.set_index("damping"), 2),
        "",
        "Training loss (full training set) after the training runs, mean ± sd over seeds:",
        "",
        _table(training_table(losses)),
        "",
        "## Each method's measures (mean over checkpoints and layers)",
        "",
        _table(method_means(records, loss)),
        "",
        "Step error ‖x̃ − x‖/‖x‖ against λ (mean over checkpoints and layers): factored damping "
        "(the optimizers') and exact damping.",
        "",
        _table(sweep_means(records, spec.dampings)),
    ]
    return "\n".join(lines) + "\n"


def _setup(spec: StepSpec) -> str:
    return (
        f"Setup: preset `{spec.preset}`; trajectory: `{spec.trainer}` with its tuned lr and "
        f"damping (run defaults: T_cov = T_inv = 10, factor EMA 0.95, KL-clip 1e-2, momentum "
        f"0.9) for {spec.epochs:g} epochs, seeds {list(spec.seeds)}, measured at "
        f"{spec.checkpoints} evenly spaced checkpoints (the first at initialisation), every "
        f"linear layer, methods {', '.join(spec.methods)}. Each block: the true Fisher on "
        f"{spec.fisher_batch} training images (the current block, not the optimizer's EMA); "
        f"V: the loss gradient of a {spec.batch}-image training minibatch; the look-ahead "
        f"moves a copy of the model by −lr·ν·x̃ (each method's tuned lr and damping, KL-clip "
        f"1e-2, no momentum) and records the loss decrease on that minibatch and on "
        f"{spec.held_batch} test images. Training ranking: each method's optimizer for "
        f"{spec.train_epochs:g} epochs, seeds {list(spec.train_seeds)}, its tuned lr, at λ ∈ "
        f"{list(spec.train_dampings)}; full training-set loss. Exact damping of two-term sums "
        f"skipped above {spec.exact_limit:,} weights."
    )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.paper.step_report", description=__doc__)
    p.add_argument("--preset", default="curves-small")
    p.add_argument("--epochs", type=float, default=4.0, help="trajectory epochs")
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--seeds", type=_ints, default=(0,), help="trajectory seeds, e.g. 0,1")
    p.add_argument("--methods", help="comma-separated (default: the exact block and every method)")
    p.add_argument("--dampings", type=_floats, default=(1e-3, 1e-2, 1e-1, 1.0, 10.0))
    p.add_argument("--train-epochs", type=float, default=10.0)
    p.add_argument("--train-seeds", type=_ints, default=(1, 2))
    p.add_argument("--train-dampings", type=_floats, default=(1e-2, 1e-1, 1.0))
    p.add_argument("--fisher-batch", type=int, default=256)
    p.add_argument("--n-train", type=int, help="train on N images only")
    p.add_argument("--exact-limit", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the runs train (cpu, cuda)")
    p.add_argument("--out", type=Path, required=True, help="the markdown report")
    p.add_argument("--csv", type=Path, help="the records (default: next to --out)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = SHOWN if args.methods is None else tuple(args.methods.split(","))
    spec = StepSpec(
        preset=args.preset, epochs=args.epochs, checkpoints=args.checkpoints, seeds=args.seeds,
        dampings=args.dampings, train_epochs=args.train_epochs, train_seeds=args.train_seeds,
        train_dampings=args.train_dampings, fisher_batch=args.fisher_batch,
        n_train=args.n_train, exact_limit=args.exact_limit, methods=methods, device=args.device,
    )  # fmt: skip
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    began = time.perf_counter()
    dataset = spec.load()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    records = pd.DataFrame(
        [r for seed in spec.seeds for r in trajectory_records(spec, dataset, seed, log)]
    )
    losses = pd.DataFrame(training_losses(spec, dataset, log))
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python -m core.paper.step_report " + shlex.join(argv)
    text = report(
        spec, records, losses, command=command, seconds=time.perf_counter() - began,
        load=(load_start, load_end),
    )  # fmt: skip
    args.out.write_text(text)
    csv = args.csv or args.out.with_suffix(".csv")
    records.to_csv(csv, index=False)
    losses.to_csv(csv.with_name(csv.stem + "-training.csv"), index=False)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
