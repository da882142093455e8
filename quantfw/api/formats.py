"""Model formats by name, and which quantfw extra brings the plugin that handles each.

A format is a plain lower-case name shared by frontends (``FrontendInfo.format``), converters
(``ConverterInfo.source`` / ``target``) and backends (``BackendInfo.accepts`` /
``artifact_format``).  Third-party plugins may name new formats; the table below only serves
error messages ("no plugin converts keras to onnx: pip install "quantfw[tf]"").
"""

from __future__ import annotations

__all__ = ["QGRAPH", "FORMAT_EXTRAS", "install_hint_for"]

#: The format every captured model has: the :class:`~quantfw.graph.QuantGraph` itself.  A
#: backend that accepts it lowers from the graph and recipe alone.
QGRAPH = "qgraph"

#: Format → the pip extra of the quantfw plugin that reads or writes it.
FORMAT_EXTRAS: dict[str, str] = {
    "onnx": "onnx",
    "torch": "torch",
    "keras": "tf",
    "savedmodel": "tf",
    "tflite": "edge",
    "edgetpu": "edge",
    "engine": "tensorrt",
}


def install_hint_for(fmt: str) -> str:
    """``'pip install "quantfw[tf]"'`` for a format a quantfw plugin handles, else ``""``."""
    extra = FORMAT_EXTRAS.get(fmt)
    return f'pip install "quantfw[{extra}]"' if extra else ""
