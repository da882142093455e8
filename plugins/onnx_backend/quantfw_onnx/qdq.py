"""Lowering a :class:`~quantfw.recipe.Recipe` onto an ONNX model as QuantizeLinear/DequantizeLinear.

What ONNX Runtime 1.32's CPU provider actually fuses
----------------------------------------------------
Measured on this machine (AVX512-VNNI + AVX-VNNI, 2 cores) by building tiny QDQ models with
``onnx.helper`` and reading back ``SessionOptions.optimized_model_filepath``.  EXTENDED and ALL
give the same kernels; ALL only adds layout transforms (NCHWc ``Transpose`` around
``com.microsoft::QLinearConv``).  "sym" = symbolic batch/sequence dims, "static" = all dims fixed.

(a) ``DQ(x u8) + DQ(W s8, per-channel axis=1) -> MatMul`` with a float output (no Q after it):

    * no bias, 2-D or 3-D: ``com.microsoft::MatMulIntegerToFloat`` (u8s8 int32 accumulation,
      float output);
    * + ``Add(float bias)``: 3-D sym -> ``MatMulIntegerToFloat`` + float ``Add`` (fine), **but**
      2-D, or 3-D static, -> ``MatMulAddFusion`` (level 1) first turns MatMul+Add into a Gemm,
      the QDQ Gemm selector then rejects the float bias, and the result is a *float* ``Gemm`` on
      dequantized inputs: no int8 at all;
    * + ``Add(DQ(int32 bias))``: 2-D -> ``com.microsoft::QGemm`` (float output); 3-D static ->
      ``Reshape + QGemm + Reshape``; 3-D sym -> ``MatMulIntegerToFloat`` + ``DQ(bias)`` + ``Add``.
      An int32 bias is never worse and often much better than a float one.

(b) with ``Q`` after the MatMul: ``QLinearMatMul`` (2-D and 3-D, per-tensor *and* per-channel
    weights); with a bias Add in between: ``QGemm`` (2-D/static) or ``MatMulIntegerToFloat`` +
    ``Add`` + ``Q`` (3-D sym).  ``Relu`` between the op and ``Q`` is folded (``ReluQuantFusion``)
    only when the Q zero point is the grid minimum (uint8 zp 0), which is what calibrating the
    Relu output gives; otherwise it stays a float island.
(c) ``DQ -> Conv(+DQ int32 bias) -> Relu -> Q(zp 0)``: ``QLinearConv`` with the Relu folded
    (``com.microsoft::QLinearConv`` NHWC under ALL).  The int32 bias is accepted only when its
    scale equals ``x_scale * w_scale`` (per channel) -- with any other scale the whole group
    silently stays float (``FusedConv``).  A float bias is also accepted (ORT quantizes it).
    No Q on the Conv output: float ``FusedConv``; ``Q`` with zp 128 after Relu: float.
(d) per-channel weights are accepted by ``QLinearMatMul``, ``QGemm``, ``MatMulIntegerToFloat``
    and ``QLinearConv`` alike (the weight zero points must all be 0).
(e) ``DynamicQuantizeLinear(x) + MatMulInteger(xq, Wq, xz, Wz) + Cast + Mul(xs * Ws)`` (+ ``Add``
    bias) -> ``com.microsoft::DynamicQuantizeMatMul`` (per-tensor and per-channel weights, with
    the bias folded in); when one ``DynamicQuantizeLinear`` feeds several MatMulIntegers (Q/K/V),
    it stays shared and each becomes ``MatMulIntegerToFloat``.  Identical
    ``DynamicQuantizeLinear`` nodes are merged by common-subexpression elimination, and a
    ``DequantizeLinear`` on the same codes for a float consumer does not block the fusion.  So the
    standard-ONNX form is as fast as writing the ``com.microsoft`` op directly (measured 8.7 ms vs
    8.6 ms for [32,128,384]x[384,1536]; float 14-34 ms on this noisy 2-core box), and it stays
    portable -- we emit the standard form.
(f) activation x activation ``MatMul`` with both inputs DQ'd (attention scores): float output ->
    ``MatMulIntegerToFloat`` (u8 x u8); with ``Q`` -> ``QLinearMatMul``; two dynamic inputs ->
    ``DynamicQuantizeMatMul``.
(g) one DQ feeding several consumers is duplicated per consumer by ORT, so a single Q/DQ pair per
    tensor loses nothing.  ``Add`` of two DQs followed by Q -> ``com.microsoft::QLinearAdd``;
    without Q it stays float.
(h) weight-only ``DQ(int8 per-channel, or int4/int8 blocked with block >= 16) -> MatMul`` with a
    float activation becomes ``com.microsoft::MatMulNBits`` -- whose default accuracy level 4
    quantizes the activation to int8 on the fly (error ~1e-2 on a unit-scale layer, a
    quantization the recipe never asked for).  Level 1 (float32) is exact; the backend's
    sessions pin it (session option ``session.qdq_matmulnbits_accuracy_level``).
(j) the int32 bias scale is validated for Conv, but **not** for the MatMul+Add -> ``QGemm``
    fusion: a bias DQ with a scale other than ``x_scale * w_scale`` fuses anyway and the int32
    codes are added as if they had that scale (measured error 1.8 on outputs of magnitude ~5).
(i) ``QuantizeLinear`` and ``DynamicQuantizeLinear`` give exactly :func:`quantfw.numerics.quantize`
    / :func:`~quantfw.numerics.quantize_dynamic` (checked on 400 random tensors incl. exact ties).
    So does a per-axis ``QuantizeLinear`` with one scale per row of a ``[rows, K]`` view
    (``axis=0``; checked on 300 tensors incl. exact ties and all-zero rows), in one pass.
(k) what per-token (per-row) activation scales meet: ``MatMulInteger``, ``MatMulIntegerToFloat``
    and ``DynamicQuantizeMatMul`` take a single A zero point and scale (anything else is a run-time
    error: "must be a scalar or 1D tensor of size 1").  ``MatMulIntegerToFloatFusion`` matches
    ``MatMulInteger -> Cast -> Mul(Mul(a, b))`` without looking at the scales' shapes.  Elementwise
    ops broadcasting a scalar over a ``[..., 1]`` tensor run element by element (``Min`` on
    ``[32, 12, 64, 1]``: 725 us; 34 us against a ``[1, 1, 1, 1]`` constant, 28 us on a 1-D view).
    Measured on MiniLM's layers at batch 32 x 64: an int32 ``Sub`` of a ``zp x colsum`` term on a
    ``[2048, 1536]`` output took 4 ms and a per-axis int32 ``DequantizeLinear`` along the last axis
    3 ms -- more than the 2048 x 384 x 1536 integer MatMul they served.

End to end on all-MiniLM-L6-v2 (x86-vnni recipe, min-max calibration on 64 docstring sentences,
batch 32 x 128 tokens, 2 threads): static W8A8 runs as 42 ``MatMulIntegerToFloat`` + 6
``QLinearMatMul`` and is 1.63-1.68x faster than float; dynamic runs as ``DynamicQuantizeMatMul`` /
``MatMulIntegerToFloat`` and is 1.70x faster.  Embedding cosine to float is 0.990 for both -- a
recipe matter, not a lowering one (the artifact matches the simulation); of it, ~0.003 comes from
dynamic quantization reaching the residual branch, which the reference semantics impose (every
reader of a quantized tensor sees the quantized value; ONNX Runtime's own dynamic quantizer
quantizes only the MatMul inputs).

Per-token dynamic activations on the same model (``overrides={"dynamic": True, "activation":
{"granularity": "per_token"}}``, 512 held-out docstring sentences, sequence 64, 2 threads,
medians of round-robin calls, six rounds on a shared 2-core box): embedding cosine to float
0.9988 mean / 0.9983 p5 (per-tensor dynamic: 0.9927 / 0.9889; nearest-neighbour agreement 0.955
vs 0.877).  Latency vs float at batch 32: 0.65-0.79x, median 0.69x (per tensor 0.40-0.55x,
median 0.45x); with the attention MatMuls left float (``ignore_ops=["matmul"]``, same accuracy:
0.9989 / 0.9983) 0.53-0.68x, median 0.62x.  At batch 1 the ~24 small ops per quantized tensor
dominate: 9.9-14.5 ms vs 7.7-8.5 ms per tensor (float 7.6-18 ms; median ratios 0.81x vs 0.63x).
ONNX Runtime runs the 36 linears as ``MatMulIntegerToFloat``.

Lowering choices
----------------
* One Q -> DQ pair per recipe activation, placed right after the producer (or at the top for a
  graph input); every consumer reads the DQ output -- exactly the reference's semantics, where
  the simulation hook replaces the tensor for all its readers.  A graph output keeps its name: the
  producer's output is renamed (``<name>_float``) and the final DQ writes the original name, so
  the artifact's input and output names and dtypes are the float model's.
* Weights: the float initializer is replaced by integer codes from
  :func:`quantfw.numerics.quantize` (``recipe.weights`` first, where a transform rewrote it), a
  scale, a zero point and a DQ whose *output carries the initializer's old name*: every reader,
  subgraphs included, sees the dequantized weight without rewiring.  Storage: int8/uint8 as
  INT8/UINT8; int7, int3, int2 and ternary as INT8 (the codes fit; no ONNX sub-byte type for
  them); int4/uint4 as INT4/UINT4 (opset 21); fp8 as FLOAT8E4M3FN/E5M2 (opset 19); per-group as
  blocked DQ (``block_size``, opset 21).  fp16/bf16 "quantization" is rejected (a cast, not a DQ).
* Biases: int32 codes + DQ (scale ``s_x * s_w`` from the recipe), not baked float -- finding
  (a) shows a float bias can turn a MatMul+Add into a float Gemm.  DQ(int32) in float32 is bit
  for bit :func:`quantfw.numerics.dequantize`, so simulation and artifact agree.  Because of
  (j), an int32 bias whose scale is not ``s_x * s_w`` of its (quantized) op is instead stored
  as the float values ``dequantize(quantize(b))`` -- still the reference's numbers -- with a
  warning.
* Dynamic activations (uint8 asymmetric per-tensor, ``spec.dynamic``): one
  ``DynamicQuantizeLinear`` per tensor.  A ``MatMul`` (or ``Gemm`` with alpha = beta = 1,
  ``transA = 0``) reading it with an integer weight (per-tensor, or per-channel on the output
  axis), or with a second dynamic activation, becomes ``MatMulInteger + Cast + Mul(x_s * w_s)``
  (per-column scale; per-column ``b_zero_point``), which ORT fuses per (e).  Every other reader
  gets a ``DequantizeLinear`` of the same codes, so it sees what the reference's hook gives it.
* Per-token dynamic activations (uint8 asymmetric, one scale and zero point per row of the last
  axis): standard ops emitted once per tensor -- ``ReduceMin``/``ReduceMax`` (axes an input from
  opset 18, an attribute before), the reference's parameter arithmetic on ``[rows]``
  (``Where`` for the degenerate scale 1.0, ``Round`` half to even) and a per-axis
  ``QuantizeLinear`` on the ``[rows, K]`` view; see ``_Writer.per_token_nodes``.  A ``MatMul``
  (or plain ``Gemm``) reading it as A with an int8 zero-point-0 weight, per tensor or per output
  column, runs on integers: since (k) leaves no per-row zero point, the zero point enters as
  data -- ``extra`` columns of ``zp`` on the codes, ``extra`` weight rows summing to
  ``-colsum(W)`` -- so the int32 accumulator is exactly ``sum_k (q - zp) W``; then ``Cast ->
  Mul(Mul(DQ(1), s_w))``, fused per (e) into ``MatMulIntegerToFloat``, then ``Mul`` by the row
  scale (``_Writer.rewrite_token_matmul``).  Every other reader -- an activation x activation
  ``MatMul`` such as attention scores, whose second operand's per-row scales lie along the summed
  axis and cannot be factored out, or a float op -- gets the fake-quantized value (per-axis
  ``DequantizeLinear`` of the same codes): the reference's numbers, with no speed-up there.
* Opset: raised to 13 (``axis`` on Q/DQ) with ``onnx.version_converter``, to 19/21 only where a
  dtype or blocked scale needs it; other domains (``ai.onnx.ml``, ``com.microsoft``) untouched.
* Activation formats must be the full grid of their ONNX type (int8, uint8, int4, uint4, fp8):
  ``QuantizeLinear`` always saturates to the type's range, so a narrow-range or 7-bit activation
  could not reproduce the reference's codes, and is rejected with an explanation.

Not covered (clear errors): dynamic specs other than uint8 asymmetric full-range per-tensor or
per-token over the last axis; models whose quantized tensors are not float32; weights that are
not initializers or Constant outputs.  A tensor that is
both a graph input and a graph output keeps its float value on the output.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantfw.formats import FloatFormat, IntFormat
from quantfw.graph import QuantGraph
from quantfw.numerics import dequantize, equalization_multiplier, quantize
from quantfw.recipe import Equalization, Recipe, TensorRecipe
from quantfw.spec import Granularity, QuantSpec

from .graphutil import unique_name
from .opset import default_opset

__all__ = ["LoweringError", "write_qdq", "storage_of", "count_ops", "FORMATS", "MIN_OPSET"]

#: Output formats :func:`write_qdq` knows.
FORMATS = ("qdq", "qoperator")
#: The lowest default-domain opset of an artifact (``axis`` on Q/DQ).
MIN_OPSET = 13

_F32 = np.float32
_U8 = TensorProto.UINT8


class LoweringError(ValueError):
    """A recipe, model or spec that cannot be written as an ONNX artifact, and why."""


# ------------------------------------------------------------------------------------------------
# storage types
# ------------------------------------------------------------------------------------------------


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


def storage_of(spec: QuantSpec) -> Storage:
    """The ONNX storage of codes in ``spec``'s format.

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
    if fmt.name == "int4":
        return Storage(TensorProto.INT4, ml_dtypes.int4, 21, full)
    if fmt.name == "uint4":
        return Storage(TensorProto.UINT4, ml_dtypes.uint4, 21, full)
    if fmt.signed:  # int8, and int7/int3/int2/ternary whose codes fit int8
        return Storage(TensorProto.INT8, np.int8, MIN_OPSET, full and fmt.bits == 8)
    if fmt.bits == 8:
        return Storage(TensorProto.UINT8, np.uint8, MIN_OPSET, full)
    raise LoweringError(f"no ONNX storage for unsigned {fmt.bits}-bit format {fmt.name!r}")


