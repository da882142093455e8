"""The ``onnx`` frontend: ONNX models (``.onnx`` files or ``onnx.ModelProto``) on ONNX Runtime.

* :meth:`OnnxFrontend.load` reads a file (external data included) and **prepares** it in place
  (:func:`quantfw_onnx.loader.prepare`): the ModelProto it returns is the model quantfw works on,
  kept once in memory.
* :meth:`OnnxFrontend.capture` prepares a ModelProto it did not load on a copy (the caller's
  object is left alone) and captures it; ``graph.source`` is the prepared model.
* :meth:`OnnxFrontend.collect` runs ``graph.source`` with the requested intermediate tensors as
  extra outputs, using the graph's current (possibly rewritten) weights.
* :meth:`OnnxFrontend.simulate` inserts QuantizeLinear/DequantizeLinear per the recipe
  (:func:`quantfw_onnx.qdq.write_qdq`) and runs that model with every ONNX Runtime graph
  optimization disabled, so the result is exact fake quantization rather than integer kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from quantfw.components import Batch
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe

from .capture import capture as capture_graph
from .loader import is_prepared, load_onnx, prepare
from .loader.meta import get_meta, set_meta
from .runner import OrtSession, collect

__all__ = ["OnnxFrontend", "SOURCE_KEY"]

#: ``metadata_props`` key: the file name a model was loaded from (names the QuantGraph).
SOURCE_KEY = "quantfw.source_file"


def _is_path(model: object) -> bool:
    return isinstance(model, (str, os.PathLike))


class OnnxFrontend:
    """The ``onnx`` frontend (see the module docstring).

    :param threads: ONNX Runtime intra-op threads for every session (``None``: its default).
    :param fold_batchnorm: fold Conv+BatchNormalization while preparing.
    :param fold_constants: fold constant sub-graphs while preparing.
    """

    name = "onnx"

    def __init__(
        self,
        *,
        threads: int | None = None,
        fold_batchnorm: bool = True,
        fold_constants: bool = True,
    ) -> None:
        self.threads = threads
        self.fold_batchnorm = fold_batchnorm
        self.fold_constants = fold_constants
        # the prepared copy of the last caller-owned ModelProto captured: id → (model, prepared)
        self._prepared: dict[int, tuple[onnx.ModelProto, onnx.ModelProto]] = {}

    # -- Frontend protocol ---------------------------------------------------------------------
    def accepts(self, model: object) -> bool:
        if isinstance(model, onnx.ModelProto):
            return True
        return _is_path(model) and os.fspath(model).lower().endswith(".onnx")  # type: ignore[arg-type]

    def load(self, path: Path) -> onnx.ModelProto:
        """Read ``path`` (with its external data) and prepare it in place.

        :raises ValueError: naming the file (see :func:`quantfw_onnx.loader.load_onnx`).
        """
        model = load_onnx(path)
        model = self._prepare(model, inplace=True, where=f"ONNX model file {os.fspath(path)!r}")
        set_meta(model, SOURCE_KEY, Path(path).name)
        return model

    def capture(self, model: object) -> QuantGraph:
        if _is_path(model):
            prepared = self.load(Path(model))  # type: ignore[arg-type]
        elif isinstance(model, onnx.ModelProto):
            prepared = self.prepared(model)
        else:
            raise TypeError(
                f"the onnx frontend takes an onnx.ModelProto or a .onnx path, not "
                f"{type(model).__name__}"
            )
        source_file = get_meta(prepared, SOURCE_KEY)
        return capture_graph(prepared, name=Path(source_file).stem if source_file else None)

    def collect(
        self, model: object, graph: QuantGraph, tensors: Sequence[str], batches: Iterable[Batch]
    ) -> Iterator[dict[str, np.ndarray]]:
        # One session per call, freed with the generator: a cached session would keep ONNX
        # Runtime's copy of the weights (and its pre-packed one) alive for the rest of the run.
        source = self._source(model, graph)
        return collect(
            source, tensors, batches, initializers=graph.initializers, threads=self.threads
        )

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        from .qdq import write_qdq

        source = self._source(model, graph)
        qdq = write_qdq(source, graph, recipe, fmt="qdq")
        session = OrtSession(qdq, threads=self.threads, optimize=False)
        outputs = list(graph.outputs)

        def run(batch: Batch) -> dict[str, np.ndarray]:
            return session.run(batch, outputs)

        run.model = qdq  # type: ignore[attr-defined]  # the QDQ model, for inspection
        return run

    # -- helpers -------------------------------------------------------------------------------
    def prepared(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The prepared form of a caller-owned ModelProto (a copy, remembered for this object)."""
        if is_prepared(model):
            return model
        hit = self._prepared.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        load_onnx(model)  # checks it
        result = self._prepare(model, inplace=False, where=None)
        self._prepared = {id(model): (model, result)}  # one entry: never hoard big models
        return result

    def clear_cache(self) -> None:
        """Forget the prepared copies of caller-owned models."""
        self._prepared.clear()

    def _prepare(
        self, model: onnx.ModelProto, *, inplace: bool, where: str | None
    ) -> onnx.ModelProto:
        return prepare(
            model,
            inplace=inplace,
            fold_batchnorm=self.fold_batchnorm,
            fold_constants=self.fold_constants,
            where=where,
        )

    def _source(self, model: object, graph: QuantGraph) -> onnx.ModelProto:
        if isinstance(graph.source, onnx.ModelProto):
            return graph.source
        if _is_path(model):
            return self.load(Path(model))  # type: ignore[arg-type]
        if isinstance(model, onnx.ModelProto):
            return self.prepared(model)
        raise TypeError(
            f"graph {graph.name!r} has no ONNX source and the model is a {type(model).__name__}"
        )
