"""quantfw: quantize trained neural networks and deliver them to real hardware.

The core is framework-neutral (numpy, pluggy, ml_dtypes, safetensors); frontends for PyTorch,
TensorFlow and ONNX and backends for the hardware targets are plugins discovered through the
``quantfw`` entry-point group.  Importing this package loads no plugin and no deep-learning
framework; plugins load on the first call that needs them.
"""

__version__ = "0.1.0"

from .components import (  # noqa: E402
    Algorithm,
    AlgorithmInfo,
    Artifact,
    Backend,
    BackendInfo,
    Frontend,
    FrontendInfo,
    Stage,
)
from .graph import Node, OpKind, QuantGraph  # noqa: E402
from .hookspecs import hookimpl, hookspec  # noqa: E402
from .pipeline import QuantizationResult, StageContext, quantize  # noqa: E402
from .planner import Overrides, QuantPlan, plan  # noqa: E402
from .plugins import get_plugin_manager, get_registry  # noqa: E402
from .recipe import Recipe, TensorRecipe  # noqa: E402
from .spec import Granularity, QuantParams, QuantSpec  # noqa: E402
from .target import TargetSpec, load_target  # noqa: E402

__all__ = [
    "__version__",
    "Algorithm",
    "AlgorithmInfo",
    "Artifact",
    "Backend",
    "BackendInfo",
    "Frontend",
    "FrontendInfo",
    "Granularity",
    "Node",
    "OpKind",
    "Overrides",
    "QuantGraph",
    "QuantParams",
    "QuantPlan",
    "QuantSpec",
    "QuantizationResult",
    "Recipe",
    "Stage",
    "StageContext",
    "TargetSpec",
    "TensorRecipe",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_target",
    "plan",
    "quantize",
]
