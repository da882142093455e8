"""Built-in components, registered through the same hooks as third-party plugins.

* frontend ``graph``: QuantGraph objects and ``.qgraph`` files, run by the numpy interpreter;
* calibrate algorithms ``minmax``, ``moving_average``, ``percentile``, ``entropy``, ``mse``;
* round algorithms ``nearest``, ``brecq`` and ``qdrop``; transforms ``smoothquant`` (default) and ``none``;
* the compute engine ``numpy`` for layer-wise algorithms;
* the target specs shipped in ``quantfw/target/targets/`` (``generic``: simulation only).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .api.components import AlgorithmInfo, EngineInfo, FrontendInfo, Stage
from .api.hookspecs import hookimpl

_CALIBRATORS = {
    "minmax": "running min and max of each tensor",
    "moving_average": "exponential moving average of per-batch min and max",
    "percentile": "clip to a percentile of |x| (option percentile=99.99)",
    "entropy": "TensorRT-style KL-divergence threshold search over a histogram",
    "mse": "clipping range minimising the expected squared quantization error",
}


def _graph_frontend():
    from .graph_frontend import GraphFrontend

    return GraphFrontend()


def _calibration(method: str, **options):
    from .algorithms.calibrate import ObserverCalibration

    return ObserverCalibration(method, **options)


def _smoothquant(**options):
    from .algorithms.smoothquant import SmoothQuant

    return SmoothQuant(**options)


class _NoTransform:
    def run(self, ctx) -> None:
        """Nothing: the model's weights are used as they are."""


def _brecq(**options):
    from .algorithms.brecq import Brecq

    return Brecq(**options)


def _qdrop(**options):
    from .algorithms.brecq import QDrop

    return QDrop(**options)


def _numpy_engine(device: str | None = None):
    from .api.engines import NumpyEngine

    return NumpyEngine(device)


def _nearest():
    from .algorithms.rounding import NearestRounding

    return NearestRounding()


@hookimpl
def quantfw_register_frontends(register: Callable[[FrontendInfo], None]) -> None:
    register(
        FrontendInfo(
            "graph",
            _graph_frontend,
            suffixes=(".qgraph",),
            description="QuantGraph objects and .qgraph files, run in numpy",
        )
    )


@hookimpl
def quantfw_register_algorithms(register: Callable[[AlgorithmInfo], None]) -> None:
    for name, text in _CALIBRATORS.items():
        register(
            AlgorithmInfo(name, Stage.CALIBRATE, partial(_calibration, name), description=text)
        )
    register(
        AlgorithmInfo(
            "nearest", Stage.ROUND, _nearest, description="round to nearest, half to even"
        )
    )
    register(
        AlgorithmInfo(
            "brecq",
            Stage.ROUND,
            _brecq,
            description="BRECQ: learned rounding by block reconstruction (torch models)",
        )
    )
    register(
        AlgorithmInfo(
            "qdrop",
            Stage.ROUND,
            _qdrop,
            description="QDrop: block reconstruction with activation quantization randomly "
            "dropped, for W4A4 and below (torch models)",
        )
    )
    register(
        AlgorithmInfo(
            "smoothquant",
            Stage.TRANSFORM,
            _smoothquant,
            description="SmoothQuant: move activation outliers into linear weights (alpha=auto)",
        )
    )
    register(
        AlgorithmInfo(
            "none",
            Stage.TRANSFORM,
            _NoTransform,
            description="no transform (skips the default SmoothQuant)",
        )
    )


@hookimpl
def quantfw_register_targets(register: Callable[[object], None]) -> None:
    from .target import builtin_target_paths

    for path in builtin_target_paths():
        register(path)


@hookimpl
def quantfw_register_engines(register: Callable[[EngineInfo], None]) -> None:
    register(
        EngineInfo("numpy", _numpy_engine, description="numpy arrays on the CPU (no autograd)")
    )
