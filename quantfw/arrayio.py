"""Reading ``.npy`` files and ``.npz`` archives a user gives, safely.

``numpy.load`` trusts the header: an ``.npy`` header declaring a shape of 10**12 makes it
allocate that much before it finds the data missing, and a damaged archive raises zipfile's, zlib's
or the tokenizer's own exceptions.  These readers check every header against the bytes really
there before reading (so what they allocate is bounded by the file: by its size for ``.npy``
files and stored archive members, by deflate's largest ratio for compressed members), never
unpickle, and turn every problem into one error class whose message names the file (and the
archive member).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["load_npy", "load_npz"]

#: Deflate never compresses better than about 1032:1; a member claiming more is lying.
_DEFLATE_MAX_RATIO = 1032
#: What reading a damaged header or archive can raise, besides ValueError (zipfile: struct.error
#: on short records, NotImplementedError for unknown compression, RuntimeError when encrypted).
_READ_ERRORS = (
    OSError,
    EOFError,
    SyntaxError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    NotImplementedError,
    RuntimeError,
)
try:  # numpy parses the header with the tokenizer
    from tokenize import TokenError

    _READ_ERRORS = (*_READ_ERRORS, TokenError)
except ImportError:  # pragma: no cover
    pass


class _Refused(ValueError):
    """A header or member refused here (message complete); re-raised as the caller's class."""


def _header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    if version == (3, 0):  # utf-8 field names; same layout as 2.0
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def _read(fh: IO[bytes], data_bytes: int, where: str) -> np.ndarray:
    """One array from ``fh`` (at the start of an ``.npy`` stream) holding ``data_bytes`` bytes
    after its header."""
    shape, fortran, dtype = _header(fh)
    if dtype.hasobject:
        raise _Refused(
            f"{where}: cannot read it: it holds Python objects, which quantfw never unpickles; "
            "save plain numbers"
        )
    declared = math.prod(shape) * dtype.itemsize
    have = data_bytes - fh.tell()
    if declared != have:
        raise _Refused(
            f"{where}: its header declares shape {shape} of {dtype} ({declared} bytes) but "
            f"{max(have, 0)} bytes follow it (truncated, or not written by numpy?)"
        )
    fh.seek(0)
    return np.lib.format.read_array(fh, allow_pickle=False)


def load_npy(path: str | os.PathLike[str], error: type[ValueError] = ValueError) -> np.ndarray:
    """Read one ``.npy`` file.

    :raises error: naming the file: unreadable, not ``.npy``, truncated, declaring more data than
        it holds, or holding Python objects.
    """
    where = str(path)
    try:
        with open(path, "rb") as fh:
            return _read(fh, os.fstat(fh.fileno()).st_size, where)
    except _Refused as exc:
        raise error(str(exc)) from None
    except (ValueError, *_READ_ERRORS) as exc:
        raise error(f"{where}: not a readable .npy array ({exc})") from None


def load_npz(
    path: str | os.PathLike[str],
    error: type[ValueError] = ValueError,
    what: str = ".npz archive",
) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` archive (``numpy.savez`` / ``savez_compressed``) keyed as
    ``numpy.load`` keys them (member name without ``.npy``).

    :param what: what the file should be, for messages (``"quantfw graph file"``).
    :raises error: naming the file (and member): not a zip archive, damaged, a member that is not
        an ``.npy`` array, declares more data than the archive can hold, or holds Python objects.
    """
    where = str(path)
    out: dict[str, np.ndarray] = {}
    try:
        archive_size = Path(path).stat().st_size
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                member = f"{where}, member {name!r}"
                if name.endswith("/"):  # a folder entry
                    continue
                if not name.endswith(".npy"):
                    raise _Refused(f"{member} is not an .npy array (.npz archives hold only those)")
                limit = (
                    archive_size
                    if info.compress_type == zipfile.ZIP_STORED
                    else _DEFLATE_MAX_RATIO * archive_size + 1024
                )
                if info.file_size > limit:
                    raise _Refused(
                        f"{member} claims {info.file_size} bytes, more than the archive can hold "
                        "(damaged archive?)"
                    )
                with zf.open(info) as fh:
                    out[name[: -len(".npy")]] = _read(fh, info.file_size, member)
    except _Refused as exc:
        raise error(str(exc)) from None
    except (ValueError, *_READ_ERRORS) as exc:
        raise error(f"{where}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    return out
