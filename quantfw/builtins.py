"""Built-in components, registered through the same hooks as third-party plugins.

* frontend ``graph``: QuantGraph objects and ``.qgraph`` files, run by the numpy interpreter;
* calibrate algorithms ``minmax``, ``moving_average``, ``percentile``, ``entropy``, ``mse``;
* round algorithms ``nearest``, ``adaround`` and ``adaquant`` (the last two learn on an
  autograd engine, torch's), ``brecq`` and ``qdrop`` (blocks; frontends that build block modules);
* transforms ``smoothquant`` (default), ``cle`` and ``none``;
* finalize algorithms ``bias_correction`` and ``bn_reestimate``;
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


def _cle(**options):
    from .algorithms.cle import CrossLayerEqualization

    return CrossLayerEqualization(**options)


def _bias_correction(**options):
    from .algorithms.bias_correction import BiasCorrection

    return BiasCorrection(**options)


def _bn_reestimate(**options):
    from .algorithms.bias_correction import BNReestimation

    return BNReestimation(**options)


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


def _adaround(**options):
    from .algorithms.adaround import AdaRound

    return AdaRound(**options)


def _adaquant(**options):
    from .algorithms.adaquant import AdaQuant

    return AdaQuant(**options)


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
            "adaround",
            Stage.ROUND,
            _adaround,
            description="AdaRound: learn up/down rounding per weight, layer by layer (torch engine)",
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
            "adaquant",
            Stage.ROUND,
            _adaquant,
            description="AdaQuant: fit weights (and scales, biases) per layer through a "
            "straight-through quantizer (torch engine)",
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
            "cle",
            Stage.TRANSFORM,
            _cle,
            description="cross-layer equalisation of conv/linear chains, high-bias absorption",
        )
    )
    register(
        AlgorithmInfo(
            "bias_correction",
            Stage.FINALIZE,
            _bias_correction,
            description="empirical bias correction: per-channel output mean of each layer",
        )
    )
    register(
        AlgorithmInfo(
            "bn_reestimate",
            Stage.FINALIZE,
            _bn_reestimate,
            description="match each layer's per-channel output mean and std to the float model",
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
