"""QOperator form: the QDQ artifact's quantized patterns rewritten as integer ONNX operators.

:func:`to_qoperator` takes the model :func:`~quantfw_onnx.lowering.write_qdq` writes
(``fmt="qdq"``) and replaces what it can by standard-ONNX integer operators, reading the very
codes, scales and zero points of that QDQ model -- so the recipe's numbers are unchanged.
``write_qdq(..., fmt="qoperator")`` is this function applied to the QDQ model.

Rewrites (a "DQ" is a ``DequantizeLinear`` with initializer scale and zero point; "activation"
codes are computed, "weight" codes are an initializer; 8-bit storage only, ``int8``/``uint8``
codes, activations per-tensor), in :mod:`.qoperator_rewrites`:

* ``DQ(x) + DQ(W) [+ DQ(b int32)] -> Conv [-> Relu] -> Q(y)`` => ``QLinearConv`` writing the Q's
  codes.  Weights per-tensor or per-channel on axis 0, with one zero point for all channels (the
  symmetric weights' 0).  The bias must be int32 codes of scale ``x_scale * w_scale`` (what
  QLinearConv adds to its accumulator).  The ``Relu`` is absorbed only when the Q's zero point is
  the grid minimum (uint8 0 / int8 -128): then ``Q(Relu(v)) == Q(v)`` exactly, as Q saturates
  below the zero point.
* ``DQ(x) + DQ(W) -> MatMul [-> Relu] -> Q(y)`` (or ``Gemm`` without C, ``transA = 0``,
  ``alpha = 1``) => ``QLinearMatMul``; ``W`` a 2-D weight per-tensor or per-column (the output
  axis), or a second per-tensor activation (attention scores).  ONNX Runtime's ``QLinearMatMul``
  takes the per-column ``b_scale``/``b_zero_point`` (checked by the tests).
* the same op with a float output (no Q after it: a bias ``Add``, a residual, a graph output…) =>
  ``MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast(float) -> Mul(x_scale * w_scale)`` (per column),
  writing the op's old output, so its readers are untouched.  A ``Gemm``'s C becomes an ``Add``
  after it; ``transB = 1`` stores the codes transposed.  A Conv with a float output (no Q, or a
  Relu the Q cannot absorb) => ``ConvInteger -> Cast -> Mul(x_scale * w_scale[M,1..]) [-> Add(b)]``.
* a bias ``Add`` right after such a float-output op, whose other input is a DQ of a 1-D constant,
  reads the float32 values of that DQ as an initializer instead (bit for bit what the DQ computes,
  i.e. the reference's bias): ONNX Runtime folds a constant bias into ``MatMulIntegerToFloat``.

Everything else keeps its Q/DQ and stays correct: ``Add``/``Mul``/``Softmax``/pools/``Concat``/
reshapes between Q and DQ (the ``com.microsoft`` ``QLinearAdd``, ``QLinearGlobalAveragePool``…
are contrib ops; ONNX Runtime still fuses those groups at session creation), dynamic activations
(``write_qdq`` already writes ``MatMulInteger`` for them), per-group, int4, fp8 and per-channel
activations, weights whose scales run along the summed axis (they cannot be factored out of the
sum), int8 activations with uint8 weights (no ONNX Runtime kernel), and any tensor another
node (or a subgraph, or the graph outputs) still reads in float.  Each DQ/Q left without a reader
is removed; the input and output names and types are the QDQ model's.

Live scales: ONNX Runtime fuses ``MatMulInteger -> Cast -> Mul(Mul(a_scale, b_scale))
[-> Add(const)]`` into ``com.microsoft::MatMulIntegerToFloat`` only when the scale product is a
``Mul`` *node*, and its constant folding turns a product of two initializers into an initializer
first.  With ``live_scales=True`` (the default) ``x_scale`` enters the product as
``DequantizeLinear(uint8 1, x_scale, uint8 0)`` -- exactly ``x_scale``, a standard op that the
constant folding leaves alone -- so the fusion happens, bias included (the tests check both
ways).  On all-MiniLM-L6-v2 the QOperator artifact then runs at 0.90-0.93x the QDQ artifact's
latency (its bias is folded into the kernel); without live scales at 1.03-1.08x (unfused).

Numerics: ``QLinearConv``/``QLinearMatMul`` requantize ``acc * (x_s * w_s / y_s)`` inside the
kernel -- the same kernels ONNX Runtime fuses the QDQ form into, so the same tolerance applies (a
code may move by one step where the reference lands within float error of a rounding tie).  The
float-output path multiplies the exact integer accumulator by ``x_s * w_s``: float rounding only.
"""

