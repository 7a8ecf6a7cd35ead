"""The objects one server process shares between its visitors, created once and closed at exit.

Why not ``st.cache_resource``: Streamlit's websocket protocol has a ``clear_cache`` back message
that any client may send, viewer mode or not, and it empties every ``st.cache_resource`` and
``st.cache_data`` of the process. Shared services kept there were rebuilt by it: the old worker
pool was never closed (two more processes and ~490 MiB per message), every visitor's uploads
disappeared and the run limit broke (issue 17). Here they are module state of the server
process, which no client message reaches; the app uses no Streamlit cache at all.

:class:`Services` holds the worker pool, the run registry, the upload store, the trained-model
store and two bounded caches of values every session reads but never mutates (datasets, models
at initialization). :func:`shared_services` creates it on first use, with the settings of
:mod:`core.settings`, and registers :meth:`Services.close` at exit. A janitor thread removes
the uploads of ended sessions and hands freed memory back to the system (glibc's
``malloc_trim``) once a minute.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .. import settings
from ..training.datasets import default_cache_dir
from .model_store import ModelStore
from .run_queue import RunRegistry
from .uploads import UploadStore
from .workers import WorkerPool

__all__ = ["BoundedCache", "Services", "release_memory", "shared_services"]

V = TypeVar("V")
MiB = 2**20


class BoundedCache(Generic[V]):
    """Values made once per key and shared (never mutated by readers), least recently used
    first out beyond ``max_entries`` or ``max_bytes`` (``size`` measures a value). Two callers
    asking for a key being made wait for the one making it (one load, not two)."""

    def __init__(
        self, max_entries: int, max_bytes: int, size: Callable[[V], int] = lambda _v: 0
    ) -> None:
        self.max_entries, self.max_bytes, self._size = max_entries, max_bytes, size
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key][0]
                maker = self._making.get(key)
                if maker is None:
                    maker = self._making[key] = threading.Lock()
                    maker.acquire()
                    break
            with maker:  # someone else makes it: wait, then look again
                pass
        try:
            value = make()
            with self._lock:
                self._values[key] = (value, self._size(value))
                self._evict()
            return value
        finally:
            with self._lock:
                del self._making[key]
            maker.release()

    def _evict(self) -> None:
        """Drop the least recently used values beyond the bounds (lock held); the newest value
        always stays, even alone above ``max_bytes``."""
        total = sum(n for _v, n in self._values.values())
        while len(self._values) > 1 and (
            len(self._values) > self.max_entries or total > self.max_bytes
        ):
            _key, (_value, n) = self._values.popitem(last=False)
            total -= n

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors a dataset holds (its train and test images)."""
    return sum(
        t.numel() * t.element_size()
        for t in (getattr(value, "x_train", None), getattr(value, "x_test", None))
        if t is not None
    )


_libc = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_memory() -> None:
    """Hand memory the allocator keeps after large frees back to the system (glibc only;
    elsewhere nothing to do). Freed tensors of a finished load otherwise stay in the process's
    resident size."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


@dataclass(eq=False)
class Services:
    """Everything one server process shares between sessions (see the module docstring)."""

    pool: WorkerPool
    runs: RunRegistry
    uploads: UploadStore
    models: ModelStore
    datasets: BoundedCache = field(
        default_factory=lambda: BoundedCache(6, 768 * MiB, size=_tensor_bytes)
    )
    initial_models: BoundedCache = field(default_factory=lambda: BoundedCache(16, 1 << 62))
    #: plotly figures of the explorer, built once per key: building one is most of a cached
    #: view's time in the web server (0.11 of 0.15 s for the default block view)
    figures: BoundedCache = field(default_factory=lambda: BoundedCache(96, 1 << 62))
    _closed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._janitor, name="kronoscope-janitor", daemon=True).start()

    def _janitor(self, every_s: float = 60.0) -> None:
        while not self._closed.wait(every_s):
            with contextlib.suppress(OSError):
                self.uploads.sweep()
            release_memory()

    def close(self) -> None:
        """Stop every run and the worker processes (at the server's exit)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.runs.stop_all()
        self.pool.close()


_lock = threading.Lock()
_services: Services | None = None


def shared_services(session_alive: Callable[[str], bool] | None = None) -> Services:
    """This process's :class:`Services`, created on the first call (``session_alive`` tells
    whether a session still exists; it is taken from that first call)."""
    global _services
    with _lock:
        if _services is None:
            alive = session_alive or (lambda _sid: True)
            runs = RunRegistry()
            runs.set_session_check(alive)
            cache = default_cache_dir()
            _services = Services(
                pool=WorkerPool(
                    settings.worker_count(),
                    torch_threads=settings.torch_threads(),
                    recycle_after=settings.get("KRONOSCOPE_WORKER_RECYCLE_JOBS"),
                    max_worker_rss_mb=settings.get("KRONOSCOPE_WORKER_MAX_RSS_MB"),
                ),
                runs=runs,
                uploads=UploadStore(
                    cache / "uploads",
                    per_visitor_mb=settings.get("KRONOSCOPE_UPLOAD_SESSION_MB"),
                    total_mb=settings.get("KRONOSCOPE_UPLOAD_TOTAL_MB"),
                    session_alive=alive,
                ),
                models=ModelStore(cache / "trained", runs),
            )
            atexit.register(_services.close)
        return _services
