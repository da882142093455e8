"""The ``torch-to-onnx`` conversion: a ``torch.nn.Module`` as the ONNX model quantfw captures.

It is the same export the torch frontend captures through (:func:`~quantfw_torch.export.export_module`),
offered as a registered conversion so that any plugin can ask quantfw's registry for a torch
model in ONNX form (``registry.convert(module, "torch", "onnx", example_inputs=...)``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TorchToOnnx"]


class TorchToOnnx:
    """Converts torch modules to ONNX ``ModelProto`` (not yet prepared for quantization)."""

    def convert(self, model: Any, *, example_inputs: Any = None, opset: int | None = None) -> Any:
        """The ONNX translation of ``model`` traced with ``example_inputs`` (a tensor, a tuple of
        positional inputs or a dict of keyword inputs; or ``model`` is a
        :class:`~quantfw_torch.export.TorchModel` that carries them).

        :raises ValueError: no example inputs, or a module that cannot be exported (the error
            names the submodule and what to do).
        """
        from .export import as_torch_model, export_module

        return export_module(as_torch_model(model, example_inputs), opset=opset).onnx_model
