"""A reproduction's results folder: writing it (:func:`write_reproduction`: ``settings.json``,
``results.csv``, ``verdicts.csv``, ``report.html``, and ``rerun.json`` that is never served),
identifying its data files by name, size and SHA-256 (:func:`data_files`), and reading the
host's folder of them back for the app (:func:`results_dir`, :func:`list_reports`,
:func:`load_report`).

:func:`load_report` reads only the names :func:`list_reports` found in the host's
``$KRONOSCOPE_RESULTS_DIR``, never through a link that leads out of that folder, each file
size-capped (:mod:`core.paper.safe_read`), parsed once per change of its files, every value
that reaches a figure or a table checked (:mod:`core.paper.checks`), failures as one sentence
that names the file and what is wrong in it, and no server path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path

import pandas as pd

from .. import settings
from .checks import parse_results, parse_settings
from .contents import Reproduction, write_report_html
from .safe_read import ReportCache, ReportError, read_capped, real_file, real_inside, stamp
from .verdicts import verdicts

__all__ = [
    "REPORT_FILES",
    "RERUN_FILE",
    "RESULTS_DIR_ENV",
    "data_files",
    "list_reports",
    "load_report",
    "results_dir",
    "write_reproduction",
]

RESULTS_DIR_ENV = "KRONOSCOPE_RESULTS_DIR"
SETTINGS_FILE, RESULTS_FILE = "settings.json", "results.csv"
VERDICTS_FILE, REPORT_FILE = "verdicts.csv", "report.html"
#: The command exactly as given (server paths included); never served (not a REPORT_FILE).
RERUN_FILE = "rerun.json"
# settings.json is a page of text: a tighter cap than the other files' report_max_bytes()
MAX_SETTINGS_BYTES = 1 << 20
# reports listed, and entries of the results folder looked at to find them
MAX_LISTED = 200
MAX_SCANNED = 10_000
#: The files of a report: the first two must be there, the others may.
REPORT_FILES = (SETTINGS_FILE, RESULTS_FILE, VERDICTS_FILE, REPORT_FILE)
#: Reports kept parsed (:class:`~core.paper.safe_read.ReportCache`): at most this many, and
#: at most this many bytes of their files.
REPORT_CACHE_ENTRIES = 8
REPORT_CACHE_BYTES = 256 << 20
_CACHE = ReportCache(REPORT_CACHE_ENTRIES, REPORT_CACHE_BYTES)
_log = logging.getLogger(__name__)


def data_files(path: str | os.PathLike[str]) -> list[dict]:
    """Name, size and SHA-256 of the data file at ``path``, or of each file directly inside
    the folder ``path``: what identifies the data of a run without naming a server path."""
    root = Path(path).expanduser()
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    out = []
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        out.append({"name": file.name, "size": file.stat().st_size, "sha256": digest.hexdigest()})
    return out


def write_reproduction(
    out: Path, settings: dict, df: pd.DataFrame, rerun: dict | None = None
) -> pd.DataFrame:
    """Write ``settings.json``, ``results.csv``, ``verdicts.csv`` and ``report.html`` into
    ``out``, and ``rerun`` (the command exactly as given, paths included) into
    ``rerun.json``; return the verdict table. ``rerun.json`` is not one of
    :data:`REPORT_FILES`: the reports page never reads or shows it, so its server paths stay
    on the server, while the served files identify the data by name, size and SHA-256."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rerun is not None:
        (out / RERUN_FILE).write_text(
            json.dumps(rerun, indent=2, ensure_ascii=False), encoding="utf-8"
        )
    table = verdicts(settings, df)
    (out / SETTINGS_FILE).write_text(
        json.dumps(settings, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    df.to_csv(out / RESULTS_FILE, index=False)
    table.to_csv(out / VERDICTS_FILE, index=False)
    write_report_html(out / REPORT_FILE, settings, df, table)
    return table


def results_dir() -> Path | None:
    """The host's folder of reproductions, ``$KRONOSCOPE_RESULTS_DIR`` (``None``: unset)."""
    return settings.get(RESULTS_DIR_ENV)


def _report_files(root_real: str, name: str) -> dict[str, str] | None:
    """The real paths of the files of report ``name`` (a folder of the results folder whose real
    path is ``root_real``), by file name. ``None`` when the folder or any of
    :data:`REPORT_FILES` there leads out of the results folder (a link), is not a folder or a
    regular file, or when settings.json or results.csv is missing: such a report is neither
    listed nor read."""
    folder = os.path.join(root_real, name)
    folder_real = real_inside(folder, root_real)
    if folder_real is None or not os.path.isdir(folder_real):
        return None
    files = {}
    for file in REPORT_FILES:
        path = os.path.join(folder, file)
        if not os.path.lexists(path) and file not in (SETTINGS_FILE, RESULTS_FILE):
            continue
        real = real_file(path, root_real)
        if real is None:
            return None
        files[file] = real
    return files


def list_reports(directory: str | os.PathLike[str]) -> list[str]:
    """Names of the reports in ``directory``: its sub-folders (top level only, hidden names
    skipped, at most :data:`MAX_SCANNED` entries looked at) that :func:`_report_files` accepts;
    sorted, at most :data:`MAX_LISTED`. A missing directory gives ``[]``."""
    root = Path(directory)
    if not root.is_dir():
        return []
    root_real = os.path.realpath(root)
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in itertools.islice(entries, MAX_SCANNED)]
    except OSError:
        return []
    found = [n for n in names if not n.startswith(".") and _report_files(root_real, n)]
    return sorted(found)[:MAX_LISTED]


def load_report(directory: str | os.PathLike[str], name: str) -> Reproduction:
    """The report ``name`` (one of :func:`list_reports`), read and checked once per change of
    its files: the parsed report is kept, process-wide, until the size or modification time of
    its settings.json or results.csv changes (:class:`~core.paper.safe_read.ReportCache`).

    Checked: each file is at most its size cap; the settings are a JSON object, not nested
    deeper than :data:`core.paper.checks.MAX_SETTINGS_DEPTH`, with a known experiment and
    dataset and integers where integers belong; the results have the columns of the
    experiment, whole seeds and steps, positive epochs, numeric losses and errors, each step
    once per run, and only the optimizer, method and layer names this code knows (they become
    figure legends). Any failure is a :class:`~core.paper.safe_read.ReportError` whose message
    is one sentence naming the report's file and what is wrong in it: no server path, no
    exception text."""
    root_real = os.path.realpath(directory)
    files = _report_files(root_real, name) if name in list_reports(directory) else None
    if files is None:
        raise ReportError("There is no such report here: choose one of the reports listed.")
    try:
        stamps = tuple(stamp(files[f]) for f in (SETTINGS_FILE, RESULTS_FILE))
    except OSError:
        raise ReportError(f"The files of report {name} cannot be read by the server.") from None
    return _CACHE.get(os.path.join(root_real, name), stamps, lambda: _read_report(name, files))


def _read_report(name: str, files: dict[str, str]) -> Reproduction:
    """Read, check and build the report ``name`` from its files' real paths. A failure that the
    checks did not foresee is logged for the host and reported as one sentence."""
    try:
        label = f"{SETTINGS_FILE} of report {name}"
        settings = parse_settings(
            label, read_capped(files[SETTINGS_FILE], label, MAX_SETTINGS_BYTES)
        )
        label = f"{RESULTS_FILE} of report {name}"
        results = parse_results(
            label, settings["experiment"], read_capped(files[RESULTS_FILE], label)
        )
        return Reproduction.build(name, settings, results)
    except ReportError:
        raise
    except Exception:
        _log.exception("report %s could not be read", name)
        raise ReportError(
            f"Report {name} could not be read: an unexpected error, described in the server's log."
        ) from None
