"""What the QOperator rewrite reads in a QDQ model, and the small pieces it builds from it.

A :class:`DQ` describes a ``DequantizeLinear`` with constant scale and zero point; a
:class:`QOut` the per-tensor ``QuantizeLinear`` an op's output goes to.  The :class:`Rewriter`
holds one rewrite's state (the model copy, its edges, fresh names, new initializers) and the
helpers :mod:`.qoperator_rewrites` builds integer operators with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphutil import edges, subgraphs, unique_name
from ..opset import DEFAULT_DOMAINS
from .graph_edit import all_names

__all__ = ["DQ", "QOut", "Rewriter"]

_F32 = np.float32
_INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)
_GRID_MIN = {TensorProto.UINT8: 0, TensorProto.INT8: -128}


@dataclass(frozen=True)
class DQ:
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
class QOut:
    """The ``QuantizeLinear`` an op's output goes to (possibly through an absorbed Relu)."""

    removed: tuple[int, ...]  # node indices the fused op replaces (Relu, Q)
    output: str
    scale: str
    zero_point: str


@dataclass
class Rewriter:
    """One QOperator rewrite of ``model`` (a copy, edited in place): its edges, the tensors
    graph outputs and subgraphs read (``pinned``), fresh names and new initializers."""

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
        """A name the model does not use yet, now taken."""
        return unique_name(self.names, base)

    def add_init(self, value: np.ndarray, base: str) -> str:
        """A new initializer holding ``value``; its name."""
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
        """The value of initializer ``name`` (``None`` when it is not one)."""
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    # -- pattern reading -------------------------------------------------------------------------
    def dq(self, name: str) -> DQ | None:
        """The DequantizeLinear writing ``name``, when its parameters are constant 8-bit ones."""
        i = self.producer.get(name)
        if i is None:
            return None
        n = self.model.graph.node[i]
        if n.op_type != "DequantizeLinear" or n.domain not in DEFAULT_DOMAINS or len(n.input) < 3:
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
        return DQ(n, n.input[0], n.input[1], n.input[2], scale, zp, elem_type, axis, const)

    def single_reader(self, name: str) -> int | None:
        """The index of the only node reading ``name`` (``None``: several, none, or pinned)."""
        if name in self.pinned:
            return None
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 else None

    def q_after(self, name: str) -> QOut | None:
        """The per-tensor 8-bit Q that is the only reader of ``name`` (through a Relu when the Q's
        zero point is the grid minimum, so that the Relu is a no-op on the codes)."""
        g = self.model.graph
        i = self.single_reader(name)
        if i is None:
            return None
        removed: list[int] = []
        n = g.node[i]
        relu = n.op_type == "Relu" and n.domain in DEFAULT_DOMAINS
        if relu:
            removed.append(i)
            i = self.single_reader(n.output[0])
            if i is None:
                return None
            n = g.node[i]
        if n.op_type != "QuantizeLinear" or n.domain not in DEFAULT_DOMAINS or len(n.input) < 3:
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
        return QOut(tuple(removed), n.output[0], n.input[1], n.input[2])

    @staticmethod
    def kernel_types_ok(x: DQ, w: DQ) -> bool:
        """ONNX Runtime has u8 x u8, u8 x s8 and s8 x s8 kernels (no s8 x u8)."""
        if x.elem_type not in _INT8_TYPES or w.elem_type not in _INT8_TYPES:
            return False
        return not (x.elem_type == TensorProto.INT8 and w.elem_type == TensorProto.UINT8)

    def activation(self, name: str) -> DQ | None:
        """The DQ of per-tensor 8-bit activation codes writing ``name``."""
        a = self.dq(name)
        if a is None or a.const is not None or not a.per_tensor or a.elem_type not in _INT8_TYPES:
            return None
        return a

    # -- building blocks ---------------------------------------------------------------------------
    def scalar(self, dq: DQ, which: str) -> str:
        """``dq``'s scale or zero point as a 0-d initializer (QLinear ops want scalars)."""
        name = dq.scale if which == "scale" else dq.zero_point
        value = dq.scale_value if which == "scale" else dq.zp_value
        if value.ndim == 0:
            return name
        return self.shared(
            "scalar", name, lambda: self.add_init(value.reshape(()), f"{name}_scalar")
        )

    def weight_zero_point(self, w: DQ) -> str | None:
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

    def dequantized(self, dq: DQ) -> np.ndarray:
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
        self, x: DQ, w: DQ, base: str, shape: tuple[int, ...] | None = None
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

    def cast(self, src: str, dst: str, base: str) -> onnx.NodeProto:
        """``dst = Cast(src, to=float)``."""
        return helper.make_node(
            "Cast", [src], [dst], to=TensorProto.FLOAT, name=self.fresh(f"{base}_Cast")
        )

    def mul(self, a: str, b: str, out: str, base: str) -> onnx.NodeProto:
        """``out = a * b`` (a rescale)."""
        return helper.make_node("Mul", [a, b], [out], name=self.fresh(f"{base}_Rescale"))

    def reshaped(
        self, name: str, shape: tuple[int, ...], nodes: list[onnx.NodeProto], base: str
    ) -> str:
        """``name`` reshaped to ``shape`` by a Reshape appended to ``nodes``; its output."""
        target = self.add_init(np.asarray(shape, np.int64), f"{name}_shape")
        out = self.fresh(f"{name}_channels")
        nodes.append(
            helper.make_node("Reshape", [name, target], [out], name=self.fresh(f"{base}_BiasShape"))
        )
        return out

    def index(self) -> None:
        """Read the model's names, edges, pinned tensors and initializers."""
        g = self.model.graph
        all_names(g, self.names)
        self.producer, self.readers = edges(g.node)
        self.pinned = {o.name for o in g.output}
        for n in g.node:
            for sub in subgraphs(n):
                all_names(sub, self.pinned)
        self.inits = {t.name: t for t in g.initializer}
