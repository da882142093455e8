"""The :class:`Observer` contract shared by every calibrator.

An observer watches one tensor over many calibration batches and turns what it saw into a value
range and :class:`~quantfw.spec.QuantParams`.  Observers are streaming: the state they keep has a
size fixed by the spec and their options (one min/max pair per channel, or one histogram per
channel), never by the number of batches.

Conventions every observer follows:

* ``update(x)`` takes any numeric array (float, int, bfloat16/fp8 via ml_dtypes).  Non-finite
  values (NaN, +-Inf) are rejected with a :class:`ValueError` naming the observer and the number
  of bad values; the observer's state is left untouched.  Empty arrays are ignored (they are not
  counted in :attr:`Observer.num_batches`).
* ``compute_range()`` returns ``(min, max)`` as float32 arrays in the spec's parameter shape
  (``()`` per-tensor, ``(C,)`` per-channel, see :mod:`quantfw.spec`).  The range always contains
  zero (``min <= 0 <= max``), as every quantization grid does, so feeding it to
  :func:`quantfw.numerics.compute_qparams` changes nothing but the grid.
* ``compute_params()`` is ``compute_qparams(*compute_range(), spec)``.
* Dynamic specs need no observer (their parameters are computed from each input at run time):
  constructing an observer for one raises :class:`ValueError`.
* Options are declared per class in :attr:`Observer.OPTIONS` (name -> default); an unknown option
  raises :class:`TypeError` naming it and listing the allowed ones.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..numerics import compute_qparams
from ..spec import Granularity, QuantParams, QuantSpec

__all__ = ["Observer", "ObserverError"]


class ObserverError(ValueError):
    """Misuse of an observer: bad spec, bad option value, bad data, or no data yet."""


def _coerce_spec(spec: Any, who: str) -> QuantSpec:
    if isinstance(spec, Mapping):
        spec = QuantSpec.from_dict(dict(spec), where=who)
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"{who}: expected a QuantSpec, got {type(spec).__name__}")
    if spec.dynamic:
        raise ObserverError(
            f"{who}: the spec is dynamic (its parameters are computed from each input at run "
            "time), so it needs no observer; calibrate only static specs"
        )
    return spec


class Observer(ABC):
    """Streaming calibrator: ``update`` with batches, then ``compute_range`` / ``compute_params``.

    Subclasses set :attr:`name` (the key in :data:`quantfw.observers.OBSERVERS`),
    :attr:`OPTIONS` (option name -> default) and implement :meth:`_reset`, :meth:`_update` and
    :meth:`_compute_range`; :meth:`_merge` when merging two observers makes sense.
    """

    #: registry key
    name: ClassVar[str] = "observer"
    #: accepted keyword options and their defaults
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: whether per_group specs are supported
    SUPPORTS_PER_GROUP: ClassVar[bool] = False

    def __init__(self, spec: QuantSpec, **options: Any) -> None:
        cls = type(self)
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise TypeError(
                f"{cls.__name__}: unknown option(s) {unknown}; allowed options: {allowed}"
            )
        self.spec = _coerce_spec(spec, cls.__name__)
        if self.spec.granularity is Granularity.PER_GROUP and not cls.SUPPORTS_PER_GROUP:
            raise ObserverError(
                f"{cls.__name__} does not support per_group specs (a histogram per group would "
                "be too large); use the 'minmax' or 'moving_average' observer for per_group"
            )
        self.options: dict[str, Any] = {**cls.OPTIONS, **options}
        self._validate_options()
        self.num_batches = 0
        self._reset()

    # -- subclass hooks ---------------------------------------------------------------------------
    def _validate_options(self) -> None:  # noqa: B027 - optional hook
        """Check option values; raise :class:`ObserverError` naming the bad one."""

    @abstractmethod
    def _reset(self) -> None:
        """Drop all observed state."""

    @abstractmethod
    def _update(self, x: np.ndarray) -> None:
        """Fold one non-empty, finite float batch into the state."""

    @abstractmethod
    def _compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` in param shape (called only after at least one update)."""

    def _merge(self, other: Observer) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot merge another observer's statistics"
        )

    # -- public API -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything observed so far."""
        self.num_batches = 0
        self._reset()

    def update(self, x: Any) -> None:
        """Observe one batch.

        :raises ValueError: on NaN/Inf values (naming the observer and how many), or when the
            batch does not fit the statistics gathered so far (e.g. a different channel count).
        """
        arr = self._prepare(x)
        if arr.size == 0:
            return
        self._update(arr)
        self.num_batches += 1

    def compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)``: float32 arrays in the spec's param shape, ``min <= 0 <= max``.

        :raises ValueError: ``no data observed`` before the first (non-empty) update.
        """
        if self.num_batches == 0:
            raise ObserverError(
                f"{type(self).__name__}: no data observed; call update() with at least one "
                "non-empty batch before compute_range()/compute_params()"
            )
        lo, hi = self._compute_range()
        lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0).astype(np.float32)
        hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0).astype(np.float32)
        return lo, hi

    def compute_params(self) -> QuantParams:
        """Scale and zero point for the observed range (:func:`numerics.compute_qparams`)."""
        return compute_qparams(*self.compute_range(), self.spec)

    def merge(self, other: Observer) -> None:
        """Fold ``other``'s statistics into this observer (same class, spec and options).

        After merging, this observer is as if it had seen both observers' batches.

        :raises NotImplementedError: for observers whose state cannot be merged (moving average).
        :raises ValueError: when the observers are not compatible.
        """
        if type(other) is not type(self):
            raise ObserverError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}"
            )
        if other.spec != self.spec or other.options != self.options:
            raise ObserverError(
                f"{type(self).__name__}.merge: the observers differ in spec or options "
                f"({self.spec} {self.options} vs {other.spec} {other.options})"
            )
        if other.num_batches == 0:
            return
        if self.num_batches == 0:
            self.__dict__.update(copy.deepcopy(other.__dict__))
            return
        self._merge(other)
        self.num_batches += other.num_batches

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        sep = ", " if opts else ""
        return f"{type(self).__name__}({self.spec!r}{sep}{opts}; batches={self.num_batches})"

    # -- helpers for subclasses -------------------------------------------------------------------
    def _prepare(self, x: Any) -> np.ndarray:
        """``x`` as a float32/float64 array, checked for NaN/Inf."""
        arr = np.asarray(x)
        kind = arr.dtype.kind
        if kind not in "biufV":
            raise TypeError(
                f"{type(self).__name__}.update: expected a numeric array, got dtype {arr.dtype}"
            )
        if arr.dtype not in (np.float32, np.float64):
            # ints, bools, float16 and ml_dtypes (bfloat16, fp8) are exact in float64/float32
            arr = arr.astype(np.float64 if kind in "iu" else np.float32)
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            nans = int(np.count_nonzero(np.isnan(arr)))
            raise ObserverError(
                f"{type(self).__name__}.update: {bad} non-finite value(s) out of {arr.size} "
                f"({nans} NaN, {bad - nans} Inf); calibration data must be finite"
            )
        return arr

    def _channel_axis(self, ndim: int) -> int | None:
        """Normalised channel axis for per-channel specs, ``None`` for per-tensor."""
        if self.spec.granularity is Granularity.PER_TENSOR:
            return None
        axis = self.spec.axis
        assert axis is not None
        if not -ndim <= axis < ndim:
            raise ObserverError(
                f"{type(self).__name__}: channel axis {axis} is out of range for a tensor of "
                f"rank {ndim}"
            )
        return axis % ndim

    def _as_channels(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` as a 2-D ``(channels, values)`` array (one row for per-tensor specs)."""
        axis = self._channel_axis(arr.ndim)
        if axis is None:
            return arr.reshape(1, -1)
        return np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)

    def _to_param_shape(self, v: np.ndarray) -> np.ndarray:
        """A ``(channels,)`` statistic in param shape (``()`` for per-tensor)."""
        if self.spec.granularity is Granularity.PER_TENSOR:
            return v.reshape(())
        return v.reshape(-1)
