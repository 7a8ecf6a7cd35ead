"""Tests of core.server.run_queue: the run registry's slots, quota and queue (quotas per
visitor and the fair queue: tests/server/test_run_quotas.py; the limits' settings:
tests/server/test_limits.py)."""

from __future__ import annotations

import threading
import time

import pytest

from core.server.limits import LimitError, check_layer_size
from core.server.run_queue import RunGroup, RunRegistry


class FakeRun:
    """A run that lasts ``seconds`` unless stopped, recording when it ran."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.status = "pending"
        self.progress = 0.0
        self._stop = threading.Event()
        self.seconds = seconds
        self.started = self.ended = None

    def run(self) -> None:
        self.status, self.started = "running", time.monotonic()
        self.status = "stopped" if self._stop.wait(self.seconds) else "finished"
        self.progress, self.ended = 1.0, time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    @property
    def done(self) -> bool:
        return self.status in ("finished", "stopped")


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    names = ("MAX_CONCURRENT_RUNS", "MAX_LAYER_PARAMS", "RUNS_PER_SESSION", "TORCH_THREADS",
             "WORKERS", "VIEW_BUDGET_S", "RUN_MAX_STEPS", "RUN_BUDGET_S")  # fmt: skip
    for name in names:
        monkeypatch.delenv(f"KRONOSCOPE_{name}", raising=False)


def test_messages_never_name_settings():
    registry = RunRegistry(limit=lambda: 0)
    with pytest.raises(LimitError) as err:
        registry.start("a", RunGroup([FakeRun()]))
    assert "KRONOSCOPE" not in str(err.value) and "switched off" in str(err.value)
    with pytest.raises(LimitError) as err:
        check_layer_size(10**9)
    assert "KRONOSCOPE" not in str(err.value)


def test_a_group_holds_one_slot_per_run_it_runs_at_once():
    registry = RunRegistry(limit=lambda: 4, quota=lambda: 3)
    wide = registry.start("a", RunGroup([FakeRun(30) for _ in range(3)]))
    assert wide.state == "running" and registry.active_slots() == 3
    seq = registry.start("b", RunGroup([FakeRun(30), FakeRun(30)], sequential=True))
    assert seq.state == "running" and registry.active_slots() == 4
    third = registry.start("c", RunGroup([FakeRun(30)]))
    assert third.state == "queued" and registry.position(third) == 1
    for g in (wide, seq, third):
        registry.cancel(g)
    for g in (wide, seq, third):
        g.join(5)
        assert g.done


def test_full_server_queues_and_starts_in_order_when_slots_free():
    registry = RunRegistry(limit=lambda: 2, quota=lambda: 2)
    first = registry.start("a", RunGroup([FakeRun(30), FakeRun(30)]))
    waiting = [registry.start(sid, RunGroup([FakeRun(30)])) for sid in ("b", "c", "d")]
    assert [registry.position(g) for g in waiting] == [1, 2, 3]
    assert registry.queued_count() == 3 and registry.active_slots() == 2
    registry.cancel(first)
    _wait(lambda: waiting[0].state == "running" and waiting[1].state == "running")
    assert waiting[2].state == "queued" and registry.position(waiting[2]) == 1
    registry.cancel(waiting[0])
    _wait(lambda: waiting[2].state == "running")
    for g in waiting:
        registry.cancel(g)
        g.join(5)


def test_one_session_cannot_hold_every_slot():
    """A race wider than the quota runs quota-many at a time; others still get slots."""
    registry = RunRegistry(limit=lambda: 4, quota=lambda: 2)
    runs = [FakeRun(0.3) for _ in range(4)]
    race = registry.start("teacher", RunGroup(runs))
    assert race.slots == 2 and registry.active_slots() == 2
    second = registry.start("teacher", RunGroup([FakeRun(30)]))
    assert second.state == "queued"  # the teacher is at the quota
    student = registry.start("student", RunGroup([FakeRun(30)]))
    assert student.state == "running"  # not blocked by the teacher's queued group
    race.join(10)
    assert race.done and all(r.status == "finished" for r in runs)
    assert max(r.started for r in runs[2:]) >= min(r.ended for r in runs[:2]) - 0.05
    _wait(lambda: second.state == "running")
    for g in (second, student):
        registry.cancel(g)
        g.join(5)


def test_stopping_a_queued_group_cancels_it_without_running():
    registry = RunRegistry(limit=lambda: 1, quota=lambda: 1)
    busy = registry.start("a", RunGroup([FakeRun(30)]))
    run = FakeRun(30)
    queued = registry.start("b", RunGroup([run]))
    registry.cancel(queued)
    assert queued.done and queued.state == "cancelled" and run.status == "pending"
    assert registry.queued_count() == 0
    registry.cancel(busy)
    busy.join(5)


def test_queue_is_bounded():
    registry = RunRegistry(limit=lambda: 1, quota=lambda: 1, max_queued=2)
    busy = registry.start("a", RunGroup([FakeRun(30)]))
    q = [registry.start(s, RunGroup([FakeRun(30)])) for s in ("b", "c")]
    with pytest.raises(LimitError, match="already waiting"):
        registry.start("d", RunGroup([FakeRun(30)]))
    for g in (busy, *q):
        registry.cancel(g)


def test_sequential_group_runs_one_after_another_and_stops():
    runs = [FakeRun(30), FakeRun(30)]
    group = RunGroup(runs, sequential=True)
    assert group.slots == 1
    group._start()
    _wait(lambda: runs[0].status == "running")
    assert [r.status for r in runs] == ["running", "pending"]
    group.stop()
    group.join(5)
    assert group.done and [r.status for r in runs] == ["stopped", "pending"]


def test_registry_stops_runs_of_gone_sessions_queued_ones_too():
    alive = {"a": True, "b": True}
    registry = RunRegistry(limit=lambda: 2, quota=lambda: 1, grace_s=10, check_every_s=60)
    registry.set_session_check(lambda sid: alive[sid])
    group_a = registry.start("a", RunGroup([FakeRun(30)]))
    queued_a = registry.start("a", RunGroup([FakeRun(30)]))
    group_b = registry.start("b", RunGroup([FakeRun(30)]))
    assert queued_a.state == "queued"
    alive["a"] = False
    assert registry.reap(now=1000.0) == []  # within the grace period
    assert registry.reap(now=1011.0) == ["a"]
    group_a.join(5)
    assert group_a.runs[0].status == "stopped"
    assert queued_a.state == "cancelled" and queued_a.runs[0].status == "pending"
    assert group_b.runs[0].status == "running"
    assert registry.groups("a") == [] and registry.queued_count() == 0
    registry.cancel(group_b)
    group_b.join(5)
