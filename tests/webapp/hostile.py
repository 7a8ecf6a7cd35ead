"""Helpers of the hostile-visitor tests against a real server (tests/webapp/test_hostile_server.py).

:func:`zero_bomb_npz` builds a small .npz whose arrays declare far more bytes than the file
holds (a decompression bomb made of zeros) without compressing the declared bytes one by one:
the deflate stream of one chunk of zeros is made once and repeated (each copy ends with a
full flush, so it refers to nothing before it), and the zip container is written by hand
(stored sizes and CRC-32 exact, so :mod:`zipfile` and NumPy read it as a normal archive).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["npy_header", "zero_bomb_npz"]

_CHUNK = 1 << 24  # 16 MiB of zeros, deflated once and repeated


def npy_header(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    """The .npy header (format 1.0) of a C-ordered array of ``shape`` and ``dtype``."""
    buf = io.BytesIO()
    header = {
        "descr": npy_format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _zero_member(shape: tuple[int, ...], dtype) -> tuple[bytes, int, int]:
    """(raw deflate stream, CRC-32, uncompressed size) of an .npy of zeros."""
    header = npy_header(shape, dtype)
    n_zero = int(np.prod(shape)) * np.dtype(dtype).itemsize
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(header)
    whole, rest = divmod(n_zero, _CHUNK)
    if whole:
        zeros = bytes(_CHUNK)
        block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
        parts += [block] * whole
        for _ in range(whole):
            crc = zlib.crc32(zeros, crc)
    tail = bytes(rest)
    parts.append(comp.compress(tail) + comp.flush(zlib.Z_FINISH))
    crc = zlib.crc32(tail, crc)
    return b"".join(parts), crc, len(header) + n_zero


def zero_bomb_npz(members: dict[str, tuple[tuple[int, ...], type]]) -> bytes:
    """An .npz (zip, deflated, no zip64: every member below 4 GiB) of zero arrays, e.g.
    ``{"x_train": ((350_000, 784), np.float32), "x_test": ((16, 784), np.float32)}``: ~1 MiB
    on disk that declares ~1 GiB."""
    out = bytearray()
    central = bytearray()
    dos_time, dos_date = 0, (2024 - 1980) << 9 | 1 << 5 | 1
    for name, (shape, dtype) in members.items():
        data, crc, size = _zero_member(shape, dtype)
        if size >= 1 << 32 or len(out) + len(data) >= 1 << 32:
            raise ValueError("zero_bomb_npz writes no zip64: keep every member below 4 GiB")
        fname = f"{name}.npy".encode()
        offset = len(out)
        fixed = (20, 0, 8, dos_time, dos_date, crc, len(data), size, len(fname))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fixed, 0) + fname + data
        central += (
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fixed, 0, 0, 0, 0, 0, offset) + fname
        )
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0
    )
    return bytes(out + central + end)
