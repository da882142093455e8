"""Which x86 integer kernels this CPU gets from ONNX Runtime, and so which target fits it.

ONNX Runtime's MLAS picks its u8 x s8 kernel at run time from CPUID: VNNI (AVX512-VNNI or
AVX-VNNI) accumulates straight into int32; plain AVX2 uses VPMADDUBSW, whose int16 pair sums
saturate, so 8-bit weights are only safe with VNNI.  Linux exposes the flags in /proc/cpuinfo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from quantfw.target import read_cpu_flags

__all__ = ["X86Detection", "detect_x86"]

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


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
            "x86-avx2", "detected avx2 without VNNI: 7-bit weights avoid int16 saturation"
        )
    return X86Detection(
        "x86-avx2",
        "no avx2 flag found; using the AVX2 rules (ONNX Runtime falls back to slower kernels)",
    )
