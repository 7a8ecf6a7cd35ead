"""The checks of a report's files read back for web visitors (:func:`parse_settings`,
:func:`parse_results`): every value that reaches a figure or a table is checked, and a failure
is a :class:`~core.paper.safe_read.ReportError` whose message is one sentence naming the file
and what is wrong in it: no server path, no exception text."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd

from ..engine.methods import METHODS
from ..training.defaults import OPTIMIZERS
from .safe_read import ReportError
from .spec import EXPERIMENTS, REPRO_DATASETS
from .studies import STUDIES

__all__ = ["MAX_SETTINGS_DEPTH", "RESULT_COLUMNS", "parse_results", "parse_settings"]

_LAYER_NAME = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
#: ``settings.json`` written here nests 3 levels deep; deeper is refused.
MAX_SETTINGS_DEPTH = 16
#: Fields of ``settings.json`` that hold integers (each may be absent or null).
_INT_FIELDS = (
    "n_train",
    "n_test",
    "max_steps",
    "batch_size",
    "steps_per_epoch",
    "steps",
    "eval_every",
    "quality_every",
)
RESULT_COLUMNS = (
    "optimizer",
    "seed",
    "status",
    "step",
    "epoch",
    "wall_time_s",
    "train_loss",
    "test_loss",
)


def _describe(value) -> str:
    """A value read from a report, in a few words for a message (short texts quoted)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return json.dumps(float(value))  # NaN, Infinity, -Infinity
    if isinstance(value, int | np.integer):
        return str(value) if abs(int(value)) < 10**15 else "a very large integer"
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:39] + "…", ensure_ascii=False)
    return "a list" if isinstance(value, list) else "an object"


def _too_deep(value, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_settings(label: str, data: bytes) -> dict:
    """``settings.json``'s object, checked (see :func:`core.paper.files.load_report`);
    ``label`` names the file in messages."""
    try:
        settings = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{label} is not valid: it is not UTF-8 text.") from None
    except RecursionError:
        raise ReportError(f"{label} is not valid: nested too deeply.") from None
    except json.JSONDecodeError as err:
        raise ReportError(
            f"{label} is not valid JSON (line {err.lineno}, column {err.colno})."
        ) from None
    except ValueError:  # Python's cap on the digits of an integer
        raise ReportError(
            f"{label} is not valid: it holds an integer with too many digits."
        ) from None
    if not isinstance(settings, dict):
        raise ReportError(f"{label} is not valid: it holds {_describe(settings)}, not an object.")
    if _too_deep(settings, MAX_SETTINGS_DEPTH):
        raise ReportError(f"{label} is not valid: nested too deeply.")

    def wrong(key: str, expected: str) -> ReportError:
        return ReportError(
            f"{label} is not valid: field {key} holds {_describe(settings[key])}, expected "
            f"{expected}."
        )

    if settings.get("experiment") in STUDIES:  # written by core.paper.studies.write_study
        raise ReportError(
            f"{label.replace('settings.json of r', 'R', 1)} is a study "
            f"({settings['experiment']}), not one of the seed paper's experiments: this page "
            "shows those only; the study's own report is report.html in its folder."
        )
    for key, allowed in (("experiment", EXPERIMENTS), ("dataset", REPRO_DATASETS)):
        if key not in settings:
            raise ReportError(f"{label} is not valid: it lacks the field {key}.")
        if not isinstance(settings[key], str) or settings[key] not in allowed:
            raise wrong(key, f"one of {', '.join(allowed)}")
    if not isinstance(settings.get("dataset_label", ""), str):
        raise wrong("dataset_label", "a text")
    for key in _INT_FIELDS:
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong(key, "an integer")
    seeds = settings.get("seeds", [])
    if not isinstance(seeds, list):
        raise wrong("seeds", "a list of integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ReportError(
                f"{label} is not valid: field seeds holds {_describe(seed)}, expected an integer."
            )
    rules = settings.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, str) for v in rules.values()):
        raise wrong("rules", "an object of texts")
    return settings


