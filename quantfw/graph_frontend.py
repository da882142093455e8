"""The built-in ``graph`` frontend: QuantGraph objects and ``.qgraph`` files, run in numpy.

It lets the core quantize, simulate and evaluate a model with no deep-learning framework
installed, and is the reference other frontends are compared against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .components import Batch
from .graph import QuantGraph
from .graph_io import GRAPH_SUFFIX, load_graph
from .interpreter import run_graph
from .recipe import Recipe
from .simulate import reference_runner

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
        # a shallow copy: transforms may replace initializers without touching the user's graph
        return QuantGraph(
            nodes=list(graph.nodes),
            inputs=list(graph.inputs),
            outputs=list(graph.outputs),
            initializers=dict(graph.initializers),
            name=graph.name,
            input_shapes=dict(graph.input_shapes),
        )

    def collect(
        self, model: object, graph: QuantGraph, tensors: Sequence[str], batches: Iterable[Batch]
    ) -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            yield run_graph(graph, batch, outputs=tensors)

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        return reference_runner(graph, recipe)
