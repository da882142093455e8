"""ONNX shape inference for prepared models, run on a weightless shell."""

from __future__ import annotations

import warnings

import onnx

from .shell import model_shell

__all__ = ["infer_shapes"]


def infer_shapes(model: onnx.ModelProto, where: str) -> None:
    """Shape inference on the shell; the inferred value_info is copied into ``model``.

    Stale value_info (of tensors no longer in the graph) is dropped first.  When inference fails
    the model is left without inferred shapes and a warning starting with ``where`` says why.
    """
    graph = model.graph
    live = {t for n in graph.node for t in n.output} | {t.name for t in graph.initializer}
    kept = [vi for vi in graph.value_info if vi.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    shell = model_shell(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        # a model ONNX Runtime may still run (contrib ops, odd shapes): go on without shapes
        warnings.warn(
            f"{where}: ONNX shape inference failed ({exc}); continuing without inferred shapes",
            stacklevel=3,
        )
        return
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    for out, new in zip(graph.output, inferred.graph.output, strict=False):
        if out.name == new.name and new.type.HasField("tensor_type"):
            out.type.CopyFrom(new.type)
