"""ONNX graph → :class:`~quantfw.graph.QuantGraph`.

:func:`capture` reads a *prepared* model (see :func:`quantfw_onnx.loader.prepare`) and maps each
ONNX node to one op kind of quantfw's closed vocabulary.  Conventions backends rely on:

* tensor names are the ONNX tensor names; initializer names are the ONNX initializer names;
* ``node.name`` is an ONNX node name (``prepare`` names every node, uniquely) and
  ``node.source_op`` its ``op_type``;
* ``node.attrs["onnx_nodes"]`` lists, in graph order, the names of *all* ONNX nodes of
  ``graph.source`` that the QuantGraph node stands for.  It has one entry except for merged
  patterns, whose ``node.name`` is the first of them:

  - ``MatMul`` with a constant 2-D weight followed by ``Add`` of a constant 1-D bias (the MatMul
    output read by that Add only) → one ``linear`` node ``[MatMul, Add]`` whose output is the Add's;
  - the erf GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))`` in either common order → one ``gelu`` node
    (5 ONNX nodes);
  - ``x * sigmoid(x)`` → one ``silu`` node ``[Sigmoid, Mul]``.

  Tensors inside a merged pattern (the MatMul output before the bias, …) are not QuantGraph
  tensors; they still exist in the ONNX model;
* ``attrs["folded"]`` names the BatchNormalization nodes ``prepare`` folded into a Conv;
* ``graph.source`` and ``graph.forms["onnx"]`` are the prepared ``ModelProto``; treat it as
  read-only (copy before rewriting): the QuantGraph's initializers read their values from it.

Constant operands of element-wise ops stay in ``node.inputs`` as initializer names; constant
*parameters* (Reshape's shape, Clip's bounds, Slice's starts, axes, pads, …) become attributes and
are not inputs.  Ops whose output is not floating point (shape arithmetic) are ``other``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantfw.graph import Node, OpKind, QuantGraph

from .graphutil import edges
from .loader import _outer_names, folded_batchnorms
from .opset import default_opset

__all__ = ["capture", "InitializerStore", "FLOAT_TYPES"]

#: ONNX element types treated as floating point (quantizable activations).
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)

_DEFAULT_DOMAINS = ("", "ai.onnx")


class InitializerStore(MutableMapping[str, np.ndarray]):
    """The QuantGraph's initializers, read from the ONNX model on demand.

    Python's protobuf hands out a new ``bytes`` object for ``raw_data`` on every access, so no
    numpy view into the model is possible; converting every weight up front would hold the
    weights twice.  Instead each lookup converts the tensor (a read-only array); tensors of at
    most ``cache_bytes`` (biases, norms, shapes) are converted once and cached.  Assignments
    (``ctx.set_weight``) are kept here, never written into the model, and listed in
    :attr:`changed` so runners can use them.
    """

    def __init__(self, graph: onnx.GraphProto, *, cache_bytes: int = 1 << 16) -> None:
        self._protos: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._cache: dict[str, np.ndarray] = {}
        self._changed: dict[str, np.ndarray] = {}
        self._deleted: set[str] = set()
        self._cache_bytes = cache_bytes

    # -- Mapping -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._changed:
            return self._changed[name]
        if name in self._deleted or name not in self._protos:
            raise KeyError(name)
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        try:
            arr = numpy_helper.to_array(self._protos[name])
        except ValueError as exc:  # data that does not fit the declared shape
            raise ValueError(
                f"initializer {name!r} of the ONNX model is malformed: {exc}"
            ) from None
        if arr.flags.writeable:
            arr.flags.writeable = False
        if arr.nbytes <= self._cache_bytes:
            self._cache[name] = arr
        return arr

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._changed[name] = value
        self._deleted.discard(name)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._changed.pop(name, None)
        if name in self._protos:
            self._deleted.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._changed or (name in self._protos and name not in self._deleted)

    def __iter__(self) -> Iterator[str]:
        for name in self._protos:
            if name not in self._deleted:
                yield name
        for name in self._changed:
            if name not in self._protos:
                yield name

    def __len__(self) -> int:
        extra = sum(1 for n in self._changed if n not in self._protos)
        return len(self._protos) - len(self._deleted) + extra

    def __repr__(self) -> str:
        return f"<InitializerStore: {len(self)} tensors, {len(self._changed)} changed>"

    # -- extras --------------------------------------------------------------------------------
    @property
    def changed(self) -> Mapping[str, np.ndarray]:
        """Initializers assigned since capture (new values by name), read-only view."""
        return MappingProxyType(self._changed)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of an initializer without converting it."""
        if name in self._changed:
            return tuple(np.shape(self._changed[name]))
        if name in self._deleted or name not in self._protos:
            raise KeyError(name)
        return tuple(int(d) for d in self._protos[name].dims)

    def proto(self, name: str) -> TensorProto | None:
        """The model's TensorProto for ``name`` (``None`` for added ones)."""
        return None if name in self._deleted else self._protos.get(name)


