"""Server-wide limits of a shared Kronoscope instance, and the registry of background runs.

Two limits, read from the environment on every check (the Docker image sets them):

* ``KRONOSCOPE_MAX_CONCURRENT_RUNS`` (default 4): training runs executing at the same time,
  over all sessions of the server;
* ``KRONOSCOPE_MAX_LAYER_PARAMS`` (default 4,000,000): the largest layer (``dg·da`` weights,
  bias included) whose Fisher block may be analysed.

and one setting of the web server, ``KRONOSCOPE_TORCH_THREADS`` (default 1): PyTorch's
intra-op threads. The server runs many things at once (sessions, background training runs),
and intra-op parallelism on top of that oversubscribes the cores: on a loaded 2-core machine a
528 × 528 ``eigh`` took 0.03 s with one thread and 0.1–0.9 s with two (bench/RESULTS-app.md).

:class:`RunRegistry` is the one process-wide object that starts background training runs: it
refuses a start that would exceed the run limit (:class:`LimitError`, with a message that says
what to do) and stops the runs of sessions that have gone away. Which sessions are alive is
asked of a callable the caller supplies (the web app passes Streamlit's runtime), so this module
stays free of any web framework. :class:`RunGroup` is a set of runs started together, either
side by side (each run its own thread) or one after another (fair wall-time comparisons).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "MAX_CONCURRENT_RUNS_ENV",
    "MAX_LAYER_PARAMS_ENV",
    "LimitError",
    "RunGroup",
    "RunRegistry",
    "check_layer_size",
    "max_concurrent_runs",
    "max_layer_params",
    "torch_threads",
]

MAX_CONCURRENT_RUNS_ENV = "KRONOSCOPE_MAX_CONCURRENT_RUNS"
MAX_LAYER_PARAMS_ENV = "KRONOSCOPE_MAX_LAYER_PARAMS"
TORCH_THREADS_ENV = "KRONOSCOPE_TORCH_THREADS"
DEFAULT_MAX_CONCURRENT_RUNS = 4
DEFAULT_MAX_LAYER_PARAMS = 4_000_000  # the paper's largest layer (FACES 2000→1000) has 2,001,000


class LimitError(RuntimeError):
    """A server-wide limit was reached; the message names it and what to do."""


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def max_concurrent_runs() -> int:
    """``KRONOSCOPE_MAX_CONCURRENT_RUNS`` (default 4; 0 disables training on this server)."""
    return _env_int(MAX_CONCURRENT_RUNS_ENV, DEFAULT_MAX_CONCURRENT_RUNS, 0)


def max_layer_params() -> int:
    """``KRONOSCOPE_MAX_LAYER_PARAMS`` (default 4,000,000)."""
    return _env_int(MAX_LAYER_PARAMS_ENV, DEFAULT_MAX_LAYER_PARAMS, 1)


def torch_threads() -> int:
    """``KRONOSCOPE_TORCH_THREADS`` (default 1): intra-op threads for the web server."""
    return _env_int(TORCH_THREADS_ENV, 1, 1)


def check_layer_size(n_params: int, name: str = "this layer") -> None:
    """Raise :class:`LimitError` when a layer has more weights than the server allows."""
    limit = max_layer_params()
    if n_params > limit:
        raise LimitError(
            f"{name} has {n_params:,} weights, above this server's limit of {limit:,} "
            f"({MAX_LAYER_PARAMS_ENV}). Pick a smaller layer, or ask the operator to raise "
            "the limit."
        )


class Run(Protocol):
    """What the registry needs of a run (``core.runner.TrainingRun`` has it)."""

    status: str

    def run(self) -> None: ...
    def stop(self) -> None: ...

    @property
    def done(self) -> bool: ...


@dataclass(eq=False)
class RunGroup:
    """Runs started together. ``sequential``: one after another in one thread (one slot of the
    server's run limit); otherwise side by side, one thread (and one slot) per run."""

    runs: Sequence[Run]
    sequential: bool = False
    label: str = ""
    started_at: float = field(default_factory=time.time)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def slots(self) -> int:
        return 1 if self.sequential else len(self.runs)

    def _start(self) -> None:
        if self.sequential:
            targets: list[Callable[[], None]] = [self._run_all]
        else:
            targets = [run.run for run in self.runs]
        for target in targets:
            thread = threading.Thread(target=target, name="kronoscope-run", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run_all(self) -> None:
        for run in self.runs:
            if self._stop.is_set():
                break
            run.run()

    def stop(self) -> None:
        """Stop every run after its current step; runs not begun yet never start."""
        self._stop.set()
        for run in self.runs:
            run.stop()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)

    @property
    def alive(self) -> bool:
        """True while one of the group's threads is still working."""
        return any(t.is_alive() for t in self._threads)

    @property
    def done(self) -> bool:
        return bool(self._threads) and not self.alive

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def progress(self) -> float:
        values = [float(getattr(run, "progress", 0.0)) for run in self.runs]
        return sum(values) / max(len(values), 1)


class RunRegistry:
    """Process-wide bookkeeping of background run groups, per session.

    ``is_session_alive(session_id)`` tells whether a session still exists; a session seen dead
    for longer than ``grace_s`` seconds has its runs stopped (a short grace lets a browser that
    lost its connection for a moment reconnect). A daemon thread checks every ``check_every_s``
    seconds while some run is active.
    """

    def __init__(
        self,
        *,
        limit: Callable[[], int] = max_concurrent_runs,
        grace_s: float = 15.0,
        check_every_s: float = 5.0,
    ) -> None:
        self._limit = limit
        self._grace_s = grace_s
        self._check_every_s = check_every_s
        self._lock = threading.Lock()
        self._groups: dict[str, list[RunGroup]] = {}
        self._dead_since: dict[str, float] = {}
        self._is_alive: Callable[[str], bool] = lambda _sid: True
        self._reaper: threading.Thread | None = None

    def set_session_check(self, is_session_alive: Callable[[str], bool]) -> None:
        self._is_alive = is_session_alive

    # -- queries ------------------------------------------------------------------------
    def active_slots(self) -> int:
        with self._lock:
            return self._active_slots()

    def _active_slots(self) -> int:
        return sum(g.slots for groups in self._groups.values() for g in groups if not g.done)

    def groups(self, session_id: str) -> list[RunGroup]:
        with self._lock:
            return list(self._groups.get(session_id, ()))

    @property
    def limit(self) -> int:
        return self._limit()

    # -- actions ------------------------------------------------------------------------
    def start(self, session_id: str, group: RunGroup) -> RunGroup:
        """Start ``group`` for ``session_id``, or raise :class:`LimitError` when the server is
        already running as many runs as it allows."""
        self.reap()
        with self._lock:
            limit = self._limit()
            busy = self._active_slots()
            if busy + group.slots > limit:
                raise LimitError(self._limit_message(busy, limit, group.slots))
            self._groups.setdefault(session_id, []).append(group)
            self._prune(session_id)
            group._start()
            self._ensure_reaper()
        return group

    @staticmethod
    def _limit_message(busy: int, limit: int, need: int) -> str:
        if limit == 0:
            return (
                f"training is disabled on this server ({MAX_CONCURRENT_RUNS_ENV}=0); the "
                "explorer still works on models at their initialization"
            )
        runs = "run" if need == 1 else "runs"
        return (
            f"this server already runs {busy} of its {limit} allowed training runs "
            f"({MAX_CONCURRENT_RUNS_ENV}); this needs {need} more {runs}. Wait for a run to "
            "finish, stop one of yours, or race fewer optimizers (or one after another)."
        )

    def stop_session(self, session_id: str) -> int:
        """Stop every run of one session; returns how many groups were still active."""
        with self._lock:
            groups = list(self._groups.get(session_id, ()))
        active = [g for g in groups if not g.done]
        for g in active:
            g.stop()
        return len(active)

    def reap(self, now: float | None = None) -> list[str]:
        """Stop the runs of sessions that have been gone for longer than the grace period, and
        forget finished groups of dead sessions. Returns the sessions reaped."""
        now = time.monotonic() if now is None else now
        reaped = []
        with self._lock:
            sessions = list(self._groups)
        for sid in sessions:
            try:
                alive = bool(self._is_alive(sid))
            except Exception:  # a failing check must not stop anyone's run
                alive = True
            if alive:
                self._dead_since.pop(sid, None)
                continue
            since = self._dead_since.setdefault(sid, now)
            if now - since >= self._grace_s:
                self.stop_session(sid)
                with self._lock:
                    self._groups.pop(sid, None)
                    self._dead_since.pop(sid, None)
                reaped.append(sid)
        return reaped

    def _prune(self, session_id: str, keep: int = 8) -> None:
        """Forget a session's oldest finished groups beyond ``keep``."""
        groups = self._groups.get(session_id, [])
        finished = [g for g in groups if g.done]
        for g in finished[: max(0, len(groups) - keep)]:
            groups.remove(g)

    def _ensure_reaper(self) -> None:
        if self._reaper is not None and self._reaper.is_alive():
            return
        self._reaper = threading.Thread(
            target=self._reap_loop, name="kronoscope-reaper", daemon=True
        )
        self._reaper.start()

    def _reap_loop(self) -> None:
        while True:
            time.sleep(self._check_every_s)
            self.reap()
            with self._lock:
                if self._active_slots() == 0 and not self._dead_since:
                    self._reaper = None
                    return
