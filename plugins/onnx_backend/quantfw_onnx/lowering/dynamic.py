"""Per-tensor dynamic activations: ``DynamicQuantizeLinear``, and integer MatMuls reading it.

Each dynamic activation (uint8 asymmetric per-tensor, ``spec.dynamic``) gets one
``DynamicQuantizeLinear``.  A ``MatMul`` (or ``Gemm`` with alpha = beta = 1, ``transA = 0``)
reading it as A, with an integer weight (per tensor, or per channel on the output axis) or a
second dynamic activation as B, becomes ``MatMulInteger -> Cast -> Mul(x_s * w_s)`` (per-column
scale and ``b_zero_point``).  ONNX Runtime fuses that standard-ONNX form into
``com.microsoft::DynamicQuantizeMatMul`` (or ``MatMulIntegerToFloat`` where one quantization feeds
several MatMuls) -- as fast as writing the contrib op, and portable.  Every other reader gets a
``DequantizeLinear`` of the same codes, so it sees what the reference's hook gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from quantfw.recipe import TensorRecipe
from quantfw.spec import Granularity

from ..opset import DEFAULT_DOMAINS
from .builder import Builder
from .errors import LoweringError
from .graph_edit import gemm_trans_b
from .storage import codes_tensor
from .weights import Weight

__all__ = [
    "DynamicActivation",
    "check_dynamic_spec",
    "dynamic_quantize",
    "dequantize_dynamic",
    "rewrite_integer_matmul",
]


@dataclass
class DynamicActivation:
    """The names of one dynamically quantized activation's ``DynamicQuantizeLinear`` outputs."""

    codes: str
    scale: str
    zero_point: str


def check_dynamic_spec(t: TensorRecipe) -> None:
    """Refuse dynamic specs with no ONNX lowering: only uint8 asymmetric full-range activations,
    per tensor or per token over the last axis, are lowered.

    :raises LoweringError: naming the tensor and what is supported.
    """
    s = t.spec
    ok = (
        t.role == "activation"
        and s.dtype == "uint8"
        and not s.symmetric
        and not s.narrow_range
        and s.granularity in (Granularity.PER_TENSOR, Granularity.PER_TOKEN)
    )
    if not ok:
        raise LoweringError(
            f"tensor {t.name!r}: dynamic {s.dtype} {s.granularity.value} "
            f"{'symmetric' if s.symmetric else 'asymmetric'} quantization has no ONNX "
            "lowering; ONNX Runtime's DynamicQuantizeLinear computes uint8 asymmetric "
            "per-tensor parameters, and the per-token lowering reproduces uint8 asymmetric "
            "per-token ones: dynamic activations must be uint8, asymmetric, full range, "
            "per_tensor or per_token (the x86 targets' dynamic spec)"
        )
    if s.granularity is Granularity.PER_TOKEN and s.axis != -1:
        raise LoweringError(
            f"tensor {t.name!r}: per-token quantization over axis {s.axis} is not lowered; "
            "the ONNX lowering takes one scale per row of the last axis (axis=-1, the "
            "per_token default), the rows a MatMul's per-row scales factor out of"
        )


def dynamic_quantize(b: Builder, name: str, src: str, d: DynamicActivation) -> onnx.NodeProto:
    """The ``DynamicQuantizeLinear`` of activation ``name`` (read from ``src``)."""
    return helper.make_node(
        "DynamicQuantizeLinear",
        [src],
        [d.codes, d.scale, d.zero_point],
        name=b.fresh(f"{name}_DynamicQuantizeLinear"),
    )


def dequantize_dynamic(b: Builder, name: str, d: DynamicActivation, out: str) -> onnx.NodeProto:
    """The ``DequantizeLinear`` of ``d``'s codes writing ``out``, for the float readers."""
    return helper.make_node(
        "DequantizeLinear",
        [d.codes, d.scale, d.zero_point],
        [out],
        name=b.fresh(f"{name}_DequantizeLinear"),
    )


def rewrite_integer_matmul(
    b: Builder,
    n: onnx.NodeProto,
    dynamic: dict[str, DynamicActivation],
    weights: dict[str, Weight],
) -> list[onnx.NodeProto] | None:
    """``MatMulInteger + Cast + Mul(scale)`` (+ ``Add`` for a Gemm's C) for a MatMul or Gemm
    whose A input is dynamically quantized and whose B is integer; ``None`` otherwise."""
    if n.op_type not in ("MatMul", "Gemm") or n.domain not in DEFAULT_DOMAINS:
        return None
    if len(n.input) < 2 or n.input[0] not in dynamic:
        return None
    a = dynamic[n.input[0]]
    b_name = n.input[1]
    trans_b = gemm_trans_b(n)
    if trans_b is None:
        return None
    tag = n.output[0]
    if b_name in dynamic:
        if trans_b:
            return None
        other = dynamic[b_name]
        b_codes, b_zp, b_scale = other.codes, other.zero_point, other.scale
    elif b_name in weights:
        w = weights[b_name]
        if not w.fits_matmul_integer(trans_b):
            return None
        b_codes, b_zp, b_scale = _weight_codes(b, w, b_name, trans_b), w.zp_name, w.scale_name
    else:
        return None
    acc = b.fresh(f"{tag}_int32")
    accf = b.fresh(f"{tag}_int32_float")
    scale = b.fresh(f"{tag}_scale")
    base = n.name or tag
    has_c = n.op_type == "Gemm" and len(n.input) > 2 and bool(n.input[2])
    prod = b.fresh(f"{tag}_product") if has_c else n.output[0]
    nodes = [
        helper.make_node(
            "MatMulInteger",
            [a.codes, b_codes, a.zero_point, b_zp],
            [acc],
            name=b.fresh(f"{base}_MatMulInteger"),
        ),
        helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=b.fresh(f"{base}_Cast")),
        helper.make_node("Mul", [a.scale, b_scale], [scale], name=b.fresh(f"{base}_Scale")),
        helper.make_node("Mul", [accf, scale], [prod], name=b.fresh(f"{base}_Rescale")),
    ]
    if has_c:
        nodes.append(
            helper.make_node("Add", [prod, n.input[2]], [n.output[0]], name=b.fresh(f"{base}_Bias"))
        )
    return nodes


def _weight_codes(b: Builder, w: Weight, name: str, trans_b: bool) -> str:
    """The name of ``w``'s codes as a MatMul's B (``[K, N]``): stored transposed once for a
    ``Gemm`` with ``transB = 1``."""
    if not trans_b:
        return w.codes_name
    key = f"transposed:{name}"
    if key not in b.consts:
        b.consts[key] = b.add_init(
            codes_tensor(b.fresh(f"{name}_quantized_transposed"), w.codes.T, w.storage)
        )
    return b.consts[key]
