"""The queue of background training runs: who may start a run now, who waits, in which order.

:class:`RunRegistry` is the one process-wide object that starts background training runs. A
group of runs that does not fit now waits in a queue (its place is shown to the student) and
starts when slots free, taking turns fairly between visitors; a visitor never holds more than
the quota over all their sessions, nor has more than a few groups waiting, and a group wider
than the quota runs that many of its runs at a time. It stops the runs of sessions that
have gone away, queued ones included. Which sessions are alive is asked of a callable the
caller supplies (the web app passes Streamlit's runtime), so this module stays free of any web
framework. :class:`RunGroup` is a set of runs started together, either side by side (each run
its own thread, as many at a time as the group's width) or one after another (width 1: fair
wall-time comparisons).

The slots and the quota are host settings (``KRONOSCOPE_MAX_CONCURRENT_RUNS``,
``KRONOSCOPE_RUNS_PER_SESSION``: :mod:`core.settings`), asked for at every start, so a change
shows without a restart. Refusals raise :class:`core.server.limits.LimitError`; their messages
speak of the app, never of settings' names: a student cannot change them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..settings import max_concurrent_runs, runs_per_session
from .limits import LimitError

__all__ = ["MAX_QUEUED_PER_VISITOR", "SHARED_VISITOR", "Run", "RunGroup", "RunRegistry"]

MAX_QUEUED_GROUPS = 64  # waiting groups, server-wide; beyond, a start is refused
MAX_QUEUED_PER_VISITOR = 2  # waiting groups of one visitor (all their tabs); beyond, refused
#: The visitor (and session) owning the explorer's trained models, trained for every visitor:
#: its waiting groups are not capped per visitor (the server-wide cap still holds).
SHARED_VISITOR = "shared"


class Run(Protocol):
    """What the registry needs of a run (``core.training.runner.TrainingRun`` has it)."""

    status: str

    def run(self) -> None: ...
    def stop(self) -> None: ...

    @property
    def done(self) -> bool: ...


@dataclass(eq=False)
class RunGroup:
    """Runs started together, ``width`` of them at a time (one thread and one slot of the
    server's run limit each). ``sequential`` is width 1; by default every run at once. The
    registry may narrow the width to the visitor's quota before the group starts.

    ``state``: ``"new"`` → ``"queued"`` (waiting for slots) → ``"running"`` → ``"done"``, or
    ``"cancelled"`` when stopped before it started.
    """

    runs: Sequence[Run]
    sequential: bool = False
    label: str = ""
    width: int = 0  # 0: every run at once (1 when sequential)
    state: str = "new"
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _pending: list[Run] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _on_done: Callable[[], None] | None = field(default=None, repr=False)
    _working: int = field(default=0, repr=False)
    _visitor: str = field(default="", repr=False)  # set by the registry that starts it

    def __post_init__(self) -> None:
        if self.sequential:
            self.width = 1
        elif self.width <= 0:
            self.width = len(self.runs)
        self.width = max(1, min(self.width, len(self.runs)))

    @property
    def slots(self) -> int:
        return self.width

    def _start(self, on_done: Callable[[], None] | None = None) -> None:
        self._on_done = on_done
        self._pending = list(self.runs)
        self.state = "running"
        self._working = self.width
        for _ in range(self.width):
            thread = threading.Thread(target=self._work, name="kronoscope-run", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        """One of ``width`` threads: run the group's runs in order until none is left."""
        while True:
            with self._lock:
                if self._stop.is_set() or not self._pending:
                    self._working -= 1
                    last = self._working == 0
                    break
                run = self._pending.pop(0)
            run.run()
        if last:
            self.state = "done"
            if self._on_done is not None:
                self._on_done()

    def _cancel(self) -> None:
        """Stopped while queued: it never starts."""
        self._stop.set()
        self.state = "cancelled"

    def stop(self) -> None:
        """Stop every run after its current step; runs not begun yet never start."""
        self._stop.set()
        for run in self.runs:
            run.stop()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)

    @property
    def done(self) -> bool:
        """Finished, stopped or cancelled: nothing of the group runs or waits any more."""
        return self.state in ("done", "cancelled")

    @property
    def queued(self) -> bool:
        return self.state == "queued"

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def progress(self) -> float:
        values = [float(getattr(run, "progress", 0.0)) for run in self.runs]
        return sum(values) / max(len(values), 1)


