"""Preparing a model once for quantization: :func:`prepare` and the rewrites only it does."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..opset import DEFAULT_DOMAINS
from . import constant_folding, weight_folding
from .files import describe
from .index import drop_unused_initializers
from .meta import FOLDED_KEY, PREPARED_KEY, is_prepared, set_meta
from .shape_inference import infer_shapes

__all__ = ["prepare", "name_nodes", "constants_to_initializers"]


def prepare(
    model: onnx.ModelProto,
    *,
    inplace: bool = False,
    fold_batchnorm: bool = True,
    fold_constants: bool = True,
    where: str | None = None,
) -> onnx.ModelProto:
    """The model quantization works on: the same function, rewritten for quantization.

    In order: unnamed nodes get deterministic unique names (``<OpType>_<index>``, duplicates a
    ``_<k>`` suffix); ``Constant`` nodes become initializers; constant sub-expressions and
    ``Shape`` of statically shaped tensors are folded (``fold_constants``); inference-mode
    ``BatchNormalization`` after a ``Conv`` is folded into the Conv's weight and bias
    (``fold_batchnorm``; recorded under :data:`~quantfw_onnx.loader.FOLDED_KEY` in
    ``metadata_props``); Gemm ``alpha``/``beta`` are folded into constant B/C; shape inference
    fills ``value_info``.  Graph input and output names are kept.  The result is marked with
    :data:`~quantfw_onnx.loader.PREPARED_KEY`; preparing a prepared model returns it unchanged.

    :param inplace: rewrite ``model`` itself instead of a copy (saves one copy of the weights; the
        frontend does this for models it loaded itself).
    :raises ValueError: when the model cannot be prepared (naming it and why).
    """
    where = where or describe(model, None)
    if is_prepared(model):
        return model
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ValueError(
                f"{where}: initializer {t.name!r} refers to external data that is not loaded; "
                "pass the .onnx path instead (its side files are read from its folder)"
            )
    if not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    graph = model.graph
    name_nodes(graph)
    # IR < 4 lists every initializer among the graph inputs; rewrites that add initializers
    # would have to change the input list, so such old models are only named and inferred.
    rewrite = model.ir_version >= 4
    if rewrite:
        constants_to_initializers(graph)
    infer_shapes(model, where)
    if fold_constants and rewrite:
        for _ in range(4):  # folding Shape can expose more folding after re-inference
            if not constant_folding.fold_constants(model):
                break
            infer_shapes(model, where)
    if rewrite:
        folded = weight_folding.fold_batchnorm(model) if fold_batchnorm else {}
        if folded:
            set_meta(model, FOLDED_KEY, json.dumps(folded, sort_keys=True))
        weight_folding.fold_gemm_scalars(model)
        drop_unused_initializers(graph)
        infer_shapes(model, where)
    from .. import __version__

    set_meta(model, PREPARED_KEY, __version__)
    return model


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, deterministic name: unnamed nodes get ``<OpType>_<index>``,
    repeated names get ``_<k>`` suffixes (first occurrence keeps its name)."""
    taken = {n.name for n in graph.node if n.name}
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 0
        while name in taken or name in seen:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        seen.add(name)


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn ``Constant`` nodes into initializers of the same name (except those whose value is
    sparse or strings, and those that are graph outputs)."""
    outputs = {o.name for o in graph.output}
    keep = []
    new_inits = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            out = node.output[0]
            tensor = _constant_value(node)
            if tensor is not None and out not in outputs:
                tensor.name = out
                new_inits.append(tensor)
                continue
        keep.append(node)
    if new_inits:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            t = TensorProto()
            t.CopyFrom(a.t)
            return t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), np.int64))
    return None  # sparse_value / strings: leave the node alone
