"""Handlers for the ONNX ops that compute: convolution, linear layers, element-wise arithmetic,
activations, normalizations, pooling and reductions."""

from __future__ import annotations

import math
from typing import Any

import onnx

from quantfw.graph import Node, OpKind

from .nodes import Handler, axes, binary, f32, make, node_attrs, unary
from .view import FLOAT_TYPES, GraphView

__all__ = ["HANDLERS"]


def _spatial(v: GraphView, n: onnx.NodeProto, kernel: list[int] | None) -> dict[str, Any] | None:
    """stride / padding / dilation / kernel_shape of Conv and pooling, interpreter style."""
    at = node_attrs(n)
    kernel = list(at.get("kernel_shape") or kernel or [])
    if not kernel:
        return None
    nd = len(kernel)
    strides = list(at.get("strides") or [1] * nd)
    dil = list(at.get("dilations") or [1] * nd)
    auto = str(at.get("auto_pad", "NOTSET") or "NOTSET")
    out: dict[str, Any] = {
        "kernel_shape": tuple(kernel),
        "stride": tuple(strides),
        "dilation": tuple(dil),
    }
    if auto in ("NOTSET", ""):
        pads = list(at.get("pads") or [0] * (2 * nd))
        out["padding"] = tuple(pads)  # (begin..., end...) = (top, left, bottom, right) in 2-D
    elif auto == "VALID":
        out["padding"] = (0,) * (2 * nd)
    else:
        shape = v.shapes.get(n.input[0])
        spatial = shape[2:] if shape is not None and len(shape) == nd + 2 else None
        if spatial is None or any(s is None for s in spatial):
            out["auto_pad"] = auto
        else:
            begin, end = [], []
            for size, k, s, d in zip(spatial, kernel, strides, dil, strict=True):
                total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                begin.append(lo)
                end.append(total - lo)
            out["padding"] = tuple(begin + end)
    return out


def _conv(v: GraphView, n: onnx.NodeProto, transpose: bool = False) -> Node | None:
    if len(n.input) < 2 or not v.is_const(n.input[1]) or v.is_const(n.input[0]):
        return None
    bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if bias is not None and not v.is_const(bias):
        return None
    w_shape = v.shapes[n.input[1]]
    geo = _spatial(v, n, list(w_shape[2:]))
    if geo is None:
        return None
    at = node_attrs(n)
    attrs = {"channel_axis": 1 if transpose else 0, "groups": int(at.get("group", 1)), **geo}
    if transpose:
        for k in ("output_padding", "output_shape"):
            if k in at:
                attrs[k] = tuple(at[k])
    weights = {"weight": n.input[1]}
    if bias is not None:
        weights["bias"] = bias
    op = OpKind.CONV_TRANSPOSE if transpose else OpKind.CONV
    return make(v, n, op, [n.input[0]], weights=weights, attrs=attrs)


def _conv_transpose(v: GraphView, n: onnx.NodeProto) -> Node | None:
    return _conv(v, n, transpose=True)


def _gemm(v: GraphView, n: onnx.NodeProto) -> Node | None:
    at = node_attrs(n)
    if at.get("transA", 0) or len(n.input) < 2 or not v.is_const(n.input[1]):
        return None
    if float(at.get("alpha", 1.0)) != 1.0 or v.is_const(n.input[0]):
        return None
    w_shape = v.shapes[n.input[1]]
    if len(w_shape) != 2:
        return None
    trans_b = int(at.get("transB", 0))
    n_out = w_shape[0] if trans_b else w_shape[1]
    weights = {"weight": n.input[1]}
    c = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if c is not None:
        if float(at.get("beta", 1.0)) != 1.0 or not v.is_const(c):
            return None
        if v.shapes[c] != (n_out,):
            return None
        weights["bias"] = c
    return make(
        v, n, OpKind.LINEAR, [n.input[0]], weights=weights,
        attrs={"channel_axis": 0 if trans_b else 1},
    )  # fmt: skip


def _matmul(v: GraphView, n: onnx.NodeProto) -> Node | None:
    a, b = n.input[0], n.input[1]
    if (
        v.is_const(b)
        and not v.is_const(a)
        and len(v.shapes[b]) == 2
        and v.types.get(b) in FLOAT_TYPES
    ):
        return make(v, n, OpKind.LINEAR, [a], weights={"weight": b}, attrs={"channel_axis": 1})
    if not (v.is_float(a) and v.is_float(b)):
        return None
    return make(v, n, OpKind.MATMUL, [a, b])


def _leaky_relu(v: GraphView, n: onnx.NodeProto) -> Node:
    return unary(v, n, OpKind.LEAKY_RELU, {"alpha": f32(node_attrs(n).get("alpha", 0.01))})


def _gelu(v: GraphView, n: onnx.NodeProto) -> Node:
    approx = str(node_attrs(n).get("approximate", "none"))
    return unary(v, n, OpKind.GELU, {"approximate": approx})


