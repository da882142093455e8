"""Run a process as if this x86 CPU had AVX2 but neither AVX-512 nor VNNI.

ONNX Runtime picks its integer kernels from CPUID when it starts: on a VNNI CPU it never runs the
saturating AVX2 ``VPMADDUBSW`` kernel that most rented x86 servers use, so a test or benchmark
passing here proves nothing about them.  ``cpuid_mask.c`` (next to this file), preloaded into a
child process, turns on Linux's CPUID faulting and hides the AVX-512, VNNI and AMX feature bits
from every CPUID the process executes, and their flags from ``/proc/cpuinfo``.  The child then
runs ONNX Runtime's real AVX2 kernels on this CPU -- saturation included -- and quantfw's own
detection picks ``x86-avx2`` in it.

It needs Linux on x86-64, a kernel and CPU with CPUID faulting (``cpuid_fault`` in
``/proc/cpuinfo``: Intel since Ivy Bridge, AMD since Zen 4, most virtual machines that expose
it) and a C compiler (``cc``).  :func:`availability` says whether, and why not.

Use::

    from quantfw_onnx.cpu_mask import avx2_environment
    subprocess.run([sys.executable, "bench.py"], env=avx2_environment(), check=True)

Do not preload it into a process that installs its own SIGSEGV handler after start-up (Python's
``faulthandler``, which pytest enables): every CPUID would look like a crash to it.
:func:`avx2_environment` removes ``PYTHONFAULTHANDLER`` for that reason.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from quantfw.target import read_cpu_flags

__all__ = ["SOURCE", "availability", "build_library", "avx2_environment"]

#: The C source of the preload library.
SOURCE = Path(__file__).with_name("cpuid_mask.c")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quantfw" / "cpu_mask"


def availability() -> tuple[bool, str]:
    """``(True, "")`` when this machine can run AVX2-masked processes, else ``(False, why)``."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"needs Linux on x86-64 (this is {platform.system()} {platform.machine()})"
    flags = read_cpu_flags()
    if flags is None:
        return False, "/proc/cpuinfo has no readable flags"
    if "cpuid_fault" not in flags:
        return False, "the CPU or kernel offers no CPUID faulting (no 'cpuid_fault' flag)"
    if "avx2" not in flags:
        return False, "the CPU has no AVX2 to run"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return False, "no C compiler ('cc') to build the preload library"
    return True, ""


def build_library(directory: str | os.PathLike[str] | None = None) -> Path:
    """Compile ``cpuid_mask.c`` into a shared library (cached by its source hash) and return it.

    :raises RuntimeError: when :func:`availability` is false or the compiler fails.
    """
    ok, why = availability()
    if not ok:
        raise RuntimeError(f"cannot emulate an AVX2-only CPU here: {why}")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    out_dir = Path(directory) if directory is not None else _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"cpuid_mask-{digest}.so"
    if lib.is_file():
        return lib
    cc = os.environ.get("CC", "cc")
    fd, tmp = tempfile.mkstemp(prefix=".cpuid_mask-", suffix=".so", dir=out_dir)
    os.close(fd)
    proc = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {SOURCE.name} with {cc} failed:\n{proc.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, lib)
    return lib


def avx2_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) that makes a child process an AVX2-only CPU."""
    env = dict(os.environ if base is None else base)
    lib = str(build_library())
    env["LD_PRELOAD"] = " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env.pop("PYTHONFAULTHANDLER", None)
    env["QUANTFW_CPU_MASK"] = "avx2"
    return env