@dataclass(eq=False)
class _Waiting:
    """A queued group: the session that started it, the visitor behind that session, and its
    arrival number (first come, first served within one visitor)."""

    session_id: str
    visitor: str
    group: RunGroup
    seq: int


class RunRegistry:
    """Process-wide bookkeeping of background run groups: slots, quotas, queue, sessions.

    ``limit()``: slots of the whole server; ``quota``: slots one *visitor* (a person: every
    session, i.e. tab, of one browser) may hold at once, whichever of their sessions started
    them. ``start(session_id, group, visitor)`` names both; a visitor left out is the session.

    A group that does not fit now waits in the queue; whenever slots free (a group ends, a group
    is stopped, the reaper runs), waiting groups start fairly between visitors: the visitor
    holding the fewest running slots first (ties: the group that has waited longest), first in,
    first out within one visitor, so a visitor with many waiting groups takes turns with the
    others instead of going first with all of them. A group that cannot start (its visitor at
    the quota, or wider than the free slots) never blocks the others. One visitor may have at
    most ``max_queued_per_visitor`` groups waiting (the :data:`SHARED_VISITOR`'s trainings,
    asked for by every visitor of the explorer, are exempt), the server at most ``max_queued``.

    ``is_session_alive(session_id)`` tells whether a session still exists; a session seen dead
    for longer than ``grace_s`` seconds has its runs stopped and its queued groups removed (a
    short grace lets a browser that lost its connection for a moment reconnect). A daemon
    thread checks every ``check_every_s`` seconds while some group runs or waits.
    """

    def __init__(
        self,
        *,
        limit: Callable[[], int] = max_concurrent_runs,
        quota: Callable[[], int] | None = None,
        grace_s: float = 15.0,
        check_every_s: float = 5.0,
        max_queued: int = MAX_QUEUED_GROUPS,
        max_queued_per_visitor: int = MAX_QUEUED_PER_VISITOR,
    ) -> None:
        self._limit = limit
        self._quota = quota if quota is not None else runs_per_session
        self._grace_s = grace_s
        self._check_every_s = check_every_s
        self._max_queued = max_queued
        self._max_queued_per_visitor = max_queued_per_visitor
        self._lock = threading.RLock()
        self._groups: dict[str, list[RunGroup]] = {}
        self._queue: list[_Waiting] = []  # in order of arrival
        self._arrivals = 0
        self._dead_since: dict[str, float] = {}
        self._is_alive: Callable[[str], bool] = lambda _sid: True
        self._reaper: threading.Thread | None = None

    def set_session_check(self, is_session_alive: Callable[[str], bool]) -> None:
        self._is_alive = is_session_alive

    # -- queries ------------------------------------------------------------------------
    def active_slots(self) -> int:
        """Slots held by running groups (what the sidebar counts)."""
        with self._lock:
            return self._active_slots()

    def visitor_slots(self, visitor: str) -> int:
        """Slots held by the running groups of ``visitor``, over all their sessions."""
        with self._lock:
            return self._active_slots(visitor=visitor)

    def _active_slots(self, session_id: str | None = None, visitor: str | None = None) -> int:
        return sum(
            g.slots
            for sid, groups in self._groups.items()
            if session_id is None or sid == session_id
            for g in groups
            if g.state == "running" and not g.done and (visitor is None or g._visitor == visitor)
        )

    def queued_count(self, visitor: str | None = None) -> int:
        """Groups waiting, server-wide or of one ``visitor``."""
        with self._lock:
            return sum(1 for w in self._queue if visitor is None or w.visitor == visitor)

    def position(self, group: RunGroup) -> int | None:
        """1-based place of ``group`` in the queue (in the fair order groups would start in
        if slots freed one at a time), or None when it is not waiting."""
        with self._lock:
            for i, waiting in enumerate(self._fair_order()):
                if waiting.group is group:
                    return i + 1
        return None

    def groups(self, session_id: str) -> list[RunGroup]:
        with self._lock:
            return list(self._groups.get(session_id, ()))

    @property
    def limit(self) -> int:
        return self._limit()

    @property
    def quota(self) -> int:
        """Slots one visitor may hold at once (all their sessions together)."""
        return max(1, min(self._quota(), max(self._limit(), 1)))

    # -- actions ------------------------------------------------------------------------
    def start(self, session_id: str, group: RunGroup, visitor: str | None = None) -> RunGroup:
        """Start ``group`` for ``session_id`` (of ``visitor``, by default the session itself)
        now if it fits, else queue it (``group.state`` tells which). Raises
        :class:`LimitError` when training is disabled on this server, the server's queue is
        full, or the visitor already has as many groups waiting as one visitor may."""
        visitor = session_id if visitor is None else visitor
        self.reap()
        with self._lock:
            limit = self._limit()
            if limit == 0:
                raise LimitError(
                    "training is switched off on this server; the explorer still works on "
                    "models at their initialization"
                )
            quota = self.quota
            group.width = min(group.width, quota)
            free = limit - self._active_slots()
            if (
                visitor != SHARED_VISITOR
                and not self._fits(visitor, group, free, quota)
                and self.queued_count(visitor) >= self._max_queued_per_visitor
            ):
                waiting = self.queued_count(visitor)
                raise LimitError(
                    f"you already have {waiting} training run{'s' if waiting != 1 else ''} "
                    "waiting for a free slot (in this tab or another one); stop one of them or "
                    "wait until one starts, then try again"
                )
            if len(self._queue) >= self._max_queued:
                raise LimitError(
                    f"{len(self._queue)} training runs are already waiting on this server; "
                    "try again in a few minutes"
                )
            self._groups.setdefault(session_id, []).append(group)
            group._visitor = visitor
            self._prune(session_id)
            group.state = "queued"
            self._arrivals += 1
            self._queue.append(_Waiting(session_id, visitor, group, self._arrivals))
            self._pump()
            self._ensure_reaper()
        return group

    def _fits(self, visitor: str, group: RunGroup, free: int, quota: int) -> bool:
        """Whether ``group`` of ``visitor`` could start with ``free`` slots free (lock held)."""
        return group.slots <= free and self._active_slots(visitor=visitor) + group.slots <= quota

    def _fair_order(self) -> list[_Waiting]:
        """The queue in the order its groups would start if slots freed one at a time and
        every group fitted: the visitor holding (or about to hold) the fewest slots first,
        ties to the longest waiting; first in, first out within a visitor (lock held)."""
        load = {w.visitor: self._active_slots(visitor=w.visitor) for w in self._queue}
        pending = list(self._queue)
        order = []
        while pending:
            heads: dict[str, _Waiting] = {}
            for w in pending:
                heads.setdefault(w.visitor, w)
            nxt = min(heads.values(), key=lambda w: (load[w.visitor], w.seq))
            order.append(nxt)
            pending.remove(nxt)
            load[nxt.visitor] += nxt.group.slots
        return order

    def _pump(self) -> None:
        """Start waiting groups while slots are free (lock held): each time, among the first
        group of each visitor that fits, the one whose visitor holds the fewest slots (ties:
        the longest waiting)."""
        for waiting in list(self._queue):
            if waiting.group.stopped:
                self._queue.remove(waiting)
                waiting.group._cancel()
        free = self._limit() - self._active_slots()
        quota = self.quota
        while free > 0:
            candidates: dict[str, _Waiting] = {}
            for w in self._queue:
                if w.visitor not in candidates and self._fits(w.visitor, w.group, free, quota):
                    candidates[w.visitor] = w
            if not candidates:
                break
            nxt = min(
                candidates.values(),
                key=lambda w: (self._active_slots(visitor=w.visitor), w.seq),
            )
            self._queue.remove(nxt)
            nxt.group._start(on_done=self._group_ended)
            free -= nxt.group.slots

    def _group_ended(self) -> None:
        with self._lock:
            self._pump()

    def cancel(self, group: RunGroup) -> None:
        """Stop ``group``: a queued one leaves the queue at once, a running one stops after
        its current steps."""
        with self._lock:
            for waiting in list(self._queue):
                if waiting.group is group:
                    self._queue.remove(waiting)
                    group._cancel()
        group.stop()
        with self._lock:
            self._pump()

    def stop_session(self, session_id: str) -> int:
        """Stop every run of one session, queued ones included; returns how many groups were
        still active or waiting."""
        with self._lock:
            groups = [g for g in self._groups.get(session_id, ()) if not g.done]
        for g in groups:
            self.cancel(g)
        return len(groups)

    def stop_all(self) -> int:
        """Stop every run of every session, queued ones included (the server is closing);
        returns how many groups were still active or waiting."""
        with self._lock:
            sessions = list(self._groups)
        return sum(self.stop_session(sid) for sid in sessions)

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
        with self._lock:
            self._pump()
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
                if self._active_slots() == 0 and not self._queue and not self._dead_since:
                    self._reaper = None
                    return
