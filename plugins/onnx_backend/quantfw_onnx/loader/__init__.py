"""Reading ONNX models, and preparing them once for quantization.

:func:`load_onnx` reads a ``.onnx`` file (with its external-data side files) or checks a
``ModelProto``; every problem becomes a ``ValueError`` naming the file (:mod:`.files`, which also
says how weights are kept once).  :func:`prepare` rewrites the model the way quantization wants
it -- shape inference, constant folding, Conv+BatchNorm folding, unique node names -- in ONNX
itself, so that calibration, simulation and every backend see one and the same prepared model (it
is what ``QuantGraph.forms["onnx"]`` holds).  The checker and shape inference run on weightless shells
(:mod:`.shell`).
"""

from .files import check_model, load_onnx
from .meta import FOLDED_KEY, PREPARED_KEY, folded_batchnorms, is_prepared
from .preparation import prepare
from .shell import SHELL_BYTES, data_bytes, model_shell

__all__ = [
    "load_onnx",
    "check_model",
    "prepare",
    "is_prepared",
    "folded_batchnorms",
    "model_shell",
    "PREPARED_KEY",
    "FOLDED_KEY",
    "SHELL_BYTES",
    "data_bytes",
]
