"""Handlers for the ONNX ops that move data around: concatenation, reshapes, transposes, slices,
gathers (embedding lookups included), padding and resizing."""

from __future__ import annotations

from typing import Any

import onnx

from quantfw.graph import Node, OpKind

from .nodes import Handler, axes, make, node_attrs, unary
from .view import FLOAT_TYPES, GraphView

__all__ = ["HANDLERS"]


def _concat(v: GraphView, n: onnx.NodeProto) -> Node:
    return make(
        v, n, OpKind.CONCAT, [t for t in n.input if t], attrs={"axis": int(node_attrs(n)["axis"])}
    )


def _reshape_target(v: GraphView, n: onnx.NodeProto) -> list[int] | None:
    """A Reshape target for the interpreter from the inferred output shape: static dims as
    they are, ``0`` where the output dim is the input's dim at the same index (same symbol),
    and at most one ``-1``."""
    out = v.syms.get(n.output[0])
    inp = v.syms.get(n.input[0]) or ()
    if out is None:
        return None
    target: list[int] = []
    free = 0
    for j, d in enumerate(out):
        if isinstance(d, int):
            target.append(d)
        elif isinstance(d, str) and j < len(inp) and inp[j] == d:
            target.append(0)
        elif free == 0:
            target.append(-1)
            free += 1
        else:
            return None
    return target


def _reshape(v: GraphView, n: onnx.NodeProto) -> Node | None:
    allowzero = int(node_attrs(n).get("allowzero", 0))
    shape = v.ints(n.input[1]) if len(n.input) > 1 else None
    if shape is not None:
        if allowzero and 0 in shape:
            return None
        return unary(v, n, OpKind.RESHAPE, {"shape": shape})
    target = _reshape_target(v, n)
    if target is not None:
        return unary(v, n, OpKind.RESHAPE, {"shape": target})
    # dynamic target shape: a reshape all the same (data is inputs[0]); no "shape" attribute
    return make(v, n, OpKind.RESHAPE, [t for t in n.input if t])


def _transpose(v: GraphView, n: onnx.NodeProto) -> Node:
    perm = node_attrs(n).get("perm")
    return unary(v, n, OpKind.TRANSPOSE, {"perm": None if perm is None else tuple(perm)})


def _flatten(v: GraphView, n: onnx.NodeProto) -> Node:
    return unary(v, n, OpKind.FLATTEN, {"axis": int(node_attrs(n).get("axis", 1))})


def _squeeze(v: GraphView, n: onnx.NodeProto) -> Node | None:
    ok, found = axes(v, n, 1)
    return unary(v, n, OpKind.SQUEEZE, {"axes": found}) if ok else None


def _unsqueeze(v: GraphView, n: onnx.NodeProto) -> Node | None:
    ok, found = axes(v, n, 1)
    if not ok or found is None:
        return None
    target = _reshape_target(v, n)
    if target is None:
        return None
    return unary(v, n, OpKind.RESHAPE, {"shape": target, "axes": found})


def _slice(v: GraphView, n: onnx.NodeProto) -> Node | None:
    at = node_attrs(n)
    if v.opset < 10:
        spec = {k: at.get(k) for k in ("starts", "ends", "axes")}
        spec["steps"] = None
    else:
        spec = {}
        for k, key in enumerate(("starts", "ends", "axes", "steps"), start=1):
            t = n.input[k] if len(n.input) > k else ""
            if not t:
                spec[key] = None
                continue
            value = v.ints(t)
            if value is None:
                return None
            spec[key] = value
    attrs = {k: (None if s is None else [int(i) for i in s]) for k, s in spec.items()}
    return unary(v, n, OpKind.SLICE, attrs)


def _gather(v: GraphView, n: onnx.NodeProto) -> Node | None:
    data, idx = n.input[0], n.input[1]
    axis = int(node_attrs(n).get("axis", 0))
    if (
        v.is_const(data)
        and not v.is_const(idx)
        and len(v.shapes[data]) == 2
        and axis == 0
        and v.types.get(data) in FLOAT_TYPES
    ):
        return make(v, n, OpKind.EMBEDDING, [idx], weights={"weight": data}, attrs={"axis": 0})
    if not v.is_float(n.output[0]):
        return None
    return make(v, n, OpKind.GATHER, [data, idx], attrs={"axis": axis})


def _pad(v: GraphView, n: onnx.NodeProto) -> Node | None:
    at = node_attrs(n)
    attrs: dict[str, Any] = {"mode": str(at.get("mode", "constant"))}
    if v.opset < 11:
        attrs["pads"] = [int(p) for p in at.get("pads", [])]
        attrs["value"] = float(at.get("value", 0.0))
        attrs["axes"] = None
    else:
        pads = v.ints(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        if pads is None:
            return None
        attrs["pads"] = pads
        value = 0.0
        if len(n.input) > 2 and n.input[2]:
            s = v.scalar(n.input[2])
            if s is None:
                return None
            value = s
        attrs["value"] = value
        found = None
        if len(n.input) > 3 and n.input[3]:
            found = v.ints(n.input[3])
            if found is None:
                return None
        attrs["axes"] = found
    return unary(v, n, OpKind.PAD, attrs)


def _resize(v: GraphView, n: onnx.NodeProto) -> Node | None:
    at = node_attrs(n)
    attrs: dict[str, Any] = {
        k: at[k]
        for k in (
            "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
            "exclude_outside", "extrapolation_value", "antialias", "keep_aspect_ratio_policy",
        )
        if k in at
    }  # fmt: skip
    attrs.setdefault("mode", "nearest")
    if "axes" in at:
        attrs["axes"] = list(at["axes"])
    named = ("scales",) if v.opset < 11 else ("roi", "scales", "sizes")
    for k, key in enumerate(named, start=1):
        t = n.input[k] if len(n.input) > k else ""
        if not t:
            continue
        if not v.is_const(t):
            return None
        c = v.const(t)
        if c is None or c.size == 0:
            continue
        attrs[key] = [int(i) for i in c.reshape(-1)] if key == "sizes" else v.floats(t)
    return unary(v, n, OpKind.RESIZE, attrs)


#: ONNX op type -> handler (``None`` from a handler: capture the node as ``other``).
HANDLERS: dict[str, Handler] = {
    "Concat": _concat,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Gather": _gather,
    "Pad": _pad,
    "Resize": _resize,
}
