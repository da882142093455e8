"""Per-token dynamic activations: one uint8 ``(scale, zero point)`` per row of the last axis.

The quantization is standard ops emitted once per tensor (:func:`per_token_nodes`): the
reference's parameter arithmetic on ``[rows]`` and one per-axis ``QuantizeLinear`` on the
``[rows, K]`` view.  A ``MatMul`` (or plain ``Gemm``) reading the tensor as A with an int8
zero-point-0 weight, per tensor or per output column, runs on integers
(:func:`rewrite_token_matmul`): ONNX Runtime's integer MatMuls take one A zero point, so the row
zero points enter as data -- extra columns of ``zp`` on the codes and extra weight rows summing
to ``-colsum(W)`` -- then ``MatMulIntegerToFloat`` (fused) and a ``Mul`` by the row scale.  Every
other reader -- an activation x activation MatMul such as attention scores, whose second
operand's row scales lie along the summed axis, or a float op -- gets the fake-quantized value
(a per-axis ``DequantizeLinear`` of the same codes): the reference's numbers, no speed-up.

all-MiniLM-L6-v2, batch 32 x 64, 2 threads: embedding cosine to float 0.9988 (per tensor
0.9927) at a median 0.69x float's latency (per tensor 0.45x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from quantfw import pairs

from ..opset import DEFAULT_DOMAINS
from .builder import Builder
from .graph_edit import gemm_trans_b
from .storage import codes_tensor
from .weights import Weight

__all__ = [
    "TokenActivation",
    "TokenMatMul",
    "per_token_nodes",
    "plan_token_matmul",
    "rewrite_token_matmul",
]


@dataclass
class TokenActivation:
    """One per-token dynamically quantized activation: the names its quantization nodes write
    for its readers.

    For integer MatMuls (``int_readers`` of them): ``scale``, the row scales shaped like the
    tensor with the last axis 1, and ``codes`` (uint8: the tensor's codes, then ``extra``
    copies of the row's zero point as columns).  For float readers: ``fake``, the dequantized
    value."""

    scale: str
    codes: str
    fake: str | None = None
    int_readers: int = 0
    extra: int = 0


@dataclass
class TokenMatMul:
    """An integer MatMul planned for a per-token activation (see :func:`rewrite_token_matmul`)."""

    weight: Weight
    weight_name: str
    codes: np.ndarray  # [K, N] int64, B as the MatMul reads it
    bound: int  # largest magnitude of a zero-point row's entries
    extra: int  # zero-point rows it needs: ceil(max |column sum| / bound) (+1, see lead_zero)
    lead_zero: bool = False  # the first zero-point row is all zeros (pairs with B's last row)


def per_token_nodes(b: Builder, name: str, src: str, d: TokenActivation) -> list[onnx.NodeProto]:
    """Per-token dynamic quantization of ``src`` (uint8 asymmetric, one ``(scale, zero
    point)`` per row of the last axis) in standard ONNX ops, float32 throughout and op for
    op :func:`quantfw.numerics.quantize_dynamic`:

    * ``lo, hi = ReduceMin/ReduceMax(x, axes=[-1], keepdims=1)`` (axes an input from opset 18,
      an attribute before), viewed as ``[rows]``; ``rmin = Min(lo, 0)``, ``rmax = Max(hi, 0)``;
      ``s = (rmax - rmin) / 255``, replaced by 1.0 where it is not a normal float32
      (``GreaterOrEqual`` + ``Where``); ``zp = Clip(Round(-(rmin / s)), 0, 255)`` (ONNX
      ``Round`` is half to even, like ``np.rint``), then uint8;
    * the codes: ``x`` viewed as ``[rows, K]`` (``Flatten(axis=-1)``) and quantized by a
      per-axis ``QuantizeLinear`` (``axis=0``): ``clip(rint(x / s) + zp, 0, 255)`` in one
      pass, bit for bit :func:`quantfw.numerics.quantize` (float32 division, ties to even).
      Elementwise ``Div``/``Round``/``Add``/``Clip``/``Cast`` give the same codes in five
      passes over ``x``;
    * for the integer MatMuls (:func:`rewrite_token_matmul`): the row scales shaped like
      ``lo`` (``d.scale``) and the codes reshaped back to ``x``'s shape, followed by
      ``extra`` columns holding the row's zero point (``Expand`` + ``Concat``); for float
      readers: a per-axis ``DequantizeLinear`` of the same codes (``(q - zp) * s``, bit for
      bit :func:`quantfw.numerics.dequantize`) reshaped back to ``x``'s shape.
    """
    # the per-row arithmetic runs on 1-D [rows] views with [1]-shaped constants: ONNX
    # Runtime 1.32 broadcasts a scalar over a [..., 1] tensor element by element (a Min on
    # [32, 12, 64, 1] took 725 us, 34 us with a [1, 1, 1, 1] constant)
    zero = b.const([0.0], "per_token_zero")
    top = b.const([255.0], "per_token_qmax")
    tiny = b.const([np.finfo(np.float32).tiny], "per_token_tiny")
    one = b.const([1.0], "per_token_one")
    flat = b.const([-1], "per_token_rows", np.int64)
    nodes: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or b.fresh(f"{name}_{op.lower()}")
        nodes.append(helper.make_node(op, inputs, [out], name=b.fresh(f"{name}_{op}"), **attrs))
        return out

    if b.opset >= 18:  # axes became an input in opset 18
        axes = b.const([-1], "per_token_axes", np.int64)
        lo = add("ReduceMin", [src, axes], keepdims=1)
        hi = add("ReduceMax", [src, axes], keepdims=1)
    else:
        lo = add("ReduceMin", [src], axes=[-1], keepdims=1)
        hi = add("ReduceMax", [src], axes=[-1], keepdims=1)
    rmin = add("Min", [add("Reshape", [lo, flat]), zero])
    rmax = add("Max", [add("Reshape", [hi, flat]), zero])
    raw = add("Div", [add("Sub", [rmax, rmin]), top])
    scale = add("Where", [add("GreaterOrEqual", [raw, tiny]), raw, one])
    zp = add("Round", [add("Neg", [add("Div", [rmin, scale])])])
    zp = add(
        "Clip",
        [zp, b.const(0.0, "per_token_zero_scalar"), b.const(255.0, "per_token_qmax_scalar")],
    )
    zp_u8 = add("Cast", [zp], b.fresh(f"{name}_zero_point_uint8"), to=TensorProto.UINT8)
    rows = add("Flatten", [src], b.fresh(f"{name}_rows"), axis=-1)
    codes = add("QuantizeLinear", [rows, scale, zp_u8], axis=0)
    shape = add("Shape", [src])
    if d.int_readers:
        row_shape = add("Shape", [lo])
        add("Reshape", [scale, row_shape], d.scale)
        if d.extra:
            width = b.const([d.extra], f"per_token_extra_{d.extra}", np.int64)
            zp_rows = add("Reshape", [zp_u8, row_shape])
            columns = add("Expand", [zp_rows, width], b.fresh(f"{name}_zero_point_columns"))
            shaped = add("Reshape", [codes, shape], b.fresh(f"{name}_codes"))
            add("Concat", [shaped, columns], d.codes, axis=-1)
        else:
            add("Reshape", [codes, shape], d.codes)
    if d.fake is not None:
        deq = add("DequantizeLinear", [codes, scale, zp_u8], axis=0)
        add("Reshape", [deq, shape], d.fake)
    return nodes


def plan_token_matmul(
    n: onnx.NodeProto, name: str, weights: dict[str, Weight]
) -> TokenMatMul | None:
    """Whether ``n`` -- a MatMul (or Gemm) whose A input is the per-token activation
    ``name`` -- can run on integers: B must be an int8 constant with zero point 0, per
    tensor or per output column (what the x86 targets' symmetric weights are); ``None``
    otherwise (the reader then gets the float fake-quantized value)."""
    if n.op_type not in ("MatMul", "Gemm") or n.domain not in DEFAULT_DOMAINS:
        return None
    if len(n.input) < 2 or name in n.input[1:]:
        return None
    trans_b = gemm_trans_b(n)
    w = weights.get(n.input[1])
    if trans_b is None or w is None or not w.fits_matmul_integer(trans_b):
        return None
    assert w.recipe.params is not None
    if w.storage.onnx_type != TensorProto.INT8 or np.any(w.recipe.params.zero_point != 0):
        return None  # the zero-point rows need signed codes and no zero point of their own
    codes = (w.codes.T if trans_b else w.codes).astype(np.int64)
    colsum = int(np.abs(codes.sum(axis=0)).max(initial=0))
    # the weight's own grid (127 for int8, 63 for int7), at least 63: u8 x s8 pairs of these rows
    # then fit VPMADDUBSW's int16 (255 * 63 * 2 < 32768) on any x86.  Under a pair limit
    # (quantfw.pairs: the AVX2 target's int8) two adjacent rows may not sum beyond it: half the
    # limit each, and with an odd K a zero row first, since B's last row pairs with it
    spec = w.recipe.spec
    bound = max(int(spec.qmax), 63)
    lead_zero = False
    if pairs.applies(spec):
        bound = min(bound, int(spec.pair_limit) // 2)  # type: ignore[arg-type]
        lead_zero = codes.shape[0] % 2 == 1
    need = -(-colsum // bound) + int(lead_zero)
    return TokenMatMul(w, n.input[1], codes, bound, need, lead_zero)


def rewrite_token_matmul(
    b: Builder, n: onnx.NodeProto, d: TokenActivation, plan: TokenMatMul
) -> list[onnx.NodeProto]:
    """The integer form of a MatMul (or Gemm) of per-token activation codes ``q`` (row
    scale ``s``, zero point ``zp``) by int8 weight codes ``W`` (scale ``s_w`` per tensor or
    per output column, zero point 0): ``y = (sum_k (q - zp) W) * s_w * s``, the
    reference's dequantize-then-MatMul up to float32 summation order.

    ONNX Runtime's ``MatMulInteger`` takes one ``a_zero_point`` for all of A, so the row's
    zero point enters the sum as data: A is ``[q, zp, ..., zp]`` (``d.extra`` zero-point
    columns, see :func:`per_token_nodes`) and B is ``W`` stacked on ``extra`` int8 rows whose
    column sums are ``-colsum(W)``, each entry within ``max(weight qmax, 63)`` (int8 storage),
    or within half the pair limit of the AVX2 target's weights, after a zero row when K is odd
    (so VPMADDUBSW's int16 pair sums cannot saturate on the added rows either).  The int32 accumulator is then exactly ``sum_k (q - zp) W``
    -- no ``[rows, N]`` correction term (an int32 ``Sub`` of ``zp x colsum`` on a MiniLM
    ``[2048, 1536]`` output took 4 ms, more than the integer MatMul it served); the extra rows
    add ``extra / K`` of the multiply-adds (all-MiniLM-L6-v2: 8-59 rows on K = 384 or 1536).

    The accumulator goes to float as ``Cast -> Mul(Mul(one, s_w))`` -- the pattern ONNX
    Runtime fuses into ``com.microsoft::MatMulIntegerToFloat`` (a_scale = 1, b_scale =
    ``s_w``; the ``one`` is ``DequantizeLinear(1)``, which its constant folding leaves alone,
    so the product stays a node and the fusion happens; see :mod:`.qoperator`) -- then ``Mul``
    by the row scale ``s`` (its own node: the fused kernel has one scale for all of A), then a
    Gemm's C.
    """
    w = plan.weight
    key = f"augmented:{plan.weight_name}:{d.extra}"
    if key not in b.consts:
        colsum = plan.codes.sum(axis=0)
        rows, left = [], -colsum
        for i in range(d.extra):  # greedy: each row takes what it can of what is left
            row = np.clip(left, -plan.bound, plan.bound) * (0 if i == 0 and plan.lead_zero else 1)
            rows.append(row)
            left = left - row
        assert not np.any(left), "zero-point rows too few for the column sums"
        aug = np.concatenate([plan.codes, np.asarray(rows, np.int64).reshape(-1, len(colsum))])
        b.consts[key] = b.add_init(
            codes_tensor(b.fresh(f"{plan.weight_name}_quantized_zero_point_rows"), aug, w.storage)
        )
    b_codes = b.consts[key]
    one = _live_one(b)
    tag, base = n.output[0], n.name or n.output[0]
    has_c = n.op_type == "Gemm" and len(n.input) > 2 and bool(n.input[2])
    out = b.fresh(f"{tag}_product") if has_c else tag
    acc, accf = b.fresh(f"{tag}_int32"), b.fresh(f"{tag}_int32_float")
    wsc, scale = b.fresh(f"{tag}_weight_scaled"), b.fresh(f"{tag}_weight_scale")
    mk = helper.make_node
    nodes = [
        mk("MatMulInteger", [d.codes, b_codes], [acc], name=b.fresh(f"{base}_MatMulInteger")),
        mk("Cast", [acc], [accf], to=TensorProto.FLOAT, name=b.fresh(f"{base}_Cast")),
        mk("Mul", [one, w.scale_name], [scale], name=b.fresh(f"{base}_Scale")),
        mk("Mul", [accf, scale], [wsc], name=b.fresh(f"{base}_Rescale")),
        mk("Mul", [wsc, d.scale], [out], name=b.fresh(f"{base}_TokenScale")),
    ]
    if has_c:
        nodes.append(mk("Add", [out, n.input[2]], [tag], name=b.fresh(f"{base}_Bias")))
    return nodes


def _live_one(b: Builder) -> str:
    """``DequantizeLinear(uint8 1, 1.0, uint8 0)``, made once at the top of the graph: the
    float 1 that ONNX Runtime's constant folding does not fold away."""
    if "live_one" not in b.consts:
        b.consts["live_one"] = b.fresh("quantfw_live_one")
        b.head.append(
            helper.make_node(
                "DequantizeLinear",
                [
                    b.const(1, "quantfw_one_u8", np.uint8),
                    b.const(1.0, "quantfw_one"),
                    b.const(0, "quantfw_zero_u8", np.uint8),
                ],
                [b.consts["live_one"]],
                name=b.fresh("quantfw_LiveOne"),
            )
        )
    return b.consts["live_one"]