def _required_opset(t: TensorRecipe) -> int:
    need = storage_of(t.spec).opset
    if t.spec.granularity is Granularity.PER_GROUP:
        need = max(need, 21)  # blocked DequantizeLinear (block_size)
    return need


def _codes_tensor(name: str, codes: np.ndarray, storage: Storage) -> TensorProto:
    return numpy_helper.from_array(np.asarray(codes).astype(storage.numpy_type), name)


def _zero_point_tensor(name: str, t: TensorRecipe, storage: Storage) -> TensorProto:
    assert t.params is not None
    zp = np.asarray(t.params.zero_point)
    if t.spec.is_float:
        zp = np.zeros(zp.shape, np.float32)
    return numpy_helper.from_array(zp.astype(storage.numpy_type), name)


def _qdq_attrs(spec: QuantSpec, what: str) -> dict[str, int]:
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return {}
    if g is Granularity.PER_CHANNEL:
        return {"axis": int(spec.axis)}  # type: ignore[arg-type]
    if g is Granularity.PER_GROUP:
        return {"axis": int(spec.axis), "block_size": int(spec.group_size)}  # type: ignore[arg-type]
    raise LoweringError(f"{what}: {g.value} parameters cannot be static in ONNX")


# ------------------------------------------------------------------------------------------------
# model helpers
# ------------------------------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_names(graph: onnx.GraphProto, out: set[str]) -> None:
    for coll in (graph.input, graph.output, graph.value_info):
        out.update(v.name for v in coll)
    out.update(i.name for i in graph.initializer)
    for n in graph.node:
        out.add(n.name)
        out.update(n.input)
        out.update(n.output)
        for sub in _subgraphs(n):
            _all_names(sub, out)


