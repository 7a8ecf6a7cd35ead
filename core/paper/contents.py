"""What a reproduction's report shows, made from its settings and results table: the title,
the verdicts (:mod:`core.paper.verdicts`), the per-layer claims, the summary (mean ± sd over
seeds), the settings as (setting, value) rows, the figures (mean ± sd bands), the notes
(rules, rerun command, deviations, skipped measures, KFAC's scale overshoot), and
:func:`write_report_html` (the self-contained ``report.html``). :class:`Reproduction` is one
report with all of it made once, as the app's "Paper reproductions" page shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..engine.methods import METHODS
from ..views.report import mean_sd_figure, write_html_report
from .verdicts import final_losses, mean_sd, per_layer_claims, runs_by_seed, shown, verdicts

__all__ = [
    "Reproduction",
    "overshoot_notes",
    "report_figures",
    "report_title",
    "settings_table",
    "summary_table",
    "write_report_html",
]


def summary_table(settings: dict, df: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer (training) or per layer and method (quality), mean ± sd over seeds."""
    rows = []
    if settings.get("experiment") == "quality":
        for layer, part in df.groupby("layer", sort=False):
            for method in METHODS:
                cols = [f"rel_error_{method}", f"spectrum_error_{method}"]
                if not all(c in part for c in cols):
                    continue
                rel, spec = (pd.to_numeric(part[c], errors="coerce").dropna() for c in cols)
                rows.append(
                    {
                        "layer": layer,
                        "method": method,
                        "relative Frobenius error (mean)": float(rel.mean()),
                        "spectrum error (mean)": float(spec.mean()),
                        "points": int(len(rel)),
                    }
                )
        return pd.DataFrame(rows)
    steps = settings.get("steps")
    budget_s = settings.get("time_budget_s")
    for name in dict.fromkeys(df["optimizer"]):
        runs = runs_by_seed(df, name)
        loss = final_losses(df, name, steps=steps)
        at_budget = final_losses(df, name, until=budget_s) if budget_s else {}
        times = [
            float(p["wall_time_s"][pd.to_numeric(p["step"]) < (steps or len(p))].max())
            for p in runs.values()
        ]
        tests = [
            float(pd.to_numeric(p["test_loss"], errors="coerce").dropna().iloc[-1])
            for p in runs.values()
            if pd.to_numeric(p["test_loss"], errors="coerce").notna().any()
        ]
        statuses = sorted({str(s) for p in runs.values() for s in p["status"].unique()})
        rows.append(
            {
                "optimizer": name,
                "final train loss": shown(*mean_sd(loss.values()), len(loss)),
                **(
                    {
                        f"train loss at {budget_s:.3g} s": shown(
                            *mean_sd(at_budget.values()), len(at_budget)
                        )
                    }
                    if budget_s
                    else {}
                ),
                "last test loss": shown(*mean_sd(tests), len(tests)) if tests else "",
                "time for the epochs (s)": shown(*mean_sd(times), len(times)),
                "status": ", ".join(statuses),
            }
        )
    return pd.DataFrame(rows)


def report_figures(settings: dict, df: pd.DataFrame) -> list:
    """The report's figures, rebuilt from ``results.csv`` (mean ± sd bands over seeds)."""
    if settings.get("experiment") == "quality":
        figures = []
        for layer, part in df.groupby("layer", sort=False):
            for kind, label in (
                ("rel_error", "Relative Frobenius error"),
                ("spectrum_error", "Spectrum error"),
            ):
                cols = [c for c in part.columns if c.startswith(f"{kind}_")]
                long = part.melt(
                    id_vars=["seed", "step"], value_vars=cols, var_name="method", value_name="error"
                ).dropna(subset=["error"])
                long["method"] = long["method"].str.slice(len(kind) + 1)
                figures.append(
                    mean_sd_figure(
                        long,
                        x="step",
                        y="error",
                        group="method",
                        title=f"{label} over training, {layer}",
                        y_title=label.lower(),
                    )
                )
        return figures
    per_epoch = int(settings.get("steps_per_epoch") or 1)
    smooth = max(1, min(per_epoch, 50))
    return [
        mean_sd_figure(
            df,
            x=x,
            y="train_loss",
            group="optimizer",
            smooth=smooth,
            title=f"Training loss against {title} (mean ± sd over seeds)",
            y_title="training loss (mean per-sample NLL)",
        )
        for x, title in (("epoch", "epoch"), ("wall_time_s", "wall time"))
    ]


