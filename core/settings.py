"""Every host setting of Kronoscope: the ``KRONOSCOPE_*`` environment variables, read here
and nowhere else.

Each setting is one :class:`Setting` row of :data:`SETTINGS` (name, type, default, bounds,
meaning). Code asks for a value with :func:`get` (``get("KRONOSCOPE_WORKERS")``), or with the
typed accessor of a setting the server asks for often (:func:`view_budget_s`,
:func:`worker_count`, :func:`max_concurrent_runs`, :func:`runs_per_session`,
:func:`max_layer_params`, :func:`torch_threads`); both read the environment at the call, so a
test may change a variable between calls. :class:`HostSettings` is every setting at once, one
typed field per row, read and validated together (:meth:`HostSettings.read`). A bad value raises
:class:`SettingError`, whose message is one line naming the variable, what it must be and the
value given; :func:`check_all` is what a server runs at start (``python serve.py``), so that
a bad value stops it there, not when a visitor reaches the code that reads it. DOCKER.md's
table is :func:`markdown_table` (a test keeps them equal).

These names are for hosts only: nothing a visitor sees names a setting. Streamlit's own
``STREAMLIT_*`` variables are Streamlit's to check; serve.py reads the two it needs before
Streamlit starts through :func:`streamlit_variable`.
Variables that only steer the test suite and CI (``KRONOSCOPE_REQUIRE_BROWSER``,
``KRONOSCOPE_BASE_URL``, ``KRONOSCOPE_SCREENSHOT_DIR``, ``KRONOSCOPE_REPLICAS``,
``KRONOSCOPE_PROXY_CONTAINER``) are not server settings and are read by the tests themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS",
    "HostSettings",
    "Setting",
    "SettingError",
    "check_all",
    "field_name",
    "get",
    "markdown_table",
    "max_concurrent_runs",
    "max_layer_params",
    "runs_per_session",
    "torch_threads",
    "view_budget_s",
    "worker_count",
]


class SettingError(ValueError):
    """A host setting holds a value it cannot have; the message names the variable."""


def _available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (``docker run
    --cpus``), which ``os.cpu_count`` does not see."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus or 1, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def _integer(raw: str) -> int:
    return int(raw.replace("_", ""))


def _number(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _dtype(raw: str) -> str:
    if raw not in ("float32", "float64"):
        raise ValueError(raw)
    return raw


_KINDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (_integer, "an integer"),
    "float": (_number, "a finite number"),
    "flag": (_flag, "1/true/yes/on or 0/false/no/off"),
    "path": (_path, "a folder path"),
    "dtype": (_dtype, "float32 or float64"),
    "url": (str, "an http:// or https:// URL"),
}


@dataclass(frozen=True)
class Setting:
    """One environment variable: its ``kind`` (a key of ``_KINDS``), the value used when it
    is unset or empty (``default``: a value, or a callable computing it, shown as ``shown``),
    the smallest value allowed (numbers) and its meaning for DOCKER.md's table."""

    name: str
    kind: str
    default: Any
    meaning: str
    minimum: float | None = None
    shown: str = ""

    def read(self, raw: str | None) -> Any:
        """The typed value of ``raw`` (the variable's text; None or blank: the default)."""
        text = (raw or "").strip()
        if not text:
            return self.default() if callable(self.default) else self.default
        parse, expected = _KINDS[self.kind]
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise SettingError(f"{self.name} must be {expected}, got {text!r}") from None
        if self.kind == "url" and not text.startswith(("http://", "https://")):
            raise SettingError(f"{self.name} must be {expected}, got {text!r}")
        if self.minimum is not None and value < self.minimum:
            raise SettingError(f"{self.name} must be ≥ {self.minimum:g}, got {text!r}")
        return value

    def default_text(self) -> str:
        if self.shown:
            return self.shown
        return "unset" if self.default is None else f"`{self.default}`"