def _dropout(v: GraphView, n: onnx.NodeProto) -> Node | None:
    # inference: the identity, unless the mask is used or training_mode is a live input
    if any(v.uses(t) for t in n.output[1:] if t):
        return None
    if len(n.input) > 2 and n.input[2] and not v.is_const(n.input[2]):
        return None
    return unary(v, n, OpKind.IDENTITY)


def _clip(v: GraphView, n: onnx.NodeProto) -> Node | None:
    if v.opset < 11:
        at = node_attrs(n)
        lo, hi = at.get("min", -math.inf), at.get("max", math.inf)
    else:
        bounds = []
        for k in (1, 2):
            t = n.input[k] if len(n.input) > k else ""
            if not t:
                bounds.append(-math.inf if k == 1 else math.inf)
                continue
            value = v.scalar(t)
            if value is None:
                return None
            bounds.append(value)
        lo, hi = bounds
    return unary(v, n, OpKind.CLIP, {"clip": (f32(lo), f32(hi))})


def _softmax(v: GraphView, n: onnx.NodeProto) -> Node | None:
    axis = int(node_attrs(n).get("axis", -1 if v.opset >= 13 else 1))
    if v.opset < 13:  # older Softmax flattens from `axis` on: same only on the last axis
        r = v.rank(n.input[0])
        if r is None or axis % r != r - 1:
            return None
    return unary(v, n, OpKind.SOFTMAX, {"axis": axis})


def _layer_norm(v: GraphView, n: onnx.NodeProto) -> Node | None:
    if any(v.uses(t) for t in n.output[1:] if t):
        return None
    if len(n.input) < 2 or not v.is_const(n.input[1]):
        return None
    weights = {"weight": n.input[1]}
    if len(n.input) > 2 and n.input[2]:
        if not v.is_const(n.input[2]):
            return None
        weights["bias"] = n.input[2]
    at = node_attrs(n)
    attrs = {"axis": int(at.get("axis", -1)), "eps": f32(at.get("epsilon", 1e-5))}
    return make(v, n, OpKind.LAYERNORM, [n.input[0]], weights=weights, attrs=attrs)


def _batch_norm(v: GraphView, n: onnx.NodeProto) -> Node | None:
    at = node_attrs(n)
    if at.get("training_mode", 0) or any(v.uses(t) for t in n.output[1:] if t):
        return None
    if len(n.input) < 5 or not all(v.is_const(t) for t in n.input[1:5]):
        return None
    weights = dict(zip(("scale", "bias", "mean", "var"), n.input[1:5], strict=True))
    attrs = {"eps": f32(at.get("epsilon", 1e-5))}
    return make(v, n, OpKind.BATCHNORM, [n.input[0]], weights=weights, attrs=attrs)


def _pool(v: GraphView, n: onnx.NodeProto, op: OpKind) -> Node | None:
    if any(v.uses(t) for t in n.output[1:] if t):  # MaxPool indices
        return None
    geo = _spatial(v, n, None)
    if geo is None:
        return None
    at = node_attrs(n)
    geo["ceil_mode"] = int(at.get("ceil_mode", 0))
    if op is OpKind.AVG_POOL:
        geo["count_include_pad"] = int(at.get("count_include_pad", 0))
    return unary(v, n, op, geo)


def _reduce_mean(v: GraphView, n: onnx.NodeProto) -> Node | None:
    ok, found = axes(v, n, 1)
    if not ok:
        return None
    at = node_attrs(n)
    if found is None and at.get("noop_with_empty_axes", 0):
        return unary(v, n, OpKind.IDENTITY)
    attrs = {"axes": found, "keepdims": bool(at.get("keepdims", 1))}
    return unary(v, n, OpKind.REDUCE_MEAN, attrs)


#: ONNX op type -> handler (``None`` from a handler: capture the node as ``other``).
HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": lambda v, n: binary(v, n, OpKind.ADD),
    "Sub": lambda v, n: binary(v, n, OpKind.SUB),
    "Mul": lambda v, n: binary(v, n, OpKind.MUL),
    "Div": lambda v, n: binary(v, n, OpKind.DIV),
    "Relu": lambda v, n: unary(v, n, OpKind.RELU),
    "Sigmoid": lambda v, n: unary(v, n, OpKind.SIGMOID),
    "Tanh": lambda v, n: unary(v, n, OpKind.TANH),
    "LeakyRelu": _leaky_relu,
    "Gelu": _gelu,
    "Identity": lambda v, n: unary(v, n, OpKind.IDENTITY),
    "Dropout": _dropout,
    "Clip": _clip,
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "MaxPool": lambda v, n: _pool(v, n, OpKind.MAX_POOL),
    "AveragePool": lambda v, n: _pool(v, n, OpKind.AVG_POOL),
    "GlobalAveragePool": lambda v, n: unary(v, n, OpKind.GLOBAL_AVG_POOL),
    "ReduceMean": _reduce_mean,
}
