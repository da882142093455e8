"""Folding into weights: inference-mode BatchNormalization into the Conv before it, and Gemm's
``alpha``/``beta`` into its constant B and C."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graphutil import attribute, unique_name
from ..opset import DEFAULT_DOMAINS
from .index import GraphIndex

__all__ = ["fold_batchnorm", "fold_gemm_scalars"]


def fold_batchnorm(model: onnx.ModelProto) -> dict[str, str]:
    """Fold inference-mode BatchNormalization into the Conv feeding it (in place).

    The Conv takes over the BatchNormalization's output name; its weight initializer keeps its
    name (new values) unless something else reads it.  Returns ``{conv: bn}`` node names."""
    graph = model.graph
    idx = GraphIndex(graph)
    folded: dict[str, str] = {}
    producer = {t: n for n in graph.node for t in n.output if t}
    drop: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in DEFAULT_DOMAINS:
            continue
        if attribute(bn, "training_mode", 0) or any(o and idx.uses(o) for o in bn.output[1:]):
            continue
        if len(bn.input) < 5 or not all(
            t in idx.inits and t not in idx.graph_inputs for t in bn.input[1:5]
        ):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.domain not in DEFAULT_DOMAINS:
            continue
        if idx.uses(conv.output[0]) != 1 or conv.output[0] in idx.graph_outputs:
            continue
        if len(conv.input) < 2 or conv.input[1] not in idx.inits:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and conv.input[2] not in idx.inits:
            continue
        if {t for t in conv.input[1:] if t} & idx.graph_inputs:
            continue
        w_t = idx.inits[conv.input[1]]
        w = numpy_helper.to_array(w_t)
        if w.dtype.kind != "f":
            continue
        scale, beta, mean, var = (
            numpy_helper.to_array(idx.inits[t]).astype(np.float64) for t in bn.input[1:5]
        )
        if any(a.shape != (w.shape[0],) for a in (scale, beta, mean, var)):
            continue  # not one value per output channel: left unfolded, for the checks to name
        eps = float(attribute(bn, "epsilon", 1e-5))
        factor = scale / np.sqrt(var + eps)
        b = (
            numpy_helper.to_array(idx.inits[conv.input[2]]).astype(np.float64)
            if has_bias
            else np.zeros(w.shape[0])
        )
        new_w = (w.astype(np.float64) * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = ((b - mean) * factor + beta).astype(w.dtype)
        taken = set(idx.inits) | {t for n in graph.node for t in n.output}
        w_name = _replace_init(graph, idx, conv.input[1], new_w, f"{conv.name}.weight_bn", taken)
        b_base = conv.input[2] if has_bias else f"{conv.name}.bias"
        if has_bias:
            b_name = _replace_init(graph, idx, b_base, new_b, f"{conv.name}.bias_bn", taken)
        else:
            b_name = unique_name(taken, b_base, first_suffix=1)
            graph.initializer.append(numpy_helper.from_array(new_b, b_name))
            idx.inits[b_name] = graph.initializer[-1]
        conv.input[1] = w_name
        if has_bias:
            conv.input[2] = b_name
        else:
            while len(conv.input) < 2:
                conv.input.append("")
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        producer[bn.output[0]] = conv
        drop.add(id(bn))
        folded[conv.name] = bn.name
    if drop:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def fold_gemm_scalars(model: onnx.ModelProto) -> None:
    """Gemm with constant B (and C): fold alpha into B and beta into C, and make a ``(1, N)`` C
    one-dimensional, so that the Gemm is a plain ``x @ B (+ C)``."""
    graph = model.graph
    idx = GraphIndex(graph)
    taken = set(idx.inits) | {t for n in graph.node for t in n.output}
    for node in graph.node:
        if node.op_type != "Gemm" or node.domain not in DEFAULT_DOMAINS or len(node.input) < 2:
            continue
        alpha = float(attribute(node, "alpha", 1.0))
        beta = float(attribute(node, "beta", 1.0))
        b_name = node.input[1]
        c_name = node.input[2] if len(node.input) > 2 else ""
        if b_name not in idx.inits or (c_name and c_name not in idx.inits):
            continue
        if {b_name, c_name} & idx.graph_inputs:
            continue
        if alpha != 1.0:
            b = numpy_helper.to_array(idx.inits[b_name])
            if b.dtype.kind != "f":
                continue
            new = (b.astype(np.float64) * alpha).astype(b.dtype)
            node.input[1] = _replace_init(graph, idx, b_name, new, f"{node.name}.B", taken)
            _drop_attr(node, "alpha")
        if c_name:
            c = numpy_helper.to_array(idx.inits[c_name])
            if c.dtype.kind != "f":
                continue
            new_c = c
            if beta != 1.0:
                new_c = (c.astype(np.float64) * beta).astype(c.dtype)
            if new_c.ndim == 2 and new_c.shape[0] == 1:
                new_c = new_c.reshape(-1)
            if new_c is not c:
                node.input[2] = _replace_init(graph, idx, c_name, new_c, f"{node.name}.C", taken)
            _drop_attr(node, "beta")


def _replace_init(
    graph: onnx.GraphProto,
    idx: GraphIndex,
    name: str,
    value: np.ndarray,
    fresh: str,
    taken: set[str],
) -> str:
    """Set initializer ``name`` to ``value`` in place when only one node reads it (and it is not a
    graph input a user could override); otherwise add a new initializer and return its name."""
    if idx.uses(name) == 1 and name not in idx.graph_inputs:
        t = idx.inits[name]
        t.CopyFrom(numpy_helper.from_array(value, name))
        return name
    new = unique_name(taken, fresh, first_suffix=1)
    graph.initializer.append(numpy_helper.from_array(value, new))
    idx.inits[new] = graph.initializer[-1]
    return new


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)
