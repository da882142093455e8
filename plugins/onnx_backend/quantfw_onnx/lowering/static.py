"""Static activations: one QuantizeLinear -> DequantizeLinear pair per quantized tensor.

The pair sits right after the tensor's producer (or at the top for a graph input) and every
quantized reader reads the DQ output -- the reference's semantics, where the simulation hook
replaces the tensor for all its readers.  One pair per tensor loses nothing: ONNX Runtime gives
each consumer its own copy of the DQ before fusing.  Activation formats must be the full grid of
their ONNX type (int8, uint8, int4, uint4, fp8), because ``QuantizeLinear`` always saturates to
the type's range: a narrow-range or 7-bit activation could not reproduce the reference's codes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantfw.numerics import smoothing_multiplier
from quantfw.recipe import TensorRecipe

from .builder import Builder
from .errors import LoweringError
from .storage import qdq_attrs, storage_of, zero_point_tensor

__all__ = ["static_qdq"]


def static_qdq(b: Builder, name: str, src: str, out: str, t: TensorRecipe) -> list[onnx.NodeProto]:
    """The nodes quantizing activation ``name`` (read from ``src``) and writing its
    dequantized value to ``out``: ``QuantizeLinear -> DequantizeLinear``, after a ``Mul`` by the
    SmoothQuant multiplier when ``t`` has one.

    :raises LoweringError: for a format that is not the full grid of its ONNX type.
    """
    spec = t.spec
    storage = storage_of(spec)
    if not storage.full_grid:
        raise LoweringError(
            f"activation {name!r}: {spec.dtype} in [{spec.qmin}, {spec.qmax}] is not the "
            f"full range of its ONNX storage type, and QuantizeLinear saturates to the full "
            "range, so the artifact's codes would differ from the reference's; use a "
            "full-range activation format (int8, uint8, int4, uint4, fp8) without narrow_range"
        )
    if t.params is None:  # pragma: no cover - TensorRecipe enforces params for static specs
        raise LoweringError(f"activation {name!r} has no params")
    attrs = qdq_attrs(spec, f"activation {name!r}")
    scale = b.add_init(
        numpy_helper.from_array(np.asarray(t.params.scale, np.float32), b.fresh(f"{name}_scale"))
    )
    zp = b.add_init(zero_point_tensor(b.fresh(f"{name}_zero_point"), t, storage))
    pre: list[onnx.NodeProto] = []
    if t.smooth is not None:
        # SmoothQuant: the consumers read x * (1 / smooth) (their weights carry smooth); the
        # float32 multiplier is the reference's own (numerics.smoothing_multiplier)
        factor = b.add_init(
            numpy_helper.from_array(smoothing_multiplier(t.smooth), b.fresh(f"{name}_smooth"))
        )
        scaled = b.fresh(f"{name}_smoothed")
        pre.append(helper.make_node("Mul", [src, factor], [scaled], name=b.fresh(f"{name}_Smooth")))
        src = scaled
    q_out = b.fresh(f"{name}_quantized")
    return pre + [
        helper.make_node(
            "QuantizeLinear",
            [src, scale, zp],
            [q_out],
            name=b.fresh(f"{name}_QuantizeLinear"),
            **attrs,
        ),
        helper.make_node(
            "DequantizeLinear",
            [q_out, scale, zp],
            [out],
            name=b.fresh(f"{name}_DequantizeLinear"),
            **attrs,
        ),
    ]
