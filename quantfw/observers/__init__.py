"""Calibration observers: watch a tensor over many batches, then give its range and params.

>>> obs = make_observer("percentile", QuantSpec("int8"), percentile=99.9)  # doctest: +SKIP
>>> for batch in data: obs.update(batch)                                   # doctest: +SKIP
>>> lo, hi = obs.compute_range(); params = obs.compute_params()           # doctest: +SKIP

==================  =========================================================  ===============
name                what it does                                               granularities
==================  =========================================================  ===============
``minmax``          exact running min / max                                    tensor/channel/group
``moving_average``  EMA of per-batch min / max (``averaging_constant``)        tensor/channel/group
``percentile``      percentile of ``|x|`` (symmetric) or of both tails         tensor/channel
``entropy``         TensorRT KL-divergence threshold on the ``|x|`` histogram  tensor/channel
``mse``             range minimising the squared error under the real grid     tensor/channel
==================  =========================================================  ===============

Histogram observers are exactly independent of batch split and order (see
:mod:`quantfw.observers.histogram`); dynamic specs need no observer.
"""

from __future__ import annotations

from typing import Any

from ..spec import QuantSpec
from .base import Observer, ObserverError
from .entropy import EntropyObserver
from .histogram import HistogramObserver, StreamingHistogram
from .minmax import MinMaxObserver, MovingAverageMinMaxObserver
from .mse import MSEObserver
from .percentile import PercentileObserver

__all__ = [
    "Observer",
    "ObserverError",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "HistogramObserver",
    "StreamingHistogram",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "OBSERVERS",
    "make_observer",
]

#: observer classes by registry name
OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls
    for cls in (
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        PercentileObserver,
        EntropyObserver,
        MSEObserver,
    )
}


def make_observer(name: str, spec: QuantSpec, **options: Any) -> Observer:
    """A new observer of kind ``name`` for tensors quantized per ``spec``.

    :raises ValueError: for an unknown name (listing the known ones) or a dynamic spec.
    :raises TypeError: for an option the observer does not take (naming it).
    """
    key = name.lower() if isinstance(name, str) else name
    cls = OBSERVERS.get(key)
    if cls is None:
        raise ValueError(f"unknown observer {name!r}; known observers: {', '.join(OBSERVERS)}")
    return cls(spec, **options)
