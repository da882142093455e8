"""quantfw hook implementations of the quantfw-torch plugin.

Registers the ``torch`` frontend, the ``torch-to-onnx`` conversion and the ``torch`` compute
engine.  Torch models reach the hardware targets through their ONNX translation (see
:mod:`quantfw_torch.export`), so the targets and backends are the ``onnx`` plugin's.  Nothing
heavy is imported here: torch loads only when a component is used.
"""

from __future__ import annotations

from collections.abc import Callable

from quantfw.api import ConverterInfo, EngineInfo, FrontendInfo, hookimpl

_INSTALL = 'pip install "quantfw[torch]"'


def _frontend(**options):
    from .frontend import TorchFrontend

    return TorchFrontend(**options)


def _converter():
    from .convert import TorchToOnnx

    return TorchToOnnx()


def _engine(device: str | None = None):
    from .engine import TorchEngine

    return TorchEngine(device)


@hookimpl
def quantfw_register_frontends(register: Callable[[FrontendInfo], None]) -> None:
    register(
        FrontendInfo(
            "torch",
            _frontend,
            requires=("torch", "onnx", "onnxruntime", "onnxscript", "quantfw_onnx"),
            description="torch.nn.Module models (torch.export, then ONNX); fake-quant and QAT",
            install_hint=_INSTALL,
        )
    )


@hookimpl
def quantfw_register_converters(register: Callable[[ConverterInfo], None]) -> None:
    register(
        ConverterInfo(
            "torch-to-onnx",
            "torch",
            "onnx",
            _converter,
            requires=("torch", "onnx", "onnxscript"),
            description="torch.nn.Module -> ONNX (torch.export + the dynamo ONNX translation)",
            install_hint=_INSTALL,
        )
    )


@hookimpl
def quantfw_register_engines(register: Callable[[EngineInfo], None]) -> None:
    register(
        EngineInfo(
            "torch",
            _engine,
            autograd=True,
            requires=("torch",),
            description="torch tensors with autograd, on the CPU or a CUDA GPU (device='cuda')",
            install_hint=_INSTALL,
        )
    )
