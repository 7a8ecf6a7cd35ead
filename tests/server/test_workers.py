"""Tests of core.server.workers: the server's pool of worker processes (issue 8)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from core.server.workers import BudgetExceeded, JobCancelled, WorkerDied, WorkerPool


# Jobs: module-level, so that the spawned workers can import them.
def slow_square(x: torch.Tensor, seconds: float, log: str) -> torch.Tensor:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)


def pid() -> int:
    return os.getpid()


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2, max_results=8)
    yield p
    p.close()


def _get(pool, key, fn, *args, budget_s=30.0):
    job = pool.acquire(key, fn, *args, budget_s=budget_s)
    try:
        assert job.wait(60)
        return job.result()
    finally:
        pool.release(job)


def test_result_crosses_the_process_boundary_by_value(pool, tmp_path):
    x = torch.arange(6.0, dtype=torch.float64)
    out = _get(pool, "sq", slow_square, x, 0.0, str(tmp_path / "log"))
    torch.testing.assert_close(out, x * x, rtol=0, atol=0)
    assert int((tmp_path / "log").read_text()) != os.getpid()  # ran in a worker


def test_identical_work_is_done_once_across_waiters(pool, tmp_path):
    log = tmp_path / "log"
    x = torch.ones(3)
    results, barrier = [], threading.Barrier(8)

    def session():
        barrier.wait()
        results.append(_get(pool, "same", slow_square, x, 0.5, str(log)))

    threads = [threading.Thread(target=session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    assert len(log.read_text().splitlines()) == 1  # computed once
    assert _get(pool, "same", slow_square, x, 0.5, str(log)) is not None  # cached: no rerun
    assert len(log.read_text().splitlines()) == 1


def test_errors_of_the_job_arrive_as_themselves_and_are_not_cached(pool):
    with pytest.raises(ValueError, match="bad input"):
        _get(pool, "fail", fail, "bad input")
    with pytest.raises(ValueError, match="again"):
        _get(pool, "fail", fail, "again")  # retried, not the cached failure


def test_budget_stops_a_job_and_the_pool_goes_on(pool, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded, match="0.5 s"):
        _get(pool, "long", slow_square, torch.ones(1), 30.0, str(tmp_path / "l"), budget_s=0.5)
    assert time.monotonic() - t0 < 10
    assert _get(pool, "after", slow_square, torch.ones(1), 0.0, str(tmp_path / "l")) == 1


def test_last_waiter_leaving_kills_the_running_job(pool, tmp_path):
    before = set(pool.worker_pids())
    job = pool.acquire("abandoned", slow_square, torch.ones(1), 30.0, str(tmp_path / "a"),
                       budget_s=60)  # fmt: skip
    deadline = time.monotonic() + 20
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "running"
    t0 = time.monotonic()
    pool.release(job)
    assert job.wait(10)
    assert time.monotonic() - t0 < 2  # prompt
    assert job.state == "cancelled"
    with pytest.raises(JobCancelled):
        job.result()
    assert set(pool.worker_pids()) != before  # its process was replaced
    assert pool.stats()["running"] == 0


def test_a_second_waiter_keeps_the_job_alive(pool, tmp_path):
    log = str(tmp_path / "b")
    first = pool.acquire("shared", slow_square, torch.ones(1), 0.5, log, budget_s=30)
    second = pool.acquire("shared", slow_square, torch.ones(1), 0.5, log, budget_s=30)
    assert first is second
    pool.release(first)
    assert second.wait(30) and second.state == "done"
    pool.release(second)


def test_a_dying_worker_fails_only_its_job(pool, tmp_path):
    with pytest.raises(WorkerDied, match="exit code 3"):
        _get(pool, "die", die)
    assert _get(pool, "alive", slow_square, torch.ones(2), 0.0, str(tmp_path / "d")).sum() == 2


def test_cache_is_bounded(pool, tmp_path):
    for i in range(12):
        _get(pool, f"k{i}", slow_square, torch.ones(1) * i, 0.0, str(tmp_path / "c"))
    assert pool.stats()["cached"] <= 8


def test_inline_pool_deduplicates_and_propagates(tmp_path: Path):
    inline = WorkerPool(0)
    log = tmp_path / "log"
    a = _get(inline, "k", slow_square, torch.ones(2), 0.0, str(log))
    b = _get(inline, "k", slow_square, torch.ones(2), 0.0, str(log))
    assert a is b and int(log.read_text()) == os.getpid()
    with pytest.raises(ValueError, match="x"):
        _get(inline, "f", fail, "x")


def test_a_view_past_its_budget_gets_a_message_saying_how_to_get_it(pool, monkeypatch, tmp_path):
    """The explorer's compute glue (pages/ui/compute.py) over a real pool: work past the
    view's budget stops, with a message naming what was skipped and how to get it."""
    from pages.ui import compute

    monkeypatch.setattr(compute, "pool", lambda: pool)
    monkeypatch.setenv("KRONOSCOPE_VIEW_BUDGET_S", "1")
    assert compute.start_view() == 1.0
    log = str(tmp_path / "v")
    t0 = time.monotonic()
    out = compute.compute_all(
        [
            ("quick", slow_square, (torch.ones(2), 0.0, log), "KFAC", "pick fewer"),
            ("slow", slow_square, (torch.ones(2), 30.0, log), "Deflation", "run the CLI"),
        ]
    )
    assert time.monotonic() - t0 < 10
    assert out["quick"].sum() == 2
    message = str(out["slow"])
    assert isinstance(out["slow"], compute.BudgetError)
    assert "Deflation was stopped after 1 s" in message and "run the CLI" in message
    assert "KRONOSCOPE" not in message
    deadline = time.monotonic() + 10
    while pool.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats()["running"] == 0  # the abandoned job was stopped, not left running
