"""Entropy (KL-divergence) observer, after TensorRT's INT8 calibrator.

The histogram of ``|x|`` (bins from 0 to ``amax``) is searched for the threshold that loses
the least information when the clipped distribution is squeezed onto the quantization grid:

for every candidate ``i`` from ``levels`` (the number of grid points that cover ``[0, t]``) to
the number of occupied bins,

* ``P`` = the first ``i`` bins, with the mass of every bin beyond ``i`` (the outliers that
  clipping at ``t = i * bin_width`` saturates) added to the last one;
* ``Q`` = the same ``i`` bins *without* the outlier mass, merged into ``levels`` contiguous
  buckets (bucket of bin ``k`` = ``floor(k * levels / i)``) and expanded back: each bucket's mass
  is spread evenly over the bins of that bucket where ``P`` is non-zero;
* ``KL(P || Q)`` after normalising both; bins where ``P > 0`` but ``Q == 0`` (outlier mass
  landing on an empty bin) use ``Q = 1e-12`` instead of making the divergence infinite.

The ``i`` with the smallest divergence wins (ties: the largest ``i``, so that nothing is
clipped without a reason) and ``t = i * bin_width``
(capped at the observed ``amax``).  ``Q`` is built from the bins without the folded outliers on
purpose: building it from ``P`` would make ``Q == P`` at ``i == levels`` and always select the
smallest threshold.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ..formats import FloatFormat, IntFormat
from ..spec import QuantSpec
from .histogram import DEFAULT_BINS, HistogramObserver

__all__ = ["EntropyObserver", "kl_threshold_bin", "quantization_levels"]

_Q_FLOOR = 1e-12
_CHUNK = 128


@cache
def _float_levels(dtype_name: str) -> int:
    """Non-negative finite values of a <= 16-bit float format (its codes over ``[0, max]``)."""
    fmt = QuantSpec(dtype_name).format
    assert isinstance(fmt, FloatFormat)
    utype = np.uint8 if fmt.bits == 8 else np.uint16
    vals = np.arange(1 << fmt.bits, dtype=np.int64).astype(utype).view(fmt.storage)
    with np.errstate(invalid="ignore"):
        vals = vals.astype(np.float64)
    return int(np.count_nonzero(np.isfinite(vals) & (vals >= 0) & ~np.signbit(vals)))


def quantization_levels(spec: QuantSpec, nonnegative: bool) -> int:
    """Grid points covering ``[0, t]`` when the range chosen is ``(-t, t)`` / ``(0, t)``.

    Symmetric integer grids: ``qmax - zero_point + 1`` (128 for int8, 8 for int4).  Asymmetric
    integer grids: the whole grid (``qmax - qmin + 1``) for non-negative data, else half of it.
    Float formats: the number of non-negative finite values (127 for fp8 e4m3fn), an
    approximation since their grid is not uniform.
    """
    fmt = spec.format
    if isinstance(fmt, FloatFormat):
        return _float_levels(fmt.name)
    assert isinstance(fmt, IntFormat)
    if spec.symmetric:
        center = 0 if fmt.signed else 1 << (fmt.bits - 1)
        return spec.qmax - center + 1
    n = spec.qmax - spec.qmin + 1
    return n if nonnegative else max(n // 2, 2)


def kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """Number of bins ``i`` (from 0) to keep: the TensorRT KL search over ``hist`` (see module
    docstring).  Returns ``len(hist)`` when ``levels >= len(hist)`` (nothing to clip)."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    if levels >= n:
        return n
    total = hist.sum()
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    candidates = np.arange(levels, n + 1)
    best_i, best_kl = n, np.inf
    for start in range(0, candidates.size, _CHUNK):
        cand = candidates[start : start + _CHUNK]
        m, width = cand.size, int(cand.max())
        k = np.arange(width)
        valid = k[None, :] < cand[:, None]
        base = np.where(valid, hist[None, :width], 0.0)
        p = base.copy()
        p[np.arange(m), cand - 1] += total - cum[cand]
        support = p > 0
        bucket = np.where(valid, (k[None, :] * levels) // cand[:, None], levels)
        flat = (np.arange(m)[:, None] * (levels + 1) + bucket).ravel()
        size = m * (levels + 1)
        mass = np.bincount(flat, weights=base.ravel(), minlength=size).reshape(m, -1)
        nnz = np.bincount(flat, weights=support.ravel(), minlength=size).reshape(m, -1)
        rows = np.arange(m)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(support, mass[rows, bucket] / nnz[rows, bucket], 0.0)
            pn = p / total
            qn = q / cum[cand][:, None]
        qn = np.where(support & ~(qn > 0), _Q_FLOOR, qn)
        terms = np.zeros_like(pn)
        np.divide(pn, qn, out=terms, where=support)
        np.log(terms, out=terms, where=support)
        kl = np.sum(np.where(support, pn * terms, 0.0), axis=1)
        j = m - 1 - int(np.argmin(kl[::-1]))  # ties: the largest threshold
        if kl[j] <= best_kl:
            best_kl, best_i = float(kl[j]), int(cand[j])
    return best_i


class EntropyObserver(HistogramObserver):
    """TensorRT-style entropy calibration (see the module docstring for the search).

    Range from the threshold ``t``: symmetric specs ``(-t, t)``, or ``(0, t)`` when no observed
    value was negative; asymmetric specs ``(max(min, -t), min(max, t))`` (then widened to contain
    0).  The search needs at least ``levels`` occupied bins to clip anything: below that (e.g. a
    16-bit float format, or fewer bins than grid points) the range is the min-max range.

    Resolution: thresholds are multiples of the histogram's bin width, and the histogram spans
    ``[0, amax]`` with between ``bins / 2`` and ``bins`` bins, so the smallest threshold the
    search can return is ``levels`` bins: between ``levels / bins * amax`` and twice that
    (``amax / 16`` to ``amax / 8`` for int8 with 2048 bins).
    """

    name = "entropy"
    OPTIONS = {"bins": DEFAULT_BINS}

    def _absolute(self) -> bool:
        return True

    def _channel_range(self, c: int) -> tuple[float, float]:
        lo, hi = self._signed_extremes(c)
        h = self.histogram
        assert h.width is not None
        amax = max(-lo, hi)
        if amax == 0.0:
            return 0.0, 0.0
        levels = quantization_levels(self.spec, nonnegative=lo >= 0)
        i = kl_threshold_bin(h.from_zero(c), levels)
        t = min(i * float(h.width[c]), amax)
        if self.spec.symmetric:
            return (-t if lo < 0 else 0.0), t
        return max(lo, -t), min(hi, t)
