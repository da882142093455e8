"""Building QuantGraph nodes from ONNX nodes: the helpers every op handler uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from quantfw.graph import Node, OpKind

from ..graphutil import outer_names, subgraphs
from ..opset import DEFAULT_DOMAINS
from .view import GraphView

__all__ = ["Handler", "node_attrs", "f32", "make", "other", "unary", "binary", "axes"]

#: Maps one ONNX node to a QuantGraph node; ``None`` means "capture it as ``other``".
Handler = Callable[[GraphView, onnx.NodeProto], Node | None]


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """``node``'s attributes by name, with bytes decoded to ``str``."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8", "replace") for s in v]
        out[a.name] = v
    return out


def f32(value: Any) -> float:
    """A float32 attribute as the short Python float it was written as (1e-05, not 9.99…e-06)."""
    v = float(value)
    return v if not math.isfinite(v) else float(str(np.float32(v)))


def make(
    v: GraphView,
    n: onnx.NodeProto,
    op: OpKind,
    inputs: list[str],
    outputs: list[str] | None = None,
    weights: dict[str, str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Node:
    """The QuantGraph node for ONNX node ``n`` (named after it; ``onnx_nodes`` and, for a Conv
    with a folded BatchNormalization, ``folded`` added to its attributes)."""
    a = {"onnx_nodes": [n.name]}
    if attrs:
        a.update(attrs)
    if n.name in v.folded:
        a["folded"] = [v.folded[n.name]]
    return Node(
        name=n.name,
        op=op,
        inputs=inputs,
        outputs=outputs if outputs is not None else [n.output[0]],
        weights=weights or {},
        attrs=a,
        source_op=n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}",
    )


def other(v: GraphView, n: onnx.NodeProto, attrs: dict[str, Any] | None = None) -> Node:
    """An ``other`` node: every input (including the outer tensors its subgraphs read) and
    every output of ``n``."""
    inputs = [t for t in n.input if t]
    for sub in subgraphs(n):  # subgraph bodies read outer tensors without listing them
        for t in sorted(outer_names(sub)):
            if t in v.defined and t not in inputs:
                inputs.append(t)
    outputs = [t for t in n.output if t]
    return make(v, n, OpKind.OTHER, inputs, outputs, attrs=attrs)


def unary(v: GraphView, n: onnx.NodeProto, op: OpKind, attrs: dict | None = None) -> Node:
    """A node of ``op`` reading ``n``'s first input."""
    return make(v, n, op, [n.input[0]], attrs=attrs)


def binary(v: GraphView, n: onnx.NodeProto, op: OpKind) -> Node | None:
    """A node of ``op`` reading both inputs of ``n`` (``None`` unless it has two)."""
    if len(n.input) != 2:
        return None
    return make(v, n, op, list(n.input))


def axes(v: GraphView, n: onnx.NodeProto, input_from: int) -> tuple[bool, tuple[int, ...] | None]:
    """Axes from the ``axes`` attribute (old opsets) or a constant input: (ok, axes)."""
    at = node_attrs(n)
    if "axes" in at:
        return True, tuple(int(a) for a in at["axes"])
    if len(n.input) > input_from and n.input[input_from]:
        found = v.ints(n.input[input_from])
        return (found is not None), (None if found is None else tuple(found))
    return True, None
