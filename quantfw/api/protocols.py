"""The working objects a plugin's factories return, and the optional capabilities they may have.

Required protocols: :class:`Frontend`, :class:`Backend`, :class:`Converter` (with
:class:`~quantfw.api.context.Algorithm` beside the stage context it runs in, and
:class:`~quantfw.api.engines.Engine`).  A frontend may also implement any of the capability
protocols :class:`BindsInputs`, :class:`AdaptsCalibration`, :class:`EstimatesActivations`,
:class:`SupportsQAT`, :class:`~quantfw.api.blocks.ProvidesBlocks` and
:class:`~quantfw.api.blocks.ProvidesOutputGradients`; the pipeline
uses a capability exactly when the object is an instance of its (runtime-checkable) protocol, and
:func:`quantfw.plugins.check_plugin` (``deep=True``) checks the methods' signatures against these
declarations.  The docstrings here are the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..graph import QuantGraph
from .blocks import ProvidesBlocks, ProvidesOutputGradients
from .data import Artifact, Batch

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Recipe
    from ..target import TargetSpec
    from .result import QuantizationResult

__all__ = [
    "Frontend",
    "Backend",
    "Converter",
    "BindsInputs",
    "AdaptsCalibration",
    "EstimatesActivations",
    "SupportsQAT",
    "CAPABILITIES",
]


@runtime_checkable
class Frontend(Protocol):
    """Turns framework models into QuantGraphs, runs them, and simulates recipes.

    A frontend object is made per quantization (with the user's ``frontend_options``) and may
    keep state for that run only.  It must not keep per-batch copies of the model; ``collect``
    holds at most one batch of activations at a time.
    """

    def accepts(self, model: object) -> bool:
        """True if ``model`` (an object, or a :class:`pathlib.Path`) is one this frontend reads.
        Must be cheap and must not import a framework the model cannot be an instance of."""

    def load(self, path: Path) -> object:
        """Read a model file (used by the CLI).  Never unpickles untrusted data.

        :raises ValueError: naming the file and what is wrong with it.
        """

    def capture(self, model: object) -> QuantGraph:
        """Capture the model's QuantGraph (weights as numpy arrays, op kinds, attributes).

        A frontend whose graph's tensor names are those of the model in some format records
        that model in ``graph.forms[format]`` (the ONNX frontend: the prepared ``ModelProto``
        under ``"onnx"``), so backends lowering that format receive it.
        """

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
        """Run the model on each batch and yield ``{tensor name: value}`` for ``tensors``.

        One dict per batch, in batch order; a tensor the model does not compute raises
        ``KeyError`` before anything runs.

        :param weights: float initializers replacing the model's own (the float-model rewrites
            of transforms such as BatchNorm folding or cross-layer equalisation).
        :param recipe: when given, run the model with the recipe applied as fake quantization
            (as :meth:`simulate` does; ``recipe.weights`` replace initializers), and return each
            requested tensor as its producer computed it -- before the tensor's own quantizer,
            after every quantizer upstream of it.  Layer-wise algorithms read "the inputs of
            layer k with the layers before it quantized" this way.
        """

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        """A callable computing the model's outputs with the recipe applied as fake quantization
        (weights rewritten by the recipe included), keyed by graph output name."""


@runtime_checkable
class Backend(Protocol):
    """Lowers a model plus Recipe to a target's artifact and runs it."""

    def lower(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        output: Path,
        *,
        target: TargetSpec | None = None,
    ) -> Artifact:
        """Write the artifact atomically to ``output`` (never over the model's own file).

        :param model: the model in one of the formats the backend's registration ``accepts``
            (the pipeline passes the graph's form of that format).
        :param target: the target being lowered to (``None`` when called by hand without one).
        """

    def run(self, artifact: Artifact, inputs: Batch) -> dict[str, np.ndarray]:
        """Execute the artifact on ``inputs``; raise :class:`quantfw.errors.UnavailableError`
        naming the missing runtime or hardware when it cannot run here."""


@runtime_checkable
class Converter(Protocol):
    """Converts a model from its registration's ``source`` format to its ``target`` format."""

    def convert(self, model: object, **options: Any) -> object:
        """The converted model; ``options`` are converter-specific (e.g. ``example_inputs``).

        :raises ValueError: naming what in the model cannot be converted.
        """


# ------------------------------------------------------------------------------------------------
# Optional capabilities of a frontend
# ------------------------------------------------------------------------------------------------


@runtime_checkable
class BindsInputs(Protocol):
    """A frontend that must pair a model with example inputs before capturing it (tracing)."""

    def bind(
        self, model: object, *, example_inputs: Any = None, calibration_data: Any = None
    ) -> object:
        """The object ``capture``/``collect``/``simulate`` receive: ``model`` with what capturing
        it needs (``example_inputs``, or taken from the first batch of ``calibration_data``).

        :raises ValueError: when neither gives usable inputs.
        """


@runtime_checkable
class AdaptsCalibration(Protocol):
    """A frontend that accepts framework-native calibration data (e.g. a torch DataLoader)."""

    def calibration_source(self, model: object, graph: QuantGraph, data: Any) -> Any:
        """``data`` as a source :class:`quantfw.calibration.CalibrationData` accepts (batches of
        arrays keyed by ``graph.inputs``)."""


@runtime_checkable
class EstimatesActivations(Protocol):
    """A frontend that can tell how much memory a calibration batch's activations take, so
    that batches over the budget are cut (:mod:`quantfw.calibration`)."""

    def activation_bytes(self, model: object, graph: QuantGraph) -> int | None:
        """Bytes of the activations one sample makes while ``collect`` runs (every float
        tensor the model computes, per sample of the batch axis), or ``None`` when unknown."""


@runtime_checkable
class SupportsQAT(Protocol):
    """A frontend that can train a model quantization-aware (:mod:`quantfw.qat`)."""

    def qat_prepare(self, result: QuantizationResult, *, learn_scales: bool = False) -> Any:
        """A trainable copy of ``result.model`` with fake quantization exactly where
        ``result.plan`` quantizes, initialised from ``result.recipe``."""

    def qat_recipe(self, model: Any) -> Recipe:
        """The Recipe of a model made by :meth:`qat_prepare` after training (its weights and
        scales)."""


#: Capability name → protocol, as listed by ``quantfw plugins`` and checked by ``check_plugin``.
CAPABILITIES: dict[str, type] = {
    "bind": BindsInputs,
    "calibration_source": AdaptsCalibration,
    "activation_bytes": EstimatesActivations,
    "qat": SupportsQAT,
    "blocks": ProvidesBlocks,
    "output_gradients": ProvidesOutputGradients,
}
