"""QOperator form: the QDQ artifact's quantized patterns rewritten as integer ONNX operators.

:func:`to_qoperator` takes the model :func:`quantfw_onnx.qdq.write_qdq` writes (``fmt="qdq"``)
and replaces what it can by standard-ONNX integer operators, reading the very codes, scales and
zero points of that QDQ model -- so the recipe's numbers are unchanged.
``write_qdq(..., fmt="qoperator")`` is this function applied to the QDQ model.

Rewrites (a "DQ" is a ``DequantizeLinear`` with initializer scale and zero point; "activation"
codes are computed, "weight" codes are an initializer; 8-bit storage only, ``int8``/``uint8``
codes, activations per-tensor):

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

Why the scale product is computed from a "live" scale
-----------------------------------------------------
ONNX Runtime 1.32 fuses ``MatMulInteger -> Cast -> Mul(Mul(a_scale, b_scale)) [-> Add(const)]``
into ``com.microsoft::MatMulIntegerToFloat`` (``MatMulIntegerToFloatFusion``, level 2) only when
the scale product is a ``Mul`` *node*.  With static scales both inputs of that Mul are
initializers, and constant folding (level 1) replaces it by an initializer first -- the fusion
then never fires and the op runs as ``MatMulInteger`` + ``Cast`` + ``Mul`` + ``Add``: three extra
passes over the output (1.4-1.5x the time of the fused kernel on a [32,128,384] x [384,1536]
layer).
With ``live_scales=True`` (the default) ``x_scale`` enters the product as
``DequantizeLinear(uint8 1, x_scale, uint8 0)`` -- exactly ``x_scale``, a standard op, but one ONNX
Runtime's constant folding leaves alone (it keeps DQs for its QDQ fusions) -- so the product stays
a node and the fusion happens, bias included.  Other runtimes compute the same numbers either way.

Measured (ONNX Runtime 1.32, this 2-core AVX512-VNNI box): all-MiniLM-L6-v2, x86-vnni recipe
(SmoothQuant + min-max, 64 docstring sentences), batch 32, 2 threads, round-robin medians of 30
calls with a 0.1 s pause.  The QOperator artifact has 6 ``QLinearMatMul`` (softmax x V) and 42
``MatMulInteger`` (every weight MatMul, and Q x K^T); ONNX Runtime runs them as 6 QLinearMatMul
and 42 ``MatMulIntegerToFloat`` with the bias folded in, and the output is bit for bit the
optimized QDQ artifact's.  Latency vs QDQ: 0.90-0.93x (sequence 128: 256 vs 282 ms, 416 vs 447 ms
in a busier run; sequence 64: 107 vs 119 ms) -- the QDQ session keeps 36 ``DQ(int32 bias)`` +
``Add`` at run time, which the QOperator form folds into the kernel.  Without live scales:
1.03-1.08x (unfused).  Left in QDQ form there: the 24 ``Reshape`` and 24 ``Transpose`` of the
attention heads between Q and DQ (ONNX Runtime moves the DQ past them and runs them on codes).

Numerics: ``QLinearConv``/``QLinearMatMul`` requantize ``acc * (x_s * w_s / y_s)`` inside the
kernel -- the same kernels ONNX Runtime fuses the QDQ form into, so the same tolerance applies (a
code may move by one step where the reference lands within float error of a rounding tie).  The
float-output path multiplies the exact integer accumulator by ``x_s * w_s``: float rounding only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graphutil import edges, unique_name
from .qdq import _all_names, _subgraphs

__all__ = ["to_qoperator", "qoperator_census", "qoperator_stats"]

_F32 = np.float32
_DEFAULT = ("", "ai.onnx")
_INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)
_GRID_MIN = {TensorProto.UINT8: 0, TensorProto.INT8: -128}


@dataclass(frozen=True)
class _DQ:
    """What a ``DequantizeLinear`` with constant parameters says about its input codes."""

    node: onnx.NodeProto
    codes: str
    scale: str
    zero_point: str
    scale_value: np.ndarray
    zp_value: np.ndarray
    elem_type: int
    axis: int | None  # None: per-tensor
    const: np.ndarray | None  # the codes when they are an initializer (a weight)

    @property
    def per_tensor(self) -> bool:
        return self.axis is None


@dataclass(frozen=True)
class _QOut:
    """The ``QuantizeLinear`` an op's output goes to (possibly through an absorbed Relu)."""

    removed: tuple[int, ...]  # node indices the fused op replaces (Relu, Q)
    output: str
    scale: str
    zero_point: str


