"""Explicit downloads of the paper's original dataset files (``python -m core ... --download``,
or an app button where the host allows it). Nothing here runs unless called: loading a dataset
never touches the network.

Sources (the files as the authors published them):

* CURVES ``digs3pts_1.mat`` and FACES ``newfaces_rot_single.mat`` (Hinton & Salakhutdinov
  2006, prepared by Ruslan Salakhutdinov) from James Martens' page at the University of
  Toronto, where his Hessian-free and K-FAC code (``nnet_experiments.m``, KFAC3-MATLAB) says
  to get them: ``www.cs.toronto.edu/~jmartens/<name>``.
* MNIST ``train-images-idx3-ubyte.gz`` and ``t10k-images-idx3-ubyte.gz`` (LeCun et al. 1998),
  and the label files ``train-labels-idx1-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (the
  classifier presets' targets), from the mirror torchvision uses
  (``ossci-datasets.s3.amazonaws.com/mnist/``), because ``yann.lecun.com/exdb/mnist/`` often
  refuses scripted downloads.

Each file is streamed into ``<name>.part`` beside its final place, resumed with an HTTP
``Range`` request when a previous try stopped, checked (the byte count against
``Content-Length``, a size ceiling, the format: MATLAB v5 with the expected arrays, or gzip
IDX images of 28×28), then moved into place with :func:`os.replace` (atomic). The SHA-256 of
every file is recorded in ``downloads.json`` in the cache directory on first download and
checked on every later use; a file whose hash differs is refused and not used.

The base URL can be overridden (the ``base_url`` argument or ``$KRONOSCOPE_DOWNLOAD_BASE_URL``),
which the tests use to serve fixture files from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import scipy.io

from .. import settings
from .datasets import DatasetError, default_cache_dir
from .readers import file_format, load_idx_images, load_idx_labels

__all__ = [
    "ALLOW_DOWNLOADS_ENV",
    "BASE_URL_ENV",
    "SOURCES",
    "DownloadError",
    "RemoteFile",
    "cached_dataset",
    "download_dataset",
    "downloads_allowed",
]

#: Overrides every source's base URL (tests serve fixtures from a local server).
BASE_URL_ENV = "KRONOSCOPE_DOWNLOAD_BASE_URL"
#: A web host sets this to ``1`` to offer the app's download button (off by default).
ALLOW_DOWNLOADS_ENV = "KRONOSCOPE_ALLOW_DOWNLOADS"
MANIFEST_NAME = "downloads.json"
CHUNK_BYTES = 1 << 16
MARTENS = "https://www.cs.toronto.edu/~jmartens/"
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: ``Progress(file name, bytes so far, total bytes or None when the server does not say)``.
Progress = Callable[[str, int, "int | None"], None]


class DownloadError(DatasetError):
    """A download failed or a downloaded file is not what it should be. One line: what went
    wrong, with which URL or file, and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it comes from, where it goes, how to check it."""

    dataset: str
    name: str
    base_url: str
    max_bytes: int  # a response larger than this is refused (the real files are well below)
    kind: Literal["mat", "idx-gz", "idx-labels-gz"]
    arrays: tuple[str, ...] = ()  # for "mat": the arrays the file must hold

    @property
    def relative(self) -> str:
        """Its path inside the cache directory (also its key in the manifest)."""
        return f"{self.dataset}/{self.name}"


SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "curves": (
        RemoteFile("curves", "digs3pts_1.mat", MARTENS, 512 << 20, "mat", ("bdata", "bdatatest")),
    ),
    "faces": (
        RemoteFile(
            "faces", "newfaces_rot_single.mat", MARTENS, 1 << 30, "mat", ("newfaces_single",)
        ),
    ),
    "mnist": (
        RemoteFile("mnist", "train-images-idx3-ubyte.gz", MNIST_MIRROR, 64 << 20, "idx-gz"),
        RemoteFile("mnist", "t10k-images-idx3-ubyte.gz", MNIST_MIRROR, 64 << 20, "idx-gz"),
        RemoteFile("mnist", "train-labels-idx1-ubyte.gz", MNIST_MIRROR, 1 << 20, "idx-labels-gz"),
        RemoteFile("mnist", "t10k-labels-idx1-ubyte.gz", MNIST_MIRROR, 1 << 20, "idx-labels-gz"),
    ),
}

_lock = threading.Lock()  # one download at a time in this process (the app's sessions share it)


def downloads_allowed() -> bool:
    """Whether the host lets web visitors start downloads (``$KRONOSCOPE_ALLOW_DOWNLOADS``
    is ``1``, ``true`` or ``yes``). The command line's ``--download`` does not ask."""
    allowed: bool = settings.get(ALLOW_DOWNLOADS_ENV)
    return allowed


