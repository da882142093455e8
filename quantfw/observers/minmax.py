"""Min-max observers: the running extremes, or their exponential moving average.

Both support every static granularity, per_group included (the reduction is
:func:`quantfw.numerics.reduce_range`, so the statistics have exactly the param shape).  For
per_group (and per_channel) specs every batch must reduce to the same param shape.
"""

from __future__ import annotations

import numpy as np

from ..numerics import reduce_range
from .base import Observer, ObserverError

__all__ = ["MinMaxObserver", "MovingAverageMinMaxObserver"]


class _ExtremaObserver(Observer):
    SUPPORTS_PER_GROUP = True

    def _reset(self) -> None:
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def _batch_range(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._channel_axis(x.ndim)  # clear error for a missing axis
        lo, hi = reduce_range(x, self.spec)
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if self._min is not None and lo.shape != self._min.shape:
            raise ObserverError(
                f"{type(self).__name__}: this batch reduces to parameter shape {lo.shape}, but "
                f"earlier batches gave {self._min.shape} (channel/group count changed)"
            )
        return lo, hi

    def _compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._min is not None and self._max is not None
        return self._min.copy(), self._max.copy()


class MinMaxObserver(_ExtremaObserver):
    """The exact minimum and maximum over every observed value (per channel / group).

    The result does not depend on how the data is split into batches or in which order they come.
    """

    name = "minmax"

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_range(x)
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            np.minimum(self._min, lo, out=self._min)
            np.maximum(self._max, hi, out=self._max)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, MinMaxObserver)
        if other._min.shape != self._min.shape:
            raise ObserverError(
                f"MinMaxObserver.merge: parameter shapes differ ({self._min.shape} vs "
                f"{other._min.shape})"
            )
        np.minimum(self._min, other._min, out=self._min)
        np.maximum(self._max, other._max, out=self._max)


class MovingAverageMinMaxObserver(_ExtremaObserver):
    """Exponential moving average of each batch's min and max.

    The first batch initialises ``min, max`` to its own extremes; every later batch ``b`` moves
    them by ``min += c * (min_b - min)`` and ``max += c * (max_b - max)`` with
    ``c = averaging_constant``.  The result depends on batch order by design, so two moving
    averages cannot be merged.
    """

    name = "moving_average"
    OPTIONS = {"averaging_constant": 0.01}

    def _validate_options(self) -> None:
        c = self.options["averaging_constant"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 1.0:
            raise ObserverError(
                f"MovingAverageMinMaxObserver: averaging_constant must be a number in (0, 1], "
                f"got {c!r}"
            )

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_range(x)
        if self._min is None:
            self._min, self._max = lo, hi
            return
        c = float(self.options["averaging_constant"])
        self._min = self._min + c * (lo - self._min)
        self._max = self._max + c * (hi - self._max)

    def _merge(self, other: Observer) -> None:
        raise NotImplementedError(
            "MovingAverageMinMaxObserver cannot merge: a moving average depends on the order "
            "of its batches"
        )
