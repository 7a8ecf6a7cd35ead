"""Tests of core.server.workers: the server's pool of worker processes (issue 8)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.server.workers import (
    BudgetExceeded,
    JobCancelled,
    JobError,
    QueueFull,
    WorkerDied,
    WorkerPool,
)


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


def gated_stamp(gate: str) -> tuple[int, float]:
    """Like :func:`stamp`, but runs until the file ``gate`` exists (the test says when)."""
    started = time.time()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid(), started


def stamp(seconds: float, *_tag: object) -> tuple[int, float]:
    """Which worker ran the job and when it started (wall clock, comparable across processes)."""
    started = time.time()
    time.sleep(seconds)
    return os.getpid(), started


_HOARD: list[bytes] = []  # what hoard() keeps in a worker, as a module-level cache would


def hoard(mb: int) -> int:
    _HOARD.append(b"\x01" * (mb << 20))  # written, so resident
    return os.getpid()


def blas_threads() -> dict[str, int]:
    """The thread count of every BLAS library loaded once torch and SciPy's LAPACK are."""
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    import threadpoolctl

    return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


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


def test_every_blas_in_a_worker_uses_the_torch_thread_count(pool):
    """A worker's intra-op threads are capped (KRONOSCOPE_TORCH_THREADS, 1 here), SciPy's
    OpenBLAS included: the engine's dense eigenproblems and MINRES run on it."""
    threads = _get(pool, "blas", blas_threads)
    assert threads and set(threads.values()) == {1}, threads


def test_errors_of_the_job_arrive_as_themselves_and_are_not_cached(pool):
    with pytest.raises(ValueError, match="bad input"):
        _get(pool, "fail", fail, "bad input")
    with pytest.raises(ValueError, match="again"):
        _get(pool, "fail", fail, "again")  # retried, not the cached failure


def test_budget_stops_a_job_and_the_pool_goes_on(pool, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded, match="0.5 s"):
        _get(pool, "long", slow_square, torch.ones(1), 30.0, str(tmp_path / "l"), budget_s=0.5)
    assert time.monotonic() - t0 < 25  # stopped, not run to its end at 30 s
    assert _get(pool, "after", slow_square, torch.ones(1), 0.0, str(tmp_path / "l")) == 1


def test_last_waiter_leaving_kills_the_running_job(pool, tmp_path):
    before = set(pool.worker_pids())
    job = pool.acquire("abandoned", slow_square, torch.ones(1), 30.0, str(tmp_path / "a"),
                       budget_s=60)  # fmt: skip
    deadline = time.monotonic() + 20
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "running"
    pool.release(job)
    assert job.wait(20)  # killed: the job itself would sleep 30 s
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

    monkeypatch.setattr(compute, "services", lambda: SimpleNamespace(pool=pool))
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
    assert time.monotonic() - t0 < 25  # the 30-s job was stopped at its budget
    assert out["quick"].sum() == 2
    message = str(out["slow"])
    assert isinstance(out["slow"], compute.BudgetError)
    assert "Deflation was stopped after 1 s" in message and "run the CLI" in message
    assert "KRONOSCOPE" not in message
    deadline = time.monotonic() + 10
    while pool.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats()["running"] == 0  # the abandoned job was stopped, not left running


# -- owners, lanes, caps, recycling ----------------------------------------------------------


def _wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _release_all(pool, jobs) -> None:
    for job in jobs:
        pool.release(job)


def test_a_new_visitors_view_starts_at_once_behind_eight_heavy_jobs():
    """Two workers, eight 3-s heavy jobs of four other visitors queued or running: a new
    visitor's cheap view starts within a second (one FIFO queue made it wait 12 s here, 62 s
    on the server), because heavy jobs may hold only one of the two workers."""
    pool = WorkerPool(2)
    try:
        warm = [pool.acquire(f"warm{i}", stamp, 0.5, budget_s=30, owner="w") for i in range(2)]
        assert all(j.wait(30) for j in warm)
        assert len({j.result()[0] for j in warm}) == 2  # both workers up, torch imported
        _release_all(pool, warm)

        heavy = [  # 30 s each: none can end before the view unless the view waited for it
            pool.acquire(f"heavy{i}", stamp, 30.0, budget_s=60, owner=f"tabs{i % 4}", lane="heavy")
            for i in range(8)
        ]
        assert _wait_until(lambda: any(j.state == "running" for j in heavy))
        t0 = time.time()
        view = pool.acquire("view", stamp, 0.0, budget_s=30, owner="newcomer")
        assert view.wait(25), "the view did not finish"
        _worker, started = view.result()
        waited_ms, done_ms = (started - t0) * 1e3, (time.time() - t0) * 1e3
        print(
            f"\nview behind 8 heavy jobs: started in {waited_ms:.1f} ms, done in {done_ms:.1f} ms"
        )
        assert not any(j.done for j in heavy)  # it went ahead of every heavy job
        assert sum(j.state == "running" for j in heavy) <= 1  # one worker kept for views
        assert sum(j.state == "queued" for j in heavy) >= 6
        pool.release(view)
        _release_all(pool, heavy)
        assert all(j.wait(10) for j in heavy)
        assert {j.state for j in heavy} == {"cancelled"}
    finally:
        pool.close()


