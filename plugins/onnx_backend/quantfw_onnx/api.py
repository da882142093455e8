"""The public API of quantfw-onnx, for users and for other plugins.

Other plugins import this module and nothing else of quantfw-onnx (a test enforces it): a
TensorRT backend lowering the same explicit-quantization ONNX, an edge backend converting QDQ
ONNX to TFLite, a frontend capturing through an ONNX translation.  Importing it imports onnx.
"""

from .backend import OnnxRuntimeBackend, artifact_stats
from .capture import FLOAT_TYPES, InitializerStore, capture
from .cpu import VNNI_FLAGS, X86Detection, cpu_vnni, detect_x86
from .frontend import OnnxFrontend
from .loader import is_prepared, load_onnx, prepare
from .lowering import FORMATS, LoweringError, count_ops, write_qdq
from .opset import default_opset

__all__ = [
    "FLOAT_TYPES",
    "FORMATS",
    "VNNI_FLAGS",
    "InitializerStore",
    "LoweringError",
    "OnnxFrontend",
    "OnnxRuntimeBackend",
    "X86Detection",
    "artifact_stats",
    "capture",
    "count_ops",
    "cpu_vnni",
    "default_opset",
    "detect_x86",
    "is_prepared",
    "load_onnx",
    "prepare",
    "write_qdq",
]