from __future__ import annotations

import onnx

from ..opset import DEFAULT_DOMAINS
from .qoperator_patterns import Rewriter
from .qoperator_rewrites import bias_add, conv, matmul

__all__ = ["to_qoperator"]


def to_qoperator(model: onnx.ModelProto, *, live_scales: bool = True) -> onnx.ModelProto:
    """A new model: the QDQ ``model`` with its quantized Conv/MatMul/Gemm patterns rewritten as
    ``QLinearConv``, ``QLinearMatMul``, ``MatMulInteger`` and ``ConvInteger`` (see the module
    docstring); ``model`` is untouched.

    :param live_scales: compute ``x_scale * w_scale`` of the float-output integer MatMuls from
        ``DequantizeLinear(1, x_scale, 0)`` so that ONNX Runtime fuses them into
        ``MatMulIntegerToFloat``; ``False`` writes the product as an initializer (plain, unfused).
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"to_qoperator takes an onnx.ModelProto, not {type(model).__name__}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rw = Rewriter(m, live_scales=live_scales)
    rw.index()
    g = m.graph
    read_before = {x for n in g.node for x in n.input} | rw.pinned

    replace: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    edited: dict[int, onnx.NodeProto] = {}
    for i, n in enumerate(g.node):
        if n.domain not in DEFAULT_DOMAINS or i in removed:
            continue
        if n.op_type == "Conv":
            done = conv(rw, n)
        elif n.op_type in ("MatMul", "Gemm"):
            done = matmul(rw, n)
        else:
            continue
        if done is None:
            continue
        nodes, gone = done
        replace[i] = nodes
        removed.update(gone)
        last = nodes[-1]
        if last.op_type == "Mul" and last.output[0] == n.output[0]:
            found = bias_add(rw, n.output[0])
            if found is not None and found[0] not in removed:
                edited[found[0]] = found[1]

    order: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        if i in removed:
            continue
        order.extend(replace.get(i, [edited.get(i, n)]))
    del g.node[:]
    g.node.extend(order)
    g.initializer.extend(rw.new_inits)
    _prune(rw, read_before)
    _stamp(m)
    return m


def _prune(rw: Rewriter, read_before: set[str]) -> None:
    """Drop the Q/DQ nodes left without readers, then the initializers only they read."""
    g = rw.model.graph
    while True:
        read = {x for n in g.node for x in n.input} | rw.pinned
        dead = [
            n
            for n in g.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and n.domain in DEFAULT_DOMAINS
            and not any(o in read for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {x for n in g.node for x in n.input} | rw.pinned
    inputs = {v.name for v in g.input}
    mine = read_before | {t.name for t in rw.new_inits}
    for t in [t for t in g.initializer if t.name not in read and t.name not in inputs]:
        if t.name in mine:  # initializers the input model did not read stay
            g.initializer.remove(t)
    produced = {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
    produced |= inputs
    for v in [v for v in g.value_info if v.name not in produced]:
        g.value_info.remove(v)


def _stamp(m: onnx.ModelProto) -> None:
    """Mark the model as a QOperator artifact in its metadata."""
    props = {p.key: p for p in m.metadata_props}
    if "quantfw.format" in props:
        props["quantfw.format"].value = "qoperator"
    else:
        entry = m.metadata_props.add()
        entry.key, entry.value = "quantfw.format", "qoperator"
