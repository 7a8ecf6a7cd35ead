"""The models the explorer looks at: at initialization, or trained once for every session.

Trained models are shared by every session and keyed by every setting of their training. A
model being trained is one :class:`TrainingRun` in the server's run registry (queued like any
other run); sessions asking for the same settings wait on it, and when the last of them goes
away before it finishes, it is stopped. A finished model of a built-in dataset is kept on disk
under the cache directory (``trained/<sha256 of the key>.pt``), so a restart or another
student never trains it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from core import (
    Dataset,
    LimitError,
    RunConfig,
    RunGroup,
    TrainingRun,
    build_model,
    check_layer_size,
    default_cache_dir,
    describe_layers,
)

from .data import DataChoice, initial_model
from .errors import friendly_errors, plain
from .runs import OPTIMIZER_LABELS, eta_text, run_registry
from .session import SHARED_SESSION

__all__ = [
    "ModelChoice",
    "default_layer",
    "fisher_batch",
    "layer_options",
    "model_store",
    "trained_model",
]

STORE_VERSION = 1  # bump when what a stored model means changes


@dataclass(frozen=True)
class ModelChoice:
    """A model to explore: a key naming it exactly, and the model."""

    key: str
    model: torch.nn.Module
    description: str


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

    def __init__(self, folder: Path | None, max_entries: int = 12) -> None:
        self.folder = folder
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
                    run_registry().start(SHARED_SESSION, group)  # LimitError: nothing stored
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
        run_registry().cancel(entry.group)

    def persist(self, key: str, entry: _Entry) -> None:
        with entry.lock:
            if not entry.saved and isinstance(entry.run, TrainingRun):
                with contextlib.suppress(OSError):  # read-only cache: retrain after restart
                    self._save(key, entry.run)
                entry.saved = True


@st.cache_resource
def model_store() -> ModelStore:
    return ModelStore(default_cache_dir() / "trained")


def _persistable(data: DataChoice) -> bool:
    return data.path is None  # built-in data only: visitors' files are not kept


def trained_model(
    data: DataChoice,
    ds: Dataset,
    preset: str,
    seed: int,
    optimizer: str,
    settings: dict,
    steps: int,
    batch_size: int = 128,
) -> ModelChoice:
    """The preset trained for ``steps`` with ``optimizer`` and its ``settings`` (``lr``, …;
    made a run by :meth:`core.RunConfig.from_settings`), shared by every session: shows the
    queue place or a progress bar with the time left while it trains, and stops the page with
    a message if the settings are invalid or the run fails."""
    with friendly_errors("Training settings"):
        config = RunConfig.from_settings(
            data.name, optimizer, **settings, preset=preset, seed=seed, steps=steps,
            batch_size=batch_size, eval_every=max(steps, 1), data_path=data.path,
        )  # fmt: skip
    options = ",".join(f"{k}={v}" for k, v in sorted(config.optimizer.to_dict().items()))
    key = f"{data.key}|{preset}|seed={seed}|{options}|steps={steps}|batch={batch_size}"
    init = initial_model(data.key, preset, seed, ds)

    def make_run() -> TrainingRun:
        return TrainingRun(config, dataset=ds, model=init)

    def make_model() -> torch.nn.Module:
        return build_model(preset, input_dim=ds.input_dim, loss=ds.loss, seed=seed)

    store = model_store()
    with friendly_errors("Training"):
        entry = store.acquire(key, make_run, make_model)
    label = OPTIMIZER_LABELS.get(config.optimizer.name, config.optimizer.name)
    try:
        if not entry.run.done:
            line = st.empty()
            while not entry.run.done:
                if entry.group is not None and entry.group.queued:
                    place = run_registry().position(entry.group)
                    line.info(
                        f"Waiting for a free training slot to train the model: place "
                        f"{place or '…'} in the queue. Switch to *at initialization* to "
                        "explore now."
                    )
                elif entry.group is not None and entry.group.state == "cancelled":
                    break
                else:
                    run = entry.run
                    line.progress(
                        min(max(run.progress, 0.0), 1.0),
                        text=f"Training {label}: {run.progress:.0%}{eta_text(run)}",
                    )
                time.sleep(0.25)
            line.empty()
    finally:
        store.release(key, entry)
    run = entry.run
    if _persistable(data):
        store.persist(key, entry)
    if run.status == "diverged":
        st.error(
            f"**Training diverged.** {plain(run.message)} The explorer shows the last finite "
            "parameters."
        )
    elif run.status != "finished":
        st.error(
            f"**Training did not finish** ({run.status}): {plain(run.message)} Change a "
            "setting or reload the page to train again."
        )
        st.stop()
    records = run.dataframe()
    loss = records["train_loss"].dropna() if len(records) else []
    last = f", last training loss {loss.iloc[-1]:.4g}" if len(loss) else ""
    return ModelChoice(key, run.model, f"trained {steps} steps with {label}{last}")


def fisher_batch(ds: Dataset, m: int, seed: int) -> torch.Tensor:
    """``m`` training images chosen by a seeded permutation (the Fisher minibatch)."""
    order = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(seed))
    return ds.x_train[order[: min(m, ds.n_train)]]


def layer_options(model: torch.nn.Module) -> dict[str, str]:
    """Layer name → label with its shape and parameter count (and the server limit)."""
    out = {}
    for info in describe_layers(model):
        label = info.label
        try:
            check_layer_size(info.n_params)
        except LimitError:
            label += " — above this server's limit"
        out[info.name] = label
    return out


def default_layer(model: torch.nn.Module) -> str:
    """The smallest layer (the default view stays fast)."""
    infos = describe_layers(model)
    return min(infos, key=lambda i: (i.n_params, i.index)).name
