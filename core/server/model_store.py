"""Trained models shared by every session: in memory (bounded) and on disk.

A model being trained is one :class:`~core.training.runner.TrainingRun` in the server's run
registry, held by the store (owner :data:`SHARED_SESSION`), not by the session that asked
first; sessions asking for the same key wait on it, and when the last of them goes away before
it finishes, it is stopped. A finished model of a built-in dataset is kept on disk
(``<folder>/<sha256 of the key>.pt``), so a restart or another student never trains it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..training.runner import TrainingRun
from .run_queue import RunGroup, RunRegistry

__all__ = ["SHARED_SESSION", "STORE_VERSION", "ModelStore", "StoredRun"]

#: The owner of work done for every session (the explorer's trained models): always alive.
SHARED_SESSION = "shared"
STORE_VERSION = 1  # bump when what a stored model means changes


@dataclass(eq=False)
class StoredRun:
    """A finished training read back from disk: what a finished :class:`TrainingRun` offers."""

    model: torch.nn.Module
    records: list[dict]
    status: str = "finished"
    message: str = ""
    progress: float = 1.0
    done: bool = True

    def dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)


@dataclass(eq=False)
class _Entry:
    run: TrainingRun | StoredRun
    group: RunGroup | None = None
    waiters: int = 0
    saved: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelStore:
    """Trained models shared by every session, in memory (bounded) and on disk."""

    def __init__(self, folder: Path | None, registry: RunRegistry, max_entries: int = 12) -> None:
        self.folder = folder
        self.registry = registry
        self.max_entries = max_entries
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def _file(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"

    def _load(self, key: str, make_model: Callable[[], torch.nn.Module]) -> StoredRun | None:
        path = self._file(key)
        if path is None or not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") != key or blob.get("version") != STORE_VERSION:
                return None
            model = make_model()
            model.load_state_dict(blob["state"])
        except Exception:  # a damaged or foreign file: train again
            return None
        return StoredRun(model, list(blob["records"]), blob["status"], blob["message"])

    def _save(self, key: str, run: TrainingRun) -> None:
        path = self._file(key)
        if path is None or run.status not in ("finished", "diverged"):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "key": key,
            "version": STORE_VERSION,
            "state": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "records": run.records(),
            "status": run.status,
            "message": run.message,
        }
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        torch.save(blob, tmp)
        tmp.replace(path)  # atomic: another process never reads half a file

    def acquire(
        self,
        key: str,
        make_run: Callable[[], TrainingRun],
        make_model: Callable[[], torch.nn.Module],
    ) -> _Entry:
        """The entry for ``key``: in memory, on disk, or a new run queued in the registry."""
        with self.lock:
            entry = self.entries.get(key)
            cancelled = entry is not None and entry.group is not None and entry.group.done
            if entry is not None and (
                entry.run.status in ("stopped", "failed") or (cancelled and not entry.run.done)
            ):
                del self.entries[key]
                entry = None
            if entry is None:
                stored = self._load(key, make_model)
                if stored is not None:
                    entry = _Entry(stored, saved=True)
                else:
                    run = make_run()
                    group = RunGroup([run], label="explorer training")
                    # held by the store, not by the session that came first: the store stops
                    # it when its last waiter leaves (release)
                    self.registry.start(SHARED_SESSION, group)  # LimitError: nothing stored
                    entry = _Entry(run, group)
                self.entries[key] = entry
                while len(self.entries) > self.max_entries:
                    self.entries.popitem(last=False)
            self.entries.move_to_end(key)
            entry.waiters += 1
            return entry

    def release(self, key: str, entry: _Entry) -> None:
        """A session stops waiting; the last one leaving an unfinished run stops it."""
        with self.lock:
            entry.waiters = max(0, entry.waiters - 1)
            if entry.waiters or entry.run.done or entry.group is None:
                return
            if self.entries.get(key) is entry:
                del self.entries[key]
        self.registry.cancel(entry.group)

    def persist(self, key: str, entry: _Entry) -> None:
        with entry.lock:
            if not entry.saved and isinstance(entry.run, TrainingRun):
                with contextlib.suppress(OSError):  # read-only cache: retrain after restart
                    self._save(key, entry.run)
                entry.saved = True
