"""quantfw hook implementations of the quantfw-torch plugin.

Registers the ``torch`` frontend.  Torch models reach the hardware targets through their ONNX
translation (see :mod:`quantfw_torch.export`), so the targets and backends are the ``onnx``
plugin's.  Nothing heavy is imported here: torch loads only when a torch model is quantized.
"""

from __future__ import annotations

from collections.abc import Callable

from quantfw import FrontendInfo, hookimpl

_INSTALL = 'pip install "quantfw[torch]"'


def _frontend():
    from .frontend import TorchFrontend

    return TorchFrontend()


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