@dataclass
class _Rewriter:
    model: onnx.ModelProto
    live_scales: bool = True
    names: set[str] = field(default_factory=set)
    inits: dict[str, TensorProto] = field(default_factory=dict)
    new_inits: list[TensorProto] = field(default_factory=list)
    producer: dict[str, int] = field(default_factory=dict)
    readers: dict[str, list[int]] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)  # read by subgraphs or graph outputs
    cache: dict[tuple[str, str], str] = field(default_factory=dict)

    # -- names, constants ------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return unique_name(self.names, base)

    def add_init(self, value: np.ndarray, base: str) -> str:
        t = numpy_helper.from_array(np.asarray(value), self.fresh(base))
        self.new_inits.append(t)
        self.inits[t.name] = t
        return t.name

    def shared(self, kind: str, key: str, make: Any) -> str:
        """One initializer/node output per ``(kind, key)``, made by ``make()`` on first use."""
        if (kind, key) not in self.cache:
            self.cache[(kind, key)] = make()
        return self.cache[(kind, key)]

    def value(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    # -- pattern reading -------------------------------------------------------------------------
    def dq(self, name: str) -> _DQ | None:
        """The DequantizeLinear writing ``name``, when its parameters are constant 8-bit ones."""
        i = self.producer.get(name)
        if i is None:
            return None
        n = self.model.graph.node[i]
        if n.op_type != "DequantizeLinear" or n.domain not in _DEFAULT or len(n.input) < 3:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("block_size", 0):
            return None  # blocked (per-group) weights
        scale, zp = self.value(n.input[1]), self.value(n.input[2])
        if scale is None or zp is None or scale.dtype != np.float32:
            return None
        elem_type = self.inits[n.input[2]].data_type
        if elem_type not in (*_INT8_TYPES, TensorProto.INT32):
            return None  # int4, fp8…: no integer operator takes them
        const = self.value(n.input[0])
        if scale.size == 1:
            axis = None
        else:
            if const is None:
                return None  # per-channel activations: no QLinear op takes them
            axis = int(attrs.get("axis", 1)) % const.ndim
        return _DQ(n, n.input[0], n.input[1], n.input[2], scale, zp, elem_type, axis, const)

    def single_reader(self, name: str) -> int | None:
        if name in self.pinned:
            return None
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 else None

    def q_after(self, name: str) -> _QOut | None:
        """The per-tensor 8-bit Q that is the only reader of ``name`` (through a Relu when the Q's
        zero point is the grid minimum, so that the Relu is a no-op on the codes)."""
        g = self.model.graph
        i = self.single_reader(name)
        if i is None:
            return None
        removed: list[int] = []
        n = g.node[i]
        relu = n.op_type == "Relu" and n.domain in _DEFAULT
        if relu:
            removed.append(i)
            i = self.single_reader(n.output[0])
            if i is None:
                return None
            n = g.node[i]
        if n.op_type != "QuantizeLinear" or n.domain not in _DEFAULT or len(n.input) < 3:
            return None
        if any(a.name in ("saturate", "output_dtype", "block_size") for a in n.attribute):
            return None
        scale, zp = self.value(n.input[1]), self.value(n.input[2])
        if scale is None or zp is None or scale.size != 1 or zp.size != 1:
            return None
        elem_type = self.inits[n.input[2]].data_type
        if elem_type not in _INT8_TYPES:
            return None
        if relu and int(zp.reshape(())) != _GRID_MIN[elem_type]:
            return None  # Q(Relu(v)) != Q(v): keep the Relu, and the op's float output
        removed.append(i)
        return _QOut(tuple(removed), n.output[0], n.input[1], n.input[2])

    @staticmethod
    def kernel_types_ok(x: _DQ, w: _DQ) -> bool:
        """ONNX Runtime has u8 x u8, u8 x s8 and s8 x s8 kernels (no s8 x u8)."""
        if x.elem_type not in _INT8_TYPES or w.elem_type not in _INT8_TYPES:
            return False
        return not (x.elem_type == TensorProto.INT8 and w.elem_type == TensorProto.UINT8)

    def activation(self, name: str) -> _DQ | None:
        a = self.dq(name)
        if a is None or a.const is not None or not a.per_tensor or a.elem_type not in _INT8_TYPES:
            return None
        return a

    # -- building blocks ---------------------------------------------------------------------------
    def scalar(self, dq: _DQ, which: str) -> str:
        """``dq``'s scale or zero point as a 0-d initializer (QLinear ops want scalars)."""
        name = dq.scale if which == "scale" else dq.zero_point
        value = dq.scale_value if which == "scale" else dq.zp_value
        if value.ndim == 0:
            return name
        return self.shared(
            "scalar", name, lambda: self.add_init(value.reshape(()), f"{name}_scalar")
        )

    def weight_zero_point(self, w: _DQ) -> str | None:
        """One zero point for all channels (a scalar), or ``None`` when they differ."""
        zp = np.unique(w.zp_value)
        if zp.size != 1:
            return None
        if w.zp_value.ndim == 0:
            return w.zero_point
        return self.shared(
            "scalar",
            w.zero_point,
            lambda: self.add_init(
                zp.reshape(()).astype(w.zp_value.dtype), f"{w.zero_point}_scalar"
            ),
        )

    def dequantized(self, dq: _DQ) -> np.ndarray:
        """What ``dq`` computes for its constant codes, float32 bit for bit:
        ``float32(q - zp) * scale``."""
        assert dq.const is not None
        scale, zp = dq.scale_value.astype(_F32), dq.zp_value.astype(np.int64)
        if dq.axis is not None:
            shape = [1] * dq.const.ndim
            shape[dq.axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return ((dq.const.astype(np.int64) - zp).astype(_F32) * scale).astype(_F32)

    def float_constant(self, name: str) -> str | None:
        """A float32 initializer with the value of the DQ of constant codes writing ``name``."""
        d = self.dq(name)
        if d is None or d.const is None:
            return None
        return self.shared(
            "float", name, lambda: self.add_init(self.dequantized(d), f"{name}_float")
        )

    def scale_product(
        self, x: _DQ, w: _DQ, base: str, shape: tuple[int, ...] | None = None
    ) -> tuple[list[onnx.NodeProto], str]:
        """Nodes computing ``x_scale * w_scale`` (reshaped to ``shape``), and its name."""
        w_scale = w.scale_value.astype(_F32)
        if shape is not None:
            w_scale = w_scale.reshape(shape)
        if not self.live_scales or shape is not None:
            value = (x.scale_value.reshape(()).astype(_F32) * w_scale).astype(_F32)
            return [], self.add_init(value, f"{base}_scale")
        # x_scale as DQ(1): the product stays a node, for MatMulIntegerToFloatFusion
        one = self.shared("const", "one", lambda: self.add_init(np.uint8(1), "quantfw_one_u8"))
        zero = self.shared("const", "zero", lambda: self.add_init(np.uint8(0), "quantfw_zero_u8"))
        nodes: list[onnx.NodeProto] = []
        live = self.cache.get(("live", x.scale))
        if live is None:
            live = self.fresh(f"{x.scale}_live")
            self.cache[("live", x.scale)] = live
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [one, self.scalar(x, "scale"), zero],
                    [live],
                    name=self.fresh(f"{x.scale}_Live"),
                )
            )
        out = self.fresh(f"{base}_scale")
        nodes.append(
            helper.make_node("Mul", [live, w.scale], [out], name=self.fresh(f"{base}_Scale"))
        )
        return nodes, out

    # -- rewrites ----------------------------------------------------------------------------------
    def conv(self, n: onnx.NodeProto) -> tuple[list[onnx.NodeProto], tuple[int, ...]] | None:
        if len(n.input) < 2:
            return None
        x, w = self.activation(n.input[0]), self.dq(n.input[1])
        if x is None or w is None or w.const is None or w.const.ndim < 3:
            return None
        if not self.kernel_types_ok(x, w) or w.axis not in (None, 0):
            return None
        w_zp = self.weight_zero_point(w)
        if w_zp is None:
            return None
        attrs = list(n.attribute)
        base = n.name or n.output[0]
        bias_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        bias = self.dq(bias_name) if bias_name else None
        out = self.q_after(n.output[0])
        if out is not None and (bias_name is None or self.bias_codes_ok(bias, x, w)):
            inputs = [
                x.codes, self.scalar(x, "scale"), self.scalar(x, "zero_point"),
                w.codes, w.scale, w_zp, out.scale, out.zero_point,
            ]  # fmt: skip
            if bias is not None:
                inputs.append(bias.codes)
            node = helper.make_node(
                "QLinearConv", inputs, [out.output], name=self.fresh(f"{base}_QLinearConv")
            )
            node.attribute.extend(attrs)
            return [node], out.removed
        # float output: ConvInteger + Cast + Mul(x_s * w_s per output channel) [+ Add(bias)]
        channels = (-1,) + (1,) * (w.const.ndim - 2)
        acc, accf = self.fresh(f"{n.output[0]}_int32"), self.fresh(f"{n.output[0]}_int32_float")
        ci = helper.make_node(
            "ConvInteger",
            [x.codes, w.codes, self.scalar(x, "zero_point"), w_zp],
            [acc],
            name=self.fresh(f"{base}_ConvInteger"),
        )
        ci.attribute.extend(attrs)
        scale_nodes, scale = self.scale_product(x, w, base, channels if w.axis == 0 else ())
        nodes = [ci, *scale_nodes, self.cast(acc, accf, base)]
        if bias_name is None:
            nodes.append(self.mul(accf, scale, n.output[0], base))
            return nodes, ()
        if bias is not None and bias.const is not None:
            value: np.ndarray | None = self.dequantized(bias)
        else:
            value = self.value(bias_name)
        if value is not None:
            b = self.shared(
                "channels",
                bias_name,
                lambda: self.add_init(value.reshape(channels), f"{bias_name}_float_channels"),
            )
        else:
            b = self.reshaped(bias_name, channels, nodes, base)
        prod = self.fresh(f"{n.output[0]}_unbiased")
        nodes.append(self.mul(accf, scale, prod, base))
        nodes.append(
            helper.make_node("Add", [prod, b], [n.output[0]], name=self.fresh(f"{base}_Bias"))
        )
        return nodes, ()

    def reshaped(
        self, name: str, shape: tuple[int, ...], nodes: list[onnx.NodeProto], base: str
    ) -> str:
        target = self.add_init(np.asarray(shape, np.int64), f"{name}_shape")
        out = self.fresh(f"{name}_channels")
        nodes.append(
            helper.make_node("Reshape", [name, target], [out], name=self.fresh(f"{base}_BiasShape"))
        )
        return out

    @staticmethod
    def bias_codes_ok(bias: _DQ | None, x: _DQ, w: _DQ) -> bool:
        """int32 codes with zero point 0 and scale ``x_s * w_s``: what QLinearConv adds."""
        if bias is None or bias.const is None or bias.elem_type != TensorProto.INT32:
            return False
        if np.any(bias.zp_value != 0) or bias.const.ndim != 1:
            return False
        expected = (x.scale_value.reshape(()).astype(_F32) * w.scale_value.astype(_F32)).astype(
            _F32
        )
        expected = np.broadcast_to(expected, bias.const.shape)
        got = np.broadcast_to(bias.scale_value, bias.const.shape)
        return bool(np.allclose(got, expected, rtol=1e-6, atol=0))

    def cast(self, src: str, dst: str, base: str) -> onnx.NodeProto:
        return helper.make_node(
            "Cast", [src], [dst], to=TensorProto.FLOAT, name=self.fresh(f"{base}_Cast")
        )

    def mul(self, a: str, b: str, out: str, base: str) -> onnx.NodeProto:
        return helper.make_node("Mul", [a, b], [out], name=self.fresh(f"{base}_Rescale"))

    def matmul(self, n: onnx.NodeProto) -> tuple[list[onnx.NodeProto], tuple[int, ...]] | None:
        """MatMul, and Gemm with ``transA = 0`` and ``alpha = beta = 1``."""
        if len(n.input) < 2:
            return None
        c = None
        trans_b = False
        if n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            c = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
                return None
            if c is not None and attrs.get("beta", 1.0) != 1.0:
                return None
            trans_b = bool(attrs.get("transB", 0))
        x = self.activation(n.input[0])
        w = self.dq(n.input[1])
        if x is None or w is None or not self.kernel_types_ok(x, w):
            return None
        base = n.name or n.output[0]
        if w.const is None:  # a second activation (attention): per-tensor, no transpose
            if not w.per_tensor or trans_b:
                return None
            w_codes, w_zp = w.codes, self.scalar(w, "zero_point")
        else:
            if w.const.ndim != 2 and not (w.per_tensor and not trans_b):
                return None
            if w.axis is not None and w.axis != (0 if trans_b else 1):
                return None  # scales along the summed axis cannot be factored out
            w_codes, w_zp = (
                w.codes,
                w.zero_point if w.axis is not None else self.scalar(w, "zero_point"),
            )
            if trans_b:
                w_codes = self.shared(
                    "transposed", w.codes,
                    lambda: self.add_init(np.ascontiguousarray(w.const.T), f"{w.codes}_transposed"),
                )  # fmt: skip
        out = self.q_after(n.output[0]) if c is None else None
        if out is not None:
            w_scale = w.scale if w.axis is not None else self.scalar(w, "scale")
            node = helper.make_node(
                "QLinearMatMul",
                [
                    x.codes, self.scalar(x, "scale"), self.scalar(x, "zero_point"),
                    w_codes, w_scale, w_zp, out.scale, out.zero_point,
                ],
                [out.output],
                name=self.fresh(f"{base}_QLinearMatMul"),
            )  # fmt: skip
            return [node], out.removed
        acc, accf = self.fresh(f"{n.output[0]}_int32"), self.fresh(f"{n.output[0]}_int32_float")
        nodes = [
            helper.make_node(
                "MatMulInteger",
                [x.codes, w_codes, self.scalar(x, "zero_point"), w_zp],
                [acc],
                name=self.fresh(f"{base}_MatMulInteger"),
            ),
            self.cast(acc, accf, base),
        ]
        scale_nodes, scale = self.scale_product(x, w, base)
        nodes = scale_nodes + nodes
        if c is None:
            nodes.append(self.mul(accf, scale, n.output[0], base))
            return nodes, ()
        prod = self.fresh(f"{n.output[0]}_unbiased")
        nodes.append(self.mul(accf, scale, prod, base))
        nodes.append(
            helper.make_node(
                "Add",
                [prod, self.float_constant(c) or c],
                [n.output[0]],
                name=self.fresh(f"{base}_Bias"),
            )
        )
        return nodes, ()

    def bias_add(self, produced: str) -> tuple[int, onnx.NodeProto] | None:
        """The bias ``Add`` reading ``produced`` (a float-output integer op's result), rewired to
        read its constant operand as float32 second input; ``None`` when there is none."""
        i = self.single_reader(produced)
        if i is None:
            return None
        n = self.model.graph.node[i]
        if n.op_type != "Add" or n.domain not in _DEFAULT or len(n.input) != 2:
            return None
        other = n.input[1] if n.input[0] == produced else n.input[0]
        if other == produced:
            return None
        d = self.dq(other)
        if d is None or d.const is None or d.const.ndim != 1 or d.const.size < 2:
            return None
        new = onnx.NodeProto()
        new.CopyFrom(n)
        del new.input[:]
        new.input.extend([produced, self.float_constant(other)])  # type: ignore[list-item]
        return i, new

    # -- driver ------------------------------------------------------------------------------------
    def index(self) -> None:
        g = self.model.graph
        self.producer, self.readers = edges(g.node)
        self.pinned = {o.name for o in g.output}
        for n in g.node:
            for sub in _subgraphs(n):
                _all_names(sub, self.pinned)
        self.inits = {t.name: t for t in g.initializer}

    def run(self) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        self.model = m
        g = m.graph
        _all_names(g, self.names)
        self.index()
        read_before = {x for n in g.node for x in n.input} | self.pinned

        replace: dict[int, list[onnx.NodeProto]] = {}
        removed: set[int] = set()
        edited: dict[int, onnx.NodeProto] = {}
        for i, n in enumerate(g.node):
            if n.domain not in _DEFAULT or i in removed:
                continue
            if n.op_type == "Conv":
                done = self.conv(n)
            elif n.op_type in ("MatMul", "Gemm"):
                done = self.matmul(n)
            else:
                continue
            if done is None:
                continue
            nodes, gone = done
            replace[i] = nodes
            removed.update(gone)
            last = nodes[-1]
            if last.op_type == "Mul" and last.output[0] == n.output[0]:
                found = self.bias_add(n.output[0])
                if found is not None and found[0] not in removed:
                    edited[found[0]] = found[1]

        order: list[onnx.NodeProto] = []
        for i, n in enumerate(g.node):
            if i in removed:
                continue
            order.extend(replace.get(i, [edited.get(i, n)]))
        del g.node[:]
        g.node.extend(order)
        g.initializer.extend(self.new_inits)
        self.prune(g, read_before)
        self.stamp(m)
        return m

    def prune(self, g: onnx.GraphProto, read_before: set[str]) -> None:
        """Drop the Q/DQ nodes left without readers, then the initializers only they read."""
        while True:
            read = {x for n in g.node for x in n.input} | self.pinned
            dead = [
                n
                for n in g.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and n.domain in _DEFAULT
                and not any(o in read for o in n.output)
            ]
            if not dead:
                break
            for n in dead:
                g.node.remove(n)
        read = {x for n in g.node for x in n.input} | self.pinned
        inputs = {v.name for v in g.input}
        mine = read_before | {t.name for t in self.new_inits}
        for t in [t for t in g.initializer if t.name not in read and t.name not in inputs]:
            if t.name in mine:  # initializers the input model did not read stay
                g.initializer.remove(t)
        produced = {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
        produced |= inputs
        for v in [v for v in g.value_info if v.name not in produced]:
            g.value_info.remove(v)

    @staticmethod
    def stamp(m: onnx.ModelProto) -> None:
        props = {p.key: p for p in m.metadata_props}
        if "quantfw.format" in props:
            props["quantfw.format"].value = "qoperator"
        else:
            entry = m.metadata_props.add()
            entry.key, entry.value = "quantfw.format", "qoperator"


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
    return _Rewriter(model, live_scales=live_scales).run()


_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")


def qoperator_census(model: onnx.ModelProto) -> dict[str, Any]:
    """What runs as an integer operator and what is left in QDQ form (main graph).

    ``float_on_dq`` counts, by op type, the nodes reading a ``DequantizeLinear`` output (other
    than the scale DQs of ``live_scales``): the float islands ONNX Runtime may still fuse.
    """
    g = model.graph
    counts = Counter(n.op_type for n in g.node if n.domain in _DEFAULT)
    scalars = {t.name for t in g.initializer if len(t.dims) == 0}
    dq_out = {
        n.output[0]
        for n in g.node
        if n.op_type == "DequantizeLinear" and n.domain in _DEFAULT and n.input[0] not in scalars
    }  # the DQs of a 0-d constant are live_scales' x_scale, not a quantized tensor
    float_on_dq: Counter[str] = Counter()
    for n in g.node:
        if n.op_type not in _INTEGER_OPS and any(x in dq_out for x in n.input):
            float_on_dq[n.op_type] += 1
    return {
        **{op: counts.get(op, 0) for op in _INTEGER_OPS},
        "QuantizeLinear": counts.get("QuantizeLinear", 0),
        "DequantizeLinear": counts.get("DequantizeLinear", 0),
        "float_on_dq": dict(float_on_dq),
    }


#: (op type, input index) of the integer weight codes each integer op reads.
_WEIGHT_INPUTS = {
    "DequantizeLinear": (0,),
    "MatMulInteger": (0, 1),
    "ConvInteger": (1,),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
}


def qoperator_stats(model: onnx.ModelProto) -> dict[str, Any]:
    """:func:`quantfw_onnx.backend.artifact_stats`' weight figures for a QOperator model (whose
    weights are also read by QLinearConv/QLinearMatMul/ConvInteger), plus the op counts."""
    from .avx2 import max_safe_weight_code

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    seen: set[str] = set()
    max_code = 0
    for n in g.node:
        for k in _WEIGHT_INPUTS.get(n.op_type, ()):
            t = inits.get(n.input[k]) if k < len(n.input) else None
            if t is None or t.name in seen or t.data_type != TensorProto.INT8:
                continue
            if t.data_location == TensorProto.EXTERNAL:
                continue
            seen.add(t.name)
            codes = numpy_helper.to_array(t)
            if codes.size:
                max_code = max(max_code, int(np.abs(codes.astype(np.int64)).max()))
    census = qoperator_census(model)
    return {
        "int8_weight_tensors": len(seen),
        "max_weight_code": max_code,
        "needs_vnni": max_code > max_safe_weight_code(255),
        "qlinear_conv": census["QLinearConv"],
        "qlinear_matmul": census["QLinearMatMul"],
        "conv_integer": census["ConvInteger"],
        "float_ops_on_dequantized": sum(census["float_on_dq"].values()),
    }
