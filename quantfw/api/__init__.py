"""The contract between quantfw's core and its plugins, in one package.

* :mod:`~quantfw.api.hookspecs` -- the pluggy hooks a plugin implements (registration and events);
* :mod:`~quantfw.api.components` -- the registrations those hooks pass (``FrontendInfo``,
  ``AlgorithmInfo``, ``BackendInfo``, ``ConverterInfo``, ``EngineInfo``);
* :mod:`~quantfw.api.protocols` -- the working objects (``Frontend``, ``Backend``,
  ``Converter``) and the optional capabilities of a frontend;
* :mod:`~quantfw.api.context` -- ``StageContext``, what an ``Algorithm`` sees;
* :mod:`~quantfw.api.data` and :mod:`~quantfw.api.result` -- ``Batch``, ``Artifact`` and
  ``QuantizationResult``;
* :mod:`~quantfw.api.layers` -- ``LayerProblem``, one layer at a time for layer-wise algorithms;
* :mod:`~quantfw.api.blocks` -- ``BlockProblem``, a run of layers for block-wise ones;
* :mod:`~quantfw.api.engines` -- compute engines (numpy, torch) for those algorithms;
* :mod:`~quantfw.api.formats` -- model format names and the extras that bring them.

``docs/contract.md`` is generated from these docstrings (``python -m quantfw.api.reference``).
"""

from .blocks import BlockModule, BlockProblem, ProvidesBlocks, ProvidesOutputGradients
from .components import (
    STAGE_ORDER,
    AlgorithmInfo,
    BackendInfo,
    ComponentError,
    ConverterInfo,
    EngineInfo,
    FrontendInfo,
    Stage,
    missing_modules,
)
from .context import Algorithm, EngineFactory, ProgressFn, StageContext
from .data import Artifact, Batch
from .engines import Engine, NumpyEngine, Optimizer
from .formats import FORMAT_EXTRAS, QGRAPH, install_hint_for
from .hookspecs import PROJECT_NAME, StageEvent, StagePhase, hookimpl, hookspec
from .layers import LAYER_KINDS, LayerHost, LayerProblem
from .protocols import (
    CAPABILITIES,
    AdaptsCalibration,
    Backend,
    BindsInputs,
    Converter,
    EstimatesActivations,
    Frontend,
    SupportsQAT,
)
from .result import QuantizationResult

__all__ = [
    "CAPABILITIES",
    "FORMAT_EXTRAS",
    "LAYER_KINDS",
    "PROJECT_NAME",
    "QGRAPH",
    "STAGE_ORDER",
    "AdaptsCalibration",
    "Algorithm",
    "AlgorithmInfo",
    "Artifact",
    "Backend",
    "BackendInfo",
    "Batch",
    "BindsInputs",
    "BlockModule",
    "BlockProblem",
    "ComponentError",
    "Converter",
    "ConverterInfo",
    "Engine",
    "EngineFactory",
    "EngineInfo",
    "EstimatesActivations",
    "Frontend",
    "FrontendInfo",
    "LayerHost",
    "LayerProblem",
    "NumpyEngine",
    "Optimizer",
    "ProgressFn",
    "ProvidesBlocks",
    "ProvidesOutputGradients",
    "QuantizationResult",
    "Stage",
    "StageContext",
    "StageEvent",
    "StagePhase",
    "SupportsQAT",
    "hookimpl",
    "hookspec",
    "install_hint_for",
    "missing_modules",
]
