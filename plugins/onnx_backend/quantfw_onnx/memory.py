"""How much memory a calibration batch's activations take: the estimate behind
:class:`quantfw.api.EstimatesActivations` for ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

__all__ = ["activation_bytes"]


def _float_itemsize(elem_type: int) -> int | None:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return 2
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype.itemsize if dtype.kind == "f" else None


def activation_bytes(model: onnx.ModelProto) -> int | None:
    """Bytes of float activations one sample makes: for every float tensor the graph inputs
    and nodes produce (with the shapes shape inference gave), the size of one sample along the
    batch axis, summed -- a calibration pass asks for every activation, so they are all held at
    once.  The batch axis is the first; a tensor counts when its first dimension is the graph's
    batch (a symbolic or free dimension, or the batch size a model with a fixed batch declares)
    and its other dimensions are known.  ``None`` when no tensor could be counted.
    """
    g = model.graph
    consts = {t.name for t in g.initializer}
    batch_dims: set[int] = set()
    for i in g.input:
        dims = i.type.tensor_type.shape.dim if i.type.HasField("tensor_type") else []
        if i.name not in consts and dims and dims[0].HasField("dim_value"):
            batch_dims.add(dims[0].dim_value)
    total = counted = 0
    infos = [*g.input, *g.value_info, *g.output]
    seen: set[str] = set()
    for vi in infos:
        if vi.name in seen or vi.name in consts or not vi.type.HasField("tensor_type"):
            continue
        seen.add(vi.name)
        tt = vi.type.tensor_type
        size = _float_itemsize(tt.elem_type)
        if size is None or not tt.HasField("shape") or len(tt.shape.dim) == 0:
            continue
        first, *rest = tt.shape.dim
        if first.HasField("dim_value") and first.dim_value not in batch_dims:
            continue  # not batched (a shape computed from weights), or not on axis 0
        if not all(d.HasField("dim_value") for d in rest):
            continue
        total += size * int(np.prod([d.dim_value for d in rest], dtype=np.int64))
        counted += 1
    return total if counted else None
