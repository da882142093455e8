"""What a QOperator artifact runs as integer operators, and its weight figures."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..avx2 import max_kernel_pair_sum, saturates_on_avx2
from ..opset import DEFAULT_DOMAINS

__all__ = ["qoperator_census", "qoperator_stats"]

_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")


def qoperator_census(model: onnx.ModelProto) -> dict[str, Any]:
    """What runs as an integer operator and what is left in QDQ form (main graph).

    ``float_on_dq`` counts, by op type, the nodes reading a ``DequantizeLinear`` output (other
    than the scale DQs of ``live_scales``): the float islands ONNX Runtime may still fuse.
    """
    g = model.graph
    counts = Counter(n.op_type for n in g.node if n.domain in DEFAULT_DOMAINS)
    scalars = {t.name for t in g.initializer if len(t.dims) == 0}
    dq_out = {
        n.output[0]
        for n in g.node
        if n.op_type == "DequantizeLinear"
        and n.domain in DEFAULT_DOMAINS
        and n.input[0] not in scalars
    }  # the DQs of a 0-d constant are live_scales' x_scale, not a quantized tensor
    float_on_dq: Counter[str] = Counter()
    for n in g.node:
        if n.op_type not in _INTEGER_OPS and any(x in dq_out for x in n.input):
            float_on_dq[n.op_type] += 1
    return {
        **{op: counts.get(op, 0) for op in _INTEGER_OPS},
        "QuantizeLinear": counts.get("QuantizeLinear", 0),
        "DequantizeLinear": counts.get("DequantizeLinear", 0),
        "float_on_dq": dict(float_on_dq),
    }


#: (op type, input index) of the integer weight codes each integer op reads.
_WEIGHT_INPUTS = {
    "DequantizeLinear": (0,),
    "MatMulInteger": (0, 1),
    "ConvInteger": (1,),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
}


def qoperator_stats(model: onnx.ModelProto) -> dict[str, Any]:
    """:func:`quantfw_onnx.backend.artifact_stats`' weight figures for a QOperator model (whose
    weights are also read by QLinearConv/QLinearMatMul/ConvInteger), plus the op counts."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    seen: set[str] = set()
    max_code = 0
    for n in g.node:
        for k in _WEIGHT_INPUTS.get(n.op_type, ()):
            t = inits.get(n.input[k]) if k < len(n.input) else None
            if t is None or t.name in seen or t.data_type != TensorProto.INT8:
                continue
            if t.data_location == TensorProto.EXTERNAL:
                continue
            seen.add(t.name)
            codes = numpy_helper.to_array(t)
            if codes.size:
                max_code = max(max_code, int(np.abs(codes.astype(np.int64)).max()))
    census = qoperator_census(model)
    return {
        "int8_weight_tensors": len(seen),
        "max_weight_code": max_code,
        "max_pair_sum": max_kernel_pair_sum(model),
        "needs_vnni": saturates_on_avx2(model),
        "qlinear_conv": census["QLinearConv"],
        "qlinear_matmul": census["QLinearMatMul"],
        "conv_integer": census["ConvInteger"],
        "float_ops_on_dequantized": sum(census["float_on_dq"].values()),
    }