# ------------------------------------------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8", "replace") for s in v]
        out[a.name] = v
    return out


def _f32(value: Any) -> float:
    """A float32 attribute as the short Python float it was written as (1e-05, not 9.99…e-06)."""
    v = float(value)
    return v if not math.isfinite(v) else float(str(np.float32(v)))


def _close(value: float | None, target: float, rel: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= rel * abs(target)


@dataclass
class _Fused:
    op: OpKind
    covered: list[int]  # node indices, ascending
    inputs: list[str]
    output: str
    weights: dict[str, str]
    attrs: dict[str, Any]


class _Capturer:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.nodes = list(self.g.node)
        # a model importing no default opset has no default-domain node to read: any version does
        self.opset = default_opset(model) or onnx.defs.onnx_opset_version()
        self.store = InitializerStore(self.g)
        self.init_protos = {t.name: t for t in self.g.initializer}
        self.graph_outputs = {o.name for o in self.g.output}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        self.syms: dict[str, tuple[int | str | None, ...]] = {}  # dim_param kept as str
        for vi in [*self.g.input, *self.g.value_info, *self.g.output]:
            if not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                dims = [
                    int(d.dim_value)
                    if d.HasField("dim_value")
                    else (d.dim_param if d.HasField("dim_param") and d.dim_param else None)
                    for d in tt.shape.dim
                ]
                self.syms[vi.name] = tuple(dims)
                self.shapes[vi.name] = tuple(d if isinstance(d, int) else None for d in dims)
        for t in self.g.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = self.syms[t.name] = tuple(int(d) for d in t.dims)
        self.producer, self.consumers = edges(self.nodes)
        self.folded = folded_batchnorms(model)
        self.defined = {i.name for i in self.g.input} | set(self.init_protos) | set(self.producer)

    # -- helpers -------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.init_protos

    def const(self, name: str) -> np.ndarray | None:
        return self.store[name] if name in self.init_protos else None

    def scalar(self, name: str) -> float | None:
        if name not in self.init_protos or math.prod(self.init_protos[name].dims) != 1:
            return None
        v = self.store[name]
        return float(v.reshape(-1)[0]) if v.dtype.kind in "fiu" else None

    def ints(self, name: str) -> list[int] | None:
        v = self.const(name)
        if v is None or v.dtype.kind not in "iu":
            return None
        return [int(i) for i in v.reshape(-1)]

    def floats(self, name: str) -> list[float] | None:
        v = self.const(name)
        if v is None or v.dtype.kind not in "fiu":
            return None
        return [float(i) for i in v.reshape(-1)]

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs)

    def only_consumer(self, name: str) -> int | None:
        c = self.consumers.get(name, [])
        if len(c) == 1 and name not in self.graph_outputs:
            return c[0]
        return None

    def is_float(self, name: str) -> bool:
        """False only when the element type is known and not floating point."""
        t = self.types.get(name)
        return t is None or t in FLOAT_TYPES

    def is_op(self, idx: int | None, *ops: str) -> bool:
        if idx is None:
            return False
        n = self.nodes[idx]
        return n.domain in _DEFAULT_DOMAINS and n.op_type in ops

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    # -- fusions -------------------------------------------------------------------------------
    def find_fusions(self) -> dict[int, _Fused]:
        fused: dict[int, _Fused] = {}
        taken: set[int] = set()

        def add(f: _Fused) -> None:
            if taken.isdisjoint(f.covered):
                f.covered.sort()
                taken.update(f.covered)
                fused[f.covered[0]] = f

        for i, n in enumerate(self.nodes):
            if n.domain not in _DEFAULT_DOMAINS:
                continue
            f = None
            if n.op_type == "MatMul":
                f = self.match_linear_bias(i)
            elif n.op_type == "Erf":
                f = self.match_gelu(i)
            elif n.op_type == "Sigmoid":
                f = self.match_silu(i)
            if f is not None:
                add(f)
        return fused

    def match_linear_bias(self, i: int) -> _Fused | None:
        n = self.nodes[i]
        if len(n.input) != 2 or not self.is_const(n.input[1]) or self.is_const(n.input[0]):
            return None
        w_dims = self.shapes[n.input[1]]
        if len(w_dims) != 2 or self.types.get(n.input[1]) not in FLOAT_TYPES:
            return None
        j = self.only_consumer(n.output[0])
        if not self.is_op(j, "Add"):
            return None
        add = self.nodes[j]
        others = [t for t in add.input if t != n.output[0]]
        if len(others) != 1 or len(add.input) != 2:
            return None
        b = others[0]
        if not self.is_const(b) or self.shapes[b] != (w_dims[1],):
            return None
        if self.types.get(b) not in FLOAT_TYPES:
            return None
        return _Fused(
            OpKind.LINEAR,
            [i, j],
            [n.input[0]],
            add.output[0],
            {"weight": n.input[1], "bias": b},
            {"channel_axis": 1},
        )

    def _other_operand(self, idx: int, known: str) -> str | None:
        n = self.nodes[idx]
        if len(n.input) != 2:
            return None
        if n.input[0] == known:
            return n.input[1]
        if n.input[1] == known:
            return n.input[0]
        return None

    def _scalar_mul(self, idx: int | None, value: float) -> str | None:
        """If node ``idx`` is ``Mul(x, c)`` / ``Mul(c, x)`` with constant ``c ≈ value``: x."""
        if not self.is_op(idx, "Mul"):
            return None
        n = self.nodes[idx]  # type: ignore[index]
        if len(n.input) != 2:
            return None
        for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if _close(self.scalar(b), value) and not self.is_const(a):
                return a
        return None

    def match_gelu(self, i: int) -> _Fused | None:
        erf = self.nodes[i]
        d = erf.input[0]
        p = self.producer.get(d)
        if p is None or self.only_consumer(d) != i:
            return None
        pn = self.nodes[p]
        x = None
        if self.is_op(p, "Div") and _close(self.scalar(pn.input[1]), math.sqrt(2.0)):
            x = pn.input[0]
        else:
            x = self._scalar_mul(p, 1.0 / math.sqrt(2.0))
        if x is None or self.is_const(x):
            return None
        a_idx = self.only_consumer(erf.output[0])
        if not self.is_op(a_idx, "Add"):
            return None
        one = self._other_operand(a_idx, erf.output[0])  # type: ignore[arg-type]
        if not _close(self.scalar(one) if one else None, 1.0):
            return None
        a_out = self.nodes[a_idx].output[0]  # type: ignore[index]
        m1 = self.only_consumer(a_out)
        if not self.is_op(m1, "Mul"):
            return None
        other = self._other_operand(m1, a_out)  # type: ignore[arg-type]
        m1_out = self.nodes[m1].output[0]  # type: ignore[index]
        if self._scalar_mul(m1, 0.5) == a_out:  # x * ((1 + erf) * 0.5): torch.export's form
            m2 = self.only_consumer(m1_out)
            if not self.is_op(m2, "Mul") or self._other_operand(m2, m1_out) != x:  # type: ignore[arg-type]
                return None
            covered = [p, i, a_idx, m1, m2]
            out = self.nodes[m2].output[0]  # type: ignore[index]
        elif other == x:  # (x * (1 + erf)) * 0.5
            m2 = self.only_consumer(m1_out)
            if self._scalar_mul(m2, 0.5) != m1_out:
                return None
            covered = [p, i, a_idx, m1, m2]
            out = self.nodes[m2].output[0]  # type: ignore[index]
        else:  # (x * 0.5) * (1 + erf)
            h = self.producer.get(other or "")
            if h is None or self.only_consumer(other) != m1 or self._scalar_mul(h, 0.5) != x:
                return None
            covered = [h, p, i, a_idx, m1]
            out = m1_out
        return _Fused(OpKind.GELU, covered, [x], out, {}, {"approximate": "none"})  # type: ignore[arg-type]

    def match_silu(self, i: int) -> _Fused | None:
        sig = self.nodes[i]
        x, s = sig.input[0], sig.output[0]
        m = self.only_consumer(s)
        if not self.is_op(m, "Mul") or self._other_operand(m, s) != x:  # type: ignore[arg-type]
            return None
        if self.is_const(x):
            return None
        return _Fused(OpKind.SILU, [i, m], [x], self.nodes[m].output[0], {}, {})  # type: ignore[index]

    # -- single nodes --------------------------------------------------------------------------
    def make(
        self,
        n: onnx.NodeProto,
        op: OpKind,
        inputs: list[str],
        outputs: list[str] | None = None,
        weights: dict[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Node:
        a = {"onnx_nodes": [n.name]}
        if attrs:
            a.update(attrs)
        if n.name in self.folded:
            a["folded"] = [self.folded[n.name]]
        return Node(
            name=n.name,
            op=op,
            inputs=inputs,
            outputs=outputs if outputs is not None else [n.output[0]],
            weights=weights or {},
            attrs=a,
            source_op=n.op_type if n.domain in _DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}",
        )

    def other(self, n: onnx.NodeProto, attrs: dict[str, Any] | None = None) -> Node:
        inputs = [t for t in n.input if t]
        for a in n.attribute:  # subgraph bodies read outer tensors without listing them
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                for t in sorted(_outer_names(sub)):
                    if t in self.defined and t not in inputs:
                        inputs.append(t)
        outputs = [t for t in n.output if t]
        return self.make(n, OpKind.OTHER, inputs, outputs, attrs=attrs)

    def spatial(self, n: onnx.NodeProto, kernel: list[int] | None) -> dict[str, Any] | None:
        """stride / padding / dilation / kernel_shape of Conv and pooling, interpreter style."""
        at = _attrs(n)
        kernel = list(at.get("kernel_shape") or kernel or [])
        if not kernel:
            return None
        nd = len(kernel)
        strides = list(at.get("strides") or [1] * nd)
        dil = list(at.get("dilations") or [1] * nd)
        auto = str(at.get("auto_pad", "NOTSET") or "NOTSET")
        out: dict[str, Any] = {
            "kernel_shape": tuple(kernel),
            "stride": tuple(strides),
            "dilation": tuple(dil),
        }
        if auto in ("NOTSET", ""):
            pads = list(at.get("pads") or [0] * (2 * nd))
            out["padding"] = tuple(pads)  # (begin..., end...) = (top, left, bottom, right) in 2-D
        elif auto == "VALID":
            out["padding"] = (0,) * (2 * nd)
        else:
            shape = self.shapes.get(n.input[0])
            spatial = shape[2:] if shape is not None and len(shape) == nd + 2 else None
            if spatial is None or any(s is None for s in spatial):
                out["auto_pad"] = auto
            else:
                begin, end = [], []
                for size, k, s, d in zip(spatial, kernel, strides, dil, strict=True):
                    total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
                    lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                    begin.append(lo)
                    end.append(total - lo)
                out["padding"] = tuple(begin + end)
        return out

    def map_node(self, n: onnx.NodeProto) -> Node:
        op = n.op_type
        if n.domain not in _DEFAULT_DOMAINS:
            return self.other(n)
        outs = [t for t in n.output if t]
        if not outs:
            return self.other(n)
        # shape arithmetic and other non-float results are never quantized
        if not self.is_float(n.output[0]):
            return self.other(n)
        handler = getattr(self, f"map_{op}", None)
        node = handler(n) if handler is not None else None
        return node if node is not None else self.other(n)

    # one handler per ONNX op; returning None means "other"
    def map_Conv(self, n: onnx.NodeProto, transpose: bool = False) -> Node | None:
        if len(n.input) < 2 or not self.is_const(n.input[1]) or self.is_const(n.input[0]):
            return None
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if bias is not None and not self.is_const(bias):
            return None
        w_shape = self.shapes[n.input[1]]
        geo = self.spatial(n, list(w_shape[2:]))
        if geo is None:
            return None
        at = _attrs(n)
        attrs = {"channel_axis": 1 if transpose else 0, "groups": int(at.get("group", 1)), **geo}
        if transpose:
            for k in ("output_padding", "output_shape"):
                if k in at:
                    attrs[k] = tuple(at[k])
        weights = {"weight": n.input[1]}
        if bias is not None:
            weights["bias"] = bias
        op = OpKind.CONV_TRANSPOSE if transpose else OpKind.CONV
        return self.make(n, op, [n.input[0]], weights=weights, attrs=attrs)

    def map_ConvTranspose(self, n: onnx.NodeProto) -> Node | None:
        return self.map_Conv(n, transpose=True)

    def map_Gemm(self, n: onnx.NodeProto) -> Node | None:
        at = _attrs(n)
        if at.get("transA", 0) or len(n.input) < 2 or not self.is_const(n.input[1]):
            return None
        if float(at.get("alpha", 1.0)) != 1.0 or self.is_const(n.input[0]):
            return None
        w_shape = self.shapes[n.input[1]]
        if len(w_shape) != 2:
            return None
        trans_b = int(at.get("transB", 0))
        n_out = w_shape[0] if trans_b else w_shape[1]
        weights = {"weight": n.input[1]}
        c = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if c is not None:
            if float(at.get("beta", 1.0)) != 1.0 or not self.is_const(c):
                return None
            if self.shapes[c] != (n_out,):
                return None
            weights["bias"] = c
        return self.make(
            n, OpKind.LINEAR, [n.input[0]], weights=weights,
            attrs={"channel_axis": 0 if trans_b else 1},
        )  # fmt: skip

    def map_MatMul(self, n: onnx.NodeProto) -> Node | None:
        a, b = n.input[0], n.input[1]
        if (
            self.is_const(b)
            and not self.is_const(a)
            and len(self.shapes[b]) == 2
            and self.types.get(b) in FLOAT_TYPES
        ):
            return self.make(
                n, OpKind.LINEAR, [a], weights={"weight": b}, attrs={"channel_axis": 1}
            )
        if not (self.is_float(a) and self.is_float(b)):
            return None
        return self.make(n, OpKind.MATMUL, [a, b])

    def _binary(self, n: onnx.NodeProto, op: OpKind) -> Node | None:
        if len(n.input) != 2:
            return None
        return self.make(n, op, list(n.input))

    def map_Add(self, n: onnx.NodeProto) -> Node | None:
        return self._binary(n, OpKind.ADD)

    def map_Sub(self, n: onnx.NodeProto) -> Node | None:
        return self._binary(n, OpKind.SUB)

    def map_Mul(self, n: onnx.NodeProto) -> Node | None:
        return self._binary(n, OpKind.MUL)

    def map_Div(self, n: onnx.NodeProto) -> Node | None:
        return self._binary(n, OpKind.DIV)

    def _unary(self, n: onnx.NodeProto, op: OpKind, attrs: dict | None = None) -> Node:
        return self.make(n, op, [n.input[0]], attrs=attrs)

    def map_Relu(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.RELU)

    def map_Sigmoid(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.SIGMOID)

    def map_Tanh(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.TANH)

    def map_LeakyRelu(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.LEAKY_RELU, {"alpha": _f32(_attrs(n).get("alpha", 0.01))})

    def map_Gelu(self, n: onnx.NodeProto) -> Node:
        approx = str(_attrs(n).get("approximate", "none"))
        return self._unary(n, OpKind.GELU, {"approximate": approx})

    def map_Identity(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.IDENTITY)

    def map_Dropout(self, n: onnx.NodeProto) -> Node | None:
        # inference: the identity, unless the mask is used or training_mode is a live input
        if any(self.uses(t) for t in n.output[1:] if t):
            return None
        if len(n.input) > 2 and n.input[2] and not self.is_const(n.input[2]):
            return None
        return self._unary(n, OpKind.IDENTITY)

    def map_Clip(self, n: onnx.NodeProto) -> Node | None:
        if self.opset < 11:
            at = _attrs(n)
            lo, hi = at.get("min", -math.inf), at.get("max", math.inf)
        else:
            bounds = []
            for k in (1, 2):
                t = n.input[k] if len(n.input) > k else ""
                if not t:
                    bounds.append(-math.inf if k == 1 else math.inf)
                    continue
                v = self.scalar(t)
                if v is None:
                    return None
                bounds.append(v)
            lo, hi = bounds
        return self._unary(n, OpKind.CLIP, {"clip": (_f32(lo), _f32(hi))})

    def map_Softmax(self, n: onnx.NodeProto) -> Node | None:
        axis = int(_attrs(n).get("axis", -1 if self.opset >= 13 else 1))
        if self.opset < 13:  # older Softmax flattens from `axis` on: same only on the last axis
            r = self.rank(n.input[0])
            if r is None or axis % r != r - 1:
                return None
        return self._unary(n, OpKind.SOFTMAX, {"axis": axis})

    def map_LayerNormalization(self, n: onnx.NodeProto) -> Node | None:
        if any(self.uses(t) for t in n.output[1:] if t):
            return None
        if len(n.input) < 2 or not self.is_const(n.input[1]):
            return None
        weights = {"weight": n.input[1]}
        if len(n.input) > 2 and n.input[2]:
            if not self.is_const(n.input[2]):
                return None
            weights["bias"] = n.input[2]
        at = _attrs(n)
        attrs = {"axis": int(at.get("axis", -1)), "eps": _f32(at.get("epsilon", 1e-5))}
        return self.make(n, OpKind.LAYERNORM, [n.input[0]], weights=weights, attrs=attrs)

    def map_BatchNormalization(self, n: onnx.NodeProto) -> Node | None:
        at = _attrs(n)
        if at.get("training_mode", 0) or any(self.uses(t) for t in n.output[1:] if t):
            return None
        if len(n.input) < 5 or not all(self.is_const(t) for t in n.input[1:5]):
            return None
        weights = dict(zip(("scale", "bias", "mean", "var"), n.input[1:5], strict=True))
        attrs = {"eps": _f32(at.get("epsilon", 1e-5))}
        return self.make(n, OpKind.BATCHNORM, [n.input[0]], weights=weights, attrs=attrs)

    def _pool(self, n: onnx.NodeProto, op: OpKind) -> Node | None:
        if any(self.uses(t) for t in n.output[1:] if t):  # MaxPool indices
            return None
        geo = self.spatial(n, None)
        if geo is None:
            return None
        at = _attrs(n)
        geo["ceil_mode"] = int(at.get("ceil_mode", 0))
        if op is OpKind.AVG_POOL:
            geo["count_include_pad"] = int(at.get("count_include_pad", 0))
        return self._unary(n, op, geo)

    def map_MaxPool(self, n: onnx.NodeProto) -> Node | None:
        return self._pool(n, OpKind.MAX_POOL)

    def map_AveragePool(self, n: onnx.NodeProto) -> Node | None:
        return self._pool(n, OpKind.AVG_POOL)

    def map_GlobalAveragePool(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.GLOBAL_AVG_POOL)

    def _axes(self, n: onnx.NodeProto, input_from: int) -> tuple[bool, tuple[int, ...] | None]:
        """Axes from the ``axes`` attribute (old opsets) or a constant input: (ok, axes)."""
        at = _attrs(n)
        if "axes" in at:
            return True, tuple(int(a) for a in at["axes"])
        if len(n.input) > input_from and n.input[input_from]:
            axes = self.ints(n.input[input_from])
            return (axes is not None), (None if axes is None else tuple(axes))
        return True, None

    def map_ReduceMean(self, n: onnx.NodeProto) -> Node | None:
        ok, axes = self._axes(n, 1)
        if not ok:
            return None
        at = _attrs(n)
        if axes is None and at.get("noop_with_empty_axes", 0):
            return self._unary(n, OpKind.IDENTITY)
        attrs = {"axes": axes, "keepdims": bool(at.get("keepdims", 1))}
        return self._unary(n, OpKind.REDUCE_MEAN, attrs)

    def map_Concat(self, n: onnx.NodeProto) -> Node:
        return self.make(
            n, OpKind.CONCAT, [t for t in n.input if t], attrs={"axis": int(_attrs(n)["axis"])}
        )

    def _reshape_target(self, n: onnx.NodeProto) -> list[int] | None:
        """A Reshape target for the interpreter from the inferred output shape: static dims as
        they are, ``0`` where the output dim is the input's dim at the same index (same symbol),
        and at most one ``-1``."""
        out = self.syms.get(n.output[0])
        inp = self.syms.get(n.input[0]) or ()
        if out is None:
            return None
        target: list[int] = []
        free = 0
        for j, d in enumerate(out):
            if isinstance(d, int):
                target.append(d)
            elif isinstance(d, str) and j < len(inp) and inp[j] == d:
                target.append(0)
            elif free == 0:
                target.append(-1)
                free += 1
            else:
                return None
        return target

    def map_Reshape(self, n: onnx.NodeProto) -> Node | None:
        allowzero = int(_attrs(n).get("allowzero", 0))
        shape = self.ints(n.input[1]) if len(n.input) > 1 else None
        if shape is not None:
            if allowzero and 0 in shape:
                return None
            return self._unary(n, OpKind.RESHAPE, {"shape": shape})
        target = self._reshape_target(n)
        if target is not None:
            return self._unary(n, OpKind.RESHAPE, {"shape": target})
        # dynamic target shape: a reshape all the same (data is inputs[0]); no "shape" attribute
        return self.make(n, OpKind.RESHAPE, [t for t in n.input if t])

    def map_Transpose(self, n: onnx.NodeProto) -> Node:
        perm = _attrs(n).get("perm")
        return self._unary(n, OpKind.TRANSPOSE, {"perm": None if perm is None else tuple(perm)})

    def map_Flatten(self, n: onnx.NodeProto) -> Node:
        return self._unary(n, OpKind.FLATTEN, {"axis": int(_attrs(n).get("axis", 1))})

    def map_Squeeze(self, n: onnx.NodeProto) -> Node | None:
        ok, axes = self._axes(n, 1)
        return self._unary(n, OpKind.SQUEEZE, {"axes": axes}) if ok else None

    def map_Unsqueeze(self, n: onnx.NodeProto) -> Node | None:
        ok, axes = self._axes(n, 1)
        if not ok or axes is None:
            return None
        target = self._reshape_target(n)
        if target is None:
            return None
        return self._unary(n, OpKind.RESHAPE, {"shape": target, "axes": axes})

    def map_Slice(self, n: onnx.NodeProto) -> Node | None:
        at = _attrs(n)
        if self.opset < 10:
            spec = {k: at.get(k) for k in ("starts", "ends", "axes")}
            spec["steps"] = None
        else:
            spec = {}
            for k, key in enumerate(("starts", "ends", "axes", "steps"), start=1):
                t = n.input[k] if len(n.input) > k else ""
                if not t:
                    spec[key] = None
                    continue
                v = self.ints(t)
                if v is None:
                    return None
                spec[key] = v
        attrs = {k: (None if v is None else [int(i) for i in v]) for k, v in spec.items()}
        return self._unary(n, OpKind.SLICE, attrs)

    def map_Gather(self, n: onnx.NodeProto) -> Node | None:
        data, idx = n.input[0], n.input[1]
        axis = int(_attrs(n).get("axis", 0))
        if (
            self.is_const(data)
            and not self.is_const(idx)
            and len(self.shapes[data]) == 2
            and axis == 0
            and self.types.get(data) in FLOAT_TYPES
        ):
            return self.make(
                n, OpKind.EMBEDDING, [idx], weights={"weight": data}, attrs={"axis": 0}
            )
        if not self.is_float(n.output[0]):
            return None
        return self.make(n, OpKind.GATHER, [data, idx], attrs={"axis": axis})

    def map_Pad(self, n: onnx.NodeProto) -> Node | None:
        at = _attrs(n)
        attrs: dict[str, Any] = {"mode": str(at.get("mode", "constant"))}
        if self.opset < 11:
            attrs["pads"] = [int(p) for p in at.get("pads", [])]
            attrs["value"] = float(at.get("value", 0.0))
            attrs["axes"] = None
        else:
            pads = self.ints(n.input[1]) if len(n.input) > 1 and n.input[1] else None
            if pads is None:
                return None
            attrs["pads"] = pads
            value = 0.0
            if len(n.input) > 2 and n.input[2]:
                v = self.scalar(n.input[2])
                if v is None:
                    return None
                value = v
            attrs["value"] = value
            axes = None
            if len(n.input) > 3 and n.input[3]:
                axes = self.ints(n.input[3])
                if axes is None:
                    return None
            attrs["axes"] = axes
        return self._unary(n, OpKind.PAD, attrs)

    def map_Resize(self, n: onnx.NodeProto) -> Node | None:
        at = _attrs(n)
        attrs: dict[str, Any] = {
            k: at[k]
            for k in (
                "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                "exclude_outside", "extrapolation_value", "antialias", "keep_aspect_ratio_policy",
            )
            if k in at
        }  # fmt: skip
        attrs.setdefault("mode", "nearest")
        if "axes" in at:
            attrs["axes"] = list(at["axes"])
        named = ("scales",) if self.opset < 11 else ("roi", "scales", "sizes")
        for k, key in enumerate(named, start=1):
            t = n.input[k] if len(n.input) > k else ""
            if not t:
                continue
            if not self.is_const(t):
                return None
            v = self.const(t)
            if v is None or v.size == 0:
                continue
            attrs[key] = [int(i) for i in v.reshape(-1)] if key == "sizes" else self.floats(t)
        return self._unary(n, OpKind.RESIZE, attrs)

    # -- whole graph ---------------------------------------------------------------------------
    def run(self, name: str) -> QuantGraph:
        fused = self.find_fusions()
        covered = {i for f in fused.values() for i in f.covered}
        nodes: list[Node] = []
        for i, n in enumerate(self.nodes):
            if i in fused:
                f = fused[i]
                parts = [self.nodes[k] for k in f.covered]
                attrs = {"onnx_nodes": [p.name for p in parts], **f.attrs}
                nodes.append(
                    Node(
                        name=parts[0].name,
                        op=f.op,
                        inputs=f.inputs,
                        outputs=[f.output],
                        weights=f.weights,
                        attrs=attrs,
                        source_op="+".join(p.op_type for p in parts),
                    )
                )
            elif i not in covered:
                nodes.append(self.map_node(n))
        inputs = [i.name for i in self.g.input if i.name not in self.init_protos]
        input_shapes = {k: self.shapes[k] for k in inputs if k in self.shapes}
        outputs = [o.name for o in self.g.output]
        for o in outputs:
            if o in self.init_protos and o not in self.producer:
                raise ValueError(
                    f"ONNX model {name!r}: graph output {o!r} is a constant (an initializer); "
                    "quantfw needs every output computed by a node"
                )
        return QuantGraph(
            nodes=nodes,
            inputs=inputs,
            outputs=outputs,
            initializers=self.store,  # type: ignore[arg-type]
            name=name,
            input_shapes=input_shapes,
            source=self.model,
            forms={"onnx": self.model},
        )


def capture(model: onnx.ModelProto, *, name: str | None = None) -> QuantGraph:
    """The QuantGraph of a prepared ONNX model (see the module docstring for the conventions).

    :param model: normally the output of :func:`quantfw_onnx.loader.prepare`; an unprepared model
        works too, but then unnamed nodes make the capture fail and BatchNorm stays unfolded.
    :param name: the graph's name (default: the ONNX graph's name, else ``"model"``).
    :raises ValueError: for graphs quantfw cannot represent (unnamed or duplicate node names,
        a constant graph output).
    """
    names = [n.name for n in model.graph.node]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(
            "capture needs every ONNX node named uniquely: run quantfw_onnx.loader.prepare(model) "
            "first"
        )
    graph_name = name or model.graph.name or "model"
    return _Capturer(model).run(graph_name)


def default_name(source: str | Path | onnx.ModelProto) -> str:
    """A graph name for a model: the file's stem, else the ONNX graph name."""
    if isinstance(source, onnx.ModelProto):
        return source.graph.name or "model"
    return Path(source).stem