def _sources(name: str) -> tuple[RemoteFile, ...]:
    if name not in SOURCES:
        raise DownloadError(
            f"dataset {name!r} has no files to download; downloadable: {', '.join(SOURCES)}"
        )
    return SOURCES[name]


def _dataset_path(cache: Path, name: str) -> Path:
    files = SOURCES[name]
    return cache / name if name == "mnist" else cache / files[0].relative


def _url(remote: RemoteFile, base_url: str | None) -> str:
    base = base_url or settings.get(BASE_URL_ENV) or remote.base_url
    if not re.match(r"https?://", base):
        raise DownloadError(f"download base URL must start with http:// or https://: {base!r}")
    return base.rstrip("/") + "/" + remote.name


# -- manifest -------------------------------------------------------------------------------


def _read_manifest(cache: Path) -> dict[str, Any]:
    path = cache / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DownloadError(
            f"{path}: unreadable ({exc}); it holds the SHA-256 of downloaded files: repair or "
            f"delete it (deleting it forgets the recorded hashes)."
        ) from exc
    return manifest if isinstance(manifest, dict) else {}


def _write_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=MANIFEST_NAME + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.replace(tmp, cache / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_recorded(path: Path, remote: RemoteFile, manifest: dict[str, Any], digest: str) -> None:
    recorded = manifest.get(remote.relative, {}).get("sha256")
    if recorded is not None and recorded != digest:
        raise DownloadError(
            f"{path}: SHA-256 {digest[:16]}… differs from {recorded[:16]}… recorded when it was "
            f"first downloaded, so it is not used; if the source changed on purpose, delete the "
            f"file and its entry in {MANIFEST_NAME}, then download again."
        )


def _record(
    cache: Path, manifest: dict[str, Any], remote: RemoteFile, digest: str, size: int, url: str
) -> None:
    if remote.relative not in manifest:
        manifest[remote.relative] = {
            "sha256": digest,
            "bytes": size,
            "url": url,
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_manifest(cache, manifest)


# -- one file -------------------------------------------------------------------------------


def _check_format(path: Path, remote: RemoteFile) -> None:
    """The downloaded bytes are the kind of file expected (cheap: MATLAB headers only; the
    IDX file is decompressed, it is small)."""
    if remote.kind == "mat":
        if file_format(path) != "mat5":
            raise DownloadError(
                f"{remote.name}: the downloaded file is not a MATLAB v5 file (wrong file or an "
                f"error page from the server); it was not kept."
            )
        try:
            names = {name for name, _, _ in scipy.io.whosmat(path)}
        except Exception as exc:  # scipy raises many kinds for a corrupt file
            raise DownloadError(f"{remote.name}: the downloaded file is corrupt ({exc}).") from exc
        missing = [a for a in remote.arrays if a not in names]
        if missing:
            raise DownloadError(
                f"{remote.name}: the downloaded file lacks the arrays {missing}; it was not kept."
            )
        return
    if file_format(path) != "gzip":
        raise DownloadError(f"{remote.name}: the downloaded file is not gzip-compressed IDX.")
    if remote.kind == "idx-labels-gz":
        try:
            load_idx_labels(path)
        except DatasetError as exc:
            raise DownloadError(
                f"{remote.name}: the downloaded file is not IDX labels: {exc}"
            ) from exc
        return
    try:
        images = load_idx_images(path)
    except DatasetError as exc:
        raise DownloadError(f"{remote.name}: the downloaded file is not IDX images: {exc}") from exc
    if images.shape[1:] != (28, 28):
        raise DownloadError(f"{remote.name}: images are {images.shape[1:]}, MNIST's are 28×28.")


def _fetch(
    url: str, part: Path, remote: RemoteFile, progress: Progress | None, timeout: float
) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with a ``Range`` request.
    A server that ignores the range (200) restarts the file; one that refuses it (416) makes
    the partial file be discarded and the download start over."""
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "kronoscope (python urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            part.unlink()
            return _fetch(url, part, remote, progress, timeout)
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} ({exc.reason}).") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason}); check the network.") from exc
    with response:
        resumed = bool(start) and response.status == 206
        if resumed:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            resumed = match is not None and int(match.group(1)) == start
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        if total is not None and total > remote.max_bytes:
            raise DownloadError(
                f"{url}: the server offers {total:,} bytes, more than {remote.max_bytes:,} "
                f"expected for {remote.name}; not downloaded."
            )
        done = start
        with part.open("ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    if done > remote.max_bytes:
                        raise DownloadError(
                            f"{url}: more than {remote.max_bytes:,} bytes, more than expected "
                            f"for {remote.name}; stopped."
                        )
                    if progress is not None:
                        progress(remote.name, done, total)
            except (http.client.HTTPException, OSError) as exc:
                raise DownloadError(
                    f"{url}: interrupted after {done:,} of {total or '?'} bytes "
                    f"({type(exc).__name__}); run the download again to resume."
                ) from exc
            out.flush()
            os.fsync(out.fileno())
    if total is not None and done != total:
        raise DownloadError(
            f"{url}: received {done:,} of {total:,} bytes (truncated); run the download again "
            f"to resume."
        )
    return None


def _download_file(
    remote: RemoteFile,
    cache: Path,
    base_url: str | None,
    progress: Progress | None,
    timeout: float,
) -> Path:
    target = cache / remote.relative
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(cache)
    if target.is_file():
        digest = _sha256(target)
        _check_recorded(target, remote, manifest, digest)
        _record(cache, manifest, remote, digest, target.stat().st_size, "present before")
        return target
    url = _url(remote, base_url)
    part = target.with_name(target.name + ".part")
    _fetch(url, part, remote, progress, timeout)
    try:
        _check_format(part, remote)
        digest = _sha256(part)
        _check_recorded(part, remote, manifest, digest)
    except DownloadError:
        part.unlink(missing_ok=True)  # complete but wrong: resuming it would not help
        raise
    size = part.stat().st_size
    os.replace(part, target)
    _record(cache, manifest, remote, digest, size, url)
    return target


# -- public ---------------------------------------------------------------------------------


def download_dataset(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download dataset ``name``'s original files (see :data:`SOURCES`) into the cache
    directory (default :func:`core.training.datasets.default_cache_dir`) unless they are there
    already, and return the path to give :func:`core.training.data.load_dataset` (the .mat file,
    or MNIST's folder).

    Files already present are not downloaded again but their SHA-256 is checked against the
    manifest. ``progress(file_name, bytes_so_far, total_or_None)`` is called after every chunk;
    ``timeout`` bounds each network wait in seconds. Raises :class:`DownloadError` (a
    :class:`~core.training.datasets.DatasetError`) with a one-line message on any failure; a
    partial file is kept as ``<name>.part`` for the next try to resume."""
    files = _sources(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    with _lock:
        for remote in files:
            _download_file(remote, cache, base_url, progress, timeout)
    return _dataset_path(cache, name)


def cached_dataset(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The path of dataset ``name``'s downloaded files if all are in the cache, after checking
    their SHA-256 against the manifest (:class:`DownloadError` when one differs); ``None`` when
    a file is missing or ``name`` has no downloadable files. Never touches the network."""
    if name not in SOURCES:
        return None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    files = SOURCES[name]
    if not all((cache / remote.relative).is_file() for remote in files):
        return None
    with _lock:
        manifest = _read_manifest(cache)
        for remote in files:
            target = cache / remote.relative
            digest = _sha256(target)
            _check_recorded(target, remote, manifest, digest)
            _record(cache, manifest, remote, digest, target.stat().st_size, "present before")
    return _dataset_path(cache, name)
