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

from quantfw.numerics import equalization_multiplier
from quantfw.recipe import Equalization, TensorRecipe

from .builder import Builder
from .errors import LoweringError
from .storage import qdq_attrs, storage_of, zero_point_tensor

__all__ = ["static_qdq", "equalize_node"]


def equalize_node(b: Builder, name: str, src: str, eq: Equalization) -> onnx.NodeProto:
    """``src * (1 / eq.scale)``, one elementwise ``Mul`` writing a new tensor: the recipe's
    equalisation of ``name`` on its consumers' edges, with the reference's own float32
    multiplier (:func:`quantfw.numerics.equalization_multiplier`).  Folding it into a per-axis
    QuantizeLinear instead measured 5x slower in ONNX Runtime 1.32."""
    factor = b.add_init(
        numpy_helper.from_array(
            equalization_multiplier(eq.scale), b.fresh(f"{name}_equalize_scale")
        )
    )
    return helper.make_node(
        "Mul", [src, factor], [b.fresh(f"{name}_equalized")], name=b.fresh(f"{name}_Equalize")
    )


def static_qdq(
    b: Builder, name: str, src: str, out: str, t: TensorRecipe, eq: Equalization | None = None
) -> list[onnx.NodeProto]:
    """The nodes quantizing activation ``name`` (read from ``src``) and writing its
    dequantized value to ``out``: ``QuantizeLinear -> DequantizeLinear``, after the recipe's
    equalisation ``eq`` of the tensor's quantized edges when it has one (``Recipe.check`` makes
    the equalised consumers exactly the quantized ones).

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
    if eq is not None:
        pre.append(equalize_node(b, name, src, eq))
        src = pre[-1].output[0]
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