def report_title(settings: dict) -> str:
    """The report's title: which experiment, on which dataset."""
    what = "approximation quality" if settings["experiment"] == "quality" else "training"
    return f"Paper reproduction: {what} on {settings.get('dataset_label', settings['dataset'])}"


def settings_table(settings: dict) -> pd.DataFrame:
    """``settings.json`` flattened to (setting, value) rows of text (runs left out)."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows.append((prefix, "; ".join(json.dumps(v, ensure_ascii=False) for v in value)))
        elif isinstance(value, list):
            rows.append((prefix, ", ".join(map(str, value))))
        else:
            rows.append((prefix, "" if value is None else str(value)))

    walk("", {k: v for k, v in settings.items() if k != "runs"})
    return pd.DataFrame(rows, columns=["setting", "value"])


def overshoot_notes(df: pd.DataFrame) -> list[str]:
    """One sentence per layer where KFAC's relative Frobenius error exceeds 1. That is genuine,
    not a bug: ``‖F − A⊗G‖ > ‖F‖`` exactly when ``‖A⊗G‖² > 2⟨F, A⊗G⟩``, which happens when the
    sizes of ``ā`` and ``g`` anti-correlate across samples (``A⊗G`` pairs one sample's large
    input with another's large gradient, products ``F`` never contains)."""
    if "rel_error_kfac" not in df or "layer" not in df:
        return []
    notes = []
    for layer, part in df.groupby("layer", sort=False):
        errors = pd.to_numeric(part["rel_error_kfac"], errors="coerce")
        over = part[errors > 1]
        if len(over):
            steps = ", ".join(str(s) for s in sorted(set(over["step"]))[:10])
            notes.append(
                f"KFAC's A ⊗ G overshoots F in scale here (error > 1): layer {layer}, "
                f"step(s) {steps}, largest error {errors.max():.3g}"
            )
    return notes


def _notes(settings: dict, df: pd.DataFrame) -> list[str]:
    """The report's notes: the verdict rule, how to rerun, deviations, skipped measures and
    where KFAC overshoots."""
    rules = settings["rules"]["quality" if settings["experiment"] == "quality" else "training"]
    return [
        rules,
        *(
            [
                f"To rerun: {settings['command']} — paths shown by their last part; "
                "--data-path names a folder (or file) holding the data files listed in the "
                "settings (name, size, SHA-256), and rerun.json next to this report keeps "
                "the command exactly as given"
            ]
            if settings.get("command")
            else []
        ),
        *(f"Deviation — {d}" for d in settings.get("deviations", [])),
        *(f"Skipped — {n}" for n in (settings.get("quality") or {}).get("skipped", [])),
        *overshoot_notes(df),
    ]


def write_report_html(path: Path, settings: dict, df: pd.DataFrame, table: pd.DataFrame) -> None:
    """Write the self-contained ``report.html`` of a reproduction to ``path``: figures, the
    verdict ``table``, per-layer claims (quality), summary, settings and notes."""
    write_html_report(
        path,
        title=report_title(settings),
        figures=report_figures(settings, df),
        tables=[
            ("Verdicts", table),
            *(
                [("Per layer: where each claim holds", per_layer_claims(df))]
                if settings["experiment"] == "quality"
                else []
            ),
            ("Summary", summary_table(settings, df)),
            ("Settings", settings_table(settings)),
        ],
        notes=_notes(settings, df),
    )


@dataclass(frozen=True, eq=False)
class Reproduction:
    """One results folder read back and checked, with everything the page shows made once
    (:meth:`build`). One instance serves every visitor until a file of the folder changes, so
    nothing may modify it."""

    name: str
    settings: dict
    results: pd.DataFrame
    title: str
    rule: str  # the verdict rule of its experiment, as written in the settings ("" if none)
    verdicts: pd.DataFrame
    summary: pd.DataFrame
    figures: list
    settings_table: pd.DataFrame

    @classmethod
    def build(cls, name: str, settings: dict, results: pd.DataFrame) -> Reproduction:
        """The report ``name`` from its checked settings and results (see
        :func:`core.paper.files.load_report`)."""
        return cls(
            name=name,
            settings=settings,
            results=results,
            title=report_title(settings),
            rule=settings.get("rules", {}).get(settings["experiment"], ""),
            verdicts=verdicts(settings, results),
            summary=summary_table(settings, results),
            figures=report_figures(settings, results),
            settings_table=settings_table(settings),
        )