def test_owners_are_served_round_robin_and_views_go_first_with_one_worker(tmp_path):
    """One worker: the queue alternates between owners (first-in-first-out within each), and
    a view jumps queued heavy jobs but waits for the heavy job already running."""
    pool = WorkerPool(1)
    try:
        gate = tmp_path / "gate"  # a0 holds the only worker until every job is queued
        jobs = {
            "a0": pool.acquire("a0", gated_stamp, str(gate), budget_s=90, owner="a", lane="heavy")
        }
        assert _wait_until(lambda: jobs["a0"].state == "running")  # takes the only worker
        for name, owner, lane in [
            ("a1", "a", "view"),
            ("a2", "a", "view"),
            ("a3", "a", "heavy"),
            ("a4", "a", "view"),
            ("b1", "b", "view"),
            ("b2", "b", "view"),
            ("c1", "c", "heavy"),
            ("c2", "c", "view"),
        ]:
            jobs[name] = pool.acquire(name, stamp, 0.1, name, budget_s=30, owner=owner, lane=lane)
        assert jobs["a0"].state == "running"
        gate.touch()
        assert all(j.wait(60) for j in jobs.values())
        order = sorted(jobs, key=lambda n: jobs[n].result()[1])
        # views first, round robin over a, b, c (c's first is its view); then heavy jobs
        assert order == ["a0", "b1", "c2", "a1", "b2", "a2", "a4", "c1", "a3"], order
        assert pool.heavy_workers == 1  # processes == 1: heavy work may use the only worker
        _release_all(pool, jobs.values())
    finally:
        pool.close()


def test_queue_caps_refuse_only_the_owner_over_them():
    pool = WorkerPool(1, max_queued_per_owner=2, max_queued=3)
    held = []
    try:
        blocker = pool.acquire("blocker", stamp, 30.0, budget_s=60, owner="a")
        held.append(blocker)
        assert _wait_until(lambda: blocker.state == "running")  # running jobs do not count
        held += [pool.acquire(f"a{i}", stamp, 0.0, i, budget_s=30, owner="a") for i in (1, 2)]
        with pytest.raises(QueueFull, match="too much work waiting.*close other tabs") as err:
            pool.acquire("a3", stamp, 0.0, 3, budget_s=30, owner="a")
        assert isinstance(err.value, JobError)
        shared = pool.acquire("a1", stamp, 0.0, 1, budget_s=30, owner="b")  # joining: no cap
        held.append(shared)
        assert shared is held[1] and shared.owner == "a"  # keeps its first owner
        held.append(pool.acquire("b1", stamp, 0.0, budget_s=30, owner="b"))  # b unaffected
        with pytest.raises(QueueFull, match="server has too much work waiting"):
            pool.acquire("c1", stamp, 0.0, budget_s=30, owner="c")  # 3 queued on the server
        pool.release(held.pop())  # b1 dropped from the queue: room again
        held.append(pool.acquire("c1", stamp, 0.0, budget_s=30, owner="c"))
        assert pool.stats()["queued"] == 3
        with pytest.raises(ValueError, match="lane"):
            pool.acquire("x", stamp, 0.0, budget_s=30, lane="batch")
    finally:
        _release_all(pool, held)
        pool.close()
    assert all(j.done for j in held)


def test_a_worker_is_recycled_after_recycle_after_jobs():
    pool = WorkerPool(1, recycle_after=2)
    try:
        before = pool.worker_pids()
        pids = [_get(pool, f"p{i}", pid) for i in range(3)]
        assert pids[0] == pids[1] == before[0] != pids[2]  # replaced between jobs 2 and 3
        assert pool.worker_pids() == [pids[2]] and pool.stats()["recycled"] == 1
        assert not Path(f"/proc/{pids[0]}").exists()  # the old process is gone
    finally:
        pool.close()


def test_a_worker_holding_too_much_memory_is_recycled():
    """A job keeps ~200 MB in a module-level list: after it, the worker's resident memory is
    past the limit, so it is replaced before the next job, not killed during this one."""
    pool = WorkerPool(1)
    try:
        baseline = _get(pool, "rss", rss_mb)  # torch alone is ~200 MB here
        pool.max_worker_rss_mb = baseline + 100
        first = _get(pool, "small", hoard, 10)
        assert _get(pool, "pid", pid) == first and pool.stats()["recycled"] == 0
        assert _get(pool, "big", hoard, 200) == first  # finished in the same process
        assert _get(pool, "pid after", pid) != first
        assert pool.stats()["recycled"] == 1
    finally:
        pool.close()


def test_close_is_idempotent_and_cancels_everything():
    pool = WorkerPool(1)
    running = pool.acquire("r", stamp, 30.0, budget_s=60, owner="a")
    queued = pool.acquire("q", stamp, 0.0, budget_s=60, owner="b", lane="heavy")
    assert _wait_until(lambda: running.state == "running")
    pids = pool.worker_pids()
    pool.close()
    pool.close()
    assert running.wait(5) and queued.wait(5)
    assert running.state == queued.state == "cancelled"
    assert pool.worker_pids() == [] and not Path(f"/proc/{pids[0]}").exists()
    with pytest.raises(JobError, match="closed"):
        pool.acquire("late", pid, budget_s=5)
    inline = WorkerPool(0)
    assert _get(inline, "i", stamp, 0.0, budget_s=5)[0] == os.getpid()
    inline.close()
    inline.close()
