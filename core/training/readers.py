"""Readers of the dataset files a user supplies: MNIST (the IDX image files, plain or
gzipped, or an .npz), FACES (the original ``newfaces_rot_single.mat`` or an .npz) and the
original CURVES (``digs3pts_1.mat`` or an .npz). Nothing is downloaded here (explicit downloads:
:mod:`core.training.download`); which files web visitors may name, and what they are told:
:mod:`core.training.datafiles`.

Formats: IDX as on LeCun's MNIST page (big-endian ``uint32`` header, unsigned-byte pixels);
.npz read member by member without numpy's own loader (nothing is ever unpickled); MATLAB v5
through :mod:`scipy.io` (v7.3, which is HDF5, is refused with a hint). Every reader checks the
sizes the headers declare against :func:`max_data_bytes` before it decompresses anything, and
raises :class:`~core.training.datasets.DatasetError` naming the path, what was expected and what
to do about it.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, cast

import numpy as np
import scipy.io
import torch

from .. import settings
from .datasets import Dataset, DatasetError, split_sizes, to_unit_tensor

__all__ = [
    "MAX_DATA_BYTES_ENV",
    "faces_split",
    "file_format",
    "file_help",
    "find_idx_images",
    "load_curves_file",
    "load_curves_mat",
    "load_faces",
    "load_idx_images",
    "load_idx_labels",
    "load_mnist",
    "max_data_bytes",
]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _take(x: np.ndarray, n: int | None, what: str) -> np.ndarray:
    """The first ``n`` images of ``x`` (all of them when ``n`` is None); ``what`` names them in
    the error."""
    if n is None:
        return x
    if not 1 <= n <= x.shape[0]:
        raise ValueError(f"{what}: asked for {n} images, the file has {x.shape[0]}")
    return x[:n]


# ---------------------------------------------------------------------------------------------
# Limits on what a data file may make us read
# ---------------------------------------------------------------------------------------------

#: Environment variable: the most bytes a dataset file may hold once decompressed.
MAX_DATA_BYTES_ENV = "KRONOSCOPE_MAX_DATA_BYTES"
#: An .npz dataset holds a few arrays; more members than this is not a dataset.
MAX_NPZ_MEMBERS = 16
#: Its central directory is then a few hundred bytes; refuse one beyond this before parsing it.
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024
_NPZ_MEMBER = re.compile(r"[A-Za-z0-9_]{1,64}\.npy")
_MAT_ITEMSIZE = {
    "double": 8,
    "single": 4,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "logical": 1,
}


def max_data_bytes() -> int:
    """The cap on a dataset file's decompressed size (``KRONOSCOPE_MAX_DATA_BYTES``, 1 GiB by
    default: FACES, the paper's largest file, is 625 × 165,600 float32 values ≈ 414 MB)."""
    try:
        limit: int = settings.get(MAX_DATA_BYTES_ENV)
        return limit
    except settings.SettingError as err:
        raise DatasetError(str(err)) from None


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _too_large(path: Path, what: str, n: int, limit: int) -> DatasetError:
    return DatasetError(
        f"{path}: {what} {n:,} bytes, above this machine's limit of {limit:,} bytes "
        f"({_bytes_text(limit)}); raise {MAX_DATA_BYTES_ENV} if the file is trusted."
    )


def file_format(path: Path) -> str:
    """The file's format from its first bytes, whatever its name says: ``"zip"`` (an .npz),
    ``"mat5"``/``"mat73"`` (MATLAB; 7.3 is HDF5), ``"gzip"``, ``"idx"`` or ``"unknown"``."""
    with path.open("rb") as f:
        head = f.read(128)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return "mat73"
    if head.startswith(b"MATLAB 5.0 MAT-file") and len(head) == 128:
        return "mat5"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        return "idx"
    return "unknown"


# ---------------------------------------------------------------------------------------------
# IDX (MNIST)
# ---------------------------------------------------------------------------------------------

_MNIST_HELP = (
    "Get the MNIST image files train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz "
    "(and, for the classifier presets, the label files train-labels-idx1-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz) from a mirror of Yann LeCun's MNIST page, or with "
    "--download, put them in one directory and pass that directory, or pass an .npz with "
    "arrays x_train and x_test of shape (n, 28, 28) or (n, 784)."
)


