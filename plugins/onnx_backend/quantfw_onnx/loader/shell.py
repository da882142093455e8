"""Shells: copies of a model without the bulk of its weights.

``onnx.checker`` and ``onnx.shape_inference`` need a serialized model.  Serializing the model
itself would copy every weight (and fails past protobuf's 2 GiB), so they run on a *shell*: a copy
of the model in which every initializer bigger than :data:`SHELL_BYTES` carries its type and dims
but no data (the checker gets a zero-size placeholder instead; shape inference only needs types
and dims for those).  Small initializers -- shapes, axes, scalars -- keep their values, so shape
inference can still read a Reshape's target shape.  The shell is also how models above protobuf's
2 GiB limit get checked at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["SHELL_BYTES", "copy_fields", "data_free", "expected_bytes", "data_bytes", "model_shell"]

#: Initializers with more data bytes than this travel without data in shells.
SHELL_BYTES = 16 * 1024


def copy_fields(src: Any, dst: Any, skip: Iterable[str] = ()) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those in ``skip``."""
    skip = set(skip)
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        repeated = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; `label` before
        if repeated is None:
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def data_free(tensor: TensorProto, placeholder: bool) -> TensorProto:
    """A copy of ``tensor`` without its data: same name, type and dims (or, for the checker, a
    zero-size placeholder of the same type, which needs no data at all)."""
    out = TensorProto(name=tensor.name, data_type=tensor.data_type)
    if placeholder:
        out.dims.append(0)
    else:
        out.dims.extend(tensor.dims)
    return out


def expected_bytes(t: TensorProto) -> int | None:
    """Bytes of ``t``'s data from its type and dims; ``None`` for types without a fixed
    whole-byte element size (strings, 4-bit and 2-bit types) and unknown types."""
    try:
        np_dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if t.data_type in (
        TensorProto.STRING,
        TensorProto.INT4,
        TensorProto.UINT4,
        TensorProto.FLOAT4E2M1,
    ) or t.data_type in {getattr(TensorProto, n, -1) for n in ("INT2", "UINT2")}:
        return None
    return int(math.prod(t.dims)) * np.dtype(np_dtype).itemsize


def data_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, from its type and dims (no copy: with upb, reading ``raw_data``
    or ``ByteSize()`` materializes the whole tensor once more)."""
    want = expected_bytes(tensor)
    return tensor.ByteSize() if want is None else want


def model_shell(
    model: onnx.ModelProto, *, placeholder: bool = False, keep: Iterable[str] = ()
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above :data:`SHELL_BYTES` (except those named in
    ``keep``) carry no data; see the module docstring.

    :param placeholder: give data-free initializers the dims ``[0]`` (what ``onnx.checker`` accepts)
        instead of their real dims (what shape inference and ONNX Runtime want).
    """
    keep = set(keep)
    shell = onnx.ModelProto()
    copy_fields(model, shell, skip=("graph",))
    copy_fields(model.graph, shell.graph, skip=("initializer",))
    for t in model.graph.initializer:
        if t.name not in keep and data_bytes(t) > SHELL_BYTES:
            shell.graph.initializer.append(data_free(t, placeholder))
        else:
            shell.graph.initializer.append(t)
    return shell
