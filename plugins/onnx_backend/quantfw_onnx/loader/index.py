"""Who reads what in a graph, for the rewrites of :func:`~quantfw_onnx.loader.prepare`."""

from __future__ import annotations

import onnx

from ..graphutil import outer_names, subgraphs

__all__ = ["GraphIndex", "drop_unused_initializers"]


class GraphIndex:
    """Initializers, readers, graph inputs and outputs of a graph, as they are when built (build
    a new one after a rewrite that changes them)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(n)
            for sub in subgraphs(n):  # subgraphs read outer tensors implicitly
                for t in outer_names(sub):
                    self.consumers.setdefault(t, []).append(n)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}

    def uses(self, name: str) -> int:
        """How many times tensor ``name`` is read: by nodes, and once more if a graph output."""
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers nothing reads (those that are graph inputs stay).

    They are deleted one by one, in place: rebuilding the list (``extend``) would copy every
    weight that stays."""
    idx = GraphIndex(graph)
    for i in reversed(range(len(graph.initializer))):
        name = graph.initializer[i].name
        if not idx.uses(name) and name not in idx.graph_inputs:
            del graph.initializer[i]