def _cache_default() -> Path:
    return Path.home() / ".cache" / "kronoscope"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "KRONOSCOPE_CACHE_DIR", "path", _cache_default,
            "writable cache folder: generated CURVES, trained models of the presets "
            "(`trained/`), downloads, uploads (`uploads/<session>/`, emptied at start and when "
            "a session ends); mount a volume to keep it across restarts; replicas may share it",
            shown="`~/.cache/kronoscope` (the image: `/var/cache/kronoscope`)",
        ),
        Setting(
            "KRONOSCOPE_DATA_DIR", "path", None,
            "read-only folder of dataset files (MNIST IDX folders, FACES/CURVES `.mat`, `.npz`) "
            "that visitors pick from a list; names resolve only inside it (no `..`, no symlink "
            "escape); unset: no server file is offered, a `path` in a link is ignored with a "
            "notice, visitors can only upload",
        ),
        Setting(
            "KRONOSCOPE_RESULTS_DIR", "path", None,
            "read-only folder of `python -m core reproduce` results shown on the *Paper "
            "reproductions* page (links out of it are never followed)",
        ),
        Setting(
            "KRONOSCOPE_REPORT_MAX_MB", "int", 64,
            "largest file of a report the *Paper reproductions* page reads (a larger one is "
            "named and skipped)", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_ALLOW_DOWNLOADS", "flag", False,
            "`1`: visitors see a button that downloads the paper's original MNIST/FACES files "
            "into the cache (verified by size, format and SHA-256)", shown="`0` (off)",
        ),
        Setting(
            "KRONOSCOPE_DOWNLOAD_BASE_URL", "url", None,
            "where `--download` and the download button fetch the original files from "
            "(default: the files' public homes; a mirror, or a loopback server in the tests)",
        ),
        Setting(
            "KRONOSCOPE_MAX_CONCURRENT_RUNS", "int", 4,
            "training runs computing at once, server-wide (0: training off); more wait in a "
            "queue and see their place", minimum=0,
        ),
        Setting(
            "KRONOSCOPE_RUNS_PER_SESSION", "int",
            lambda: max(1, get("KRONOSCOPE_MAX_CONCURRENT_RUNS") // 2),
            "runs one *visitor* may hold at once, all their tabs together (a wider race runs "
            "that many at a time; the name is kept from when quotas counted tabs)",
            minimum=1, shown="half of the above, ≥ 1",
        ),
        Setting(
            "KRONOSCOPE_RUN_MAX_STEPS", "int", 5000,
            "most optimizer steps one training run may take; a longer request is cut to it "
            "with a notice", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_RUN_BUDGET_S", "float", 900.0,
            "wall-clock seconds one training run may take; a run stops there and says so",
            minimum=1,
        ),
        Setting(
            "KRONOSCOPE_MAX_LAYER_PARAMS", "int", 4_000_000,
            "largest layer (parameters) a visitor may analyse (the paper's largest, FACES "
            "2000→1000, has 2,001,000)", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_WORKERS", "int", _available_cpus,
            "worker processes for the numerics; 0 computes in the server's threads (tests "
            "only: no budget)", minimum=0,
            shown="the CPUs available (affinity and cgroup quota, so `--cpus` is seen)",
        ),
        Setting(
            "KRONOSCOPE_WORKER_RECYCLE_JOBS", "int", 500,
            "a worker process is replaced (between jobs) after this many jobs, so memory it "
            "kept comes back (a new one costs about a second of CPU: importing torch)",
            minimum=1,
        ),
        Setting(
            "KRONOSCOPE_WORKER_MAX_RSS_MB", "int", 1024,
            "a worker process whose resident memory is above this after a job is replaced (an "
            "idle worker holds about 220 MiB: below about 300 it would be replaced after every "
            "job)", minimum=256,
        ),
        Setting(
            "KRONOSCOPE_VIEW_BUDGET_S", "float", 60.0,
            "compute seconds one explorer view may take; work past it stops with a message "
            "saying what was skipped and how to get it", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_TORCH_THREADS", "int", 1,
            "intra-op threads per task (the server runs many tasks at once)", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_UPLOAD_SESSION_MB", "int", 100,
            "upload space per visitor (files kept while one of their tabs is open)", minimum=0,
        ),
        Setting(
            "KRONOSCOPE_UPLOAD_TOTAL_MB", "int", 1000,
            "upload space of the whole server", minimum=0,
        ),
        Setting(
            "KRONOSCOPE_UPLOAD_MAX_ARRAY_MB", "int", 128,
            "largest decompressed size of an uploaded dataset, checked from the archive's "
            "headers before anything is decompressed (a visitor's file is parsed in a worker "
            "process, never in the web server)", minimum=1,
        ),
        Setting(
            "KRONOSCOPE_MAX_DATA_BYTES", "int", 1 << 30,
            "largest decompressed size of a dataset file the host names (command line, "
            "`KRONOSCOPE_DATA_DIR`), checked before loading", minimum=1, shown="1 GiB",
        ),
        Setting(
            "KRONOSCOPE_MAX_DENSE_BYTES", "int", 1 << 30,
            "largest dense matrix the engine forms (a larger one is refused with the memory it "
            "would need and the matrix-free alternative)", minimum=1, shown="1 GiB",
        ),
        Setting(
            "KRONOSCOPE_ENGINE_DTYPE", "dtype", None,
            "`float32` or `float64`: the dtype of the optimizers' per-step solves (default: "
            "float64 on CPUs and GPUs with fast float64, float32 on other GPUs)",
        ),
        Setting(
            "KRONOSCOPE_TRUSTED_PROXY", "flag", False,
            "`1` behind a reverse proxy you run (deploy/): a visitor without the browser's "
            "cookie is told apart by the proxy's `X-Forwarded-For` address",
            shown="`0` (off)",
        ),
        Setting(
            "KRONOSCOPE_PREWARM", "flag", True,
            "`1`: `python serve.py` opens Home and the explorer's default view itself at start "
            "(over loopback), so the first visitor finds them computed", shown="`1` (on)",
        ),
    )
}  # fmt: skip


