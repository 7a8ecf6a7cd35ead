"""The verdicts: whether a reproduction's results support each claim of the paper
(:mod:`core.paper.spec`), by rules fixed in advance; each verdict row carries the numbers that
decide it.

* training, "at equal epochs": per run (optimizer, seed) the final training loss is the mean
  minibatch loss over the last epoch of steps (at least one step); a run that diverged scores
  +inf. Across seeds: mean ± sd (ddof 1). Method X trains faster than baseline B when
  ``mean_X + sd_X < mean_B − sd_B`` (one-sd intervals apart): **reproduced**; otherwise **not
  reproduced** (the detail says whether B was lower or the two are within the seed spread).
  **Not testable here** when X or B was not run, or with fewer than two seeds (no spread).
* training, "at equal wall time": the same rule on the training loss at the time budget T
  every run was given: each run trains its epochs and then on until its training time reaches
  T (:mod:`core.paper.runner`), so every optimizer, fast or slow, has had T seconds. T is given
  (``--time-budget-s S``) or, by default (``auto``), the longest time any optimizer needed for
  the epochs on the first seed (the faster runs of that seed are rerun to T). Per run: the mean
  minibatch loss over the last epoch of steps that ended by T; a run that diverged before T
  scores +inf. With ``--time-budget-s off`` the runs stop at their epochs and T is the
  shortest total training time among the finished runs of X and B. The equal-epochs verdict
  reads only the steps of the epochs asked for, however long a run went on.
* quality: at every tracked (step, seed) point of a layer, X's error is compared with KFAC's on
  the same Fisher minibatch; **reproduced** when X is lower at ≥ 90 % of the points
  (:data:`QUALITY_SHARE`), **not reproduced** otherwise (the detail gives the share and the
  mean errors); **not testable here** when X or KFAC was not tracked. :func:`per_layer_claims`
  says, layer by layer, where each claim holds.

:data:`TRAINING_RULE` and :data:`QUALITY_RULE` state the rules in the words every
``settings.json`` and report carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import pandas as pd

from ..engine.methods import KPSVD_FAMILY
from .spec import BASELINES

__all__ = [
    "QUALITY_RULE",
    "QUALITY_SHARE",
    "TRAINING_RULE",
    "final_losses",
    "mean_sd",
    "per_layer_claims",
    "quality_verdicts",
    "runs_by_seed",
    "shown",
    "training_verdicts",
    "verdicts",
]

QUALITY_SHARE = 0.9
TRAINING_RULE = (
    "Training (each criterion): per run the mean minibatch training loss over its last epoch of "
    "steps (a diverged run: +inf); per optimizer mean ± sd over seeds; 'reproduced' when "
    "mean_X + sd_X < mean_B − sd_B; 'not testable here' with fewer than 2 seeds or a missing "
    "run. Equal wall time: the loss over the last epoch of steps ended by T: the time budget "
    "every run was given (--time-budget-s) when set, else the shortest total time among the "
    "finished runs of the pair."
)
QUALITY_RULE = (
    f"Quality: X's error against KFAC's at every tracked (step, seed) point of the layer; "
    f"'reproduced' when X is lower at ≥ {QUALITY_SHARE:.0%} of the points."
)


def _window_mean(part: pd.DataFrame, per_epoch: int) -> float:
    """Mean training loss over the last ``per_epoch`` rows of one run (rows by step)."""
    loss = pd.to_numeric(part["train_loss"], errors="coerce").tail(max(1, per_epoch))
    if loss.empty or not np.isfinite(loss.to_numpy(dtype=float)).all():
        return math.inf
    return float(loss.mean())


def _steps_per_epoch(part: pd.DataFrame) -> int:
    """From ``epoch = (step + 1) / steps_per_epoch`` (core.training.runner's records)."""
    last = part.iloc[-1]
    return max(1, round((float(last["step"]) + 1) / float(last["epoch"])))


def runs_by_seed(df: pd.DataFrame, name: str) -> dict[int, pd.DataFrame]:
    """Per seed: the rows of optimizer ``name``'s run, by step."""
    part = df[df["optimizer"] == name]
    return {int(cast(int, s)): p.sort_values("step") for s, p in part.groupby("seed", sort=True)}


def final_losses(
    df: pd.DataFrame, name: str, until: float | None = None, steps: int | None = None
) -> dict[int, float]:
    """Per seed: the final training loss of ``name``'s run — of its first ``steps`` records
    when given (the epochs asked for, though a time budget took it further) — or (``until`` =
    T) its training loss at wall time T. Record k holds the loss BEFORE step k's update and the
    time AFTER it, so after the j records that ended by T the parameters' loss is record j's:
    the window is the epoch of records ending at record j (record 0 alone: the initial loss)."""
    out = {}
    for seed, part in runs_by_seed(df, name).items():
        per_epoch = _steps_per_epoch(part)
        diverged = bool((part["status"] == "diverged").any())
        if until is None:
            if steps is not None:
                part = part[pd.to_numeric(part["step"]) < steps]
            out[seed] = math.inf if diverged else _window_mean(part, per_epoch)
            continue
        done = int((part["wall_time_s"] <= until + 1e-12).sum())
        if diverged and done + 1 >= len(part):  # it diverged by T
            out[seed] = math.inf
        else:
            out[seed] = _window_mean(part.iloc[: done + 1], per_epoch)
    return out


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sd with ddof 1; NaN for one value) of ``values``; (inf, NaN) when one is not
    finite (a diverged run)."""
    arr = np.asarray(list(values), dtype=float)
    if not np.isfinite(arr).all():
        return math.inf, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def shown(mean: float, sd: float, n: int) -> str:
    """``mean ± sd (n=…)`` as the verdict and summary tables show it."""
    if math.isinf(mean):
        return f"diverged (n={n})"
    return f"{mean:.4g} ± {sd:.2g} (n={n})" if not math.isnan(sd) else f"{mean:.4g} (n={n})"


def _compare(x: dict[int, float], b: dict[int, float], xname: str, bname: str) -> tuple:
    """(verdict, detail) for "x is lower than b" by the one-sd rule of the module docstring."""
    if not x or not b:
        missing = xname if not x else bname
        return "not testable here", f"{missing} was not run"
    if min(len(x), len(b)) < 2:
        return "not testable here", "fewer than 2 seeds: no spread to judge a difference by"
    (mx, sx), (mb, sb) = mean_sd(x.values()), mean_sd(b.values())
    if math.isinf(mx):
        return "not reproduced", f"{xname} diverged in at least one seed"
    if math.isinf(mb):
        return "reproduced", f"{bname} diverged in at least one seed, {xname} did not"
    if mx + sx < mb - sb:
        return "reproduced", f"{xname} lower by {mb - mx:.4g} (> sd sum {sx + sb:.2g})"
    if mb + sb < mx - sx:
        return "not reproduced", f"{bname} lower by {mx - mb:.4g} (> sd sum {sx + sb:.2g})"
    return (
        "not reproduced",
        f"within the seed spread (difference {mb - mx:+.4g}, sd sum {sx + sb:.2g})",
    )


def _common_time(df: pd.DataFrame, names: Sequence[str]) -> float | None:
    ends = [
        float(part["wall_time_s"].max())
        for name in names
        for part in runs_by_seed(df, name).values()
        if (part["status"] == "finished").all()
    ]
    return min(ends) if ends else None


def training_verdicts(
    df: pd.DataFrame, time_budget_s: float | None = None, steps: int | None = None
) -> pd.DataFrame:
    """Claim 2 per (KPSVD-family method, baseline, criterion) for the optimizers in ``df``
    (rows: ``optimizer``, ``seed``, ``status``, ``step``, ``epoch``, ``wall_time_s``,
    ``train_loss``); the rule is :data:`TRAINING_RULE`. The equal-epochs criterion reads each
    run's first ``steps`` records (all when ``None``). The wall-time criterion compares at
    ``time_budget_s`` when every optimizer had that budget, else at the shortest finished
    run's time; its detail says which."""
    present = list(dict.fromkeys(df["optimizer"]))
    family = [m for m in KPSVD_FAMILY if m in present] or ["kpsvd"]
    rows = []
    for method in family:
        for base in BASELINES:
            claim = f"{method} trains faster than {base}"
            for criterion in ("equal epochs", "equal wall time"):
                until = None
                if criterion == "equal wall time":
                    until = time_budget_s or _common_time(df, (method, base))
                    if until is None and method in present and base in present:
                        rows.append(
                            _row(
                                claim,
                                method,
                                base,
                                criterion,
                                {},
                                {},
                                "not testable here",
                                "no finished run to set a common time",
                            )
                        )
                        continue
                x = final_losses(df, method, until, steps) if method in present else {}
                b = final_losses(df, base, until, steps) if base in present else {}
                verdict, detail = _compare(x, b, method, base)
                if until is not None:
                    which = "the time budget" if time_budget_s else "the shortest run's time"
                    detail += f"; T = {until:.3g} s ({which})"
                rows.append(_row(claim, method, base, criterion, x, b, verdict, detail))
    return pd.DataFrame(rows)


