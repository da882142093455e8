"""The whole-graph capture: merged patterns first, then one handler per remaining node."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from quantfw.graph import Node, QuantGraph

from ..opset import DEFAULT_DOMAINS
from . import compute_ops, layout_ops
from .nodes import Handler, other
from .patterns import find_fusions
from .view import GraphView

__all__ = ["capture"]

#: ONNX op type (default domain) -> handler.
_HANDLERS: dict[str, Handler] = {**compute_ops.HANDLERS, **layout_ops.HANDLERS}


def _map_node(v: GraphView, n: onnx.NodeProto) -> Node:
    """The QuantGraph node for one ONNX node: its op's handler, or ``other`` for custom-domain
    ops, nodes without outputs or with a non-float output, unknown ops, and nodes a handler
    declines."""
    if n.domain not in DEFAULT_DOMAINS:
        return other(v, n)
    outs = [t for t in n.output if t]
    if not outs:
        return other(v, n)
    # shape arithmetic and other non-float results are never quantized
    if not v.is_float(n.output[0]):
        return other(v, n)
    handler = _HANDLERS.get(n.op_type)
    node = handler(v, n) if handler is not None else None
    return node if node is not None else other(v, n)


def _graph(v: GraphView, name: str) -> QuantGraph:
    fused = find_fusions(v)
    covered = {i for f in fused.values() for i in f.covered}
    nodes: list[Node] = []
    for i, n in enumerate(v.nodes):
        if i in fused:
            f = fused[i]
            parts = [v.nodes[k] for k in f.covered]
            attrs = {"onnx_nodes": [p.name for p in parts], **f.attrs}
            nodes.append(
                Node(
                    name=parts[0].name,
                    op=f.op,
                    inputs=f.inputs,
                    outputs=[f.output],
                    weights=f.weights,
                    attrs=attrs,
                    source_op="+".join(p.op_type for p in parts),
                )
            )
        elif i not in covered:
            nodes.append(_map_node(v, n))
    inputs = [i.name for i in v.g.input if i.name not in v.init_protos]
    input_shapes = {k: v.shapes[k] for k in inputs if k in v.shapes}
    input_dtypes = {}
    for i in v.g.input:
        elem = i.type.tensor_type.elem_type if i.type.HasField("tensor_type") else 0
        if i.name in inputs and elem:
            try:
                input_dtypes[i.name] = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
            except (KeyError, TypeError, ValueError):  # a type numpy has no name for
                pass
    outputs = [o.name for o in v.g.output]
    for o in outputs:
        if o in v.init_protos and o not in v.producer:
            raise ValueError(
                f"ONNX model {name!r}: graph output {o!r} is a constant (an initializer); "
                "quantfw needs every output computed by a node"
            )
    return QuantGraph(
        nodes=nodes,
        inputs=inputs,
        outputs=outputs,
        initializers=v.store,  # type: ignore[arg-type]
        name=name,
        input_shapes=input_shapes,
        forms={"onnx": v.model},
        input_dtypes=input_dtypes,
    )


def capture(model: onnx.ModelProto, *, name: str | None = None) -> QuantGraph:
    """The QuantGraph of a prepared ONNX model (see :mod:`quantfw_onnx.capture` for the
    conventions).

    :param model: normally the output of :func:`quantfw_onnx.loader.prepare`; an unprepared model
        works too, but then unnamed nodes make the capture fail and BatchNorm stays unfolded.
    :param name: the graph's name (default: the ONNX graph's name, else ``"model"``).
    :raises ValueError: for graphs quantfw cannot represent (unnamed or duplicate node names,
        a constant graph output).
    """
    names = [n.name for n in model.graph.node]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(
            "capture needs every ONNX node named uniquely: run quantfw_onnx.loader.prepare(model) "
            "first"
        )
    graph_name = name or model.graph.name or "model"
    return _graph(GraphView(model), graph_name)