def parse_results(label: str, experiment: str, data: bytes) -> pd.DataFrame:
    """``results.csv``'s table for ``experiment``, checked (see
    :func:`core.paper.files.load_report`); ``label`` names the file in messages."""
    df = _read_csv(label, data)
    need = [*RESULT_COLUMNS, *(["layer"] if experiment == "quality" else [])]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ReportError(f"{label} is not valid: it lacks the column(s) {', '.join(missing)}.")
    if df.empty:
        raise ReportError(f"{label} is not valid: it holds no rows.")
    _check_values(label, df, experiment)
    df[["seed", "step", "epoch", "wall_time_s"]] = df[
        ["seed", "step", "epoch", "wall_time_s"]
    ].apply(pd.to_numeric)
    run = ["optimizer", "seed", *(["layer"] if experiment == "quality" else [])]
    repeated = np.flatnonzero(df.duplicated([*run, "step"]).to_numpy())
    if len(repeated):
        raise ReportError(
            f"{label} is not valid: line {repeated[0] + 2} repeats a step of its run."
        )
    df["status"] = df["status"].astype(str)
    return df


def _read_csv(label: str, data: bytes) -> pd.DataFrame:
    """``data`` as a CSV table, or one sentence saying why it is not one."""
    try:
        return pd.read_csv(io.BytesIO(data), dtype={"optimizer": str, "status": str, "layer": str})
    except UnicodeDecodeError:
        raise ReportError(f"{label} is not valid: it is not UTF-8 text.") from None
    except pd.errors.EmptyDataError:
        raise ReportError(f"{label} is empty.") from None
    except (ValueError, pd.errors.ParserError):
        raise ReportError(f"{label} is not a readable CSV table.") from None


def _check_values(label: str, df: pd.DataFrame, experiment: str) -> None:
    """Every cell of ``df`` that reaches a figure or a table holds what it should: known
    optimizer and method names, whole seeds and steps, positive epochs, numbers where numbers
    belong, layer names (quality); the first wrong cell is named by column and line."""

    def check(column: str, ok: pd.Series, expected: str) -> None:
        bad = np.flatnonzero(~ok.to_numpy(dtype=bool))
        if len(bad):
            value = df[column].iloc[bad[0]]
            raise ReportError(
                f"{label} is not valid: column {column} holds {_describe(value)} on line "
                f"{bad[0] + 2}, expected {expected}."
            )

    def numbers(column: str) -> pd.Series:
        return pd.to_numeric(df[column], errors="coerce")

    check("optimizer", df["optimizer"].isin(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}")
    for column in ("seed", "step"):
        values = numbers(column)
        check(
            column,
            np.isfinite(values) & (values == values.round()) & (values >= 0),
            "an integer ≥ 0",
        )
    epoch, wall = numbers("epoch"), numbers("wall_time_s")
    check("epoch", np.isfinite(epoch) & (epoch > 0), "a number > 0")
    check("wall_time_s", np.isfinite(wall) & (wall >= 0), "a number ≥ 0")
    errors = [c for c in df.columns if c.startswith(("rel_error_", "spectrum_error_"))]
    unknown = [c for c in errors if c.split("_error_", 1)[1] not in METHODS]
    if unknown:
        raise ReportError(
            f"{label} is not valid: column {_describe(unknown[0])} names a method this version "
            "does not know."
        )
    for column in ("train_loss", "test_loss", *errors):  # NaN and ±inf allowed (divergence)
        check(column, numbers(column).notna() | df[column].isna(), "a number")
    if experiment == "quality":
        layer_ok = df["layer"].map(lambda v: isinstance(v, str) and bool(_LAYER_NAME.fullmatch(v)))
        check("layer", layer_ok, "a layer name (letters, digits, _ and .)")
