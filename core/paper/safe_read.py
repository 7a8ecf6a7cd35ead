"""The files of the host's results folder, read for web visitors: never through a link that
leaves the folder, never above a size cap, and parsed once per change of the files.

The "Paper reproductions" page reads folders that ``python -m core reproduce`` wrote into the
host's results folder. A visit must not let a symlink there (planted, or left by a careless
copy) expose a file outside that folder, nor let a huge file cost every visitor seconds of CPU
and gigabytes of memory. So :func:`real_file` refuses any path whose real path leaves the
folder, :func:`read_capped` opens the resolved path without following a link and reads at
most :func:`report_max_bytes`, and :class:`ReportCache` keeps what was made from the files
until their size or modification time changes.

The cache is a plain process-wide object, not ``st.cache_data``: any websocket client can
clear Streamlit's caches (its ``clear_cache`` message), which would let one visitor make the
next ones pay the full parse again.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar, cast

from .. import settings

__all__ = [
    "ReportCache",
    "ReportError",
    "Stamp",
    "read_capped",
    "report_max_bytes",
    "real_file",
    "real_inside",
    "stamp",
]


def report_max_bytes() -> int:
    """Largest file of a report that is read (``KRONOSCOPE_REPORT_MAX_MB``; a larger one is
    refused with a message naming it)."""
    return settings.get("KRONOSCOPE_REPORT_MAX_MB") << 20


#: A file's (size, modification time in ns): when either changes, the file is read again.
Stamp = tuple[int, int]

T = TypeVar("T")


class ReportError(ValueError):
    """A report that cannot be shown. The message is one plain sentence for the visitor that
    names the report's file and what is wrong with it: no server path, no exception text."""


def real_inside(path: str, root_real: str) -> str | None:
    """The real path of ``path`` (links followed) when it lies strictly inside ``root_real`` (a
    real path itself), else ``None``."""
    real = os.path.realpath(path)
    return real if real.startswith(root_real.rstrip(os.sep) + os.sep) else None


def real_file(path: str, root_real: str) -> str | None:
    """The real path of ``path`` (links followed) when it is a regular file strictly inside
    ``root_real`` (a real path itself); ``None`` otherwise, or when it cannot be looked at."""
    real = real_inside(path, root_real)
    if real is None:
        return None
    try:
        return real if stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode) else None
    except OSError:
        return None


def stamp(real: str) -> Stamp:
    """``real``'s (size, mtime_ns), without following a link; raises ``OSError``."""
    st = os.stat(real, follow_symlinks=False)
    return st.st_size, st.st_mtime_ns


def read_capped(real: str, label: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``real`` (from :func:`real_file`), opened without following
    a link (``O_NOFOLLOW``: a link swapped in since it was resolved is refused) and without
    blocking (a FIFO swapped in is refused, not waited on). Refused with :class:`ReportError`,
    whose message starts with ``label`` (e.g. "results.csv of report X"): a file larger than
    ``limit`` (default :func:`report_max_bytes`; its size and the cap named), or one that
    cannot be opened."""
    limit = report_max_bytes() if limit is None else limit
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise ReportError(f"{label} cannot be opened by the server.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ReportError(f"{label} is not a regular file.")
        size = st.st_size
        data = b"" if size > limit else f.read(limit + 1)  # it may have grown since fstat
    if size > limit or len(data) > limit:
        raise ReportError(
            f"{label} is too large to show: {max(size, len(data)):,} bytes, above the cap of "
            f"{limit:,} bytes ({limit / 2**20:g} MiB)."
        )
    return data


class ReportCache:
    """What was made from a report's files, kept until one of them changes: process-wide,
    least recently used first out, at most ``max_entries`` reports and ``max_bytes`` of their
    files (the newest entry is kept even alone above it).

    :meth:`get` loads one report at a time, so visitors who arrive together while a large report
    is being parsed wait for that one parse instead of each running their own (memory peaks at
    one parse). A load that fails with :class:`ReportError` is remembered like a success: a
    malformed large file is not parsed again on every visit either.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # key -> (stamps, value, error message or None)
        self._entries: OrderedDict[Hashable, tuple[tuple[Stamp, ...], object, str | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()  # guards _entries; held only briefly
        self._load_lock = threading.Lock()  # one load at a time

    def get(self, key: Hashable, stamps: tuple[Stamp, ...], load: Callable[[], T]) -> T:
        """The value kept for ``key`` if it was made from files with these ``stamps``; else
        ``load()``'s, kept. Raises the :class:`ReportError` that ``load`` raised (then or on an
        earlier call with the same stamps)."""
        hit = self._lookup(key, stamps)
        if hit is None:
            with self._load_lock:
                hit = self._lookup(key, stamps)  # another visitor may have just loaded it
                if hit is None:
                    try:
                        hit = (load(), None)
                    except ReportError as err:
                        hit = (None, str(err))
                    self._store(key, stamps, *hit)
        value, error = hit
        if error is not None:
            raise ReportError(error)
        return cast(T, value)

    def _lookup(self, key: Hashable, stamps: tuple[Stamp, ...]) -> tuple[object, str | None] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamps:
                return None
            self._entries.move_to_end(key)
            return entry[1], entry[2]

    def _store(self, key: Hashable, stamps: tuple[Stamp, ...], value, error: str | None) -> None:
        with self._lock:
            self._entries[key] = (stamps, value, error)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_entries or self._bytes() > self.max_bytes
            ):
                self._entries.popitem(last=False)

    def _bytes(self) -> int:
        return sum(size for stamps, _, _ in self._entries.values() for size, _ in stamps)
