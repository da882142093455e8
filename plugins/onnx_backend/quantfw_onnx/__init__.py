"""quantfw-onnx: the ONNX frontend and the ONNX Runtime backend for the x86 targets.

Registered with quantfw through the ``quantfw`` entry-point group (``quantfw_onnx.plugin``).
"""

__version__ = "0.1.0"
