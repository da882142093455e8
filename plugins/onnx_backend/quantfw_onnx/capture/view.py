"""What the capture reads from a prepared model: nodes, constants, element types, shapes, and
who produces and reads each tensor."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from ..graphutil import edges
from ..loader import folded_batchnorms
from ..opset import DEFAULT_DOMAINS, default_opset
from .store import InitializerStore

__all__ = ["FLOAT_TYPES", "GraphView"]

#: ONNX element types treated as floating point (quantizable activations).
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)


class GraphView:
    """A prepared ModelProto seen the way the capture needs it (read once, never modified).

    :ivar nodes: the graph's nodes; node indices below are positions in this list.
    :ivar store: the :class:`InitializerStore` the QuantGraph gets.
    :ivar types: tensor name -> ONNX element type, where known.
    :ivar shapes: tensor name -> dims (``None`` where not a number).
    :ivar syms: tensor name -> dims, symbolic dims kept as their ``dim_param`` string.
    :ivar producer: tensor name -> index of the node writing it.
    :ivar consumers: tensor name -> indices of the nodes reading it.
    :ivar folded: ``{conv node: BatchNormalization node}`` folded by ``prepare``.
    :ivar defined: names of the graph inputs, initializers and node outputs.
    """

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

    def is_const(self, name: str) -> bool:
        """Whether ``name`` is an initializer."""
        return name in self.init_protos

    def const(self, name: str) -> np.ndarray | None:
        """The value of initializer ``name`` (``None`` when it is not one)."""
        return self.store[name] if name in self.init_protos else None

    def scalar(self, name: str) -> float | None:
        """The number a one-element numeric initializer holds, else ``None``."""
        if name not in self.init_protos or math.prod(self.init_protos[name].dims) != 1:
            return None
        v = self.store[name]
        return float(v.reshape(-1)[0]) if v.dtype.kind in "fiu" else None

    def ints(self, name: str) -> list[int] | None:
        """An integer initializer as a flat list, else ``None``."""
        v = self.const(name)
        if v is None or v.dtype.kind not in "iu":
            return None
        return [int(i) for i in v.reshape(-1)]

    def floats(self, name: str) -> list[float] | None:
        """A numeric initializer as a flat list of floats, else ``None``."""
        v = self.const(name)
        if v is None or v.dtype.kind not in "fiu":
            return None
        return [float(i) for i in v.reshape(-1)]

    def uses(self, name: str) -> int:
        """How many times ``name`` is read: by nodes, and once more if a graph output."""
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs)

    def only_consumer(self, name: str) -> int | None:
        """The index of the one node reading ``name`` when nothing else does (nor the graph's
        outputs), else ``None``."""
        c = self.consumers.get(name, [])
        if len(c) == 1 and name not in self.graph_outputs:
            return c[0]
        return None

    def is_float(self, name: str) -> bool:
        """False only when the element type is known and not floating point."""
        t = self.types.get(name)
        return t is None or t in FLOAT_TYPES

    def is_op(self, idx: int | None, *ops: str) -> bool:
        """Whether node ``idx`` is a default-domain node of one of ``ops``."""
        if idx is None:
            return False
        n = self.nodes[idx]
        return n.domain in DEFAULT_DOMAINS and n.op_type in ops

    def rank(self, name: str) -> int | None:
        """The rank of ``name``, where known."""
        s = self.shapes.get(name)
        return None if s is None else len(s)
