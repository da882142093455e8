"""Checks made before any work that an output can be written where the user asked.

A quantization can run for minutes; finding only at its end that the output folder is read-only
(or that the output names a folder) wastes that time, and the error would name the temporary
file of the atomic write.  :func:`check_output_path` is called first instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import QuantfwError

__all__ = ["OutputPathError", "check_output_path"]


class OutputPathError(QuantfwError, OSError):
    """An output path that cannot be written: it names a folder, its folder cannot be created,
    or the folder is not writable.  The message names the path and the option it came from."""


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> None:
    """Make sure a file can be written at ``path``: ``path`` is not a folder, and its folder
    exists and takes a new file, or can be created.  The test is real: a temporary file is made
    (and removed) in the nearest existing folder, so read-only file systems, permissions and
    pseudo file systems all count.  Nothing else is created.

    :param what: how the message names the path (``"output (-o)"``, ``"recipe (--recipe-out)"``).
    :raises OutputPathError: naming ``path`` and what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(
            f"cannot write the {what} {str(p)!r}: it is a folder; give a file path (e.g. "
            f"{str(p / 'model')!r})"
        )
    folder = p.absolute().parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = (
            "is a file, not a folder"
            if existing == folder
            else f"is a file, so the folder {str(folder)!r} cannot be created"
        )
        raise OutputPathError(
            f"cannot write the {what} {str(p)!r}: {str(existing)!r} {why}; choose another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".quantfw-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        how = "is" if existing == folder else f"(where {str(folder)!r} would be created) is"
        raise OutputPathError(
            f"cannot write the {what} {str(p)!r}: the folder {str(existing)!r} {how} not "
            f"writable ({exc.strerror or exc}); choose another path or fix its permissions"
        ) from None
