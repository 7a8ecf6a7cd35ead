"""Where the explorer's data and models come from: dataset choice, host files, uploads.

Visitors never name a server path. A file comes either from an upload, kept under the cache
directory per session (bounded per session and per server, removed when the session ends and
when the server starts, never shown by its server path), or from the data directory the host
configures (``KRONOSCOPE_DATA_DIR``), where visitors pick among the dataset files found
(:func:`core.training.datafiles.list_data_files`). Without that setting there is no path box, and a
``path`` URL parameter is ignored with a notice. The paper's original MNIST and FACES files
are used once they are in the cache directory; a download button appears only when the host
allows downloads (``KRONOSCOPE_ALLOW_DOWNLOADS``, off by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from core import (
    DATASET_SPECS,
    PRESETS,
    Dataset,
    DatasetError,
    build_model,
    cached_dataset,
    data_dir,
    default_cache_dir,
    download_dataset,
    downloads_allowed,
    list_data_files,
    load_dataset,
    load_visitor_dataset,
    resolve_in_dir,
)

from .errors import friendly_errors, plain
from .session import session_alive, session_id
from .urlstate import UrlSettings

__all__ = [
    "DEFAULT_DATASET",
    "DataChoice",
    "data_controls",
    "dataset",
    "initial_model",
    "presets_for",
    "uploads",
]

DEFAULT_DATASET = "digits"
UPLOAD_SESSION_MB_ENV = "KRONOSCOPE_UPLOAD_SESSION_MB"
UPLOAD_TOTAL_MB_ENV = "KRONOSCOPE_UPLOAD_TOTAL_MB"


@dataclass(frozen=True)
class DataChoice:
    """A dataset, the file it is read from (None: built in or generated), and ``key``: a name
    that changes whenever the data could (an upload's content hash, a host file's size and
    modification time)."""

    name: str
    path: str | None = None
    key: str = ""
    shown_as: str = ""  # how the visitor knows the file (upload name, listed name)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", f"{self.name}:")


def _mb_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


class UploadStore:
    """Uploaded files, one folder per session under ``root``, with quotas.

    The root is emptied when the store is created (server start) and a session's folder is
    removed once the session has ended (checked at every upload and every minute).
    """

    def __init__(self, root: Path, *, per_session_mb: int, total_mb: int) -> None:
        self.root = root
        self.per_session = per_session_mb * 2**20
        self.total = total_mb * 2**20
        self._lock = threading.Lock()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._sweep_loop, name="kronoscope-uploads", daemon=True).start()

    @staticmethod
    def _size(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    def sweep(self) -> None:
        """Remove the folders of sessions that have ended."""
        with self._lock:
            for folder in self.root.iterdir():
                if not session_alive(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)

    def _sweep_loop(self) -> None:
        while True:
            time.sleep(60)
            with contextlib.suppress(OSError):
                self.sweep()

    def save(self, sid: str, raw: bytes, suffix: str) -> tuple[Path, str]:
        """Keep ``raw`` for session ``sid``; returns its path and content hash. Raises
        :class:`DatasetError` when a quota would be exceeded (the message says which)."""
        digest = hashlib.sha256(raw).hexdigest()[:24]
        self.sweep()
        with self._lock:
            # Streamlit's session ids are UUIDs: the folder is named by the id, so that the
            # sweep can ask whether its session still exists
            folder = self.root / (sid if re.fullmatch(r"[\w-]{1,64}", sid) else "unnamed")
            path = folder / f"{digest}{suffix}"
            if path.exists():
                return path, digest
            folder.mkdir(parents=True, exist_ok=True)
            if self._size(folder) + len(raw) > self.per_session:
                raise DatasetError(
                    f"your uploads would exceed {self.per_session / 2**20:.0f} MB, this "
                    "server's limit per visitor: reload the page to start afresh."
                )
            if self._size(self.root) + len(raw) > self.total:
                raise DatasetError(
                    "this server's space for uploads is full; try again later, or use a "
                    "built-in dataset."
                )
            tmp = path.with_suffix(".part")
            tmp.write_bytes(raw)
            tmp.replace(path)
        return path, digest


@st.cache_resource(show_spinner=False)
def uploads() -> UploadStore:
    """The server's upload store (emptied at server start)."""
    return UploadStore(
        default_cache_dir() / "uploads",
        per_session_mb=_mb_env(UPLOAD_SESSION_MB_ENV, 100),
        total_mb=_mb_env(UPLOAD_TOTAL_MB_ENV, 1000),
    )


