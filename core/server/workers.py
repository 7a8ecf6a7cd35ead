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
  kept (bounded LRU with a time to live) and handed out again.
* **Bounded work.** A job that runs past its ``budget_s`` is stopped (its process is killed and
  replaced) and fails with :class:`BudgetExceeded`.
* **Cancellable work.** Every caller :meth:`WorkerPool.acquire` s a job and
  :meth:`WorkerPool.release` s it when it no longer needs the result (its session reran or
  closed). A job nobody waits for any more is dropped from the queue, or, when it is already
  running, its process is killed at once.
* **Faults stay contained.** A worker that dies fails only its own job (:class:`WorkerDied`)
  and is replaced; the other workers go on.

Results and arguments cross the process boundary by plain :mod:`pickle` (tensors by value),
so a worker never shares memory with the server and a session can never mutate a cached
result of another. ``processes=0`` runs jobs in the caller's thread instead (tests, tiny
deployments): de-duplication and caching still hold, budgets and kills do not.

Workers are fresh interpreters (``python -m core.server.workers``) talking over pipes: forking a
multi-threaded server is unsafe, and :mod:`multiprocessing`'s spawn would run the Streamlit
script (the server's ``__main__``) again in each child.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BudgetExceeded",
    "Job",
    "JobCancelled",
    "JobError",
    "WorkerDied",
    "WorkerPool",
]

_POLL_S = 0.02  # how often a dispatcher looks at its running job (cancel, budget, death)


class JobError(RuntimeError):
    """A job did not produce its result for a reason of the pool's, not of its own code."""


class BudgetExceeded(JobError):
    """The job ran longer than its compute budget and was stopped."""


class JobCancelled(JobError):
    """Nobody waited for the job any more, so it was dropped or stopped."""


class WorkerDied(JobError):
    """The worker process running the job ended without an answer (crash, out of memory)."""


@dataclass(eq=False)
class Job:
    """One unit of work: ``fn(*args)``, named by ``key``. Thread-safe to wait on."""

    key: str
    fn: Callable[..., Any]
    args: tuple
    budget_s: float
    state: str = "queued"  # queued → running → done | failed | cancelled
    waiters: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _value: Any = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

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


_HEADER = struct.Struct("!Q")  # each message: its length, then one pickle


def _send(stream, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.server.workers", str(torch_threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
        )

    def send(self, obj: Any) -> None:
        _send(self.process.stdin, obj)

    def poll(self, timeout: float) -> bool:
        """True when a reply (or the end of the pipe) can be read."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return bool(ready)

    def receive(self) -> Any:
        return _receive(self.process.stdout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class WorkerPool:
    """``processes`` worker processes fed from one FIFO queue, with de-duplication by key.

    ``max_results``/``ttl_s`` bound the cache of finished results. ``torch_threads``: intra-op
    threads of each worker (1: the workers already use the cores side by side).
    """

    def __init__(
        self,
        processes: int,
        *,
        max_results: int = 128,
        ttl_s: float = 7200.0,
        torch_threads: int = 1,
    ) -> None:
        if processes < 0:
            raise ValueError(f"processes must be ≥ 0, got {processes}")
        self.processes = processes
        self.max_results = max_results
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # in flight, and finished results
        self._queue: queue.Queue[Job | None] = queue.Queue()
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
    def acquire(self, key: str, fn: Callable[..., Any], *args: Any, budget_s: float) -> Job:
        """The job named ``key``: a cached or in-flight one, else ``fn(*args)`` newly queued.

        The caller counts as a waiter until it calls :meth:`release`. With ``processes=0``
        a new job runs here, in the caller's thread, before this returns.
        """
        if self._closed:
            raise JobError("the worker pool is closed")
        run_here = False
        with self._lock:
            self._expire()
            job = self._jobs.get(key)
            if job is not None and job.state in ("failed", "cancelled"):
                job = None  # never hand out a failure again: retry
            if job is None:
                job = Job(key, fn, args, budget_s)
                self._jobs[key] = job
                if self.processes:
                    self._queue.put(job)
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
        """Counts for logs and tests: queued, running, cached results, workers."""
        with self._lock:
            states = [j.state for j in self._jobs.values()]
        return {
            "queued": states.count("queued"),
            "running": states.count("running"),
            "cached": states.count("done"),
            "workers": self.processes,
        }

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    def close(self) -> None:
        """Stop the workers; queued and running jobs fail with :class:`JobCancelled`."""
        with self._lock:
            self._closed = True
            pending = [j for j in self._jobs.values() if not j.done]
            self._cancel.update(pending)
        for _ in self._threads:
            self._queue.put(None)
        for job in pending:
            if job.state == "queued":
                with self._lock:
                    self._drop(job, JobCancelled("the server is shutting down"))
        for t in self._threads:
            t.join(10)

    # -- internals (the lock is held where a name says so) -------------------------------
    def _drop(self, job: Job, error: JobError) -> None:
        """Finish an unfinished job with ``error`` and forget it (lock held)."""
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

    def _dispatch(self, slot: int) -> None:
        """One dispatcher thread per worker: take a job, send it, watch it, settle it."""
        while True:
            job = self._queue.get()
            if job is None:
                break
            with self._lock:
                if job.done:  # dropped while queued
                    continue
                job.state, job.started_at = "running", time.monotonic()
            worker = self._workers[slot]
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.kill()
                worker = self._workers[slot] = _Worker(self._torch_threads)
            try:
                worker.send((job.fn, job.args))
            except (pickle.PicklingError, TypeError, AttributeError) as err:
                self._settle(job, "failed", error=_portable(err))
                continue
            except OSError:  # the worker died before it read the job
                self._settle(job, "failed", error=WorkerDied("the worker process ended"))
                worker.kill()
                self._workers[slot] = _Worker(self._torch_threads)
                continue
            self._watch(slot, worker, job)
        worker = self._workers[slot]
        if worker is not None:
            worker.kill()

    def _watch(self, slot: int, worker: _Worker, job: Job) -> None:
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
                    return
                if status == "err":
                    self._settle(job, "failed", error=payload)
                    return
            with self._lock:
                cancelled = job in self._cancel or self._closed
            over = time.monotonic() > deadline
            dead = status == "died" or not worker.alive()
            if cancelled or over or dead:
                worker.kill()
                code = worker.process.returncode
                self._workers[slot] = None if self._closed else _Worker(self._torch_threads)
                if cancelled:
                    error: JobError = JobCancelled("nobody waits for this result any more")
                elif over:
                    error = BudgetExceeded(f"stopped after {job.budget_s:g} s")
                else:
                    error = WorkerDied(f"the worker process ended unexpectedly (exit code {code})")
                self._settle(job, "cancelled" if cancelled else "failed", error=error)
                return


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