def _row(claim, method, base, criterion, x, b, verdict, detail) -> dict:
    return {
        "claim": claim,
        "criterion": criterion,
        "method": shown(*mean_sd(x.values()), len(x)) if x else "not run",
        "baseline": shown(*mean_sd(b.values()), len(b)) if b else "not run",
        "verdict": verdict,
        "detail": detail,
    }


def quality_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Claim 1 per (layer, error kind, KPSVD-family method) against KFAC, for the error
    columns in ``df``; the rule is :data:`QUALITY_RULE`."""
    rows = []
    kinds = {"rel_error": "relative Frobenius error", "spectrum_error": "spectrum error"}
    for layer, part in df.groupby("layer", sort=False):
        for kind, label in kinds.items():
            base_col = f"{kind}_kfac"
            for method in KPSVD_FAMILY:
                col = f"{kind}_{method}"
                claim = f"{method} approximates F better than kfac ({label}, {layer})"
                if col not in part or base_col not in part:
                    missing = method if col not in part else "kfac"
                    rows.append(
                        _qrow(
                            claim,
                            "not run",
                            "not run",
                            "not testable here",
                            f"{missing} was not tracked",
                        )
                    )
                    continue
                both = part[[col, base_col]].apply(pd.to_numeric, errors="coerce").dropna()
                if both.empty:
                    rows.append(
                        _qrow(
                            claim, "no points", "no points", "not testable here", "no tracked step"
                        )
                    )
                    continue
                lower = float((both[col] < both[base_col]).mean())
                verdict = "reproduced" if lower >= QUALITY_SHARE else "not reproduced"
                rows.append(
                    _qrow(
                        claim,
                        f"{both[col].mean():.4g} (mean of {len(both)} points)",
                        f"{both[base_col].mean():.4g}",
                        verdict,
                        f"{method} lower at {lower:.0%} of the points",
                    )
                )
    return pd.DataFrame(rows)


def per_layer_claims(df: pd.DataFrame) -> pd.DataFrame:
    """Claim 1 as a table claim × layer: each cell says whether the claim holds on that layer
    (by :data:`QUALITY_RULE`), with the mean errors, the share of points where the method is
    lower, and the steps where it is not — where an advantage fades, not only whether."""
    kinds = {"rel_error": "relative Frobenius error", "spectrum_error": "spectrum error"}
    cells: dict[str, dict[str, str]] = {}
    for layer, part in df.groupby("layer", sort=False):
        for kind, label in kinds.items():
            for method in KPSVD_FAMILY:
                col, base_col = f"{kind}_{method}", f"{kind}_kfac"
                if col not in part or base_col not in part:
                    continue
                cols = part[["step", col, base_col]].apply(pd.to_numeric, errors="coerce")
                both = cols.dropna()
                if both.empty:
                    continue
                is_lower = both[col] < both[base_col]
                lower = float(is_lower.mean())
                holds = "holds" if lower >= QUALITY_SHARE else "does not hold"
                missed = sorted(set(both.loc[~is_lower, "step"].astype(int)))
                text = (
                    f"{holds}: {both[col].mean():.4g} vs kfac {both[base_col].mean():.4g}, "
                    f"lower at {lower:.0%}"
                )
                if missed:
                    shown = ", ".join(map(str, missed[:8])) + (" …" if len(missed) > 8 else "")
                    text += f" (not at step {shown})"
                claim = f"{method} approximates F better than kfac ({label})"
                cells.setdefault(claim, {})[str(layer)] = text
    table = pd.DataFrame.from_dict(cells, orient="index").fillna("not measured")
    return table.rename_axis("claim").reset_index()


def _qrow(claim, method, base, verdict, detail) -> dict:
    return {
        "claim": claim,
        "criterion": "every tracked step",
        "method": method,
        "baseline": base,
        "verdict": verdict,
        "detail": detail,
    }


def verdicts(settings: dict, df: pd.DataFrame) -> pd.DataFrame:
    """The verdict table of a reproduction (by its experiment)."""
    if settings.get("experiment") == "quality":
        return quality_verdicts(df)
    return training_verdicts(df, settings.get("time_budget_s"), settings.get("steps"))
