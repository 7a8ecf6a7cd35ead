"""Where the explorer's data and models come from: dataset choice, host files, uploads.

Visitors never name a server path. A file comes either from an upload, kept under the cache
directory per visitor and session (:class:`core.server.uploads.UploadStore`: bounded per
visitor and per server, removed when the session ends and when the server starts, never shown
by its server path), or from the data directory the host
configures (``KRONOSCOPE_DATA_DIR``), where visitors pick among the dataset files found
(:func:`core.training.datafiles.list_data_files`). Without that setting there is no path box, and a
``path`` URL parameter is ignored with a notice. The paper's original MNIST and FACES files
are used once they are in the cache directory; a download button appears only when the host
allows downloads (``KRONOSCOPE_ALLOW_DOWNLOADS``, off by default). Every file is parsed in a
worker process (:func:`dataset`), never in the web server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from core import (
    DATASET_SPECS,
    PRESETS,
    Dataset,
    build_model,
    cached_dataset,
    data_dir,
    download_dataset,
    downloads_allowed,
    jobs,
    list_data_files,
    load_dataset,
    resolve_in_dir,
    settings,
)

from . import compute
from .errors import friendly_errors, plain
from .services import services
from .session import session_id, visitor_id
from .urlstate import UrlSettings

__all__ = [
    "DEFAULT_DATASET",
    "DataChoice",
    "data_controls",
    "dataset",
    "initial_model",
    "presets_for",
]

DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class DataChoice:
    """A dataset, the file it is read from (None: built in or generated), and ``key``: a name
    that changes whenever the data could (an upload's content hash, a host file's size and
    modification time)."""

    name: str
    path: str | None = None
    key: str = ""
    shown_as: str = ""  # how the visitor knows the file (upload name, listed name)
    uploaded: bool = False  # the visitor's own file (its decompressed size has a lower cap)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", f"{self.name}:")


def _upload_choice(name: str, upload) -> DataChoice:
    # an upload stays in its widget across reruns: hash and store it once per file, not on
    # every rerun (the session remembers where it went)
    saved = st.session_state.setdefault("uploads.saved", {})
    if upload.file_id not in saved or not Path(saved[upload.file_id][0]).is_file():
        saved[upload.file_id] = services().uploads.save(
            session_id(), upload.getvalue(), ".npz", visitor_id()
        )
    path, digest = saved[upload.file_id]
    # the store is per session; the key is the content, so equal uploads share results
    return DataChoice(name, str(path), f"{name}:upload:{digest}", upload.name, uploaded=True)


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
    # compressed .mat is inflated by its reader first (the host may offer .mat files instead).
    # The content decides, not the name: no type= filter, whose own check would raise before
    # the page runs for a client that sends another name (shown as an exception type)
    upload = st.file_uploader(
        "…or upload an .npz", key=f"{settings.page}.upload",
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


def dataset(data: DataChoice) -> Dataset:
    """The dataset of ``data``, shared by every session asking for the same key (a bounded
    cache of the server). A file is read in a worker process, never in the web server, with
    the size caps checked before anything is decompressed: an upload's decompressed size
    below ``KRONOSCOPE_UPLOAD_MAX_ARRAY_MB``, a host file's below the data-file limit."""
    if data.path is None:
        return services().datasets.get(data.key, lambda: load_dataset(data.name))
    cap = settings.get("KRONOSCOPE_UPLOAD_MAX_ARRAY_MB") * 2**20 if data.uploaded else None

    def read() -> Dataset:
        return compute.compute(
            f"dataset|{data.key}|cap={cap}", jobs.visitor_dataset, data.name, data.path,
            data.shown_as, cap, what=f"Reading {plain(data.shown_as, 60)}",
            how="upload a smaller file",
        )  # fmt: skip

    return services().datasets.get(data.key, read)


def presets_for(name: str, *, labelled: bool) -> list[str]:
    """The presets whose input width matches the dataset (fully connected and convolutional
    autoencoders; the classifiers only when the loaded data has class labels,
    ``labelled``: their likelihood is a softmax over the classes), the dataset's own preset
    first, then in the registry's order."""
    dim = DATASET_SPECS[name].input_dim
    fits = [
        p
        for p, preset in PRESETS.items()
        if preset.widths[0] == dim and (labelled or not preset.classifier)
    ]
    return sorted(fits, key=lambda p: p != name)


def initial_model(data_key: str, *, preset: str, seed: int, ds: Dataset) -> torch.nn.Module:
    """The preset's model at its (seeded) initialization, shared; never mutated by the app."""
    return services().initial_models.get(
        f"{data_key}|{preset}|{seed}",
        lambda: build_model(preset, input_dim=ds.input_dim, loss=ds.loss, seed=seed),
    )