def _read_up_to(stream: io.BufferedIOBase, n: int) -> bytearray:
    """Up to ``n`` bytes from a (possibly decompressing) stream, fewer only at its end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            break
        got += k
    del view
    del buf[got:]
    return buf


def load_idx_images(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX image file (plain or gzip-compressed), ``uint8`` array ``(n, rows, cols)``.

    Format (LeCun's MNIST page): big-endian ``uint32`` magic ``2051`` (``0x00000803``: unsigned
    bytes, 3 dimensions), then ``n``, ``rows``, ``cols`` as big-endian ``uint32``, then
    ``n·rows·cols`` pixel bytes, row-major. Read as a stream: the header's size is checked
    against ``max_bytes`` (default :func:`max_data_bytes`) before the pixels are decompressed,
    so a small .gz cannot expand into more. Raises :class:`DatasetError` otherwise.
    """
    return _read_idx_file(path, max_bytes, "image", _read_idx)


def load_idx_labels(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX label file (plain or gzip-compressed), ``uint8`` array ``(n,)``.

    Format (LeCun's MNIST page): big-endian ``uint32`` magic ``2049`` (``0x00000801``: unsigned
    bytes, 1 dimension), then ``n`` as big-endian ``uint32``, then ``n`` label bytes; checked
    like :func:`load_idx_images` (size before decompression, truncation, trailing data), and
    every label must be a digit 0–9."""
    labels = _read_idx_file(path, max_bytes, "label", _read_idx_labels)
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(
            f"{path}: a label is {int(labels.max())}; MNIST's labels are the digits 0-9. "
            f"{_MNIST_HELP}"
        )
    return labels


def _read_idx_file(
    path: str | os.PathLike[str],
    max_bytes: int | None,
    what: str,
    read: Callable[[io.BufferedIOBase, Path, int], np.ndarray],
) -> np.ndarray:
    """Open an IDX file, gzip-compressed or not whatever its name says, and ``read`` it."""
    path = Path(path)
    limit = max_data_bytes() if max_bytes is None else max_bytes
    if not path.is_file():
        raise DatasetError(f"IDX {what} file not found: {path}. {_MNIST_HELP}")
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file name says
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return read(stream, path, limit)
        except (OSError, EOFError, zlib.error) as exc:
            if not compressed:
                raise
            raise DatasetError(
                f"{path}: looks gzip-compressed but cannot be decompressed ({exc}); the file is "
                f"probably truncated or corrupt. Download it again. {_MNIST_HELP}"
            ) from exc


def _read_idx(stream: io.BufferedIOBase, path: Path, limit: int) -> np.ndarray:
    header = bytes(_read_up_to(stream, 16))
    magic = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
    if magic is not None and magic != IDX_IMAGES_MAGIC:
        hint = (
            " This is an IDX label file (magic 2049); pass the images file instead."
            if magic == IDX_LABELS_MAGIC
            else ""
        )
        raise DatasetError(
            f"{path}: IDX magic number is {magic} (0x{magic:08x}), expected {IDX_IMAGES_MAGIC} "
            f"(0x{IDX_IMAGES_MAGIC:08x}, unsigned-byte images with 3 dimensions).{hint} "
            f"{_MNIST_HELP}"
        )
    if len(header) < 16:
        raise DatasetError(
            f"{path}: only {len(header)} bytes, too short for an IDX image header (16 bytes: "
            f"magic {IDX_IMAGES_MAGIC} and three big-endian uint32 dimensions). {_MNIST_HELP}"
        )
    n, rows, cols = struct.unpack(">III", header[4:16])
    expected = 16 + n * rows * cols
    if expected > limit:
        raise _too_large(
            path, f"header says {n} images of {rows}×{cols}, decompressed", expected, limit
        )
    body = _read_up_to(stream, expected - 16)
    if len(body) < expected - 16:
        raise DatasetError(
            f"{path}: header says {n} images of {rows}×{cols} = {expected} bytes in all, the file "
            f"has {16 + len(body)} bytes (truncated). Download it again. {_MNIST_HELP}"
        )
    if stream.read(1):
        raise DatasetError(
            f"{path}: header says {n} images of {rows}×{cols} = {expected} bytes in all, the file "
            f"has trailing data after them. Download it again. {_MNIST_HELP}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(n, rows, cols)


def _read_idx_labels(stream: io.BufferedIOBase, path: Path, limit: int) -> np.ndarray:
    header = bytes(_read_up_to(stream, 8))
    magic = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
    if magic is not None and magic != IDX_LABELS_MAGIC:
        hint = " This is an IDX image file (magic 2051)." if magic == IDX_IMAGES_MAGIC else ""
        raise DatasetError(
            f"{path}: IDX magic number is {magic} (0x{magic:08x}), expected {IDX_LABELS_MAGIC} "
            f"(0x{IDX_LABELS_MAGIC:08x}, unsigned-byte labels).{hint} {_MNIST_HELP}"
        )
    if len(header) < 8:
        raise DatasetError(
            f"{path}: only {len(header)} bytes, too short for an IDX label header (8 bytes: "
            f"magic {IDX_LABELS_MAGIC} and a big-endian uint32 count). {_MNIST_HELP}"
        )
    (n,) = struct.unpack(">I", header[4:8])
    if 8 + n > limit:
        raise _too_large(path, f"header says {n} labels, decompressed", 8 + n, limit)
    body = _read_up_to(stream, n)
    if len(body) < n or stream.read(1):
        raise DatasetError(
            f"{path}: header says {n} labels ({8 + n} bytes in all), the file has "
            f"{'fewer' if len(body) < n else 'more'}. Download it again. {_MNIST_HELP}"
        )
    return np.frombuffer(body, dtype=np.uint8).copy()


def find_idx_images(directory: Path, split: str, kind: str = "images") -> Path | None:
    """``{split}-images-idx3-ubyte`` (or ``.idx3-ubyte``; ``kind="labels"``:
    ``{split}-labels-idx1-ubyte``), optionally ``.gz``, in ``directory`` or in torchvision's
    layout ``directory/MNIST/raw``."""
    dims = "3" if kind == "images" else "1"
    for folder in (directory, directory / "MNIST" / "raw"):
        for stem in (f"{split}-{kind}-idx{dims}-ubyte", f"{split}-{kind}.idx{dims}-ubyte"):
            for suffix in ("", ".gz"):
                candidate = folder / (stem + suffix)
                if candidate.is_file():
                    return candidate
    return None


def _mnist_labels(
    path: Path,
    found: dict[str, Path | None],
    images: dict[str, np.ndarray],
    max_bytes: int | None,
) -> dict[str, np.ndarray] | None:
    """Both splits' labels when both label files are in the folder (``None`` when neither is),
    each checked against its images' count."""
    labels_found = {split: find_idx_images(path, split, "labels") for split in found}
    present = [split for split, p in labels_found.items() if p is not None]
    if not present:
        return None
    if len(present) < len(labels_found):
        missing = next(s for s in labels_found if s not in present)
        raise DatasetError(
            f"{path}: has {present[0]}-labels-idx1-ubyte but no {missing}-labels-idx1-ubyte[.gz]; "
            f"give both label files or neither. {_MNIST_HELP}"
        )
    out = {}
    for split, p in labels_found.items():
        assert p is not None
        y = load_idx_labels(p, max_bytes=max_bytes)
        if y.shape[0] != images[split].shape[0]:
            raise DatasetError(
                f"{p}: {y.shape[0]} labels for {images[split].shape[0]} images in "
                f"{found[split]}; the files do not belong together. {_MNIST_HELP}"
            )
        out[split] = y
    return out


# ---------------------------------------------------------------------------------------------
# .npz files (MNIST, FACES, CURVES), read without numpy's own loader
# ---------------------------------------------------------------------------------------------

_TRAIN_KEYS = ("x_train", "train_images", "train")
_TEST_KEYS = ("x_test", "test_images", "test")
_SINGLE_KEYS = ("x", "images", "data", "faces")


def _npz_help(image_shape: tuple[int, int]) -> str:
    h, w = image_shape
    return (
        f"Expected an .npz with arrays 'x_train' and 'x_test' (or 'train_images'/'test_images', "
        f"or 'train'/'test'), or a single array 'x' (or 'images', 'data', 'faces') that is split "
        f"here; each of shape (n, {h}, {w}), (n, 1, {h}, {w}) or (n, {h * w})."
    )


def _check_images(
    arr: np.ndarray, path: Path, key: str, image_shape: tuple[int, int], unit_range: bool
) -> np.ndarray:
    """Validate one array of a dataset file and return ``float32`` rows ``(n, H·W)``. Integer
    arrays are divided by 255; float arrays are used as they are (and must lie in ``[0, 1]``
    when ``unit_range``)."""
    h, w = image_shape
    d = h * w
    ok_shape = arr.ndim >= 2 and (arr.shape[1:] in ((d,), (h, w), (1, h, w)) and arr.shape[0] >= 1)
    if not ok_shape:
        raise DatasetError(
            f"{path}: array '{key}' has shape {arr.shape}, expected (n, {h}, {w}), "
            f"(n, 1, {h}, {w}) or (n, {d}) ({h}×{w} = {d} pixels per image). "
            f"{_npz_help(image_shape)}"
        )
    flat = arr.reshape(arr.shape[0], d)
    if np.issubdtype(flat.dtype, np.integer):
        if flat.min() < 0 or flat.max() > 255:
            raise DatasetError(
                f"{path}: integer array '{key}' has values outside 0..255 "
                f"[{flat.min()}, {flat.max()}]; store 8-bit intensities or floats."
            )
        return flat.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(flat.dtype, np.floating):
        raise DatasetError(f"{path}: array '{key}' has dtype {flat.dtype}, expected numbers.")
    flat = flat.astype(np.float32)
    if not np.isfinite(flat).all():
        raise DatasetError(f"{path}: array '{key}' contains NaN or infinite values.")
    if unit_range and (flat.min() < 0.0 or flat.max() > 1.0):
        raise DatasetError(
            f"{path}: float array '{key}' has values in [{flat.min():g}, {flat.max():g}], "
            f"expected [0, 1] for a sigmoid/BCE dataset; divide by 255 (or store uint8)."
        )
    return flat


def _zip_directory_size(f: IO[bytes], path: Path, help_text: str) -> None:
    """Check the zip's end-of-central-directory record (the last 22–65,557 bytes) before the
    directory is parsed: at most :data:`MAX_NPZ_MEMBERS` members and a small directory, so
    that an archive of 10,000 members is refused without reading them."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65_535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise DatasetError(f"{path}: cannot be read as an .npz (no zip directory). {help_text}")
    _, _, _, _, n_members, dir_bytes, _, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
    if n_members > MAX_NPZ_MEMBERS or dir_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise DatasetError(
            f"{path}: an archive of {n_members} members ({dir_bytes:,}-byte directory); a "
            f"dataset .npz holds at most {MAX_NPZ_MEMBERS} arrays. {help_text}"
        )


def _read_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, its header checked before its data is read: format 1.0 or 2.0, no
    object dtype (nothing is ever unpickled), and a data size that matches the member's
    declared size (zipfile stops decompressing at the declared size)."""
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise DatasetError(
                f"{path}: member {info.filename} is not a valid .npy ({exc})."
            ) from exc
        if dtype.hasobject:
            raise DatasetError(
                f"{path}: array {info.filename} holds Python objects; only numeric arrays are read."
            )
        n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes > info.file_size:
            raise DatasetError(
                f"{path}: array {info.filename} declares {n_bytes:,} bytes of data in a "
                f"{info.file_size:,}-byte member (corrupt or crafted)."
            )
        # ZipFile.open gives a ZipExtFile, a BufferedIOBase; typeshed declares IO[bytes].
        data = _read_up_to(cast(io.BufferedIOBase, fp), n_bytes)
    if len(data) != n_bytes:
        raise DatasetError(f"{path}: array {info.filename} is truncated.")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_npz(path: Path, image_shape: tuple[int, int], limit: int) -> dict[str, np.ndarray]:
    """The image arrays of an .npz, checked before anything is decompressed: member count and
    directory size (:func:`_zip_directory_size`), member names (plain ``name.npy``, no path
    separators), no encryption, and the sum of the declared uncompressed sizes at most
    ``limit``. Only the arrays a layout of :func:`_npz_help` uses are read."""
    help_text = _npz_help(image_shape)
    try:
        with path.open("rb") as f:
            _zip_directory_size(f, path, help_text)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                bad = [i.filename for i in infos if not _NPZ_MEMBER.fullmatch(i.filename)]
                if bad or len(infos) > MAX_NPZ_MEMBERS:
                    shown = ", ".join(repr(b[:40]) for b in bad[:3])
                    raise DatasetError(
                        f"{path}: unexpected archive members ({shown}); an .npz holds only "
                        f"plain 'name.npy' arrays. {help_text}"
                    )
                if any(i.flag_bits & 0x1 for i in infos):
                    raise DatasetError(f"{path}: the archive is encrypted. {help_text}")
                total = sum(i.file_size for i in infos)
                if total > limit:
                    raise _too_large(path, "archive decompresses to", total, limit)
                members = {i.filename[:-4]: i for i in infos}
                keys = _npz_layout(members, path, image_shape)
                return {k: _read_npy_member(zf, members[k], path) for k in keys}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot be read as an .npz ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc


def _npz_layout(
    members: Mapping[str, object], path: Path, image_shape: tuple[int, int]
) -> tuple[str, ...]:
    """The keys to read: ``(train, test)`` or ``(single,)`` (see :func:`_npz_help`)."""
    train_key = next((k for k in _TRAIN_KEYS if k in members), None)
    test_key = next((k for k in _TEST_KEYS if k in members), None)
    if train_key and test_key:
        return (train_key, test_key)
    single_key = next((k for k in _SINGLE_KEYS if k in members), None)
    if single_key and not (train_key or test_key):
        return (single_key,)
    raise DatasetError(
        f"{path}: has arrays {sorted(members)}, none of the expected layouts. "
        f"{_npz_help(image_shape)}"
    )


def _load_npz(
    path: Path,
    image_shape: tuple[int, int],
    *,
    unit_range: bool,
    seed: int,
    n_train: int | None,
    n_test: int | None,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows from an .npz (see :func:`_npz_help` for the accepted layouts)."""
    if not path.is_file():
        raise DatasetError(f"file not found: {path}. {_npz_help(image_shape)}")
    arrays = _read_npz(path, image_shape, max_data_bytes() if max_bytes is None else max_bytes)
    if len(arrays) == 2:
        (train_key, train), (test_key, test) = arrays.items()
        x_train = _check_images(train, path, train_key, image_shape, unit_range)
        x_test = _check_images(test, path, test_key, image_shape, unit_range)
        return _take(x_train, n_train, f"{path} [{train_key}]"), _take(
            x_test, n_test, f"{path} [{test_key}]"
        )
    ((single_key, single),) = arrays.items()
    x = _check_images(single, path, single_key, image_shape, unit_range)
    n_train, n_test = split_sizes(x.shape[0], n_train, n_test)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    return x[order[:n_train]], x[order[n_train : n_train + n_test]]


# ---------------------------------------------------------------------------------------------
# MATLAB files (the paper's CURVES and FACES)
# ---------------------------------------------------------------------------------------------

_CURVES_MAT_HELP = (
    "Expected the original CURVES file digs3pts_1.mat (MATLAB v5, arrays 'bdata' and "
    "'bdatatest' of shape (n, 784), values in [0, 1]; from James Martens' page or with "
    "--download), or an .npz with arrays x_train and x_test of 28×28 images."
)
_FACES_MAT_HELP = (
    "Expected the original FACES file newfaces_rot_single.mat (MATLAB v5, array "
    "'newfaces_single' of shape (625, n); from James Martens' page or with --download), or an "
    ".npz with arrays x_train and x_test of 25×25 images."
)


def _read_mat(
    path: Path, names: tuple[str, ...], help_text: str, limit: int
) -> dict[str, np.ndarray]:
    """Arrays ``names`` of a MATLAB v5 file. Their headers are read first
    (:func:`scipy.io.whosmat`, which decompresses only the headers): each must be a 2-D numeric
    matrix and together they must fit in ``limit`` bytes; then only they are loaded."""
    kind = file_format(path)
    if kind == "mat73":
        raise DatasetError(
            f"{path}: a MATLAB v7.3 (HDF5) file; save it with -v7 (or -v6) to read it here. "
            f"{help_text}"
        )
    if kind != "mat5":
        raise DatasetError(f"{path}: not a MATLAB v5 file. {help_text}")
    size = path.stat().st_size
    if size > limit:
        raise _too_large(path, "file of", size, limit)
    try:
        found = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(path)}
    except Exception as exc:  # scipy raises many kinds for a corrupt file: all mean unreadable
        raise DatasetError(
            f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc
    missing = [n for n in names if n not in found]
    if missing:
        shown = sorted(found)[:10]
        raise DatasetError(f"{path}: has arrays {shown}, not {missing}. {help_text}")
    total = 0
    for name in names:
        shape, cls = found[name]
        if cls not in _MAT_ITEMSIZE or len(shape) != 2:
            raise DatasetError(
                f"{path}: '{name}' is a {cls} array of shape {shape}, expected a 2-D numeric "
                f"matrix. {help_text}"
            )
        total += int(np.prod(shape, dtype=np.int64)) * _MAT_ITEMSIZE[cls]
    if total > limit:
        raise _too_large(path, "arrays hold", total, limit)
    try:
        loaded = scipy.io.loadmat(path, variable_names=list(names))
    except Exception as exc:  # as above
        raise DatasetError(
            f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {str(exc)[:200]}). "
            f"{help_text}"
        ) from exc
    return {name: loaded[name] for name in names}


def load_curves_mat(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """The original CURVES of Hinton & Salakhutdinov (2006), ``digs3pts_1.mat`` as published
    with Martens' Hessian-free code: ``bdata`` (20,000 × 784) for training and ``bdatatest``
    (10,000 × 784) for testing, intensities in ``[0, 1]``. Pixels keep the file's order (a
    fully connected autoencoder does not depend on it). ``n_train``/``n_test`` keep the first
    rows. Raises :class:`DatasetError` naming what was expected."""
    path = Path(path).expanduser()
    limit = max_data_bytes() if max_bytes is None else max_bytes
    arrays = _read_mat(path, ("bdata", "bdatatest"), _CURVES_MAT_HELP, limit)
    x_train = _check_images(arrays["bdata"], path, "bdata", (28, 28), True)
    x_test = _check_images(arrays["bdatatest"], path, "bdatatest", (28, 28), True)
    x_train = _take(x_train, n_train, f"{path} [bdata]")
    x_test = _take(x_test, n_test, f"{path} [bdatatest]")
    return Dataset(
        "curves",
        torch.from_numpy(np.ascontiguousarray(x_train)),
        torch.from_numpy(np.ascontiguousarray(x_test)),
        (28, 28),
        "bce",
        label=f"CURVES (original, {path.name})",
    )


def faces_split(total: int) -> tuple[int, int]:
    """FACES' train and test sizes from its ``total`` images, as in Martens' code
    (``nnet_experiments.m``): train the first ``25·(total // 40)``, test the last
    ``10·(total // 40)`` (the 5/40 between are unused). For the published 165,600 images:
    103,500 and 41,400."""
    unit = total // 40
    if unit < 1:
        raise ValueError(f"FACES needs at least 40 images to split 25:10, got {total}")
    return 25 * unit, 10 * unit


def _load_faces_mat(
    path: Path, n_train: int | None, n_test: int | None, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    arr = _read_mat(path, ("newfaces_single",), _FACES_MAT_HELP, limit)["newfaces_single"]
    if arr.ndim != 2 or arr.shape[0] != 625:
        raise DatasetError(
            f"{path}: 'newfaces_single' has shape {arr.shape}, expected (625, n): one 25×25 "
            f"image per column. {_FACES_MAT_HELP}"
        )
    try:
        size_train, size_test = faces_split(arr.shape[1])
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}. {_FACES_MAT_HELP}") from exc
    x = _check_images(arr.T, path, "newfaces_single", (25, 25), False)
    x_train = _take(x[:size_train], n_train, f"{path} [newfaces_single, train]")
    x_test = _take(x[x.shape[0] - size_test :], n_test, f"{path} [newfaces_single, test]")
    return np.ascontiguousarray(x_train), np.ascontiguousarray(x_test)


# ---------------------------------------------------------------------------------------------
# MNIST, FACES and the original CURVES
# ---------------------------------------------------------------------------------------------


def load_mnist(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """MNIST from a directory with the IDX image files (``train-images-idx3-ubyte`` and
    ``t10k-images-idx3-ubyte``, optionally ``.gz``; torchvision's ``MNIST/raw`` also works),
    with the class labels when both label files (``train-labels-idx1-ubyte``,
    ``t10k-labels-idx1-ubyte``) are there too (the classifier presets need them), or
    from an ``.npz`` (keys ``x_train``, ``x_test``, e.g. Keras' ``mnist.npz``). Intensities are
    divided by 255. ``n_train``/``n_test`` keep the first images in file order; ``seed`` is
    used only when an .npz holds a single array that must be split. ``max_bytes`` caps each
    file's decompressed size (default :func:`max_data_bytes`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = {split: find_idx_images(path, split) for split in ("train", "t10k")}
        missing = [split for split, p in found.items() if p is None]
        if missing:
            names = ", ".join(f"{s}-images-idx3-ubyte[.gz]" for s in missing)
            raise DatasetError(f"{path}: directory has no {names}. {_MNIST_HELP}")
        images = {
            split: load_idx_images(p, max_bytes=max_bytes)
            for split, p in found.items()
            if p is not None
        }
        for split, x in images.items():
            if x.shape[1:] != (28, 28):
                raise DatasetError(
                    f"{found[split]}: images are {x.shape[1]}×{x.shape[2]}, MNIST's are 28×28."
                )
        labels = _mnist_labels(path, found, images, max_bytes)
        x_train = _take(images["train"], n_train, str(found["train"]))
        x_test = _take(images["t10k"], n_test, str(found["t10k"]))
        y_train = y_test = None
        if labels is not None:
            y_train = torch.from_numpy(labels["train"][: x_train.shape[0]].astype(np.int64))
            y_test = torch.from_numpy(labels["t10k"][: x_test.shape[0]].astype(np.int64))
        return Dataset(
            "mnist", to_unit_tensor(x_train), to_unit_tensor(x_test), (28, 28), "bce",
            y_train=y_train, y_test=y_test,
        )  # fmt: skip
    if not path.is_file():
        raise DatasetError(f"MNIST path not found: {path}. {_MNIST_HELP}")
    kind = file_format(path)
    if kind in ("idx", "gzip"):
        raise DatasetError(
            f"{path} is a single IDX file; pass the directory that holds both "
            f"train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz]. {_MNIST_HELP}"
        )
    if kind in ("mat5", "mat73"):
        raise DatasetError(f"{path} is a MATLAB file; {_MNIST_HELP}")
    x_train, x_test = _load_npz(
        path,
        (28, 28),
        unit_range=True,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        max_bytes=max_bytes,
    )
    return Dataset("mnist", torch.from_numpy(x_train), torch.from_numpy(x_test), (28, 28), "bce")


def load_faces(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """FACES (Hinton & Salakhutdinov 2006: 25×25 = 625-pixel face images, squared-error loss)
    from the original ``newfaces_rot_single.mat`` (array ``newfaces_single``, 625 × n, split by
    :func:`faces_split`), or from an ``.npz`` with ``x_train``/``x_test`` or one array
    ``x``/``images``/``faces`` split with ``seed`` (default 1/6 test). Integer arrays are
    divided by 255; float arrays are used unchanged (linear outputs need no [0, 1] range)."""
    path = Path(path).expanduser()
    limit = max_data_bytes() if max_bytes is None else max_bytes
    if path.is_file() and file_format(path) in ("mat5", "mat73"):
        x_train, x_test = _load_faces_mat(path, n_train, n_test, limit)
        label = f"FACES (original, {path.name})"
    else:
        x_train, x_test = _load_npz(
            path,
            (25, 25),
            unit_range=False,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            max_bytes=limit,
        )
        label = "FACES"
    return Dataset(
        "faces", torch.from_numpy(x_train), torch.from_numpy(x_test), (25, 25), "mse", label=label
    )


def load_curves_file(
    path: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """CURVES from a file: the original ``digs3pts_1.mat`` (:func:`load_curves_mat`) or an
    ``.npz`` of 28×28 images in ``[0, 1]`` (layouts of :func:`_npz_help`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"CURVES file not found: {path}. {_CURVES_MAT_HELP}")
    if file_format(path) in ("mat5", "mat73"):
        return load_curves_mat(path, n_train=n_train, n_test=n_test, max_bytes=max_bytes)
    x_train, x_test = _load_npz(
        path,
        (28, 28),
        unit_range=True,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        max_bytes=max_bytes,
    )
    return Dataset(
        "curves",
        torch.from_numpy(x_train),
        torch.from_numpy(x_test),
        (28, 28),
        "bce",
        label=f"CURVES ({path.name})",
    )


def file_help(name: str) -> str:
    """What a file for dataset ``name`` must hold (one sentence or two, no paths)."""
    if name == "mnist":
        return _MNIST_HELP
    if name == "faces":
        return _FACES_MAT_HELP
    if name == "curves":
        return _CURVES_MAT_HELP
    return f"Dataset {name!r} is built in and reads no file."
