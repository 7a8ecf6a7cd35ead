"""Dataset files that web visitors may choose: where they may come from and what a visitor is
told when one cannot be used.

A public instance never opens a path a visitor types. The host puts dataset files in one
directory (``$KRONOSCOPE_DATA_DIR``); visitors pick among the names :func:`list_data_files`
finds there, and any name that arrives from a URL goes through :func:`resolve_in_dir`, which
refuses every name that would lead outside that directory. :func:`load_visitor_dataset` then
reads the file with the size caps of :mod:`core.training.readers` and turns every failure into
one short message that names no server path, temporary path or library internal: a visitor
learns nothing about the server's files from it (missing, unreadable and not-a-dataset read the
same).
The detailed reason goes to the server's log for the host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from .. import settings
from .data import load_dataset
from .datasets import DATASET_SPECS, Dataset, DatasetError
from .readers import find_idx_images, max_data_bytes

__all__ = [
    "DATA_DIR_ENV",
    "MAX_LISTED",
    "MAX_NAME_CHARS",
    "data_dir",
    "list_data_files",
    "load_visitor_dataset",
    "resolve_in_dir",
    "visitor_file_help",
]

#: Environment variable naming the host's directory of dataset files (unset: no files at all).
DATA_DIR_ENV = "KRONOSCOPE_DATA_DIR"
#: Longest relative name accepted from a visitor (a file name is at most 255 bytes on Linux).
MAX_NAME_CHARS = 255
#: At most this many names are listed, and at most :data:`MAX_SCANNED` entries looked at.
MAX_LISTED = 200
MAX_SCANNED = 10_000
#: A visitor's file name is shown with at most this many characters.
MAX_SHOWN_NAME_CHARS = 60

_SUFFIXES = {"mnist": (".npz",), "faces": (".mat", ".npz"), "curves": (".mat", ".npz")}
_log = logging.getLogger(__name__)


def data_dir() -> Path | None:
    """The host's data directory, ``$KRONOSCOPE_DATA_DIR``, or ``None`` when unset or empty
    (then visitors can only upload files)."""
    directory: Path | None = settings.get(DATA_DIR_ENV)
    return directory


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def list_data_files(dataset_name: str, directory: str | os.PathLike[str]) -> list[str]:
    """Names, relative to ``directory``, of the entries there that may hold ``dataset_name``:
    for MNIST sub-directories (or ``"."``, the directory itself) holding both IDX image files,
    and .npz files; for FACES and CURVES .mat and .npz files. Only the top level is searched,
    hidden names and entries whose real path leaves the directory (symlinks) are skipped;
    sorted, at most :data:`MAX_LISTED`. Datasets that read no file give ``[]``; an unknown
    name raises ``ValueError``; a missing directory gives ``[]``. The names are only
    candidates: :func:`load_visitor_dataset` checks the content."""
    if dataset_name not in DATASET_SPECS:
        raise ValueError(f"unknown dataset {dataset_name!r}; valid: {', '.join(DATASET_SPECS)}")
    suffixes = _SUFFIXES.get(dataset_name)
    root = Path(directory)
    if suffixes is None or not root.is_dir():
        return []
    root_real = os.path.realpath(root)
    found: list[str] = []
    if dataset_name == "mnist" and _has_mnist_images(root):
        found.append(".")
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_SCANNED:
                    break
                if entry.name.startswith(".") or len(entry.name) > MAX_NAME_CHARS:
                    continue
                if not _inside(os.path.realpath(entry.path), root_real):
                    continue
                try:
                    is_dir, is_file = entry.is_dir(), entry.is_file()
                except OSError:
                    continue
                dataset_file = is_file and entry.name.lower().endswith(suffixes)
                idx_folder = is_dir and dataset_name == "mnist"
                if dataset_file or (idx_folder and _has_mnist_images(Path(entry.path))):
                    found.append(entry.name)
    except OSError as exc:
        _log.warning("cannot list the data directory: %s", exc)
        return []
    return sorted(found)[:MAX_LISTED]


def _has_mnist_images(folder: Path) -> bool:
    return all(find_idx_images(folder, split) is not None for split in ("train", "t10k"))


def resolve_in_dir(name: str, directory: str | os.PathLike[str]) -> Path:
    """The real path of ``name`` inside ``directory``, for a name a visitor gave.

    Refused with :class:`~core.training.datasets.DatasetError`: a name that is not a string,
    empty, longer than :data:`MAX_NAME_CHARS`, holds a NUL byte, is absolute, holds a ``..``
    component, or whose real path (symlinks followed) is outside the directory's real path. The
    message names neither the directory nor the resolved path. The file need not exist (loading
    then fails with :func:`load_visitor_dataset`'s message)."""
    refuse = "choose one of the dataset files offered by this server"
    if not isinstance(name, str) or not name:
        raise DatasetError(f"No data file name given: {refuse}.")
    if len(name) > MAX_NAME_CHARS:
        raise DatasetError(f"The data file name is too long (over {MAX_NAME_CHARS}): {refuse}.")
    if "\x00" in name:
        raise DatasetError(f"The data file name holds a NUL byte: {refuse}.")
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise DatasetError(f"Absolute paths are not accepted: {refuse}.")
    if ".." in pure.parts:
        raise DatasetError(f"'..' is not accepted in a data file name: {refuse}.")
    root_real = os.path.realpath(directory)
    real = os.path.realpath(os.path.join(root_real, name))
    if not _inside(real, root_real):
        raise DatasetError(f"The data file name leads outside the data directory: {refuse}.")
    return Path(real)


def visitor_file_help(dataset_name: str, max_bytes: int | None = None) -> str:
    """What a file for ``dataset_name`` must be, for a visitor: no paths, one line."""
    limit = max_data_bytes() if max_bytes is None else max_bytes
    size = f"at most {limit / 2**20:,.0f} MiB uncompressed"
    if dataset_name == "mnist":
        what = (
            "a folder with train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz], or an "
            ".npz with arrays x_train and x_test of 28×28 images"
        )
    elif dataset_name == "faces":
        what = (
            "newfaces_rot_single.mat (array newfaces_single, 625 × n) or an .npz with arrays "
            "x_train and x_test of 25×25 images"
        )
    elif dataset_name == "curves":
        what = (
            "digs3pts_1.mat (arrays bdata and bdatatest, n × 784, values in [0, 1]) or an .npz "
            "with arrays x_train and x_test of 28×28 images in [0, 1]"
        )
    else:
        return "no file: this dataset is built in"
    return f"{what}, {size}"


def _shown(display_name: str) -> str:
    """A visitor-given name made safe to print: control characters replaced, length bounded.
    (Callers still show it as plain text, never as Markdown or HTML.)"""
    text = "".join(c if c.isprintable() else "?" for c in str(display_name)) or "The file"
    if len(text) > MAX_SHOWN_NAME_CHARS:
        text = text[: MAX_SHOWN_NAME_CHARS - 1] + "…"
    return text


def load_visitor_dataset(
    name: str,
    path: str | os.PathLike[str],
    *,
    display_name: str,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """Load dataset ``name`` from a file a visitor chose (an upload, or a name resolved by
    :func:`resolve_in_dir`), with the size caps of :mod:`core.training.readers`.

    Every failure — missing, unreadable, too large, not a dataset, or any error a crafted file
    provokes in a reader — raises one :class:`~core.training.datasets.DatasetError`:
    ``"<display_name> is not a readable <LABEL> dataset: expected <visitor_file_help>."``
    (under 400 characters), where ``display_name`` is what the visitor knows the file as (the
    upload's name or the listed name), never a server path. The detailed reason is logged for
    the host. ``ValueError`` for a dataset name that reads no file (a programming error)."""
    spec = DATASET_SPECS.get(name)
    if spec is None or not spec.accepts_path:
        raise ValueError(f"dataset {name!r} is not read from files")
    message = (
        f"{_shown(display_name)} is not a readable {spec.label} dataset: expected "
        f"{visitor_file_help(name, max_bytes)}."
    )
    try:
        return load_dataset(
            name, path=path, seed=seed, n_train=n_train, n_test=n_test, max_bytes=max_bytes
        )
    except Exception as exc:  # a crafted file can provoke any reader error: all read the same
        _log.warning("visitor dataset %r (%s) refused: %s", display_name, name, exc)
        raise DatasetError(message) from None
