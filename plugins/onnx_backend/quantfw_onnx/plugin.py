"""quantfw hook implementations of the quantfw-onnx plugin.

Registers the ``onnx`` frontend, the ``x86-vnni`` / ``x86-avx2`` targets plus ``x86`` (whichever
of the two fits this CPU), and the ``onnxruntime`` backend.  Nothing heavy is imported here:
onnx and onnxruntime load only when a component is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from quantfw.api import BackendInfo, FrontendInfo, hookimpl
from quantfw.target import TargetSpec, load_target

_HERE = Path(__file__).resolve().parent
_TARGETS = ("x86-vnni", "x86-avx2")
_INSTALL = 'pip install "quantfw[onnx]"'


def _frontend(**options):
    from .frontend import OnnxFrontend

    return OnnxFrontend(**options)


def _backend(**options):
    from .backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(**options)


def x86_target() -> TargetSpec:
    """The ``x86`` target: the x86 spec that fits this CPU, renamed, saying what was detected."""
    from .cpu import detect_x86

    found = detect_x86()
    spec = load_target(_HERE / "targets" / f"{found.target}.toml")
    return replace(
        spec, name="x86", description=f"this CPU's x86 target = {found.target} ({found.reason})"
    )


@hookimpl
def quantfw_register_frontends(register: Callable[[FrontendInfo], None]) -> None:
    register(
        FrontendInfo(
            "onnx",
            _frontend,
            suffixes=(".onnx",),
            requires=("onnx", "onnxruntime"),
            description="ONNX models (.onnx files, onnx.ModelProto), run by ONNX Runtime",
            install_hint=_INSTALL,
        )
    )


@hookimpl
def quantfw_register_targets(register: Callable[[object], None]) -> None:
    for name in _TARGETS:
        register(_HERE / "targets" / f"{name}.toml")
    register(x86_target())


@hookimpl
def quantfw_register_backends(register: Callable[[BackendInfo], None]) -> None:
    register(
        BackendInfo(
            "onnxruntime",
            _backend,
            artifact_format="onnx",
            accepts=("onnx",),
            requires=("onnx", "onnxruntime"),
            description="QDQ (or QOperator) ONNX models for ONNX Runtime's CPU provider",
            install_hint=_INSTALL,
        )
    )
