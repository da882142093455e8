"""The built-in ``graph`` frontend: QuantGraph objects and ``.qgraph`` files, run in numpy.

It lets the core quantize, simulate and evaluate a model with no deep-learning framework
installed, and is the reference other frontends are compared against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .api.data import Batch
from .graph import QuantGraph
from .graph_io import GRAPH_SUFFIX, load_graph
from .interpreter import run_graph
from .recipe import Recipe
from .simulate import activation_hooks, reference_runner, simulated_weights

__all__ = ["GraphFrontend"]


class GraphFrontend:
    """Frontend for :class:`~quantfw.graph.QuantGraph` models (see :mod:`quantfw.interpreter`)."""

    name = "graph"

    def accepts(self, model: object) -> bool:
        if isinstance(model, QuantGraph):
            return True
        return isinstance(model, (str, Path)) and str(model).endswith(GRAPH_SUFFIX)

    def load(self, path: Path) -> QuantGraph:
        return load_graph(path)

    def capture(self, model: object) -> QuantGraph:
        graph = self.load(Path(model)) if isinstance(model, (str, Path)) else model
        if not isinstance(graph, QuantGraph):
            raise TypeError(f"the graph frontend takes a QuantGraph, not {type(model).__name__}")
        # a shallow copy (the user's graph is never changed); the model forms it was captured
        # from (an ONNX model) still describe it
        return QuantGraph(
            nodes=list(graph.nodes),
            inputs=list(graph.inputs),
            outputs=list(graph.outputs),
            initializers=dict(graph.initializers),
            name=graph.name,
            input_shapes=dict(graph.input_shapes),
            forms=dict(graph.forms),
            input_dtypes=dict(graph.input_dtypes),
        )

    def collect(
        self,
        model: object,
        graph: QuantGraph,
        tensors: Sequence[str],
        batches: Iterable[Batch],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        recipe: Recipe | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        names = list(tensors)
        known = set(graph.activation_tensors())
        unknown = [t for t in names if t not in known]
        if unknown:
            raise KeyError(f"graph {graph.name!r} computes no tensor named {unknown}")
        if recipe is None:
            for batch in batches:
                yield run_graph(graph, batch, outputs=names, weights=weights)
            return
        consts = dict(weights or {})
        consts.update(simulated_weights(graph, recipe))
        on_tensor, on_input = activation_hooks(recipe)
        wanted = set(names)

        seen: dict[str, np.ndarray] = {}

        def record(name: str, value: np.ndarray) -> np.ndarray:
            if name in wanted:
                seen[name] = value  # as the producer computed it, before its quantizer
            return on_tensor(name, value)

        for batch in batches:
            seen.clear()
            run_graph(graph, batch, outputs=[], weights=consts, on_tensor=record, on_input=on_input)
            yield {t: seen[t] for t in names}

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        return reference_runner(graph, recipe)
