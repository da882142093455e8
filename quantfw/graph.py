"""The framework-neutral view of a network that planning and the algorithms work on.

A frontend captures a :class:`QuantGraph` from a PyTorch module, a Keras model or an ONNX file.
The graph is a list of :class:`Node` in topological order; tensors are referred to by name.
Weights (and other constants) live in ``graph.initializers`` as numpy arrays, and a node names the
ones it uses in ``node.weights`` by role (``"weight"``, ``"bias"``, …).  ``node.inputs`` lists
only the activation inputs (tensors computed at run time or fed by the user).

Attributes a frontend should fill where they apply (all optional, all plain Python values):

``channel_axis``
    axis of the weight holding output channels (torch Linear/Conv and ONNX Conv: 0; ONNX MatMul
    and TF Dense: 1; TF Conv2D: 3).  Per-channel weight specs use it.
``reduction_axis``
    axis of the weight summed over by the op (the input features); per-group specs use it.
``groups``, ``stride``, ``padding``, ``dilation``, ``kernel_shape``
    convolution geometry; ``groups == in_channels`` marks a depthwise convolution.
``axis``
    for concat, softmax, layernorm.
``activation``
    for ``clip``: ``(min, max)`` in ``attrs["clip"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "OpKind",
    "Node",
    "QuantGraph",
    "GraphError",
    "SHAPE_OPS",
    "shape_tensors",
    "with_shape_producers",
]


class GraphError(ValueError):
    """A graph that is malformed (dangling tensor names, duplicate node names, cycles…)."""


class OpKind(str, Enum):
    """The closed vocabulary of operations.  Anything else is ``OTHER`` (kept in float)."""

    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    LINEAR = "linear"  # x @ W (+ b) with a constant weight
    MATMUL = "matmul"  # product of two activations (attention scores, …)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    CONCAT = "concat"
    MAX_POOL = "max_pool"
    AVG_POOL = "avg_pool"
    GLOBAL_AVG_POOL = "global_avg_pool"
    REDUCE_MEAN = "reduce_mean"
    RELU = "relu"
    CLIP = "clip"  # relu6 and friends
    LEAKY_RELU = "leaky_relu"
    GELU = "gelu"
    SILU = "silu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    BATCHNORM = "batchnorm"
    LAYERNORM = "layernorm"
    SOFTMAX = "softmax"
    EMBEDDING = "embedding"
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    FLATTEN = "flatten"
    SQUEEZE = "squeeze"
    SLICE = "slice"
    GATHER = "gather"
    PAD = "pad"
    RESIZE = "resize"
    IDENTITY = "identity"
    OTHER = "other"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value

    @classmethod
    def parse(cls, value: str | OpKind, where: str = "op kind") -> OpKind:
        """Parse a name, raising a ValueError that lists the vocabulary."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise ValueError(f"{where}: {value!r} is not an op kind; allowed: {allowed}") from None


#: Ops that carry a constant weight tensor in ``node.weights["weight"]``.
WEIGHTED = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.LINEAR, OpKind.EMBEDDING})


@dataclass
class Node:
    """One operation.

    :param name: unique within the graph (the layer name users write in overrides).
    :param op: the op kind.
    :param inputs: activation inputs, in order.
    :param outputs: output tensor names.
    :param weights: role → initializer name (``{"weight": "fc1.weight", "bias": "fc1.bias"}``).
    :param attrs: op attributes (see the module docstring for the common keys).
    :param source_op: the framework's own op name (``"Conv"``, ``"aten.linear"``), for messages.
    """

    name: str
    op: OpKind
    inputs: list[str]
    outputs: list[str]
    weights: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    source_op: str = ""

    def __post_init__(self) -> None:
        self.op = OpKind.parse(self.op, where=f"node {self.name!r}")
        self.inputs = list(self.inputs)
        self.outputs = list(self.outputs)


