"""A streaming histogram with a fixed number of bins, shared by the histogram observers.

Grid
----
Each channel's bins sit on a *dyadic grid anchored at zero*: bin ``k`` covers
``[k * w, (k + 1) * w)`` where the width ``w`` is a power of two and ``k`` an integer.  The
histogram stores ``bins`` consecutive bins of that grid, starting at ``offset`` (so zero is always
a bin edge, and the stored window always contains zero).

The width is the smallest power of two for which the window ``[min(0, lo), max(0, hi)]`` of every
value seen so far fits in ``bins`` bins (never below ``2**-126``).  When new data does not fit,
the width doubles (possibly several times at once): each wider bin is exactly the union of two
(or ``2**m``) old bins, so counts are merged, never split or interpolated, and every value stays
in the bin that contains it.  Because the final width depends only on the overall extremes (not
on the order in which they arrived), and ``floor(x / w)`` is exact for a power-of-two ``w``, the
final histogram is *identical* whatever the batch split or batch order: histogram observers are
order independent up to floating-point equality (tolerance 0).  ``merge`` has the same property.

Resolution: the data's span (with zero) occupies between ``bins / 2`` and ``bins`` bins, i.e. a
bin is at most ``2 * span / bins`` wide (about 0.1 % of the span for the default 2048 bins).

Memory: ``channels x bins`` float64 counts plus four per-channel numbers, whatever the number of
updates.
"""

from __future__ import annotations

import copy
from abc import abstractmethod

import numpy as np

from ..spec import Granularity
from .base import Observer, ObserverError

__all__ = ["StreamingHistogram", "HistogramObserver", "DEFAULT_BINS", "MIN_BIN_WIDTH"]

DEFAULT_BINS = 2048
#: smallest bin width (keeps an all-zero tensor's histogram well defined)
MIN_BIN_WIDTH = 2.0**-126


def _fits(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, bins: int) -> np.ndarray:
    return np.floor(hi / w) - np.floor(lo / w) < bins


