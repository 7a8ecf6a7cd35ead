"""Studies beyond the seed paper's two experiments: the questions its follow-up work asks, run
by ``python -m core reproduce --experiment NAME`` like the paper's own experiments, each with
verdicts, tables, figures and a self-contained report.

A study is a module (named in :data:`STUDIES`) with one function::

    run(options: StudyOptions, *, log: Callable[[str], None]) -> StudyResult

It reads only its :class:`StudyOptions`, checks them itself (a ``ValueError`` naming the bad
option and the choices), and returns everything the report shows; :func:`write_study` writes
it. Studies are imported on demand, so a study's cost is paid only when it runs.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..views.report import write_html_report

__all__ = [
    "STUDIES",
    "VERDICT_COLUMNS",
    "StudyOptions",
    "StudyResult",
    "run_study",
    "write_study",
]

#: study name → (module, one line on the question it answers). The names are the CLI's
#: ``--experiment`` values: keep them stable (results folders and docs cite them).
STUDIES: dict[str, tuple[str, str]] = {
    "conv": (
        "core.paper.study_conv",
        "approximation quality on convolutional layers: KFAC expand/reduce vs the KPSVD family",
    ),
    "compress": (
        "core.paper.study_downstream",
        "Fisher-weighted low-rank compression: does a better approximation compress better?",
    ),
    "prune": (
        "core.paper.study_downstream",
        "optimal-brain-surgeon pruning: does a better approximation prune better?",
    ),
    "two_level": (
        "core.paper.study_two_level",
        "two-level KFAC (Koroko et al. 2023): does a coarse correction gain over KFAC?",
    ),
    "step": (
        "core.paper.study_step",
        "which measure of an approximation ranks methods the way training does?",
    ),
}

#: The columns of :attr:`StudyResult.verdicts` (the paper's experiments use the same ones).
VERDICT_COLUMNS = ("claim", "criterion", "verdict", "detail")


@dataclass(frozen=True)
class StudyOptions:
    """What the command line gives a study. ``None``/empty: the study's own default.
    ``dataset``: a name of :data:`core.training.datasets.DATASET_SPECS`; ``preset``: a model
    preset (:data:`core.training.models.PRESETS`); ``seeds``, ``epochs``, ``n_train``,
    ``n_test``, ``max_steps``: as for the paper's experiments; ``layers``: names or numbers
    from 1; ``optimizers``/``methods``: registry names; ``lrs``/``dampings``: per-optimizer
    overrides (key ``"*"``: all); ``quick``: a small version for tests and smoke runs (the
    report says so)."""

    name: str
    dataset: str
    preset: str | None = None
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    max_steps: int | None = None
    layers: tuple[str, ...] = ()
    optimizers: tuple[str, ...] = ()
    lrs: dict[str, float] = field(default_factory=dict)
    dampings: dict[str, float] = field(default_factory=dict)
    data_path: str | None = None
    device: str | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if self.name not in STUDIES:
            raise ValueError(f"unknown study {self.name!r}; choose from {', '.join(STUDIES)}")
        if self.epochs is not None and not (
            isinstance(self.epochs, int | float) and math.isfinite(self.epochs) and self.epochs > 0
        ):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs!r}")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds must be distinct integers ≥ 0, got {list(self.seeds)}")


@dataclass
class StudyResult:
    """What a study found. ``verdicts``: one row per claim with :data:`VERDICT_COLUMNS`
    (verdict one of "holds", "does not hold", "mixed", "not measured"); ``tables``: caption →
    table (the first is the main results, written as results.csv); ``figures``: plotly
    figures; ``settings``: every setting that decides a number (JSON-serialisable); ``notes``:
    plain sentences (deviations, what was skipped and why, how to read the figures)."""

    title: str
    verdicts: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    figures: list[Any] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in VERDICT_COLUMNS if c not in self.verdicts.columns]
        if missing:
            raise ValueError(f"a study's verdicts lack the column(s) {', '.join(missing)}")
        if not self.tables:
            raise ValueError("a study returns at least one table (its results)")


def run_study(options: StudyOptions, *, log: Callable[[str], None] = lambda _text: None):
    """Import the study ``options.name`` and run it."""
    module = importlib.import_module(STUDIES[options.name][0])
    result = module.run(options, log=log)
    if not isinstance(result, StudyResult):
        raise TypeError(f"study {options.name} returned {type(result).__name__}, not StudyResult")
    return result


def _slug(caption: str) -> str:
    word = "".join(ch if ch.isalnum() else "_" for ch in caption.lower()).strip("_")
    return "_".join(filter(None, word.split("_")))[:60] or "table"


def write_study(out: str | Path, options: StudyOptions, result: StudyResult, command: str) -> Path:
    """Write ``settings.json`` (the options, the study's settings and the command),
    ``verdicts.csv``, ``results.csv`` (the first table), one CSV per further table and
    ``report.html`` into ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = list(result.tables.items())
    settings = {
        "experiment": options.name,
        "question": STUDIES[options.name][1],
        "options": asdict(options),
        "command": command,
        **result.settings,
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    result.verdicts.to_csv(out / "verdicts.csv", index=False)
    tables[0][1].to_csv(out / "results.csv", index=False)
    for caption, table in tables[1:]:
        table.to_csv(out / f"{_slug(caption)}.csv", index=False)
    notes = [STUDIES[options.name][1], f"Command: {command}", *result.notes]
    return write_html_report(
        out / "report.html",
        title=result.title,
        figures=result.figures,
        tables=[("Verdicts", result.verdicts), *tables],
        notes=notes,
    )
