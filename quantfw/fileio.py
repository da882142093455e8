"""Safe file output: atomic writes that never clobber a user's input.

Every file quantfw writes for a user (artifacts, recipes, graphs) goes through
:func:`atomic_write_bytes` or, for writers that produce a file themselves, :func:`publish`: the
result gets the permissions any other program would give it -- a new file ``0o666`` less the
umask (``0o644`` under the usual ``022``), a replaced file the mode it had -- not the ``0o600``
of a private temporary file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_not_input", "output_mode", "publish"]


def check_not_input(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Refuse to write ``output`` over any of ``inputs``.

    :raises ValueError: naming both paths.
    """
    out = Path(output).resolve()
    for src in inputs:
        if src is None:
            continue
        if Path(src).resolve() == out:
            raise ValueError(
                f"refusing to write the output to {str(output)!r}: that is the input file; "
                "choose another output path"
            )


def _umask() -> int:
    """This process's umask: read from ``/proc/self/status`` on Linux (no side effect), else set
    and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(target: str | os.PathLike[str]) -> int:
    """The permission bits a file written to ``target`` should get: those of the regular file
    it replaces, else ``0o666`` less the umask."""
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the finished temporary file ``tmp`` onto ``target`` atomically, with the mode of
    :func:`output_mode` (``tmp`` on ``target``'s file system, e.g. in its folder)."""
    os.chmod(tmp, output_mode(target))
    os.replace(tmp, target)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic
    rename, so that readers never see a half-written file and a crash leaves the old file.
    The file gets the mode of :func:`output_mode`, as if it had been opened for writing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise type(exc)(exc.errno, f"cannot write {str(target)!r}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
