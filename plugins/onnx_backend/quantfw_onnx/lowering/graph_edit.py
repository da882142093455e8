"""Reading and editing ONNX graphs for the lowering: subgraph walks, renaming a tensor's readers,
element types, the opset and IR version, Gemm attributes, pruning unread DQs, op counts."""

from __future__ import annotations

import onnx
from onnx import helper

from ..graphutil import subgraphs
from ..opset import DEFAULT_DOMAINS, default_opset
from .errors import LoweringError

__all__ = [
    "all_names",
    "rename_reads",
    "read_in_subgraphs",
    "elem_types",
    "raise_opset",
    "fix_ir_version",
    "gemm_trans_b",
    "prune_unread_dequantize",
    "count_ops",
]


def all_names(graph: onnx.GraphProto, out: set[str]) -> None:
    """Add to ``out`` every tensor and node name of ``graph``, subgraphs included."""
    for coll in (graph.input, graph.output, graph.value_info):
        out.update(v.name for v in coll)
    out.update(i.name for i in graph.initializer)
    for n in graph.node:
        out.add(n.name)
        out.update(n.input)
        out.update(n.output)
        for sub in subgraphs(n):
            all_names(sub, out)


def rename_reads(graph: onnx.GraphProto, old: str, new: str, only: set[str] | None = None) -> None:
    """Make every reader of ``old`` (subgraphs included) read ``new``; with ``only``, just the
    top-level nodes of those names (quantization on some consumers' edges)."""
    for n in graph.node:
        if only is not None and n.name not in only:
            continue
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        if only is None:
            for sub in subgraphs(n):
                rename_reads(sub, old, new)


def read_in_subgraphs(g: onnx.GraphProto, name: str) -> bool:
    """Whether a node inside one of ``g``'s subgraphs reads ``name``."""

    def walk(graph: onnx.GraphProto) -> bool:
        for n in graph.node:
            if name in n.input:
                return True
            if any(walk(s) for s in subgraphs(n)):
                return True
        return False

    return any(walk(s) for n in g.node for s in subgraphs(n))


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can tell (empty if it cannot run)."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # too large, or ops unknown to onnx: validation is best effort
        inferred = model
    g = inferred.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for i in g.initializer:
        types[i.name] = i.data_type
    return types


def raise_opset(model: onnx.ModelProto, need: int) -> onnx.ModelProto:
    """``model`` at default-domain opset ``need`` or newer (ONNX's version converter when it is
    older); other domains are left as they are.

    :raises LoweringError: when the model imports no default opset or the converter fails.
    """
    have = default_opset(model)
    if have is None:
        raise LoweringError("the model imports no default ('ai.onnx') opset; cannot add Q/DQ")
    if have >= need:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, need)
    except Exception as exc:
        raise LoweringError(
            f"the model uses opset {have}; the quantized artifact needs opset {need} "
            f"(QuantizeLinear/DequantizeLinear with the recipe's types), and ONNX's version "
            f"converter failed: {exc}. Export the model at opset {need} or newer."
        ) from None
    # the converter drops nothing but may leave the IR version low for the new opset
    return converted


def fix_ir_version(model: onnx.ModelProto) -> None:
    """Raise ``model``'s IR version to the lowest its opset imports need."""
    try:
        need = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except TypeError:  # older onnx without ignore_unknown
        need = helper.find_min_ir_version_for(list(model.opset_import))
    except Exception:
        return
    if model.ir_version < need:
        model.ir_version = need


def gemm_trans_b(n: onnx.NodeProto) -> bool | None:
    """``transB`` of a Gemm that is a plain ``A @ B (+ C)`` (``False`` for a MatMul); ``None``
    for a Gemm with ``transA``, or ``alpha`` / ``beta`` other than 1 (where C is given)."""
    if n.op_type != "Gemm":
        return False
    attrs = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    if (
        attrs.get("transA", 0)
        or attrs.get("alpha", 1.0) != 1.0
        or (len(n.input) > 2 and n.input[2] and attrs.get("beta", 1.0) != 1.0)
    ):
        return None
    return bool(attrs.get("transB", 0))


def prune_unread_dequantize(g: onnx.GraphProto, mine: set[str]) -> None:
    """Drop the DequantizeLinear nodes of initializers in ``mine`` that nothing reads any more
    (weight DQs an integer rewrite left behind), then those of ``mine`` no node reads."""
    while True:
        read: set[str] = {o.name for o in g.output}
        for n in g.node:
            read.update(n.input)
            for sub in subgraphs(n):
                sub_names: set[str] = set()
                all_names(sub, sub_names)
                read.update(sub_names)
        dead = [
            n
            for n in g.node
            if n.op_type == "DequantizeLinear"
            and n.input
            and n.input[0] in mine
            and not any(o in read for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {x for n in g.node for x in n.input}
    for i in [i for i in g.initializer if i.name in mine and i.name not in read]:
        g.initializer.remove(i)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has (``domain::Op`` outside ai.onnx)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain not in DEFAULT_DOMAINS else n.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts
