"""The planner's working state: which node claims which tensor with which spec, and which tensors
must share one scale (a union-find over tensor names)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Node, OpKind, QuantGraph
from ..spec import QuantParams, QuantSpec
from ..target import TargetSpec
from .overrides import Overrides
from .resolve import SpecResolver

#: Ops whose every activation input carries data (the others: only ``inputs[0]``).
_ALL_INPUTS_DATA = frozenset(
    {
        OpKind.CONV,
        OpKind.CONV_TRANSPOSE,
        OpKind.LINEAR,
        OpKind.MATMUL,
        OpKind.ADD,
        OpKind.SUB,
        OpKind.MUL,
        OpKind.DIV,
        OpKind.CONCAT,
        OpKind.OTHER,
    }
)

#: Among activation claims on one tensor, which kind wins (lowest first): a quantized reader's
#: input spec, then its producer's output spec, then a shared-scale op's.
CLAIM_PRIORITY = {"input": 0, "output": 1, "shared": 2}


@dataclass
class Claim:
    """Node ``node`` wants its tensor quantized with ``spec``.

    :ivar kind: ``input``, ``output``, ``shared``, ``weight`` or ``bias``.
    """

    node: str
    spec: QuantSpec
    kind: str


class PlanState:
    """Everything one planning run knows and has decided so far about ``graph`` on ``target``."""

    def __init__(self, graph: QuantGraph, target: TargetSpec, overrides: Overrides) -> None:
        self.g, self.t, self.ov = graph, target, overrides
        self.specs = SpecResolver(graph, target, overrides)
        self.warnings: list[str] = []
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.graph_outputs = set(graph.outputs)
        self.claims: dict[str, list[Claim]] = {}
        self.readers: dict[str, list[str]] = {}
        self.blocked: set[str] = set()
        self.parent: dict[str, str] = {}
        self.group_owner: dict[str, tuple[int, str]] = {}
        self.fixed: dict[str, QuantParams] = {}
        self.bias_of: dict[str, tuple[str, str]] = {}
        self.index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.order = self._tensor_order()

    def _tensor_order(self) -> dict[str, int]:
        order: dict[str, int] = {}
        for t in self.g.inputs:
            order.setdefault(t, len(order))
        for n in self.g.nodes:
            for t in list(n.inputs) + list(n.weights.values()) + list(n.outputs):
                order.setdefault(t, len(order))
        return order

    def data_inputs(self, node: Node) -> list[str]:
        """The inputs of ``node`` that carry data to quantize (no indices, shapes or int constants)."""
        if node.op is OpKind.EMBEDDING:
            return []
        inputs = node.inputs if node.op in _ALL_INPUTS_DATA else node.inputs[:1]
        out = []
        for t in inputs:
            const = self.g.initializers.get(t)
            if const is not None and np.asarray(const).dtype.kind not in "fc":
                continue  # integer / boolean constants (shapes, indices) are never quantized
            out.append(t)
        return out

    def claim(self, tensor: str, node: Node, spec: QuantSpec, kind: str, read: bool) -> None:
        """``node`` wants activation (or float constant) ``tensor``; ``read``: it reads it."""
        self.claims.setdefault(tensor, []).append(Claim(node.name, spec, kind))
        if read and node.name not in self.readers.setdefault(tensor, []):
            self.readers[tensor].append(node.name)

    def claim_parameter(self, tensor: str, node: str, spec: QuantSpec, kind: str) -> None:
        """``node`` reads its weight or bias ``tensor`` quantized with ``spec``."""
        self.claims.setdefault(tensor, []).append(Claim(node, spec, kind))
        self.readers.setdefault(tensor, []).append(node)

    def claimed(self, tensor: str) -> bool:
        return tensor in self.claims and tensor not in self.blocked

    def find(self, t: str) -> str:
        """The representative of ``t``'s share group."""
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, tensors: list[str], node: Node) -> None:
        """Join ``tensors`` into one share group; the earliest joining node names the group."""
        if len(tensors) < 2:
            return
        owner = (self.index[node.name], node.name)
        roots = {self.find(t) for t in tensors}
        owners = [self.group_owner.pop(r, owner) for r in roots] + [owner]
        first = roots.pop()
        for r in roots:
            self.parent[r] = first
        self.group_owner[first] = min(owners)
