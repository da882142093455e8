"""quantfw: quantize trained neural networks and deliver them to real hardware.

The core is framework-neutral (numpy, pluggy, ml_dtypes, safetensors); frontends for PyTorch,
TensorFlow and ONNX and backends for the hardware targets are plugins discovered through the
``quantfw`` entry-point group.  The contract between the two is :mod:`quantfw.api`.  Importing
this package loads no plugin and no deep-learning framework, and the names below are imported
from their modules on first use; plugins load on the first call that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
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

#: Public name → the submodule defining it, imported on first access (PEP 562), so that
#: ``import quantfw`` (and ``quantfw --help``) stays cheap: ml_dtypes, safetensors and the plugin
#: entry points load only when something needs them.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Algorithm",
            "AlgorithmInfo",
            "Artifact",
            "Backend",
            "BackendInfo",
            "ConverterInfo",
            "EngineInfo",
            "Frontend",
            "FrontendInfo",
            "LayerProblem",
            "QuantizationResult",
            "Stage",
            "StageContext",
            "hookimpl",
            "hookspec",
        ),
        "api",
    ),
    "QuantfwError": "errors",
    "UnavailableError": "errors",
    "Node": "graph",
    "OpKind": "graph",
    "QuantGraph": "graph",
    "quantize": "pipeline",
    "Overrides": "planner",
    "QuantPlan": "planner",
    "plan": "planner",
    "get_plugin_manager": "plugins",
    "get_registry": "plugins",
    "Equalization": "recipe",
    "Recipe": "recipe",
    "TensorRecipe": "recipe",
    "Granularity": "spec",
    "QuantParams": "spec",
    "QuantSpec": "spec",
    "TargetSpec": "target",
    "load_target": "target",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_"):  # a submodule (quantfw.plugins, …), as before it was lazy
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
