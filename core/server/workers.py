"""A bounded pool of worker processes for a shared server's heavy numerics.

Why processes: the web server answers every session, its health endpoint and its websockets
from one Python process. Numerics written in Python (capture, Krylov loops, metrics) hold the
GIL, so ten sessions computing in threads share one core and starve the event loop (issue 8:
health checks stalled up to 20 s while the server used 1.15 of its 2 cores). Here each unit of
work runs in one of ``processes`` child processes; the server's threads only wait.

What the pool guarantees:

* **Identical work is done once.** A job is named by a key that covers every setting that
  affects its result. While a job with that key is queued or running, another caller gets the
  same :class:`Job` and waits for it (in-flight de-duplication); a finished job's result is
  kept (bounded LRU with a time to live) and handed out again. A job shared that way keeps the
  ``owner`` and ``lane`` of the caller who queued it first: it counts against that visitor's
  queue and is scheduled as theirs, even after they released it while others still wait.
* **Visitors are served fairly.** Every job names its ``owner`` (the visitor: an opaque
  string). Queued jobs wait in one first-in-first-out line per owner, and a worker that frees
  takes the head of the line of the owner with the fewest running jobs, among those the one
  served least recently (never served, or idle since: first). Another visitor's job behind
  one visitor's eight tabs of work therefore waits for a worker to free, not for the whole
  backlog (with one first-in-first-out queue a cheap view once waited 62 s).
* **Views are never stuck behind heavy work.** A job's ``lane`` is ``"view"`` (interactive,
  cheap) or ``"heavy"`` (slow metrics, large batches, training-like work). A freed worker takes
  a queued view before any heavy job, and heavy jobs occupy at most ``heavy_workers`` processes
  at once (default ``processes - 1``), so with two or more processes at least one worker is
  always free for views. With ``processes=1`` there is nothing to reserve: heavy jobs may use
  the only worker, and a view still goes first in the queue but waits for the heavy job
  running there (at most its budget).
* **Bounded queues.** One owner may have at most ``max_queued_per_owner`` jobs queued (not
  counting running ones), the server at most ``max_queued``; past that :meth:`acquire` raises
  :class:`QueueFull` with a message for the visitor, and only the caller over the limit is
  refused. Joining a job already queued or running, or a cached result, is never refused.
* **Bounded work.** A job that runs past its ``budget_s`` is stopped (its process is killed and
  replaced) and fails with :class:`BudgetExceeded`.
* **Cancellable work.** Every caller :meth:`WorkerPool.acquire` s a job and
  :meth:`WorkerPool.release` s it when it no longer needs the result (its session reran or
  closed). A job nobody waits for any more is dropped from the queue, or, when it is already
  running, its process is killed at once.
* **Faults stay contained.** A worker that dies fails only its own job (:class:`WorkerDied`)
  and is replaced; the other workers go on.
* **Memory comes back.** Python's and torch's allocators often keep freed memory from the
  system, and jobs may fill module-level caches, so a worker is retired after
  ``recycle_after`` jobs or when its resident memory (``VmRSS`` in ``/proc/PID/status``; not
  checked where unreadable) after a job exceeds ``max_worker_rss_mb``. This happens between
  jobs, never to a running one: once the job's result is handed over, the old process is
  stopped and its replacement started before the next job is sent (``stats()["recycled"]``).

Results and arguments cross the process boundary by plain :mod:`pickle` (tensors by value),
so a worker never shares memory with the server and a session can never mutate a cached
result of another. An approximation crosses without its damped inverses and dense
eigendecomposition (:meth:`core.engine.approx.Approximation.__getstate__`): n² numbers each,
formed again where a job solves with it. ``processes=0`` runs jobs in the caller's thread
instead (tests, tiny deployments): de-duplication and caching still hold; budgets, kills,
queues, lanes and recycling do not apply.

The pool registers nothing global (no atexit hook, no signal handler): whoever creates it
calls :meth:`WorkerPool.close` (idempotent) when done; its dispatcher threads are daemons.

Workers are fresh interpreters (``python -m core.server.workers``) talking over pipes: forking a
multi-threaded server is unsafe, and :mod:`multiprocessing`'s spawn would run the Streamlit
script (the server's ``__main__``) again in each child.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LANES",
    "BudgetExceeded",
    "Job",
    "JobCancelled",
    "JobError",
    "QueueFull",
    "WorkerDied",
    "WorkerPool",
]

_POLL_S = 0.02  # how often a dispatcher looks at its running job (cancel, budget, death)
LANES = ("view", "heavy")  # a freed worker looks at the lanes in this order


class JobError(RuntimeError):
    """A job did not produce its result for a reason of the pool's, not of its own code."""