def _rename_reads(graph: onnx.GraphProto, old: str, new: str, only: set[str] | None = None) -> None:
    """Make every reader of ``old`` (subgraphs included) read ``new``; with ``only``, just the
    top-level nodes of those names (quantization on some consumers' edges)."""
    for n in graph.node:
        if only is not None and n.name not in only:
            continue
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        if only is None:
            for sub in _subgraphs(n):
                _rename_reads(sub, old, new)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can tell (empty if it cannot run)."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # too large, or ops unknown to onnx: validation is best effort
        inferred = model
    g = inferred.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for i in g.initializer:
        types[i.name] = i.data_type
    return types


def _set_opset(model: onnx.ModelProto, need: int) -> onnx.ModelProto:
    have = default_opset(model)
    if have is None:
        raise LoweringError("the model imports no default ('ai.onnx') opset; cannot add Q/DQ")
    if have >= need:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, need)
    except Exception as exc:
        raise LoweringError(
            f"the model uses opset {have}; the quantized artifact needs opset {need} "
            f"(QuantizeLinear/DequantizeLinear with the recipe's types), and ONNX's version "
            f"converter failed: {exc}. Export the model at opset {need} or newer."
        ) from None
    # the converter drops nothing but may leave the IR version low for the new opset
    return converted


def _fix_ir_version(model: onnx.ModelProto) -> None:
    try:
        need = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except TypeError:  # older onnx without ignore_unknown
        need = helper.find_min_ir_version_for(list(model.opset_import))
    except Exception:
        return
    if model.ir_version < need:
        model.ir_version = need


def _gemm_trans_b(n: onnx.NodeProto) -> bool | None:
    """``transB`` of a Gemm that is a plain ``A @ B (+ C)`` (``False`` for a MatMul); ``None``
    for a Gemm with ``transA``, or ``alpha`` / ``beta`` other than 1 (where C is given)."""
    if n.op_type != "Gemm":
        return False
    attrs = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    if (
        attrs.get("transA", 0)
        or attrs.get("alpha", 1.0) != 1.0
        or (len(n.input) > 2 and n.input[2] and attrs.get("beta", 1.0) != 1.0)
    ):
        return None
    return bool(attrs.get("transB", 0))


def _integer_weight_ok(w: _Weight, trans_b: bool) -> bool:
    """Whether a quantized constant can be ``MatMulInteger``'s B: 8-bit integer codes, 2-D, one
    scale per tensor or per output column (scales along the summed axis cannot be factored out
    of the sum)."""
    spec = w.recipe.spec
    if spec.is_float or w.storage.onnx_type not in (TensorProto.INT8, TensorProto.UINT8):
        return False
    if w.codes.ndim != 2:
        return False
    if spec.granularity is Granularity.PER_CHANNEL:
        return int(spec.axis) % 2 == (0 if trans_b else 1)  # type: ignore[arg-type]
    return spec.granularity is Granularity.PER_TENSOR


# ------------------------------------------------------------------------------------------------
# the writer
# ------------------------------------------------------------------------------------------------


@dataclass
class _Dyn:
    """Names of one dynamically quantized activation's DynamicQuantizeLinear outputs."""

    codes: str
    scale: str
    zero_point: str
    dq: str | None = None  # DequantizeLinear output for float readers, made on demand
    out_name: str = ""  # name the DQ output must have (graph outputs keep their name)


@dataclass
class _Tok:
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
class _TokenMatMul:
    """An integer MatMul planned for a per-token activation (see ``rewrite_token_matmul``)."""

    weight: _Weight
    weight_name: str
    codes: np.ndarray  # [K, N] int64, B as the MatMul reads it
    bound: int  # largest magnitude of a zero-point row's entries
    extra: int  # zero-point rows it needs: ceil(max |column sum| / bound)


@dataclass
class _Weight:
    """A quantized constant: its codes tensor and params, for the integer MatMul rewrite."""

    codes: np.ndarray
    recipe: TensorRecipe
    storage: Storage
    codes_name: str
    scale_name: str
    zp_name: str
    dq_node: onnx.NodeProto | None = None