def _target_width(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Smallest power of two ``w >= MIN_BIN_WIDTH`` with ``[lo, hi]`` (``lo <= 0 <= hi``) in
    ``bins`` bins of the zero-anchored grid."""
    span = hi - lo
    # any fitting width exceeds span / bins; start at the power of two just below it
    _, e = np.frexp(span / bins)
    w = np.ldexp(1.0, e - 1)
    w = np.where(span > 0, np.maximum(w, MIN_BIN_WIDTH), MIN_BIN_WIDTH)
    while True:
        ok = _fits(lo, hi, w, bins)
        if ok.all():
            return w
        w = np.where(ok, w, 2.0 * w)


def _rebin(
    counts: np.ndarray,
    width: np.ndarray,
    offset: np.ndarray,
    new_width: np.ndarray,
    new_offset: np.ndarray,
) -> np.ndarray:
    """Move ``counts`` (C, B) from ``(width, offset)`` to the coarser-or-equal grid
    ``(new_width, new_offset)`` by merging whole bins."""
    c, b = counts.shape
    shift = np.frexp(new_width)[1] - np.frexp(width)[1]
    if np.any(shift < 0):  # pragma: no cover - internal invariant
        raise AssertionError("histogram bins can only grow")
    k = offset[:, None] + np.arange(b, dtype=np.int64)[None, :]
    # arithmetic right shift == floor division by 2**shift, also for negative bin indices
    k_new = np.right_shift(k, np.minimum(shift, 63)[:, None].astype(np.int64))
    col = k_new - new_offset[:, None]
    nz = counts != 0
    cols = col[nz]
    if cols.size and (cols.min() < 0 or cols.max() >= b):  # pragma: no cover - invariant
        raise AssertionError("re-binned counts fall outside the histogram window")
    rows = np.broadcast_to(np.arange(c)[:, None], (c, b))[nz]
    out = np.bincount(rows * b + cols, weights=counts[nz], minlength=c * b)
    return out.reshape(c, b)


class StreamingHistogram:
    """Per-channel histogram of a stream of values (see the module docstring for the grid).

    :param bins: number of bins per channel.
    :param absolute: histogram ``|x|`` instead of ``x`` (the window then starts at zero).

    Attributes (``None`` before the first update): ``counts`` ``(C, bins)`` float64 (integral
    values), ``width`` ``(C,)`` bin widths, ``offset`` ``(C,)`` int64 index of the first stored
    bin, ``min`` / ``max`` ``(C,)`` exact signed extremes of the observed ``x`` (also when
    ``absolute``).
    """

    #: values binned per step of an update (bounds the temporary memory of one update)
    CHUNK = 1 << 22

    def __init__(self, bins: int = DEFAULT_BINS, absolute: bool = False) -> None:
        self.bins = int(bins)
        self.absolute = bool(absolute)
        self.counts: np.ndarray | None = None
        self.width: np.ndarray | None = None
        self.offset: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    @property
    def num_channels(self) -> int:
        return 0 if self.counts is None else self.counts.shape[0]

    @property
    def total(self) -> np.ndarray:
        """Values counted per channel."""
        assert self.counts is not None
        return self.counts.sum(axis=1)

    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact extremes of the histogrammed values (of ``|x|`` when ``absolute``)."""
        assert self.min is not None and self.max is not None
        if not self.absolute:
            return self.min, self.max
        amax = np.maximum(-self.min, self.max)
        amin = np.where(
            (self.min <= 0) & (self.max >= 0), 0.0, np.minimum(np.abs(self.min), np.abs(self.max))
        )
        return amin, amax

    def _regrid(self, new_min: np.ndarray, new_max: np.ndarray) -> None:
        """Adopt the grid for signed extremes ``new_min``/``new_max``, re-binning the counts."""
        self.min, self.max = new_min, new_max
        vmin, vmax = self.value_range()
        lo, hi = np.minimum(vmin, 0.0), np.maximum(vmax, 0.0)
        width = _target_width(lo, hi, self.bins)
        if self.width is not None:
            width = np.maximum(width, self.width)
        offset = np.floor(lo / width).astype(np.int64)
        if self.counts is not None:
            assert self.width is not None and self.offset is not None
            moved = (width != self.width) | (offset != self.offset)
            if moved.any():
                idx = np.flatnonzero(moved)
                self.counts[idx] = _rebin(
                    self.counts[idx], self.width[idx], self.offset[idx], width[idx], offset[idx]
                )
        self.width, self.offset = width, offset

    def update(self, x: np.ndarray) -> None:
        """Add a ``(C, N)`` array of finite values (``N > 0``)."""
        x = np.asarray(x)
        c, n = x.shape
        bmin = x.min(axis=1).astype(np.float64)
        bmax = x.max(axis=1).astype(np.float64)
        if self.counts is None:
            self._regrid(bmin, bmax)
            self.counts = np.zeros((c, self.bins), dtype=np.float64)
        else:
            if c != self.num_channels:
                raise ObserverError(
                    f"histogram has {self.num_channels} channel(s) but this batch has {c}"
                )
            assert self.min is not None and self.max is not None
            self._regrid(np.minimum(self.min, bmin), np.maximum(self.max, bmax))
        assert self.width is not None and self.offset is not None
        row_base = (np.arange(c, dtype=np.int64) * self.bins)[:, None] - self.offset[:, None]
        inv_w = 1.0 / self.width[:, None]  # exact: the widths are powers of two
        step = max(1, self.CHUNK // max(c, 1))
        for s in range(0, n, step):
            part = x[:, s : s + step].astype(np.float64)
            if self.absolute:
                np.abs(part, out=part)
            part *= inv_w
            np.floor(part, out=part)
            col = part.astype(np.int64) + row_base
            self.counts += np.bincount(col.ravel(), minlength=c * self.bins).reshape(c, self.bins)

    def merge(self, other: StreamingHistogram) -> None:
        """Add ``other``'s counts (same ``bins``, ``absolute`` and channel count)."""
        if other.bins != self.bins or other.absolute != self.absolute:
            raise ObserverError("cannot merge histograms with different bins/absolute settings")
        if other.counts is None:
            return
        if self.counts is None:
            self.__dict__.update(copy.deepcopy(other.__dict__))
            return
        if other.num_channels != self.num_channels:
            raise ObserverError(
                f"cannot merge a histogram of {other.num_channels} channel(s) into one of "
                f"{self.num_channels}"
            )
        assert self.min is not None and self.max is not None
        assert other.width is not None and other.offset is not None
        # the grid of the union is at least as coarse as either histogram's grid
        self._regrid(np.minimum(self.min, other.min), np.maximum(self.max, other.max))
        assert self.width is not None and self.offset is not None
        self.counts += _rebin(other.counts, other.width, other.offset, self.width, self.offset)

    # -- views of one channel -----------------------------------------------------------------
    def occupied(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Channel ``c``'s counts trimmed to the occupied bins, and their ``len + 1`` edges."""
        assert self.counts is not None and self.width is not None and self.offset is not None
        row = self.counts[c]
        nz = np.flatnonzero(row)
        first, last = int(nz[0]), int(nz[-1])
        k = self.offset[c] + np.arange(first, last + 2, dtype=np.int64)
        return row[first : last + 1].copy(), k.astype(np.float64) * self.width[c]

    def from_zero(self, c: int) -> np.ndarray:
        """Channel ``c``'s counts from the bin starting at 0 up to the last occupied bin
        (``absolute`` histograms only)."""
        assert self.absolute and self.counts is not None and self.offset is not None
        assert self.offset[c] == 0
        row = self.counts[c]
        last = int(np.flatnonzero(row)[-1])
        return row[: last + 1].copy()

    def quantile(self, c: int, q: float) -> float:
        """The ``q``-quantile (``0 <= q <= 1``) of channel ``c``'s histogrammed values, linear
        within a bin, clamped to their exact extremes."""
        vmin, vmax = self.value_range()
        counts, edges = self.occupied(c)
        cum = np.cumsum(counts)
        target = q * cum[-1]
        j = min(int(np.searchsorted(cum, target, side="left")), len(counts) - 1)
        before = cum[j] - counts[j]
        frac = min(max((target - before) / counts[j], 0.0), 1.0) if counts[j] > 0 else 0.0
        value = edges[j] + frac * (edges[j + 1] - edges[j])
        return float(min(max(value, vmin[c]), vmax[c]))


class HistogramObserver(Observer):
    """Base of the observers that work from a :class:`StreamingHistogram` per channel.

    Per-tensor and per-channel specs only.  Subclasses choose whether to histogram ``|x|``
    (:meth:`_absolute`) and implement :meth:`_channel_range`.
    """

    OPTIONS = {"bins": DEFAULT_BINS}

    def _validate_options(self) -> None:
        b = self.options["bins"]
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 8:
            raise ObserverError(f"{type(self).__name__}: bins must be an integer >= 8, got {b!r}")
        if self.spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL):
            raise ObserverError(  # pragma: no cover - per_group is rejected by Observer
                f"{type(self).__name__} supports per_tensor and per_channel specs only"
            )

    def _absolute(self) -> bool:
        return False

    def _reset(self) -> None:
        self.histogram = StreamingHistogram(int(self.options["bins"]), absolute=self._absolute())

    def _update(self, x: np.ndarray) -> None:
        x2 = self._as_channels(x)
        if self.histogram.counts is not None and x2.shape[0] != self.histogram.num_channels:
            raise ObserverError(
                f"{type(self).__name__}: this batch has {x2.shape[0]} channel(s) along axis "
                f"{self.spec.axis}, earlier batches had {self.histogram.num_channels}"
            )
        self.histogram.update(x2)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, HistogramObserver)
        self.histogram.merge(other.histogram)

    @abstractmethod
    def _channel_range(self, c: int) -> tuple[float, float]:
        """``(min, max)`` chosen for channel ``c``."""

    def _compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.histogram.num_channels
        lo = np.empty(n, np.float64)
        hi = np.empty(n, np.float64)
        for c in range(n):
            lo[c], hi[c] = self._channel_range(c)
        return self._to_param_shape(lo), self._to_param_shape(hi)

    def _signed_extremes(self, c: int) -> tuple[float, float]:
        """Exact observed ``(min, max)`` of channel ``c``, widened to contain 0."""
        h = self.histogram
        assert h.min is not None and h.max is not None
        return min(float(h.min[c]), 0.0), max(float(h.max[c]), 0.0)
