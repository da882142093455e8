"""Per-channel extremes of float-model tensors, gathered alongside another algorithm's pass.

Running the float model over the calibration data is the expensive part of a quantization (a
transformer's forward pass per batch).  A min-max calibrator needs only each tensor's extremes,
and those can be gathered while an earlier stage (SmoothQuant) runs the same float model: the
calibrate stage asks for them up front (:meth:`StageContext.request_channel_ranges
<quantfw.api.context.StageContext.request_channel_ranges>`), the first complete float pass
fills them in, and no second pass is needed.

The extremes are kept per channel of the last axis because SmoothQuant, which runs before
calibration, may decide that the quantizer reads the tensor equalised, ``x * m`` with one factor
``m_c > 0`` per last-axis channel.  Multiplying by a positive float rounds monotonically, so the
extremes of ``x * m`` are exactly ``min_c(x) * m_c`` and ``max_c(x) * m_c``, bit for bit: the range
is the one an observer watching every equalised value would find.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["ChannelRanges"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class ChannelRanges:
    """Running per-channel (last axis) minimum and maximum of some tensors over one pass.

    :param names: the tensors to watch.
    :param aliases: ``{tensor: source}`` for tensors among ``names`` that hold the values of
        another one (a reshape, transpose, squeeze … of ``source``, also among ``names``): only
        their shapes are recorded, and their range without a multiplier is ``source``'s.
    :param version: the float model's version when the pass starts (see
        :meth:`StageContext.channel_ranges <quantfw.api.context.StageContext.channel_ranges>`).
    :ivar shapes: each tensor's shape in the last batch seen.
    :ivar complete: set once a pass went over every batch.
    """

    def __init__(
        self, names: Iterable[str], version: int = 0, aliases: Mapping[str, str] | None = None
    ) -> None:
        self.names = tuple(dict.fromkeys(names))
        self.version = version
        self.aliases = {t: s for t, s in (aliases or {}).items() if t != s}
        self.complete = False
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._lo: dict[str, np.ndarray] = {}
        self._hi: dict[str, np.ndarray] = {}
        self._collapsed: set[str] = set()  # channel count changed: only the global range is kept
        self._unusable: set[str] = set()  # not a float32/float64 tensor

    def update(self, outs: Mapping[str, Any]) -> None:
        """Fold one batch ``{name: value}`` in (names not watched are ignored)."""
        for name in self.names:
            if name not in outs:
                continue
            v = np.asarray(outs[name])
            self.shapes[name] = tuple(v.shape)
            if name in self._unusable or name in self.aliases:
                continue
            if v.dtype not in _FLOATS:
                self._unusable.add(name)
                continue
            if v.size == 0:
                continue
            flat = v.reshape(-1, v.shape[-1]) if v.ndim else v.reshape(1, 1)
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            old_lo = self._lo.get(name)
            if old_lo is None:
                self._lo[name], self._hi[name] = lo, hi
                continue
            old_hi = self._hi[name]
            if name in self._collapsed or old_lo.shape != lo.shape or old_lo.dtype != lo.dtype:
                self._collapsed.add(name)
                self._lo[name] = np.array([min(old_lo.min(), lo.min())], np.float64)
                self._hi[name] = np.array([max(old_hi.max(), hi.max())], np.float64)
                continue
            np.minimum(old_lo, lo, out=old_lo)
            np.maximum(old_hi, hi, out=old_hi)

    def extrema(
        self, name: str, multiplier: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel ``(min, max)`` of ``name`` over the pass, of ``x * multiplier`` when a
        per-channel (last axis), positive float32 ``multiplier`` is given (computed as
        :func:`quantfw.numerics.equalize` computes it: ``x`` cast to float32 first).

        An observer of per-tensor ranges fed these two vectors finds exactly the range it would
        find watching every value.

        :returns: ``None`` when the pass did not see usable values: not complete, not a
            float32/float64 tensor, no non-empty batch, a non-finite extreme (the observer's
            own pass then reports it), or a multiplier the kept statistics cannot serve (the
            last axis changed length between batches, or has another length; an alias with a
            multiplier).
        """
        if name in self.aliases:  # the same values, laid out otherwise: no per-channel view
            source = self.aliases[name]
            if multiplier is not None or source in self.aliases or name not in self.shapes:
                return None
            return self.extrema(source)
        if not self.complete or name not in self._lo or name in self._unusable:
            return None
        lo, hi = self._lo[name], self._hi[name]
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return None
        if multiplier is None:
            return lo, hi
        m = np.asarray(multiplier, np.float32)
        if name in self._collapsed or m.shape != lo.shape or not np.all(m > 0):
            return None
        return lo.astype(np.float32) * m, hi.astype(np.float32) * m
