"""The integer operators the QOperator form writes for quantized Conv, MatMul and Gemm nodes.

Each rewrite returns the new nodes and the indices of the nodes they replace besides the op (an
absorbed ``Relu`` and ``Q``), or ``None`` when the pattern does not convert (it then keeps its
Q/DQ).  See :mod:`.qoperator` for the patterns.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..opset import DEFAULT_DOMAINS
from .qoperator_patterns import DQ, Rewriter

__all__ = ["conv", "matmul", "bias_add"]

_F32 = np.float32


def conv(rw: Rewriter, n: onnx.NodeProto) -> tuple[list[onnx.NodeProto], tuple[int, ...]] | None:
    """``QLinearConv`` when a Q takes the output (and the bias is int32 codes of scale
    ``x_s * w_s``), else ``ConvInteger -> Cast -> Mul(x_s * w_s) [-> Add(bias)]``."""
    if len(n.input) < 2:
        return None
    x, w = rw.activation(n.input[0]), rw.dq(n.input[1])
    if x is None or w is None or w.const is None or w.const.ndim < 3:
        return None
    if not rw.kernel_types_ok(x, w) or w.axis not in (None, 0):
        return None
    w_zp = rw.weight_zero_point(w)
    if w_zp is None:
        return None
    attrs = list(n.attribute)
    base = n.name or n.output[0]
    bias_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
    bias = rw.dq(bias_name) if bias_name else None
    out = rw.q_after(n.output[0])
    if out is not None and (bias_name is None or _bias_codes_ok(bias, x, w)):
        inputs = [
            x.codes, rw.scalar(x, "scale"), rw.scalar(x, "zero_point"),
            w.codes, w.scale, w_zp, out.scale, out.zero_point,
        ]  # fmt: skip
        if bias is not None:
            inputs.append(bias.codes)
        node = helper.make_node(
            "QLinearConv", inputs, [out.output], name=rw.fresh(f"{base}_QLinearConv")
        )
        node.attribute.extend(attrs)
        return [node], out.removed
    # float output: ConvInteger + Cast + Mul(x_s * w_s per output channel) [+ Add(bias)]
    channels = (-1,) + (1,) * (w.const.ndim - 2)
    acc, accf = rw.fresh(f"{n.output[0]}_int32"), rw.fresh(f"{n.output[0]}_int32_float")
    ci = helper.make_node(
        "ConvInteger",
        [x.codes, w.codes, rw.scalar(x, "zero_point"), w_zp],
        [acc],
        name=rw.fresh(f"{base}_ConvInteger"),
    )
    ci.attribute.extend(attrs)
    scale_nodes, scale = rw.scale_product(x, w, base, channels if w.axis == 0 else ())
    nodes = [ci, *scale_nodes, rw.cast(acc, accf, base)]
    if bias_name is None:
        nodes.append(rw.mul(accf, scale, n.output[0], base))
        return nodes, ()
    if bias is not None and bias.const is not None:
        value: np.ndarray | None = rw.dequantized(bias)
    else:
        value = rw.value(bias_name)
    if value is not None:
        b = rw.shared(
            "channels",
            bias_name,
            lambda: rw.add_init(value.reshape(channels), f"{bias_name}_float_channels"),
        )
    else:
        b = rw.reshaped(bias_name, channels, nodes, base)
    prod = rw.fresh(f"{n.output[0]}_unbiased")
    nodes.append(rw.mul(accf, scale, prod, base))
    nodes.append(helper.make_node("Add", [prod, b], [n.output[0]], name=rw.fresh(f"{base}_Bias")))
    return nodes, ()


def _bias_codes_ok(bias: DQ | None, x: DQ, w: DQ) -> bool:
    """int32 codes with zero point 0 and scale ``x_s * w_s``: what QLinearConv adds."""
    if bias is None or bias.const is None or bias.elem_type != TensorProto.INT32:
        return False
    if np.any(bias.zp_value != 0) or bias.const.ndim != 1:
        return False
    expected = (x.scale_value.reshape(()).astype(_F32) * w.scale_value.astype(_F32)).astype(_F32)
    expected = np.broadcast_to(expected, bias.const.shape)
    got = np.broadcast_to(bias.scale_value, bias.const.shape)
    return bool(np.allclose(got, expected, rtol=1e-6, atol=0))


def matmul(rw: Rewriter, n: onnx.NodeProto) -> tuple[list[onnx.NodeProto], tuple[int, ...]] | None:
    """``QLinearMatMul`` when a Q takes the output, else ``MatMulInteger -> Cast ->
    Mul(x_s * w_s) [-> Add(C)]``; for MatMul, and Gemm with ``transA = 0`` and
    ``alpha = beta = 1``."""
    if len(n.input) < 2:
        return None
    c = None
    trans_b = False
    if n.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        c = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        if c is not None and attrs.get("beta", 1.0) != 1.0:
            return None
        trans_b = bool(attrs.get("transB", 0))
    x = rw.activation(n.input[0])
    w = rw.dq(n.input[1])
    if x is None or w is None or not rw.kernel_types_ok(x, w):
        return None
    base = n.name or n.output[0]
    if w.const is None:  # a second activation (attention): per-tensor, no transpose
        if not w.per_tensor or trans_b:
            return None
        w_codes, w_zp = w.codes, rw.scalar(w, "zero_point")
    else:
        if w.const.ndim != 2 and not (w.per_tensor and not trans_b):
            return None
        if w.axis is not None and w.axis != (0 if trans_b else 1):
            return None  # scales along the summed axis cannot be factored out
        w_codes, w_zp = (
            w.codes,
            w.zero_point if w.axis is not None else rw.scalar(w, "zero_point"),
        )
        if trans_b:
            w_codes = rw.shared(
                "transposed", w.codes,
                lambda: rw.add_init(np.ascontiguousarray(w.const.T), f"{w.codes}_transposed"),
            )  # fmt: skip
    out = rw.q_after(n.output[0]) if c is None else None
    if out is not None:
        w_scale = w.scale if w.axis is not None else rw.scalar(w, "scale")
        node = helper.make_node(
            "QLinearMatMul",
            [
                x.codes, rw.scalar(x, "scale"), rw.scalar(x, "zero_point"),
                w_codes, w_scale, w_zp, out.scale, out.zero_point,
            ],
            [out.output],
            name=rw.fresh(f"{base}_QLinearMatMul"),
        )  # fmt: skip
        return [node], out.removed
    acc, accf = rw.fresh(f"{n.output[0]}_int32"), rw.fresh(f"{n.output[0]}_int32_float")
    nodes = [
        helper.make_node(
            "MatMulInteger",
            [x.codes, w_codes, rw.scalar(x, "zero_point"), w_zp],
            [acc],
            name=rw.fresh(f"{base}_MatMulInteger"),
        ),
        rw.cast(acc, accf, base),
    ]
    scale_nodes, scale = rw.scale_product(x, w, base)
    nodes = scale_nodes + nodes
    if c is None:
        nodes.append(rw.mul(accf, scale, n.output[0], base))
        return nodes, ()
    prod = rw.fresh(f"{n.output[0]}_unbiased")
    nodes.append(rw.mul(accf, scale, prod, base))
    nodes.append(
        helper.make_node(
            "Add",
            [prod, rw.float_constant(c) or c],
            [n.output[0]],
            name=rw.fresh(f"{base}_Bias"),
        )
    )
    return nodes, ()


def bias_add(rw: Rewriter, produced: str) -> tuple[int, onnx.NodeProto] | None:
    """The bias ``Add`` reading ``produced`` (a float-output integer op's result), rewired to
    read its constant operand as float32 second input; ``None`` when there is none."""
    i = rw.single_reader(produced)
    if i is None:
        return None
    n = rw.model.graph.node[i]
    if n.op_type != "Add" or n.domain not in DEFAULT_DOMAINS or len(n.input) != 2:
        return None
    other = n.input[1] if n.input[0] == produced else n.input[0]
    if other == produced:
        return None
    d = rw.dq(other)
    if d is None or d.const is None or d.const.ndim != 1 or d.const.size < 2:
        return None
    new = onnx.NodeProto()
    new.CopyFrom(n)
    del new.input[:]
    new.input.extend([produced, rw.float_constant(other)])  # type: ignore[list-item]
    return i, new
