"""Which x86 integer kernels this CPU gets from ONNX Runtime, and so which target fits it.

ONNX Runtime's MLAS picks its u8 x s8 kernel at run time from CPUID: VNNI (AVX512-VNNI or
AVX-VNNI) accumulates straight into int32; plain AVX2 uses VPMADDUBSW, whose int16 pair sums
saturate, so 8-bit weights are only safe with VNNI.  Linux exposes the flags in /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantfw.target import read_cpu_flags

from .avx2 import PAIR_LIMIT

__all__ = ["VNNI_FLAGS", "X86Detection", "detect_x86", "cpu_vnni", "saturation_warning"]

#: CPU flags of the instructions that accumulate u8 x s8 products straight into int32.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
_X86_MACHINES = ("x86_64", "amd64", "i686", "i386", "x86")


@dataclass(frozen=True)
class X86Detection:
    """The outcome of looking at this CPU.

    :ivar target: ``"x86-vnni"`` or ``"x86-avx2"``.
    :ivar reason: what was found, in words (shown by ``quantfw targets``).
    """

    target: str
    reason: str


def detect_x86(
    cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo", flags: frozenset[str] | None = None
) -> X86Detection:
    """Choose between the x86 targets from the CPU flags (``flags`` overrides the file)."""
    found = flags if flags is not None else read_cpu_flags(cpuinfo)
    if found is None:
        return X86Detection(
            "x86-avx2",
            f"no CPU flags readable at {os.fspath(cpuinfo)}; assuming AVX2 without VNNI (safe everywhere)",
        )
    vnni = [f for f in VNNI_FLAGS if f in found]
    if vnni:
        return X86Detection("x86-vnni", f"detected {', '.join(vnni)}: VNNI int8 kernels")
    if "avx2" in found:
        return X86Detection(
            "x86-avx2",
            "detected avx2 without VNNI: pair-limited int8 weights avoid int16 saturation",
        )
    return X86Detection(
        "x86-avx2",
        "no avx2 flag found; using the AVX2 rules (ONNX Runtime falls back to slower kernels)",
    )


def cpu_vnni(flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """``(True, what was found)`` when ONNX Runtime's u8 x s8 kernel on this machine cannot
    saturate (an x86 CPU with VNNI, or not an x86 CPU, or flags that cannot be read), else
    ``(False, what the CPU has)``.  ``flags`` overrides reading ``/proc/cpuinfo``."""
    if flags is None:
        if platform.machine().lower() not in _X86_MACHINES:
            return True, f"not an x86 CPU ({platform.machine()})"
        flags = read_cpu_flags()
        if flags is None:
            return True, "CPU flags unreadable"
    found = [f for f in VNNI_FLAGS if f in flags]
    if found:
        return True, ", ".join(found)
    return False, "avx2 without VNNI" if "avx2" in flags else "no avx2 and no VNNI"


def saturation_warning(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    flags: frozenset[str] | None = None,
) -> str | None:
    """What running the artifact at ``path`` with ONNX Runtime on this CPU would get wrong, or
    ``None``: a warning when its metadata says ``needs_vnni`` (8-bit weight pairs over the AVX2
    kernel's limit) and :func:`cpu_vnni` finds no VNNI (``flags`` overrides ``/proc/cpuinfo``).
    """
    if not metadata.get("needs_vnni"):
        return None
    ok, found = cpu_vnni(flags)
    if ok:
        return None
    return (
        f"{os.fspath(path)} needs a CPU with VNNI and this one has {found}: its int8 weights' "
        f"adjacent codes sum up to {metadata.get('max_pair_sum')} (over {PAIR_LIMIT}), so ONNX "
        "Runtime on this machine would run its AVX2 kernel, which saturates in int16 and "
        "silently returns wrong numbers; deploy it on a VNNI CPU, or quantize for target "
        "'x86-avx2' (or 'x86', chosen from this CPU) to run it here"
    )