class BudgetExceeded(JobError):
    """The job ran longer than its compute budget and was stopped."""


class JobCancelled(JobError):
    """Nobody waited for the job any more, so it was dropped or stopped."""


class WorkerDied(JobError):
    """The worker process running the job ended without an answer (crash, out of memory)."""


class QueueFull(JobError):
    """The job was not queued: its owner (or the whole server) has too much work waiting."""


@dataclass(eq=False)
class Job:
    """One unit of work: ``fn(*args)``, named by ``key``. Thread-safe to wait on.

    ``owner`` and ``lane`` are those of the caller who queued it (see :meth:`WorkerPool.acquire`).
    """

    key: Hashable
    fn: Callable[..., Any]
    args: tuple
    budget_s: float
    owner: str = ""
    lane: str = "view"
    state: str = "queued"  # queued → running → done | failed | cancelled
    waiters: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _value: Any = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)
    _dispatched: bool = field(default=False, repr=False)  # counted in the pool's running

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once the job has finished (in any state)."""
        return self._event.wait(timeout)

    def result(self) -> Any:
        """The job's value, or its error raised again. Call after :meth:`wait` returned True."""
        if not self.done:
            raise RuntimeError(f"job {self.key!r} has not finished")
        if self._error is not None:
            raise self._error
        return self._value

    def _finish(self, state: str, value: Any = None, error: BaseException | None = None) -> None:
        self.state, self._value, self._error = state, value, error
        self.finished_at = time.monotonic()
        self._event.set()


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _rss_mb(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB (``VmRSS``), or None where unreadable
    (not Linux, process gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


_HEADER = struct.Struct("!Q")  # each message: its length, then one pickle


def _pack(obj: Any) -> bytes:
    """One message: may raise whatever pickling ``obj`` raises, before anything is written."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _send(stream, obj: Any) -> None:
    stream.write(_pack(obj))
    stream.flush()


def _receive(stream) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other end closed the pipe")
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the other end closed the pipe mid-message")
    return pickle.loads(payload)


def _worker_main(torch_threads: int) -> None:
    """A worker process: answer ``(fn, args)`` requests read from stdin with
    ``("ok", value)`` or ``("err", exception)`` on stdout until stdin closes. Anything the
    job prints goes to stderr, so it cannot corrupt the replies."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    import torch

    torch.set_num_threads(torch_threads)
    while True:
        try:
            fn, args = _receive(requests)
        except EOFError:
            return
        except Exception as err:  # e.g. the job's module cannot be imported here
            _send(replies, ("err", _portable(err)))
            continue
        try:
            reply = ("ok", fn(*args))
        except Exception as err:
            reply = ("err", _portable(err))
        try:
            _send(replies, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            _send(replies, ("err", RuntimeError(f"the result cannot be sent back: {err}")))


class _Worker:
    """One child process (``python -m core.server.workers``) and the pipes to it; replaced, not
    repaired, when killed or dead. A plain subprocess rather than :mod:`multiprocessing`:
    under Streamlit the ``__main__`` module is the app script, which a spawned child would run
    again."""

    def __init__(self, torch_threads: int) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        # the parent's import path, as multiprocessing's spawn passes it: jobs are pickled by
        # reference to their module, which the child must find the same way
        env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in sys.path if p)])
        # SciPy's own OpenBLAS (the engine's MINRES and small dense eigenproblems) would start
        # one thread per core; it reads this at load, so set it before the child imports SciPy
        env["OPENBLAS_NUM_THREADS"] = str(torch_threads)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.server.workers", str(torch_threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
        )
        if self.process.stdin is None or self.process.stdout is None:  # never with PIPE
            raise RuntimeError("the worker process has no pipes")
        self.stdin: IO[bytes] = self.process.stdin
        self.stdout: IO[bytes] = self.process.stdout
        self.jobs = 0  # jobs it answered (see WorkerPool.recycle_after)

    def send(self, message: bytes) -> None:
        """Write one message made by :func:`_pack`."""
        self.stdin.write(message)
        self.stdin.flush()

    def poll(self, timeout: float) -> bool:
        """True when a reply (or the end of the pipe) can be read."""
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        return bool(ready)

    def receive(self) -> Any:
        return _receive(self.stdout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class WorkerPool:
    """``processes`` worker processes, fed fairly between owners and lanes, with
    de-duplication by key (see the module's docstring for what it guarantees).

    ``max_results``/``ttl_s`` bound the cache of finished results. ``torch_threads``: intra-op
    threads of each worker (1: the workers already use the cores side by side).
    ``heavy_workers``: how many processes heavy jobs may occupy at once (default
    ``max(1, processes - 1)``; ``processes`` or more reserves nothing for views).
    ``max_queued_per_owner``/``max_queued``: how many jobs one owner / the server may have
    queued. ``recycle_after``: jobs a worker runs before it is replaced; ``max_worker_rss_mb``:
    resident memory after a job above which it is replaced (None: never, for either).
    """

    def __init__(
        self,
        processes: int,
        *,
        max_results: int = 128,
        ttl_s: float = 7200.0,
        torch_threads: int = 1,
        heavy_workers: int | None = None,
        max_queued_per_owner: int = 16,
        max_queued: int = 256,
        recycle_after: int | None = 50,
        max_worker_rss_mb: float | None = 1024.0,
    ) -> None:
        if processes < 0:
            raise ValueError(f"processes must be ≥ 0, got {processes}")
        heavy_workers = max(1, processes - 1) if heavy_workers is None else heavy_workers
        if heavy_workers < 1:
            raise ValueError(f"heavy_workers must be ≥ 1, got {heavy_workers}")
        if max_queued_per_owner < 1 or max_queued < 1:
            raise ValueError("max_queued_per_owner and max_queued must be ≥ 1")
        if recycle_after is not None and recycle_after < 1:
            raise ValueError(f"recycle_after must be ≥ 1 or None, got {recycle_after}")
        self.processes = processes
        self.max_results = max_results
        self.ttl_s = ttl_s
        self.heavy_workers = heavy_workers
        self.max_queued_per_owner = max_queued_per_owner
        self.max_queued = max_queued
        self.recycle_after = recycle_after
        self.max_worker_rss_mb = max_worker_rss_mb  # read after every job
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # a job queued, a job settled, closing
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()  # in flight, and finished results
        # the queue: lane → owner → that owner's queued jobs, oldest first
        self._queues: dict[str, dict[str, deque[Job]]] = {lane: {} for lane in LANES}
        self._queued = 0  # jobs in self._queues
        self._running: dict[str, int] = {}  # owner → jobs running in workers (0: absent)
        self._heavy_running = 0
        self._served: dict[str, int] = {}  # owner → when last served (a serial number)
        self._serial = itertools.count(1)
        self._recycled = 0
        self._cancel: set[Job] = set()
        self._closed = False
        self._torch_threads = torch_threads
        self._workers: list[_Worker | None] = [None] * processes
        self._threads = [
            threading.Thread(target=self._dispatch, args=(i,), name=f"kronoscope-pool-{i}")
            for i in range(processes)
        ]
        for i, t in enumerate(self._threads):
            self._workers[i] = _Worker(torch_threads)
            t.daemon = True
            t.start()

    # -- callers ----------------------------------------------------------------------------
    def acquire(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        *args: Any,
        budget_s: float,
        owner: str = "",
        lane: str = "view",
    ) -> Job:
        """The job named ``key``: a cached or in-flight one, else ``fn(*args)`` newly queued
        for ``owner`` (the visitor, an opaque string) in ``lane`` (``"view"`` or ``"heavy"``).

        The caller counts as a waiter until it calls :meth:`release`. A job joined in flight
        keeps the owner and lane of whoever queued it. Raises :class:`QueueFull` when a new job
        would put ``owner`` past ``max_queued_per_owner`` queued jobs, or the server past
        ``max_queued``. With ``processes=0`` a new job runs here, in the caller's thread,
        before this returns (no queue: owner, lane and the caps do not apply).
        """
        if lane not in LANES:
            raise ValueError(f"lane must be one of {LANES}, got {lane!r}")
        run_here = False
        with self._lock:
            if self._closed:
                raise JobError("the worker pool is closed")
            self._expire()
            job = self._jobs.get(key)
            if job is not None and (job.state in ("failed", "cancelled") or job in self._cancel):
                job = None  # never hand out a failure, or a job being cancelled: run it again
            if job is None:
                if self.processes:
                    self._check_room(owner)
                job = Job(key, fn, args, budget_s, owner=owner, lane=lane)
                self._jobs[key] = job
                if self.processes:
                    self._queues[lane].setdefault(owner, deque()).append(job)
                    self._queued += 1
                    self._cond.notify_all()
                else:
                    run_here = True
            self._jobs.move_to_end(key)
            job.waiters += 1
        if run_here:
            self._run_inline(job)
        return job

    def release(self, job: Job) -> None:
        """The caller no longer needs ``job``; the last waiter of an unfinished job cancels it."""
        with self._lock:
            job.waiters = max(0, job.waiters - 1)
            if job.waiters or job.done:
                return
            if job.state == "queued":
                self._drop(job, JobCancelled("nobody waits for this result any more"))
            else:
                self._cancel.add(job)  # the dispatcher kills its process

    def stats(self) -> dict[str, int]:
        """Counts for logs and tests: queued, running, cached results, workers, and workers
        recycled (replaced after ``recycle_after`` jobs or past ``max_worker_rss_mb``)."""
        with self._lock:
            states = [j.state for j in self._jobs.values()]
            recycled = self._recycled
        return {
            "queued": states.count("queued"),
            "running": states.count("running"),
            "cached": states.count("done"),
            "workers": self.processes,
            "recycled": recycled,
        }

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    def close(self) -> None:
        """Stop the workers; queued and running jobs fail with :class:`JobCancelled`.
        Idempotent; later :meth:`acquire` calls raise :class:`JobError`."""
        with self._lock:
            first = not self._closed
            self._closed = True
            if first:
                for job in [j for j in self._jobs.values() if not j.done]:
                    if job.state == "queued":
                        self._drop(job, JobCancelled("the server is shutting down"))
                    else:
                        self._cancel.add(job)
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(10)

    # -- internals (the lock is held where a name says so) -------------------------------
    def _check_room(self, owner: str) -> None:
        """Raise :class:`QueueFull` unless ``owner`` may queue one more job (lock held)."""
        mine = sum(len(q.get(owner, ())) for q in self._queues.values())
        if mine >= self.max_queued_per_owner:
            raise QueueFull(
                f"You have too much work waiting ({mine} computations queued). Wait for it "
                "to finish, or close other tabs of this app, then try again."
            )
        if self._queued >= self.max_queued:
            raise QueueFull(
                f"The server has too much work waiting ({self._queued} computations queued "
                "for all visitors). Wait a minute, then try again."
            )

    def _unqueue(self, job: Job) -> None:
        """Take a queued job out of its owner's line (lock held)."""
        lines = self._queues[job.lane]
        line = lines.get(job.owner)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove(job)
            self._queued -= 1
        if not line:
            del lines[job.owner]
            self._forget_if_idle(job.owner)

    def _forget_if_idle(self, owner: str) -> None:
        """Drop an owner's bookkeeping once it has nothing queued or running (lock held): the
        tables stay as small as the set of active visitors, and an owner back after a pause
        counts as not served recently."""
        if self._running.get(owner) or any(owner in q for q in self._queues.values()):
            return
        self._running.pop(owner, None)
        self._served.pop(owner, None)

    def _pick(self, lane: str) -> Job | None:
        """Take the next job of ``lane``: the head of the line of the owner with the fewest
        running jobs, then the least recently served, then the oldest head (lock held)."""
        lines = self._queues[lane]
        if not lines:
            return None
        owner = min(
            lines,
            key=lambda o: (
                self._running.get(o, 0),
                self._served.get(o, 0),
                lines[o][0].submitted_at,
            ),
        )
        line = lines[owner]
        job = line.popleft()
        if not line:
            del lines[owner]
        self._queued -= 1
        return job

    def _next_job(self) -> Job | None:
        """The job a free worker runs now, marked running, or None (lock held): a view first;
        a heavy job only while fewer than ``heavy_workers`` heavy jobs run."""
        if self._closed:
            return None
        job = self._pick("view")
        if job is None and self._heavy_running < self.heavy_workers:
            job = self._pick("heavy")
        if job is None:
            return None
        job.state, job.started_at, job._dispatched = "running", time.monotonic(), True
        self._running[job.owner] = self._running.get(job.owner, 0) + 1
        self._served[job.owner] = next(self._serial)
        if job.lane == "heavy":
            self._heavy_running += 1
        return job

    def _drop(self, job: Job, error: JobError) -> None:
        """Finish an unfinished job with ``error`` and forget it (lock held)."""
        if job.state == "queued":
            self._unqueue(job)
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        job._finish("cancelled" if isinstance(error, JobCancelled) else "failed", error=error)

    def _expire(self) -> None:
        """Forget finished results past their time to live or beyond ``max_results`` (lock
        held). In-flight jobs are never evicted: their waiters hold them."""
        now = time.monotonic()
        finished = [k for k, j in self._jobs.items() if j.done]
        stale = [k for k in finished if now - (self._jobs[k].finished_at or now) > self.ttl_s]
        excess = len(finished) - len(stale) - self.max_results
        fresh = [k for k in finished if k not in stale]
        for key in stale + fresh[: max(0, excess)]:
            del self._jobs[key]

    def _settle(self, job: Job, state: str, value: Any = None, error: Any = None) -> None:
        with self._lock:
            self._cancel.discard(job)
            if job._dispatched:  # its worker is free again
                job._dispatched = False
                self._running[job.owner] -= 1
                if job.lane == "heavy":
                    self._heavy_running -= 1
                self._forget_if_idle(job.owner)
                self._cond.notify_all()
            if job.done:  # settled already (dropped at close, or a failure of the pool's)
                return
            if state != "done" and self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            job._finish(state, value, error)
            self._expire()

    def _run_inline(self, job: Job) -> None:
        job.state, job.started_at = "running", time.monotonic()
        try:
            value = job.fn(*job.args)
        except Exception as err:
            self._settle(job, "failed", error=err)
        else:
            self._settle(job, "done", value)

    def _replace(self, slot: int) -> None:
        """Stop the worker of ``slot`` (if any) and start its successor, unless closing."""
        worker, self._workers[slot] = self._workers[slot], None
        if worker is not None:
            worker.kill()
        if not self._closed:
            self._workers[slot] = _Worker(self._torch_threads)

    def _dispatch(self, slot: int) -> None:
        """One dispatcher thread per worker: take a job, send it, watch it, settle it, and
        recycle the worker when it has done enough jobs or holds too much memory."""
        while True:
            with self._cond:
                job = self._next_job()
                while job is None and not self._closed:
                    self._cond.wait()
                    job = self._next_job()
            if job is None:
                break
            try:
                if self._run(slot, job):
                    self._maybe_recycle(slot)
            except Exception as err:  # e.g. no new process could be started: keep serving
                self._settle(job, "failed", error=JobError(f"the worker pool failed: {err!r}"))
                with contextlib.suppress(Exception):
                    self._replace(slot)
        worker = self._workers[slot]
        if worker is not None:
            worker.kill()

    def _run(self, slot: int, job: Job) -> bool:
        """Run ``job`` in the worker of ``slot`` and settle it. True when that worker ran it and
        is still in place (so may be due for recycling), False otherwise."""
        worker = self._workers[slot]
        if worker is None or not worker.alive():
            self._replace(slot)
            worker = self._workers[slot]
            if worker is None:  # closing
                self._settle(job, "cancelled", error=JobCancelled("the server is shutting down"))
                return False
        try:
            message = _pack((job.fn, job.args))
        except Exception as err:  # cannot be pickled (a lambda, an open file): nothing sent
            self._settle(job, "failed", error=_portable(err))
            return False
        try:
            worker.send(message)
        except (OSError, ValueError):  # the worker died before it read the job
            self._settle(job, "failed", error=WorkerDied("the worker process ended"))
            self._replace(slot)
            return False
        return self._watch(slot, worker, job)

    def _maybe_recycle(self, slot: int) -> None:
        """Between jobs: replace the worker of ``slot`` after ``recycle_after`` jobs, or when its
        resident memory is above ``max_worker_rss_mb``."""
        worker = self._workers[slot]
        if worker is None or self._closed:
            return
        worker.jobs += 1
        limit = self.max_worker_rss_mb
        worn = self.recycle_after is not None and worker.jobs >= self.recycle_after
        if not worn and limit is not None:
            rss = _rss_mb(worker.process.pid)
            worn = rss is not None and rss > limit
        if worn:
            self._replace(slot)
            with self._lock:
                self._recycled += 1

    def _watch(self, slot: int, worker: _Worker, job: Job) -> bool:
        deadline = (job.started_at or time.monotonic()) + job.budget_s
        while True:
            status = None
            if worker.poll(_POLL_S):
                try:
                    status, payload = worker.receive()
                except (EOFError, OSError, pickle.UnpicklingError):
                    status = "died"
                if status == "ok":
                    self._settle(job, "done", payload)
                    return True
                if status == "err":
                    self._settle(job, "failed", error=payload)
                    return True
            with self._lock:
                cancelled = job in self._cancel or self._closed
            over = time.monotonic() > deadline
            dead = status == "died" or not worker.alive()
            if cancelled or over or dead:
                worker.kill()
                code = worker.process.returncode
                self._replace(slot)
                if cancelled:
                    error: JobError = JobCancelled("nobody waits for this result any more")
                elif over:
                    error = BudgetExceeded(f"stopped after {job.budget_s:g} s")
                else:
                    error = WorkerDied(f"the worker process ended unexpectedly (exit code {code})")
                self._settle(job, "cancelled" if cancelled else "failed", error=error)
                return False


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
