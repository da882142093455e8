"""Percentile observer: clip the range at a percentile of the observed distribution."""

from __future__ import annotations

from .base import ObserverError
from .histogram import DEFAULT_BINS, HistogramObserver

__all__ = ["PercentileObserver"]


class PercentileObserver(HistogramObserver):
    """Range at the ``percentile``-th percentile of the observed values.

    * symmetric specs: ``t`` = percentile of ``|x|``; the range is ``(-t, t)``, or ``(0, t)`` when
      no observed value was negative;
    * asymmetric specs: the lower and upper tails are cut separately, at the
      ``(100 - percentile)``-th and ``percentile``-th percentiles of ``x`` (then widened to
      contain 0).

    Percentiles are read from the streaming histogram (linear inside a bin, clamped to the exact
    observed extremes), so they are accurate to one bin: at most ``2 * span / bins`` of the value
    span.  ``percentile=100`` gives the exact min-max range.
    """

    name = "percentile"
    OPTIONS = {"percentile": 99.99, "bins": DEFAULT_BINS}

    def _validate_options(self) -> None:
        super()._validate_options()
        p = self.options["percentile"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < p <= 100.0:
            raise ObserverError(
                f"PercentileObserver: percentile must be a number in (50, 100], got {p!r}"
            )

    def _absolute(self) -> bool:
        return self.spec.symmetric

    def _channel_range(self, c: int) -> tuple[float, float]:
        q = float(self.options["percentile"]) / 100.0
        lo, hi = self._signed_extremes(c)
        if self.spec.symmetric:
            t = self.histogram.quantile(c, q)
            return (-t if lo < 0 else 0.0), t
        return self.histogram.quantile(c, 1.0 - q), self.histogram.quantile(c, q)
