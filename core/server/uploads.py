"""Visitors' uploaded files on disk: one folder per session, bounded per session and per
server, removed when the session ends and when the server starts.

A file is stored under its content hash (equal uploads are kept once) and is never shown to
anyone by its server path. Parsing it is not done here: the web app hands the path to a worker
process (:func:`core.server.jobs.visitor_dataset`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from ..training.datasets import DatasetError

__all__ = ["UploadStore"]


class UploadStore:
    """Uploaded files under ``root``: one folder per visitor (a browser, all its tabs), one
    sub-folder per session, with a quota per visitor and one for the server.

    The root is emptied when the store is created (server start) and a session's folder is
    removed once the session has ended (checked at every upload, and every minute by the
    server's janitor: :mod:`core.server.services`). ``session_alive(session_id)`` tells whether
    a session still exists (the web app passes Streamlit's runtime).
    """

    def __init__(
        self,
        root: Path,
        *,
        per_visitor_mb: int,
        total_mb: int,
        session_alive: Callable[[str], bool] = lambda _sid: True,
    ) -> None:
        self.root = root
        self.session_alive = session_alive
        self.per_visitor = per_visitor_mb * 2**20
        self.total = total_mb * 2**20
        self._lock = threading.Lock()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _size(folder: Path) -> int:
        return (
            sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            if folder.exists()
            else 0
        )

    def sweep(self) -> None:
        """Remove the folders of sessions that have ended, then emptied visitor folders."""
        with self._lock:
            for visitor in self.root.iterdir():
                for folder in visitor.iterdir():
                    if not self.session_alive(folder.name):
                        shutil.rmtree(folder, ignore_errors=True)
                if not any(visitor.iterdir()):
                    visitor.rmdir()

    def save(self, sid: str, raw: bytes, suffix: str, visitor: str = "") -> tuple[Path, str]:
        """Keep ``raw`` for session ``sid`` of ``visitor`` (default: the session alone); returns
        its path and content hash. Raises :class:`DatasetError` when a quota would be exceeded
        (the message says which)."""
        digest = hashlib.sha256(raw).hexdigest()[:24]
        self.sweep()
        with self._lock:
            # Streamlit's session ids are UUIDs: the folder is named by the id, so that the
            # sweep can ask whether its session still exists
            mine = self.root / _safe(visitor or sid)
            folder = mine / _safe(sid)
            path = folder / f"{digest}{suffix}"
            if path.exists():
                return path, digest
            if self._size(mine) + len(raw) > self.per_visitor:
                raise DatasetError(
                    f"your uploads would exceed {self.per_visitor / 2**20:.0f} MB, this "
                    "server's limit per visitor: close your other tabs or reload the page to start "
                    "afresh."
                )
            if self._size(self.root) + len(raw) > self.total:
                raise DatasetError(
                    "this server's space for uploads is full; try again later, or use a "
                    "built-in dataset."
                )
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(raw)
            tmp.replace(path)
        return path, digest


def _safe(name: str) -> str:
    """``name`` as a folder name (session ids are UUIDs, visitor names hex digests)."""
    return name if re.fullmatch(r"[\w-]{1,64}", name) else "unnamed"
