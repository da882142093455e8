"""What this machine offers, checked against a target's ``[requires]`` table."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .sections import Requirements


def read_cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str] | None:
    """CPU feature flags from a Linux ``cpuinfo`` file, or ``None`` when it cannot be read.

    x86 lists them on ``flags`` lines, ARM on ``Features`` lines; with several cores, only the
    flags every core reports are kept.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    result: set[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("flags", "features"):
            continue
        flags = set(value.lower().split())
        result = flags if result is None else result & flags
    return frozenset(result) if result is not None else None


def nvidia_gpu_present() -> bool:
    """A cheap guess: the NVIDIA driver is loaded or ``nvidia-smi`` is on PATH."""
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def _module_missing(name: str) -> bool:
    """Whether module ``name`` cannot be found (it is looked up, never imported)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def missing_requirements(
    req: Requirements,
    cpu_flags: Iterable[str] | None = None,
    cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo",
    gpu: bool | None = None,
) -> list[str]:
    """What this machine lacks of ``req``, one phrase each (empty when it has everything).

    :param cpu_flags: the machine's CPU flags (default: read from ``cpuinfo``).
    :param cpuinfo: file to read flags from when ``cpu_flags`` is not given.
    :param gpu: whether an NVIDIA GPU is present (default: :func:`nvidia_gpu_present`).
    """
    missing: list[str] = []
    if req.cpu_flags or req.cpu_flags_any:
        flags = (
            frozenset(f.lower() for f in cpu_flags)
            if cpu_flags is not None
            else (read_cpu_flags(cpuinfo))
        )
        if flags is None:
            wanted = list(req.cpu_flags) + list(req.cpu_flags_any)
            missing.append(
                f"CPU flags {', '.join(wanted)} (cannot read {os.fspath(cpuinfo)} to check)"
            )
        else:
            lacking = [f for f in req.cpu_flags if f not in flags]
            if lacking:
                missing.append(f"CPU flag(s) {', '.join(lacking)}")
            if req.cpu_flags_any and not flags.intersection(req.cpu_flags_any):
                missing.append(f"one of the CPU flags {', '.join(req.cpu_flags_any)}")
    absent = [m for m in req.modules if _module_missing(m)]
    if absent:
        missing.append(f"Python module(s) {', '.join(absent)} (not installed)")
    if req.gpu and not (nvidia_gpu_present() if gpu is None else gpu):
        missing.append("an NVIDIA GPU (no driver or nvidia-smi found)")
    return missing
