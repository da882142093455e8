"""Lowering a :class:`~quantfw.recipe.Recipe` onto an ONNX model: the QDQ and QOperator forms.

:func:`write_qdq` is the entry (:mod:`.writer`); :func:`to_qoperator` rewrites its QDQ model
into integer operators (:mod:`.qoperator`).  What ONNX Runtime does with the emitted patterns is
stated by ``tests/plugin_onnx/test_ort_rules.py``.
"""

from .errors import LoweringError
from .graph_edit import count_ops
from .qoperator import to_qoperator
from .qoperator_stats import qoperator_census, qoperator_stats
from .storage import MIN_OPSET, Storage, storage_of
from .writer import FORMATS, write_qdq

__all__ = [
    "FORMATS",
    "MIN_OPSET",
    "LoweringError",
    "Storage",
    "count_ops",
    "qoperator_census",
    "qoperator_stats",
    "storage_of",
    "to_qoperator",
    "write_qdq",
]