def _upload_choice(name: str, upload) -> DataChoice:
    # an upload stays in its widget across reruns: hash and store it once per file, not on
    # every rerun (the session remembers where it went)
    saved = st.session_state.setdefault("uploads.saved", {})
    if upload.file_id not in saved or not Path(saved[upload.file_id][0]).is_file():
        saved[upload.file_id] = uploads().save(session_id(), upload.getvalue(), ".npz")
    path, digest = saved[upload.file_id]
    # the store is per session; the key is the content, so equal uploads share results
    return DataChoice(name, str(path), f"{name}:upload:{digest}", upload.name)


def _host_file_choice(name: str, listed: str, folder: Path) -> DataChoice:
    path = resolve_in_dir(listed, folder)
    try:
        stat = path.stat()
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        version = "missing"
    return DataChoice(name, str(path), f"{name}:dir:{listed}:{version}", listed)


def data_controls(settings: UrlSettings) -> DataChoice:
    """Dataset select; for datasets read from files, the host's files and an upload."""
    name = settings.select(
        "Dataset",
        list(DATASET_SPECS),
        "dataset",
        DEFAULT_DATASET,
        format_func=lambda n: DATASET_SPECS[n].label or n,
        help="DIGITS and CURVES-small train in seconds on a CPU; MNIST and FACES need a file.",
    )
    spec = DATASET_SPECS[name]
    st.caption(spec.description)
    if not spec.accepts_path:
        return DataChoice(name)
    folder = data_dir()
    listed: str | None = None
    if folder is not None:
        files = list_data_files(name, folder)
        none = "(generated)" if not spec.needs_path else "(none)"
        listed = settings.select(
            "Data file on this server", [none, *files], "path", files[0] if files else none,
            help="The dataset files the host made available.",
        )  # fmt: skip
        listed = None if listed == none else listed
    elif st.query_params.get("path"):
        settings.notice(
            "path", st.query_params["path"], "none (this server reads no files named in links)"
        )
    # .npz only: its members' sizes are checked before anything is decompressed, while a
    # compressed .mat is inflated by its reader first (the host may offer .mat files instead)
    upload = st.file_uploader(
        "…or upload an .npz", type=["npz"], key=f"{settings.page}.upload",
        help="An .npz with arrays x_train and x_test.",
    )  # fmt: skip
    if upload is not None:
        return _upload_choice(name, upload)
    if listed is not None and folder is not None:
        return _host_file_choice(name, listed, folder)
    if spec.needs_path:
        original = _original_download(name, spec.label or name)
        if original is not None:
            return original
        settings.show_notices()
        st.info(
            f"{spec.label or name} is not bundled and is never downloaded: upload a file"
            + (" or pick one of this server's files." if folder is not None else ".")
        )
        st.stop()
    return DataChoice(name)


def _original_download(name: str, label: str) -> DataChoice | None:
    """The paper's original files from the cache directory, or, when the host allows
    downloads, a button that fetches them (verified, resumable; core.training.download)."""
    path = cached_dataset(name)
    if path is not None:
        st.caption(f"Using the original {label} files downloaded on this server.")
        return DataChoice(name, str(path), f"{name}:original", f"the original {label} files")
    if not downloads_allowed():
        return None
    if st.button(f"Download the original {label} files", key=f"download.{name}"):
        bar = st.progress(0.0, text="Starting the download…")

        def progress(file: str, done: int, total: int | None) -> None:
            frac = min(done / total, 1.0) if total else 0.0
            bar.progress(frac, text=f"{plain(file, 60)}: {done / 2**20:,.1f} MiB")

        with friendly_errors("Downloading"):
            download_dataset(name, progress=progress)
        st.rerun()
    return None


@st.cache_resource(max_entries=6, show_spinner="Loading the dataset…")
def dataset(name: str, key: str, _path: str | None, _shown_as: str) -> Dataset:
    """The dataset ``name`` (cached by ``key``; visitor files read with the safe loader)."""
    if _path is None:
        return load_dataset(name)
    return load_visitor_dataset(name, _path, display_name=_shown_as)


def presets_for(name: str) -> list[str]:
    """Presets whose input width matches the dataset, its own preset first."""
    dim = DATASET_SPECS[name].input_dim
    fits = [p for p, preset in PRESETS.items() if preset.widths[0] == dim]
    return sorted(fits, key=lambda p: p != name)


@st.cache_resource(max_entries=16)
def initial_model(data_key: str, preset: str, seed: int, _ds: Dataset) -> torch.nn.Module:
    """The preset's model at its (seeded) initialization; never mutated by the app."""
    return build_model(preset, input_dim=_ds.input_dim, loss=_ds.loss, seed=seed)