def get(name: str) -> Any:
    """The typed value of setting ``name`` now; raises :class:`SettingError` on a bad value."""
    return SETTINGS[name].read(os.environ.get(name))


def streamlit_variable(name: str) -> str | None:
    """Streamlit's own environment variable ``name`` (``STREAMLIT_SERVER_PORT``, …) as the host
    set it, or None where unset or empty. Streamlit's command line reads these, its config not
    before that runs; serve.py needs the port and base path first (its warm-up)."""
    if not name.startswith("STREAMLIT_"):
        raise ValueError(f"{name!r} is not a Streamlit variable (STREAMLIT_…)")
    return os.environ.get(name) or None


def field_name(name: str) -> str:
    """The :class:`HostSettings` field of variable ``name``: ``KRONOSCOPE_VIEW_BUDGET_S`` →
    ``view_budget_s``."""
    return name.removeprefix("KRONOSCOPE_").lower()


@dataclass(frozen=True)
class HostSettings:
    """Every host setting at one moment, typed: one field per row of :data:`SETTINGS`, named
    by :func:`field_name` (a test keeps the two one-to-one). Hashable and immutable, so a
    snapshot can be handed around and compared; code that must see a variable changed while
    the process runs (the tests do) asks :func:`get` or an accessor instead."""

    cache_dir: Path
    data_dir: Path | None
    results_dir: Path | None
    report_max_mb: int
    allow_downloads: bool
    download_base_url: str | None
    max_concurrent_runs: int
    runs_per_session: int
    run_max_steps: int
    run_budget_s: float
    max_layer_params: int
    workers: int
    worker_recycle_jobs: int
    worker_max_rss_mb: int
    view_budget_s: float
    torch_threads: int
    upload_session_mb: int
    upload_total_mb: int
    upload_max_array_mb: int
    max_data_bytes: int
    max_dense_bytes: int
    engine_dtype: str | None
    trusted_proxy: bool
    prewarm: bool

    @classmethod
    def read(cls) -> HostSettings:
        """Every setting from the environment now. Raises :class:`SettingError` with the first
        bad value's line (:func:`check_all` lists them all)."""
        problems = check_all()
        if problems:
            raise SettingError(problems[0])
        return cls(**{f.name: get(_VARIABLES[f.name]) for f in fields(cls)})


_VARIABLES = {field_name(name): name for name in SETTINGS}  # field → variable


def view_budget_s() -> float:
    """Compute seconds one explorer view may take (``KRONOSCOPE_VIEW_BUDGET_S``)."""
    return get("KRONOSCOPE_VIEW_BUDGET_S")


def worker_count() -> int:
    """Worker processes for the numerics (``KRONOSCOPE_WORKERS``; 0 computes in the server's
    threads, with no budget enforcement: tests only)."""
    return get("KRONOSCOPE_WORKERS")


def max_concurrent_runs() -> int:
    """Training runs at once, server-wide (``KRONOSCOPE_MAX_CONCURRENT_RUNS``; 0: none)."""
    return get("KRONOSCOPE_MAX_CONCURRENT_RUNS")


def runs_per_session() -> int:
    """Runs one visitor may hold at once (``KRONOSCOPE_RUNS_PER_SESSION``)."""
    return get("KRONOSCOPE_RUNS_PER_SESSION")


def max_layer_params() -> int:
    """The largest layer a visitor may analyse (``KRONOSCOPE_MAX_LAYER_PARAMS``)."""
    return get("KRONOSCOPE_MAX_LAYER_PARAMS")


def torch_threads() -> int:
    """Intra-op threads of each task (``KRONOSCOPE_TORCH_THREADS``). The server runs many
    tasks at once (sessions, background training runs); intra-op parallelism on top of that
    oversubscribes the cores (measured in bench/RESULTS-app.md)."""
    return get("KRONOSCOPE_TORCH_THREADS")


def check_all() -> list[str]:
    """One line for each setting that holds a bad value (empty: every setting is good)."""
    problems = []
    for name in SETTINGS:
        try:
            get(name)
        except SettingError as err:
            problems.append(str(err))
    return list(dict.fromkeys(problems))  # a default computed from a bad setting says it again


def markdown_table() -> str:
    """The settings as DOCKER.md's table (variable, default, meaning)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{s.name}` | {s.default_text()} | {s.meaning} |" for s in SETTINGS.values()]
    return "\n".join(rows)