@dataclass
class QuantGraph:
    """A topologically ordered list of nodes plus graph inputs, outputs and constants.

    :param nodes: in topological order.
    :param inputs: names of the tensors the user feeds.
    :param outputs: names of the tensors the model returns.
    :param initializers: constant tensors by name (numpy views where the frontend can).
    :param name: the model's name, for messages and provenance.
    :param input_shapes: known input shapes (``None`` or a string for a free dimension).
    :param source: a frontend-private handle on the model the graph was captured from, for the
        same frontend's ``collect``/``simulate`` only.  Never serialized.
    :param forms: the model this graph describes in each format whose tensor names the graph
        uses (``{"onnx": prepared ModelProto}``): what a backend lowering that format receives
        (:meth:`quantfw.plugins.Registry.model_in`).  Set by the frontend; never serialized.
    :param input_dtypes: the element type each input is declared with, as a numpy dtype name
        (``"float32"``, ``"int64"``), where known: calibration data is checked against it.
    """

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "model"
    input_shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    source: Any = field(default=None, repr=False, compare=False)
    forms: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    input_dtypes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- structure -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check names are unique, every input is defined before use, weights exist.

        :raises GraphError: naming the node and tensor at fault.
        """
        seen_nodes: set[str] = set()
        defined: set[str] = set(self.inputs)
        for node in self.nodes:
            if node.name in seen_nodes:
                raise GraphError(f"duplicate node name {node.name!r}")
            seen_nodes.add(node.name)
            for t in node.inputs:
                if t not in defined and t not in self.initializers:
                    raise GraphError(
                        f"node {node.name!r} reads tensor {t!r}, which no graph input or earlier "
                        "node produces (nodes must be in topological order)"
                    )
            for role, w in node.weights.items():
                if w not in self.initializers:
                    raise GraphError(
                        f"node {node.name!r}: {role} tensor {w!r} is not among the initializers"
                    )
            for t in node.outputs:
                if t in defined:
                    raise GraphError(
                        f"tensor {t!r} is produced twice (again by node {node.name!r})"
                    )
                defined.add(t)
        for t in self.outputs:
            if t not in defined:
                raise GraphError(f"graph output {t!r} is not produced by any node or input")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in graph {self.name!r}")

    def producers(self) -> dict[str, Node]:
        """Tensor name → the node producing it."""
        return {t: n for n in self.nodes for t in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Tensor name → nodes reading it as an activation input, in graph order."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                out.setdefault(t, []).append(n)
        return out

    def activation_tensors(self) -> list[str]:
        """Graph inputs and every node output, in order."""
        names = list(self.inputs)
        for n in self.nodes:
            names.extend(n.outputs)
        return names

    def weight(self, node: Node, role: str = "weight") -> np.ndarray | None:
        name = node.weights.get(role)
        return None if name is None else self.initializers[name]

    def nodes_of(self, kinds: Iterable[OpKind | str]) -> list[Node]:
        wanted = {OpKind.parse(k) for k in kinds}
        return [n for n in self.nodes if n.op in wanted]

    def summary(self) -> Mapping[str, int]:
        """Count of nodes per op kind."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op.value] = counts.get(n.op.value, 0) + 1
        return counts


#: Source ops whose output is a tensor's shape, not an activation.
SHAPE_OPS = frozenset({"Shape", "Size"})


def shape_tensors(graph: QuantGraph) -> set[str]:
    """Tensors that hold shapes, not activations: the outputs of ``Shape``/``Size`` nodes and of
    every node that reads nothing but such tensors and constants (the arithmetic a traced
    ``x.flatten(1)`` does on the batch size)."""
    consts = set(graph.initializers)
    shapes: set[str] = set()
    for n in graph.nodes:
        reads = [t for t in n.inputs if t not in consts]
        if n.source_op in SHAPE_OPS or (reads and all(t in shapes for t in reads)):
            shapes.update(n.outputs)
    return shapes


def with_shape_producers(graph: QuantGraph, nodes: Sequence[str]) -> list[str]:
    """``nodes`` and, in graph order, the nodes that compute the shape tensors they read
    (recursively): a block computes its reshapes' sizes from the model's inputs itself, as the
    model does, instead of reading a shape as if it were an activation."""
    shapes = shape_tensors(graph)
    producer = graph.producers()
    members = set(nodes)
    todo = [t for n in graph.nodes if n.name in members for t in n.inputs if t in shapes]
    while todo:
        p = producer.get(todo.pop())
        if p is None or p.name in members:
            continue
        members.add(p.name)
        todo.extend(t for t in p.inputs if t in shapes)
    return [n.name for n in graph.nodes if n.name in members]