@dataclass
class _Writer:
    model: onnx.ModelProto
    graph: QuantGraph
    recipe: Recipe
    names: set[str] = field(default_factory=set)
    inits: list[TensorProto] = field(default_factory=list)
    opset: int = 0  # the artifact's default-domain opset, once raised
    consts: dict[str, str] = field(default_factory=dict)  # shared constant initializers
    head: list[onnx.NodeProto] = field(default_factory=list)  # nodes that go first

    def fresh(self, base: str) -> str:
        return unique_name(self.names, base)

    def readers_of(self, consumers: tuple[str, ...] | None) -> set[str] | None:
        """The ONNX node names of graph nodes ``consumers``; ``None`` means every reader."""
        if consumers is None:
            return None
        names: set[str] = set()
        for c in consumers:
            try:
                node = self.graph.node(c)
            except KeyError:
                names.add(c)
                continue
            names.update(node.attrs.get("onnx_nodes") or [c])
        return names

    def add_init(self, tensor: TensorProto) -> str:
        self.inits.append(tensor)
        return tensor.name

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        recipe = self.recipe
        for t in recipe.tensors.values():
            if t.spec.dynamic:
                self.check_dynamic(t)
        need = max(
            [MIN_OPSET]
            + [_required_opset(t) for t in recipe.tensors.values() if not t.spec.dynamic]
        )
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        m = _set_opset(m, need)
        self.opset = default_opset(m) or 0
        g = m.graph
        _all_names(g, self.names)

        inits = {i.name: i for i in g.initializer}
        constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        produced = {x for n in g.node for x in n.output} | {i.name for i in g.input}
        outputs = [o.name for o in g.output]
        real_inputs = [i.name for i in g.input if i.name not in inits]

        missing = [n for n in recipe.tensors if n not in inits and n not in produced]
        if missing:
            raise LoweringError(
                f"the recipe quantizes {len(missing)} tensor(s) that model {g.name!r} does not "
                f"have, e.g. {missing[:5]}; was the recipe made for another model (or for the "
                "frontend's prepared copy of it)?"
            )
        self.check_types(m)

        # rewritten float weights (bn folding, equalisation, learned rounding)
        for name, value in recipe.weights.items():
            if name in recipe.tensors:
                continue  # quantized below from this value
            self.replace_float_constant(g, inits, constants, name, np.asarray(value))

        weights: dict[str, _Weight] = {}
        top: list[onnx.NodeProto] = []
        for name, t in recipe.tensors.items():
            # activation-role constants are left alone, as the reference's hook never sees them
            if t.role == "activation":
                continue
            if t.role == "bias" and not self.bias_scale_ok(name, t):
                self.bake_float(g, inits, constants, name, t)
                continue
            weights[name] = self.lower_constant(g, inits, constants, name, t, top)

        static = {}
        dynamic: dict[str, _Dyn] = {}
        tokens: dict[str, _Tok] = {}
        for name, t in recipe.of_role("activation").items():
            if name in inits:
                continue
            if t.spec.dynamic and t.spec.granularity is Granularity.PER_TOKEN:
                tokens[name] = _Tok(self.fresh(f"{name}_scale"), self.fresh(f"{name}_quantized"))
            elif t.spec.dynamic:
                dynamic[name] = _Dyn(
                    self.fresh(f"{name}_quantized"),
                    self.fresh(f"{name}_scale"),
                    self.fresh(f"{name}_zero_point"),
                )
            else:
                static[name] = t

        # rename the producers of quantized graph outputs, so the last DQ can take the name
        source: dict[str, str] = {}
        for name in list(static) + list(dynamic) + list(tokens):
            if recipe.tensors[name].consumers is not None:
                continue  # quantized on some edges only: the graph output stays float
            if name in outputs and name not in real_inputs:
                src = self.fresh(f"{name}_float")
                for n in g.node:
                    for i, x in enumerate(n.output):
                        if x == name:
                            n.output[i] = src
                source[name] = src

        # integer MatMul rewrites for dynamic activations (per tensor and per token)
        rewrites: dict[int, list[onnx.NodeProto]] = {}
        planned: dict[int, tuple[str, _TokenMatMul]] = {}
        for idx, n in enumerate(g.node):
            first = n.input[0] if n.input else ""
            if first not in dynamic and first not in tokens:
                continue
            only = self.readers_of(recipe.tensors[first].consumers)
            if only is not None and n.name not in only:
                continue
            if first in tokens:
                plan = self.plan_token_matmul(n, first, weights)
                if plan is not None:
                    planned[idx] = (first, plan)
                    tokens[first].int_readers += 1
                    tokens[first].extra = max(tokens[first].extra, plan.extra)
                continue
            new = self.rewrite_integer_matmul(n, dynamic, weights)
            if new is not None:
                rewrites[idx] = new
        for idx, (first, plan) in planned.items():  # once every reader's zero-point rows are known
            rewrites[idx] = self.rewrite_token_matmul(g.node[idx], tokens[first], plan)

        # every other reader of a quantized activation reads the dequantized value (the new
        # nodes wait in `after` until assembly, so renaming readers never touches them)
        after: dict[str, list[onnx.NodeProto]] = {}
        for name, eq in recipe.equalizations.items():
            if name in dynamic or name in tokens:
                raise LoweringError(
                    f"activation {name!r}: an equalisation in front of dynamic quantization has "
                    "no ONNX lowering here; equalise statically quantized or float activations"
                )
            if name in static:
                continue  # static_qdq puts the multiply in front of the quantizer
            node = self.equalize_node(name, name, eq)
            after.setdefault(name, []).append(node)
            only = self.readers_of(eq.consumers)
            _rename_reads(g, name, node.output[0], only)
        for name, t in static.items():
            src = source.get(name, name)
            out = name if name in source else self.fresh(f"{name}_dequantized")
            nodes = self.static_qdq(name, src, out, t)
            after.setdefault(src, []).extend(nodes)
            if name not in source:
                _rename_reads(g, name, out, self.readers_of(t.consumers))
        for name, d in dynamic.items():
            only = self.readers_of(recipe.tensors[name].consumers)
            src = source.get(name, name)
            qnode = helper.make_node(
                "DynamicQuantizeLinear",
                [src],
                [d.codes, d.scale, d.zero_point],
                name=self.fresh(f"{name}_DynamicQuantizeLinear"),
            )
            nodes = [qnode]
            readers = [
                n
                for i, n in enumerate(g.node)
                if i not in rewrites and name in n.input and (only is None or n.name in only)
            ]
            in_subgraphs = only is None and self.read_in_subgraphs(g, name)
            if name in source or readers or in_subgraphs:
                out = name if name in source else self.fresh(f"{name}_dequantized")
                nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [d.codes, d.scale, d.zero_point],
                        [out],
                        name=self.fresh(f"{name}_DequantizeLinear"),
                    )
                )
                if name not in source:
                    _rename_reads(g, name, out, only)
            after.setdefault(src, []).extend(nodes)
        for name, d in tokens.items():
            only = self.readers_of(recipe.tensors[name].consumers)
            src = source.get(name, name)
            readers = [
                n
                for i, n in enumerate(g.node)
                if i not in rewrites and name in n.input and (only is None or n.name in only)
            ]
            in_subgraphs = only is None and self.read_in_subgraphs(g, name)
            if name in source or readers or in_subgraphs:
                d.fake = name if name in source else self.fresh(f"{name}_dequantized")
                if name not in source:
                    _rename_reads(g, name, d.fake, only)
            if d.int_readers or d.fake is not None:  # else nothing reads it quantized
                after.setdefault(src, []).extend(self.per_token_nodes(name, src, d))

        # assemble in topological order
        order: list[onnx.NodeProto] = list(top) + self.head
        for x in [i.name for i in g.input]:
            order.extend(after.pop(x, []))
        for idx, n in enumerate(g.node):
            if idx in rewrites:
                order.extend(rewrites[idx])
            else:
                order.append(n)
            for x in n.output:
                order.extend(after.pop(x, []))
        if after:  # pragma: no cover - every quantized tensor has a producer (checked above)
            raise LoweringError(f"no producer found for {sorted(after)}")
        del g.node[:]
        g.node.extend(order)
        g.initializer.extend(self.inits)
        self.prune_unused(g)
        # Intermediate shapes came from the frontend's shape inference, not from the user's
        # model. Left in, they let ONNX Runtime 1.32 fuse every residual Add + LayerNorm into
        # SkipLayerNormalization, whose CPU kernel is ~8x slower than the pair here: MiniLM at
        # batch 32 ran 1.58x faster than float with them, 1.90x without (2.17x vs 1.75x dynamic).
        del g.value_info[:]
        _fix_ir_version(m)
        self.stamp(m)
        return m

    def equalize_node(self, name: str, src: str, eq: Equalization) -> onnx.NodeProto:
        """``src * (1 / eq.scale)``: the float32 multiplier is the reference's own
        (:func:`quantfw.numerics.equalization_multiplier`), one elementwise Mul."""
        factor = self.add_init(
            numpy_helper.from_array(
                equalization_multiplier(eq.scale), self.fresh(f"{name}_equalize_scale")
            )
        )
        return helper.make_node(
            "Mul",
            [src, factor],
            [self.fresh(f"{name}_equalized")],
            name=self.fresh(f"{name}_Equalize"),
        )

    # -- checks --------------------------------------------------------------------------------
    @staticmethod
    def check_dynamic(t: TensorRecipe) -> None:
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

    def check_types(self, m: onnx.ModelProto) -> None:
        types = _elem_types(m)
        bad = [
            (n, TensorProto.DataType.Name(types[n]))
            for n, t in self.recipe.tensors.items()
            if n in types and types[n] != TensorProto.FLOAT
        ]
        if bad:
            raise LoweringError(
                f"quantized tensors must be float32 in the model, but {bad[:5]} are not; "
                "export the model in float32 before quantizing"
            )

    def read_in_subgraphs(self, g: onnx.GraphProto, name: str) -> bool:
        def walk(graph: onnx.GraphProto) -> bool:
            for n in graph.node:
                if name in n.input:
                    return True
                if any(walk(s) for s in _subgraphs(n)):
                    return True
            return False

        return any(walk(s) for n in g.node for s in _subgraphs(n))

    # -- constants -----------------------------------------------------------------------------
    def float_value(
        self, inits: dict[str, TensorProto], constants: dict[str, onnx.NodeProto], name: str
    ) -> np.ndarray:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            node = constants[name]
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        raise LoweringError(
            f"{name!r} is not an initializer (or Constant) of the model; quantized weights must "
            "be constants (fold the ops that compute them first)"
        )

    def drop_constant(
        self,
        g: onnx.GraphProto,
        inits: dict[str, TensorProto],
        constants: dict[str, onnx.NodeProto],
        name: str,
    ) -> None:
        if name in inits:
            g.initializer.remove(inits.pop(name))
            for v in list(g.input):  # IR < 4 models list initializers among the inputs
                if v.name == name:
                    g.input.remove(v)
        elif name in constants:
            g.node.remove(constants.pop(name))

    def replace_float_constant(
        self,
        g: onnx.GraphProto,
        inits: dict[str, TensorProto],
        constants: dict[str, onnx.NodeProto],
        name: str,
        value: np.ndarray,
    ) -> None:
        old = self.float_value(inits, constants, name)
        if tuple(old.shape) != tuple(value.shape):
            raise LoweringError(
                f"the recipe rewrites weight {name!r} with shape {tuple(value.shape)}, but the "
                f"model's has shape {tuple(old.shape)}"
            )
        new = numpy_helper.from_array(value.astype(old.dtype), name)
        if name in inits:
            inits[name].CopyFrom(new)
        else:
            for a in constants[name].attribute:
                if a.name == "value":
                    a.t.CopyFrom(new)

    def bias_scale_ok(self, name: str, t: TensorRecipe) -> bool:
        """Whether an int32 bias's scale is ``s_x * s_w`` of the op reading it (or no such op
        is quantized).  ONNX Runtime's QGemm fusion adds the int32 codes to the accumulator
        *without* checking the scale, so any other scale would give silently wrong results."""
        if t.spec.dtype != "int32" or t.params is None:
            return True
        users = [n for n in self.graph.nodes if n.weights.get("bias") == name]
        for node in users:
            x = self.recipe.tensors.get(node.inputs[0]) if node.inputs else None
            w = self.recipe.tensors.get(node.weights.get("weight", ""))
            if x is None or w is None or x.params is None or w.params is None:
                continue
            if x.params.scale.size != 1 or w.spec.granularity not in (
                Granularity.PER_TENSOR,
                Granularity.PER_CHANNEL,
            ):
                return False
            expected = (x.params.scale.reshape(()) * w.params.scale).astype(_F32)
            got = np.broadcast_to(t.params.scale, expected.shape)
            if not np.allclose(got, expected, rtol=1e-6, atol=0):
                return False
        return True

    def bake_float(
        self,
        g: onnx.GraphProto,
        inits: dict[str, TensorProto],
        constants: dict[str, onnx.NodeProto],
        name: str,
        t: TensorRecipe,
    ) -> None:
        """Store ``dequantize(quantize(b))`` as a float constant: the reference's value, exactly,
        without an int32 DQ that a fused kernel would misread."""
        assert t.params is not None
        warnings.warn(
            f"bias {name!r}: its int32 scale is not input scale x weight scale, which ONNX "
            "Runtime's integer kernels assume; it is stored as float (the same values), so "
            "the op may run in float",
            stacklevel=4,
        )
        base = self.recipe.weights.get(name)
        if base is None:
            base = self.float_value(inits, constants, name)
        value = dequantize(quantize(np.asarray(base, _F32), t.params, t.spec), t.params, t.spec)
        self.replace_float_constant(g, inits, constants, name, value)

    def lower_constant(
        self,
        g: onnx.GraphProto,
        inits: dict[str, TensorProto],
        constants: dict[str, onnx.NodeProto],
        name: str,
        t: TensorRecipe,
        top: list[onnx.NodeProto],
    ) -> _Weight:
        if t.params is None:
            raise LoweringError(f"{t.role} {name!r} has no params in the recipe")
        model_value = self.float_value(inits, constants, name)
        base = self.recipe.weights.get(name)
        if base is None:
            base = model_value
        elif tuple(base.shape) != tuple(model_value.shape):
            raise LoweringError(
                f"the recipe rewrites {name!r} with shape {tuple(base.shape)}, but the model's "
                f"has shape {tuple(model_value.shape)}"
            )
        if np.asarray(base).dtype.kind != "f":
            raise LoweringError(f"{t.role} {name!r} is not a float tensor ({base.dtype})")
        storage = storage_of(t.spec)
        try:
            codes = quantize(np.asarray(base, dtype=_F32), t.params, t.spec)
        except ValueError as exc:
            raise LoweringError(f"{t.role} {name!r}: {exc}") from None
        self.drop_constant(g, inits, constants, name)
        # the DQ output takes the constant's name: the name is free again, keep it reserved
        codes_name = self.add_init(_codes_tensor(self.fresh(f"{name}_quantized"), codes, storage))
        scale_name = self.add_init(
            numpy_helper.from_array(np.asarray(t.params.scale, _F32), self.fresh(f"{name}_scale"))
        )
        zp_name = self.add_init(_zero_point_tensor(self.fresh(f"{name}_zero_point"), t, storage))
        dq = helper.make_node(
            "DequantizeLinear",
            [codes_name, scale_name, zp_name],
            [name],
            name=self.fresh(f"{name}_DequantizeLinear"),
            **_qdq_attrs(t.spec, f"{t.role} {name!r}"),
        )
        top.append(dq)
        weight = _Weight(codes, t, storage, codes_name, scale_name, zp_name, dq)
        # lookups gather codes and dequantize only their rows; the DQ of the whole table stays
        # only for other readers (prune_unused drops it when there are none)
        self.lower_gathers(g, name, weight)
        return weight

    def lower_gathers(self, g: onnx.GraphProto, name: str, w: _Weight) -> int:
        """Rewrite every ``Gather(name, ids, axis=0)`` of the main graph to gather the integer
        codes and dequantize only the gathered rows; returns how many were rewritten.

        ``DequantizeLinear(whole table) -> Gather`` would dequantize an embedding table (47 MB for
        all-MiniLM-L6-v2's words) on every inference.  Instead:

        * one scale per row (per-channel on the gathered axis): ``Gather(codes, ids)``,
          ``Gather(scale, ids)`` (the scales stored as ``(rows, 1, …)`` so that they broadcast
          over the row), ``Cast`` to float, ``Sub`` of the gathered zero points (only when some
          are not 0, stored as float: small integers, exact) and ``Mul`` -- float32 ``(q - zp) *
          s``, bit for bit :func:`quantfw.numerics.dequantize` of the gathered codes;
        * per-tensor, or per-channel on another axis: ``Gather(codes, ids)`` then a
          ``DequantizeLinear`` (per-channel ``axis`` counted from the end, as the gathered
          tensor's rank depends on ``ids``).

        Only int8/uint8 storage (int7 and narrower included); other formats and per-group
        weights keep the DequantizeLinear of the table.  The rewritten Gather keeps its name and
        the last new node writes its output, so readers are untouched.
        """
        t, spec, storage = w.recipe, w.recipe.spec, w.storage
        rank = w.codes.ndim
        if (
            t.role != "weight"
            or rank == 0
            or storage.onnx_type not in (TensorProto.INT8, TensorProto.UINT8)
            or spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
        ):
            return 0
        axis = None
        if spec.granularity is Granularity.PER_CHANNEL:
            axis = int(spec.axis) % rank  # type: ignore[arg-type]
        found = []
        for i, n in enumerate(g.node):
            if n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
                continue
            if n.input[0] != name or name in n.input[1:]:
                continue
            gather_axis = next((int(a.i) for a in n.attribute if a.name == "axis"), 0)
            if gather_axis % rank == 0:
                found.append(i)
        if not found:
            return 0
        assert t.params is not None
        rows: dict[str, str] = {}  # per-row scale / zero point initializers, made once
        if axis == 0:
            row_shape = (w.codes.shape[0],) + (1,) * (rank - 1)
            scale = np.asarray(t.params.scale, _F32).reshape(row_shape)
            rows["scale"] = self.add_init(
                numpy_helper.from_array(scale, self.fresh(f"{name}_row_scale"))
            )
            zp = np.asarray(t.params.zero_point).reshape(row_shape)
            if np.any(zp != 0):
                rows["zero_point"] = self.add_init(
                    numpy_helper.from_array(
                        zp.astype(_F32), self.fresh(f"{name}_row_zero_point_float")
                    )
                )
        for i in reversed(found):  # back to front: inserting keeps the earlier indices valid
            n = g.node[i]
            ids, out = n.input[1], n.output[0]
            base = n.name or out
            gathered = self.fresh(f"{out}_quantized")
            n.input[0] = w.codes_name
            n.output[0] = gathered
            if axis == 0:
                new = self.dequantize_rows(gathered, ids, out, base, rows)
            else:
                attrs = {} if axis is None else {"axis": axis - rank}
                new = [
                    helper.make_node(
                        "DequantizeLinear",
                        [gathered, w.scale_name, w.zp_name],
                        [out],
                        name=self.fresh(f"{base}_DequantizeLinear"),
                        **attrs,
                    )
                ]
            for k, node in enumerate(new):
                g.node.insert(i + 1 + k, node)
        return len(found)

    def dequantize_rows(
        self, gathered: str, ids: str, out: str, base: str, rows: dict[str, str]
    ) -> list[onnx.NodeProto]:
        """``out = (float(gathered) - zp[ids]) * scale[ids]`` with per-row scales (and zero
        points): the nodes :meth:`lower_gathers` puts after a Gather of codes."""
        scale = self.fresh(f"{out}_scale")
        codes = self.fresh(f"{out}_codes_float")
        nodes = [
            helper.make_node(
                "Gather", [rows["scale"], ids], [scale], name=self.fresh(f"{base}_GatherScale")
            ),
            helper.make_node(
                "Cast", [gathered], [codes], to=TensorProto.FLOAT, name=self.fresh(f"{base}_Cast")
            ),
        ]
        if "zero_point" in rows:
            zp, centred = self.fresh(f"{out}_zero_point"), self.fresh(f"{out}_centred")
            nodes += [
                helper.make_node(
                    "Gather",
                    [rows["zero_point"], ids],
                    [zp],
                    name=self.fresh(f"{base}_GatherZeroPoint"),
                ),
                helper.make_node(
                    "Sub", [codes, zp], [centred], name=self.fresh(f"{base}_SubZeroPoint")
                ),
            ]
            codes = centred
        nodes.append(
            helper.make_node("Mul", [codes, scale], [out], name=self.fresh(f"{base}_Dequantize"))
        )
        return nodes

    # -- activations ---------------------------------------------------------------------------
    def static_qdq(self, name: str, src: str, out: str, t: TensorRecipe) -> list[onnx.NodeProto]:
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
        attrs = _qdq_attrs(spec, f"activation {name!r}")
        scale = self.add_init(
            numpy_helper.from_array(np.asarray(t.params.scale, _F32), self.fresh(f"{name}_scale"))
        )
        zp = self.add_init(_zero_point_tensor(self.fresh(f"{name}_zero_point"), t, storage))
        pre: list[onnx.NodeProto] = []
        eq = self.recipe.equalizations.get(name)
        if eq is not None:
            # the equalised consumers read x * (1 / scale) quantized (Recipe.check makes them
            # exactly the quantized ones)
            pre.append(self.equalize_node(name, src, eq))
            src = pre[-1].output[0]
        q_out = self.fresh(f"{name}_quantized")
        return pre + [
            helper.make_node(
                "QuantizeLinear",
                [src, scale, zp],
                [q_out],
                name=self.fresh(f"{name}_QuantizeLinear"),
                **attrs,
            ),
            helper.make_node(
                "DequantizeLinear",
                [q_out, scale, zp],
                [out],
                name=self.fresh(f"{name}_DequantizeLinear"),
                **attrs,
            ),
        ]

    def rewrite_integer_matmul(
        self, n: onnx.NodeProto, dynamic: dict[str, _Dyn], weights: dict[str, _Weight]
    ) -> list[onnx.NodeProto] | None:
        """``MatMulInteger + Cast + Mul(scale)`` (+ ``Add`` for a Gemm's C) for a MatMul or Gemm
        whose A input is dynamically quantized and whose B is integer; ``None`` otherwise."""
        if n.op_type not in ("MatMul", "Gemm") or n.domain not in ("", "ai.onnx"):
            return None
        if len(n.input) < 2 or n.input[0] not in dynamic:
            return None
        a = dynamic[n.input[0]]
        b_name = n.input[1]
        trans_b = _gemm_trans_b(n)
        if trans_b is None:
            return None
        tag = n.output[0]
        if b_name in dynamic:
            if trans_b:
                return None
            b = dynamic[b_name]
            b_codes, b_zp, b_scale = b.codes, b.zero_point, b.scale
        elif b_name in weights:
            w = weights[b_name]
            if not _integer_weight_ok(w, trans_b):
                return None
            b_codes, b_zp, b_scale = self.weight_codes(w, b_name, trans_b), w.zp_name, w.scale_name
        else:
            return None
        acc = self.fresh(f"{tag}_int32")
        accf = self.fresh(f"{tag}_int32_float")
        scale = self.fresh(f"{tag}_scale")
        base = n.name or tag
        has_c = n.op_type == "Gemm" and len(n.input) > 2 and bool(n.input[2])
        prod = self.fresh(f"{tag}_product") if has_c else n.output[0]
        nodes = [
            helper.make_node(
                "MatMulInteger",
                [a.codes, b_codes, a.zero_point, b_zp],
                [acc],
                name=self.fresh(f"{base}_MatMulInteger"),
            ),
            helper.make_node(
                "Cast", [acc], [accf], to=TensorProto.FLOAT, name=self.fresh(f"{base}_Cast")
            ),
            helper.make_node("Mul", [a.scale, b_scale], [scale], name=self.fresh(f"{base}_Scale")),
            helper.make_node("Mul", [accf, scale], [prod], name=self.fresh(f"{base}_Rescale")),
        ]
        if has_c:
            nodes.append(
                helper.make_node(
                    "Add", [prod, n.input[2]], [n.output[0]], name=self.fresh(f"{base}_Bias")
                )
            )
        return nodes

    def weight_codes(self, w: _Weight, name: str, trans_b: bool) -> str:
        """The name of ``w``'s codes as a MatMul's B (``[K, N]``): stored transposed once for a
        ``Gemm`` with ``transB = 1``."""
        if not trans_b:
            return w.codes_name
        key = f"transposed:{name}"
        if key not in self.consts:
            self.consts[key] = self.add_init(
                _codes_tensor(self.fresh(f"{name}_quantized_transposed"), w.codes.T, w.storage)
            )
        return self.consts[key]

    def const(self, value: Any, base: str, dtype: Any = _F32) -> str:
        """A constant initializer, made once per (dtype, value) and shared."""
        arr = np.asarray(value, dtype)
        key = f"{arr.dtype}:{arr.shape}:{arr.tobytes().hex()}"
        if key not in self.consts:
            self.consts[key] = self.add_init(numpy_helper.from_array(arr, self.fresh(base)))
        return self.consts[key]

    def per_token_nodes(self, name: str, src: str, d: _Tok) -> list[onnx.NodeProto]:
        """Per-token dynamic quantization of ``src`` (uint8 asymmetric, one ``(scale, zero
        point)`` per row of the last axis) in standard ONNX ops, float32 throughout and op for
        op :func:`quantfw.numerics.quantize_dynamic`:

        * ``lo, hi = ReduceMin/ReduceMax(x, axes=[-1], keepdims=1)``, viewed as ``[rows]``;
          ``rmin = Min(lo, 0)``, ``rmax = Max(hi, 0)``; ``s = (rmax - rmin) / 255``, replaced by
          1.0 where it is not a normal float32 (``GreaterOrEqual`` + ``Where``); ``zp =
          Clip(Round(-(rmin / s)), 0, 255)`` (ONNX ``Round`` is half to even, like ``np.rint``),
          then uint8;
        * the codes: ``x`` viewed as ``[rows, K]`` (``Flatten(axis=-1)``) and quantized by a
          per-axis ``QuantizeLinear`` (``axis=0``): ``clip(rint(x / s) + zp, 0, 255)`` in one
          pass, bit for bit :func:`quantfw.numerics.quantize` (float32 division, ties to even;
          the tests check it).  Elementwise ``Div``/``Round``/``Add``/``Clip``/``Cast`` give the
          same codes in five passes over ``x``;
        * for the integer MatMuls (:meth:`rewrite_token_matmul`): the row scales shaped like
          ``lo`` (``d.scale``) and the codes reshaped back to ``x``'s shape, followed by
          ``extra`` columns holding the row's zero point (``Expand`` + ``Concat``); for float
          readers: a per-axis ``DequantizeLinear`` of the same codes (``(q - zp) * s``, bit for
          bit :func:`quantfw.numerics.dequantize`) reshaped back to ``x``'s shape.
        """
        # the per-row arithmetic runs on 1-D [rows] views with [1]-shaped constants: ONNX
        # Runtime 1.32 broadcasts a scalar over a [..., 1] tensor element by element (a Min on
        # [32, 12, 64, 1] took 725 us, 34 us with a [1, 1, 1, 1] constant)
        zero = self.const([0.0], "per_token_zero")
        top = self.const([255.0], "per_token_qmax")
        tiny = self.const([np.finfo(np.float32).tiny], "per_token_tiny")
        one = self.const([1.0], "per_token_one")
        flat = self.const([-1], "per_token_rows", np.int64)
        nodes: list[onnx.NodeProto] = []

        def add(op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
            out = out or self.fresh(f"{name}_{op.lower()}")
            nodes.append(
                helper.make_node(op, inputs, [out], name=self.fresh(f"{name}_{op}"), **attrs)
            )
            return out

        if self.opset >= 18:  # axes became an input in opset 18
            axes = self.const([-1], "per_token_axes", np.int64)
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
            [
                zp,
                self.const(0.0, "per_token_zero_scalar"),
                self.const(255.0, "per_token_qmax_scalar"),
            ],
        )
        zp_u8 = add("Cast", [zp], self.fresh(f"{name}_zero_point_uint8"), to=_U8)
        rows = add("Flatten", [src], self.fresh(f"{name}_rows"), axis=-1)
        codes = add("QuantizeLinear", [rows, scale, zp_u8], axis=0)
        shape = add("Shape", [src])
        if d.int_readers:
            row_shape = add("Shape", [lo])
            add("Reshape", [scale, row_shape], d.scale)
            if d.extra:
                width = self.const([d.extra], f"per_token_extra_{d.extra}", np.int64)
                zp_rows = add("Reshape", [zp_u8, row_shape])
                columns = add("Expand", [zp_rows, width], self.fresh(f"{name}_zero_point_columns"))
                shaped = add("Reshape", [codes, shape], self.fresh(f"{name}_codes"))
                add("Concat", [shaped, columns], d.codes, axis=-1)
            else:
                add("Reshape", [codes, shape], d.codes)
        if d.fake is not None:
            deq = add("DequantizeLinear", [codes, scale, zp_u8], axis=0)
            add("Reshape", [deq, shape], d.fake)
        return nodes

    def plan_token_matmul(
        self, n: onnx.NodeProto, name: str, weights: dict[str, _Weight]
    ) -> _TokenMatMul | None:
        """Whether ``n`` -- a MatMul (or Gemm) whose A input is the per-token activation
        ``name`` -- can run on integers: B must be an int8 constant with zero point 0, per
        tensor or per output column (what the x86 targets' symmetric weights are); ``None``
        otherwise (the reader then gets the float fake-quantized value)."""
        if n.op_type not in ("MatMul", "Gemm") or n.domain not in ("", "ai.onnx"):
            return None
        if len(n.input) < 2 or name in n.input[1:]:
            return None
        trans_b = _gemm_trans_b(n)
        w = weights.get(n.input[1])
        if trans_b is None or w is None or not _integer_weight_ok(w, trans_b):
            return None
        assert w.recipe.params is not None
        if w.storage.onnx_type != TensorProto.INT8 or np.any(w.recipe.params.zero_point != 0):
            return None  # the zero-point rows need signed codes and no zero point of their own
        codes = (w.codes.T if trans_b else w.codes).astype(np.int64)
        colsum = int(np.abs(codes.sum(axis=0)).max(initial=0))
        # the weight's own grid (127 for int8, 63 for the AVX2 target's int7), at least 63:
        # u8 x s8 pairs then fit VPMADDUBSW's int16 (255 * 63 * 2 < 32768) on any x86
        bound = max(int(w.recipe.spec.qmax), 63)
        return _TokenMatMul(w, n.input[1], codes, bound, -(-colsum // bound))

    def rewrite_token_matmul(
        self, n: onnx.NodeProto, d: _Tok, plan: _TokenMatMul
    ) -> list[onnx.NodeProto]:
        """The integer form of a MatMul (or Gemm) of per-token activation codes ``q`` (row
        scale ``s``, zero point ``zp``) by int8 weight codes ``W`` (scale ``s_w`` per tensor or
        per output column, zero point 0): ``y = (sum_k (q - zp) W) * s_w * s``, the
        reference's dequantize-then-MatMul up to float32 summation order.

        ONNX Runtime's ``MatMulInteger`` takes one ``a_zero_point`` for all of A, so the row's
        zero point enters the sum as data: A is ``[q, zp, ..., zp]`` (``d.extra`` zero-point
        columns, see :meth:`per_token_nodes`) and B is ``W`` stacked on ``extra`` int8 rows whose
        column sums are ``-colsum(W)``, each entry within ``max(weight qmax, 63)`` (int8 storage;
        and on the AVX2 target, whose int7 weights keep VPMADDUBSW's int16 pair sums from
        saturating, the rows do too).  The int32 accumulator is
        then exactly ``sum_k (q - zp) W`` -- no ``[rows, N]`` correction term, which cost
        several passes over the output; the extra rows add ``extra / K`` of the multiply-adds
        (all-MiniLM-L6-v2: 8-59 rows on K = 384 or 1536).

        The accumulator goes to float as ``Cast -> Mul(Mul(one, s_w))`` -- the pattern ONNX
        Runtime fuses into ``com.microsoft::MatMulIntegerToFloat`` (a_scale = 1, b_scale =
        ``s_w``; the ``one`` is ``DequantizeLinear(1)``, which its constant folding leaves alone,
        so the product stays a node and the fusion happens; see ``quantfw_onnx.qoperator``) --
        then ``Mul`` by the row scale ``s`` (its own node: the fused kernel has one scale for
        all of A), then a Gemm's C.
        """
        w = plan.weight
        key = f"augmented:{plan.weight_name}:{d.extra}"
        if key not in self.consts:
            colsum = plan.codes.sum(axis=0)
            rows, left = [], -colsum
            for _ in range(d.extra):  # greedy: each row takes what it can of what is left
                row = np.clip(left, -plan.bound, plan.bound)
                rows.append(row)
                left = left - row
            assert not np.any(left), "zero-point rows too few for the column sums"
            aug = np.concatenate([plan.codes, np.asarray(rows, np.int64).reshape(-1, len(colsum))])
            self.consts[key] = self.add_init(
                _codes_tensor(
                    self.fresh(f"{plan.weight_name}_quantized_zero_point_rows"), aug, w.storage
                )
            )
        b_codes = self.consts[key]
        if "live_one" not in self.consts:
            self.consts["live_one"] = self.fresh("quantfw_live_one")
            self.head.append(
                helper.make_node(
                    "DequantizeLinear",
                    [
                        self.const(1, "quantfw_one_u8", np.uint8),
                        self.const(1.0, "quantfw_one"),
                        self.const(0, "quantfw_zero_u8", np.uint8),
                    ],
                    [self.consts["live_one"]],
                    name=self.fresh("quantfw_LiveOne"),
                )
            )
        tag, base = n.output[0], n.name or n.output[0]
        has_c = n.op_type == "Gemm" and len(n.input) > 2 and bool(n.input[2])
        out = self.fresh(f"{tag}_product") if has_c else tag
        acc, accf = self.fresh(f"{tag}_int32"), self.fresh(f"{tag}_int32_float")
        wsc, scale = self.fresh(f"{tag}_weight_scaled"), self.fresh(f"{tag}_weight_scale")
        mk = helper.make_node
        nodes = [
            mk(
                "MatMulInteger", [d.codes, b_codes], [acc], name=self.fresh(f"{base}_MatMulInteger")
            ),
            mk("Cast", [acc], [accf], to=TensorProto.FLOAT, name=self.fresh(f"{base}_Cast")),
            mk(
                "Mul",
                [self.consts["live_one"], w.scale_name],
                [scale],
                name=self.fresh(f"{base}_Scale"),
            ),
            mk("Mul", [accf, scale], [wsc], name=self.fresh(f"{base}_Rescale")),
            mk("Mul", [wsc, d.scale], [out], name=self.fresh(f"{base}_TokenScale")),
        ]
        if has_c:
            nodes.append(mk("Add", [out, n.input[2]], [tag], name=self.fresh(f"{base}_Bias")))
        return nodes

    # -- finishing -----------------------------------------------------------------------------
    def prune_unused(self, g: onnx.GraphProto) -> None:
        """Drop the weight DQs (and their initializers) that integer rewrites left unread."""
        mine = {t.name for t in self.inits}
        while True:
            read: set[str] = {o.name for o in g.output}
            for n in g.node:
                read.update(n.input)
                for sub in _subgraphs(n):
                    sub_names: set[str] = set()
                    _all_names(sub, sub_names)
                    read.update(sub_names)
            dead = [
                n
                for n in g.node
                if n.op_type == "DequantizeLinear"
                and n.input
                and n.input[0] in mine
                and not any(o in read for o in n.output)
            ]
            if not dead:
                break
            for n in dead:
                g.node.remove(n)
        read = {x for n in g.node for x in n.input}
        for i in [i for i in g.initializer if i.name in mine and i.name not in read]:
            g.initializer.remove(i)

    def stamp(self, m: onnx.ModelProto) -> None:
        from quantfw import __version__

        props = {p.key: p for p in m.metadata_props}
        for key, value in (
            ("quantfw.format", "qdq"),
            ("quantfw.target", self.recipe.target),
            ("quantfw.version", __version__),
        ):
            if key in props:
                props[key].value = value
            else:
                entry = m.metadata_props.add()
                entry.key, entry.value = key, value


def write_qdq(
    model: onnx.ModelProto, graph: QuantGraph, recipe: Recipe, *, fmt: str = "qdq"
) -> onnx.ModelProto:
    """A new ONNX model computing ``model`` with ``recipe``'s quantization (``model`` untouched).

    :param model: the float model the recipe was made for (the frontend's prepared copy: its
        tensor names are the recipe's).
    :param graph: the QuantGraph captured from ``model`` (used for messages and checks).
    :param recipe: the quantization decisions and numbers.
    :param fmt: ``"qdq"`` (QuantizeLinear/DequantizeLinear around float ops; ONNX Runtime fuses
        them into integer kernels) or ``"qoperator"`` (QLinearConv/QLinearMatMul/MatMulInteger).
    :raises LoweringError: naming the tensor and what ONNX cannot express.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"write_qdq takes an onnx.ModelProto, not {type(model).__name__}")
    qdq = _Writer(model, graph, recipe).run()
    if fmt == "qoperator":
        # computed from the QDQ model, so codes, scales and zero points are the recipe's; what
        # matches no integer operator keeps its Q/DQ (see quantfw_onnx.qoperator)
        from .qoperator import to_qoperator

        return to_qoperator(qdq)
    return qdq


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has (``domain::Op`` outside ai.onnx)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts
