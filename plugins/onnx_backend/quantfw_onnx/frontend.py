"""The ``onnx`` frontend: ONNX models (``.onnx`` files or ``onnx.ModelProto``) on ONNX Runtime.

* :meth:`OnnxFrontend.load` reads a file (external data included) and **prepares** it in place
  (:func:`quantfw_onnx.loader.prepare`): the ModelProto it returns is the model quantfw works on,
  kept once in memory.
* :meth:`OnnxFrontend.capture` prepares a ModelProto it did not load on a copy (the caller's
  object is left alone; ``copy_model=False`` prepares it in place, for callers that own it) and
  captures it; ``graph.forms["onnx"]`` is the prepared model, which the ONNX backends lower.
* :meth:`OnnxFrontend.collect` runs the prepared model with the requested intermediate tensors
  as extra outputs, with the float-model rewrites it is given; with a recipe it runs the QDQ
  model instead (every quantizer applied, none of ONNX Runtime's integer fusions).
* :meth:`OnnxFrontend.simulate` inserts QuantizeLinear/DequantizeLinear per the recipe
  (:func:`quantfw_onnx.lowering.write_qdq`) and runs that model with every ONNX Runtime graph
  optimization disabled, so the result is exact fake quantization rather than integer kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from quantfw.api import Batch
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe

from .capture import capture as capture_graph
from .loader import is_prepared, load_onnx, prepare
from .loader.meta import get_meta, set_meta
from .runner import OrtSession, collect

__all__ = ["OnnxFrontend", "SOURCE_KEY", "FORMAT"]

#: The model format this frontend reads and records in ``graph.forms``.
FORMAT = "onnx"
#: Q/DQ ops that stand between a quantized graph output and the value its producer computed.
_QUANTIZERS = ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear")

#: ``metadata_props`` key: the file name a model was loaded from (names the QuantGraph).
SOURCE_KEY = "quantfw.source_file"


def _is_path(model: object) -> bool:
    return isinstance(model, (str, os.PathLike))


class OnnxFrontend:
    """The ``onnx`` frontend (see the module docstring).

    :param threads: ONNX Runtime intra-op threads for every session (``None``: its default).
    :param fold_batchnorm: fold Conv+BatchNormalization while preparing.
    :param fold_constants: fold constant sub-graphs while preparing.
    :param copy_model: prepare a caller's ModelProto on a copy (the default); ``False`` prepares
        it in place, for callers that made the model and own it (no second copy in memory).
    """

    name = "onnx"

    def __init__(
        self,
        *,
        threads: int | None = None,
        fold_batchnorm: bool = True,
        fold_constants: bool = True,
        copy_model: bool = True,
    ) -> None:
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(
                f"onnx frontend option threads={threads!r}: give a positive number of ONNX "
                "Runtime intra-op threads (e.g. -F threads=2), or leave it out for ORT's default"
            )
        self.threads = threads
        self.fold_batchnorm = fold_batchnorm
        self.fold_constants = fold_constants
        self.copy_model = copy_model

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
        self,
        model: object,
        graph: QuantGraph,
        tensors: Sequence[str],
        batches: Iterable[Batch],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        recipe: Recipe | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        # One session per call, freed with the generator: a cached session would keep ONNX
        # Runtime's copy of the weights (and its pre-packed one) alive for the rest of the run.
        source = self._source(model, graph)
        if recipe is None:
            return collect(source, tensors, batches, initializers=weights, threads=self.threads)
        from .lowering import write_qdq

        qdq = write_qdq(source, graph, recipe, fmt="qdq", narrow_activations="any")
        names = [_before_quantizer(qdq, t) for t in tensors]
        outs = collect(qdq, names, batches, threads=self.threads, optimize=False)
        return ({t: o[n] for t, n in zip(tensors, names, strict=True)} for o in outs)

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        from .lowering import write_qdq

        source = self._source(model, graph)
        qdq = write_qdq(source, graph, recipe, fmt="qdq", narrow_activations="any")
        session = OrtSession(qdq, threads=self.threads, optimize=False)
        outputs = list(graph.outputs)

        def run(batch: Batch) -> dict[str, np.ndarray]:
            return session.run(batch, outputs)

        run.model = qdq  # type: ignore[attr-defined]  # the QDQ model, for inspection
        return run

    # -- EstimatesActivations ------------------------------------------------------------------
    def activation_bytes(self, model: object, graph: QuantGraph) -> int | None:
        """See :func:`quantfw_onnx.memory.activation_bytes` (the prepared model's shapes)."""
        from .memory import activation_bytes

        return activation_bytes(self._source(model, graph))

    # -- helpers -------------------------------------------------------------------------------
    def prepared(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The prepared form of a caller's ModelProto: a prepared copy, or the model itself
        prepared in place when the frontend was made with ``copy_model=False``."""
        if is_prepared(model):
            return model
        load_onnx(model)  # checks it
        return self._prepare(model, inplace=not self.copy_model, where=None)

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
        form = graph.forms.get(FORMAT)
        if isinstance(form, onnx.ModelProto):
            return form
        if _is_path(model):
            return self.load(Path(model))  # type: ignore[arg-type]
        if isinstance(model, onnx.ModelProto):
            return self.prepared(model)
        raise TypeError(
            f"graph {graph.name!r} has no ONNX source and the model is a {type(model).__name__}"
        )


def _before_quantizer(qdq: onnx.ModelProto, name: str) -> str:
    """The name under which ``qdq`` holds tensor ``name`` as its producer computed it.

    The QDQ writer keeps a quantized tensor's name on its producer's output, except for a graph
    output, whose producer it renames so that the last DequantizeLinear can write the output's
    name: there the chain of quantizers is followed back to the producer."""
    if name not in {o.name for o in qdq.graph.output}:
        return name
    producers = {out: n for n in qdq.graph.node for out in n.output}
    current = name
    while (n := producers.get(current)) is not None and n.op_type in _QUANTIZERS:
        current = n.input[0]
    return current
