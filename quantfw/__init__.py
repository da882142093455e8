"""quantfw: quantize trained neural networks and deliver them to real hardware.

The core is framework-neutral (numpy, pluggy, ml_dtypes, safetensors); frontends for PyTorch,
TensorFlow and ONNX and backends for the hardware targets are plugins discovered through the
``quantfw`` entry-point group.  The contract between the two is :mod:`quantfw.api`.  Importing
this package loads no plugin and no deep-learning framework; plugins load on the first call that
needs them.
"""

from .api import (
    Algorithm,
    AlgorithmInfo,
    Artifact,
    Backend,
    BackendInfo,
    ConverterInfo,
    EngineInfo,
    Frontend,
    FrontendInfo,
    LayerProblem,
    QuantizationResult,
    Stage,
    StageContext,
    hookimpl,
    hookspec,
)
from .errors import QuantfwError, UnavailableError
from .graph import Node, OpKind, QuantGraph
from .pipeline import quantize
from .planner import Overrides, QuantPlan, plan
from .plugins import get_plugin_manager, get_registry
from .recipe import Equalization, Recipe, TensorRecipe
from .spec import Granularity, QuantParams, QuantSpec
from .target import TargetSpec, load_target
from .version import __version__

__all__ = [
    "__version__",
    "Algorithm",
    "AlgorithmInfo",
    "Artifact",
    "Backend",
    "BackendInfo",
    "ConverterInfo",
    "EngineInfo",
    "Equalization",
    "Frontend",
    "FrontendInfo",
    "Granularity",
    "LayerProblem",
    "Node",
    "OpKind",
    "Overrides",
    "QuantGraph",
    "QuantParams",
    "QuantPlan",
    "QuantSpec",
    "QuantfwError",
    "QuantizationResult",
    "Recipe",
    "Stage",
    "StageContext",
    "TargetSpec",
    "TensorRecipe",
    "UnavailableError",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_target",
    "plan",
    "quantize",
]
