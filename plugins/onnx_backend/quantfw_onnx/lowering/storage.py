"""How a quantization format's codes are stored in ONNX, and the Q/DQ attributes of a spec.

Constant per-tensor and per-channel integer codes (weights) of at most 8 bits are stored as INT8
(signed: int8, int7, int4, int3, int2, ternary) or UINT8 (unsigned): ONNX Runtime's integer kernels (QLinearConv,
QLinearMatMul, MatMulInteger) read only 8-bit codes, so a 4-bit grid stored as INT8 runs on them
exactly (the narrower range is the recipe's, the kernel just sees small codes).  Per-group
parameters are a blocked DequantizeLinear (``block_size``, opset 21), which no integer kernel
reads; there codes that fit 4 bits are packed as INT4/UINT4 (ONNX Runtime fuses ``DQ -> MatMul``
into ``MatMulNBits``).  Activations are stored in their grid's own type (int4: INT4, opset 21),
as ``QuantizeLinear`` saturates to the type's range -- or, on targets with
``allowed.narrow_activations = "clip_8bit"`` (x86), as INT8/UINT8 codes that a ``Clip``
restricts to the narrower grid, so the integer kernels still run them.  fp8 is
FLOAT8E4M3FN/E5M2 (opset 19).  fp16/bf16 are casts, not quantization, and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper

from quantfw.formats import FloatFormat, IntFormat
from quantfw.recipe import TensorRecipe
from quantfw.spec import Granularity, QuantSpec

from .errors import LoweringError

__all__ = [
    "MIN_OPSET",
    "Storage",
    "storage_of",
    "required_opset",
    "codes_tensor",
    "zero_point_tensor",
    "qdq_attrs",
]

#: The lowest default-domain opset of an artifact (``axis`` on Q/DQ).
MIN_OPSET = 13


@dataclass(frozen=True)
class Storage:
    """How codes of one format are stored in ONNX.

    :ivar onnx_type: ``TensorProto`` element type of the codes (and zero point).
    :ivar numpy_type: dtype the codes are cast to before ``numpy_helper.from_array``.
    :ivar opset: lowest default-domain opset whose Q/DQ accept the type.
    :ivar full_grid: ``True`` when the format's grid is the whole type (so a ``QuantizeLinear``
        saturates exactly where the reference does).
    """

    onnx_type: int
    numpy_type: Any
    opset: int
    full_grid: bool


def storage_of(spec: QuantSpec, constant: bool = False, clip_8bit: bool = False) -> Storage:
    """The ONNX storage of codes in ``spec``'s format.

    :param constant: ``True`` for codes written once into the file (weights, biases): a
        per-tensor or per-channel grid of at most 8 bits is then stored in 8 bits, so ONNX
        Runtime's integer kernels read it.  Activations are quantized by ``QuantizeLinear`` at
        run time and need their grid's own type (int4 activations: INT4)...
    :param clip_8bit: ...unless the target carries narrow activations in 8 bits
        (``allowed.narrow_activations = "clip_8bit"``): then an activation grid of at most 8
        bits is stored as INT8/UINT8 too, and ``full_grid`` says whether the lowering must
        restrict the codes (:func:`~quantfw_onnx.lowering.static.static_qdq` adds a ``Clip``).
    :raises LoweringError: for formats ONNX's DequantizeLinear cannot take (fp16, bf16).
    """
    import ml_dtypes

    fmt = spec.format
    if isinstance(fmt, FloatFormat):
        table = {
            "fp8_e4m3fn": (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
            "fp8_e5m2": (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2),
        }
        if fmt.name not in table:
            raise LoweringError(
                f"{fmt.name} is not an ONNX quantized type: DequantizeLinear takes int8, uint8, "
                "int4, uint4, int32 or fp8 codes (cast the model to fp16/bf16 instead)"
            )
        onnx_type, np_type = table[fmt.name]
        return Storage(onnx_type, np_type, 19, True)
    assert isinstance(fmt, IntFormat)
    full = (spec.qmin, spec.qmax) == (fmt.qmin, fmt.qmax)
    if fmt.name == "int32":
        return Storage(TensorProto.INT32, np.int32, MIN_OPSET, full)
    packed = spec.granularity is Granularity.PER_GROUP or not (constant or clip_8bit)
    if packed and fmt.bits <= 4:
        if fmt.signed:  # int4, and int3/int2/ternary whose codes fit int4
            return Storage(TensorProto.INT4, ml_dtypes.int4, 21, full and fmt.bits == 4)
        return Storage(TensorProto.UINT4, ml_dtypes.uint4, 21, full and fmt.bits == 4)
    if fmt.signed:  # int8, and int7..int2/ternary whose codes fit int8
        return Storage(TensorProto.INT8, np.int8, MIN_OPSET, full and fmt.bits == 8)
    if fmt.bits <= 8:  # uint8, and narrower unsigned grids whose codes fit uint8
        return Storage(TensorProto.UINT8, np.uint8, MIN_OPSET, full and fmt.bits == 8)
    raise LoweringError(f"no ONNX storage for unsigned {fmt.bits}-bit format {fmt.name!r}")


def required_opset(t: TensorRecipe, clip_8bit: bool = False) -> int:
    """The lowest default-domain opset whose Q/DQ can carry ``t`` (type and granularity);
    ``clip_8bit`` as in :func:`storage_of`."""
    need = storage_of(t.spec, constant=t.role != "activation", clip_8bit=clip_8bit).opset
    if t.spec.granularity is Granularity.PER_GROUP:
        need = max(need, 21)  # blocked DequantizeLinear (block_size)
    return need


def codes_tensor(name: str, codes: np.ndarray, storage: Storage) -> TensorProto:
    """An initializer holding ``codes`` in ``storage``'s type."""
    return numpy_helper.from_array(np.asarray(codes).astype(storage.numpy_type), name)


def zero_point_tensor(name: str, t: TensorRecipe, storage: Storage) -> TensorProto:
    """An initializer holding ``t``'s zero points in ``storage``'s type (zeros for fp8)."""
    assert t.params is not None
    zp = np.asarray(t.params.zero_point)
    if t.spec.is_float:
        zp = np.zeros(zp.shape, np.float32)
    return numpy_helper.from_array(zp.astype(storage.numpy_type), name)


def qdq_attrs(spec: QuantSpec, what: str) -> dict[str, int]:
    """The ``axis`` / ``block_size`` attributes of a Q or DQ with ``spec``'s granularity.

    :raises LoweringError: for granularities whose parameters are computed at run time.
    """
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return {}
    if g is Granularity.PER_CHANNEL:
        return {"axis": int(spec.axis)}  # type: ignore[arg-type]
    if g is Granularity.PER_GROUP:
        return {"axis": int(spec.axis), "block_size": int(spec.group_size)}  # type: ignore[arg-type]
    raise LoweringError(f"{what}: {g.value} parameters cannot be static in ONNX")
