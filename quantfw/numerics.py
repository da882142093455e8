"""Reference quantization numerics: the arithmetic every backend is checked against.

The functions here reproduce, bit for bit, what the runtimes we target (ONNX Runtime, TensorRT,
TFLite) compute when they quantize and dequantize:

* **quantize (integer grid)**: ``q = clip(rint(x / scale) + zero_point, qmin, qmax)`` where
  ``x / scale`` is a float32 division (``x.astype(float32) / scale.astype(float32)``), ``rint``
  rounds half to even, and the clip saturates to the spec's grid (``narrow_range`` aware).
* **quantize (float grid: fp8, fp16, bf16)**: ``q = cast(clip(x / scale, -max, max))``: float32
  division, saturation to the format's largest finite value (a bare ``ml_dtypes`` cast would turn
  overflow into NaN or inf), then a round-half-to-even cast to the storage dtype.
* **dequantize**: ``(q - zero_point).astype(float32) * scale`` in float32 (``q * scale`` for
  float formats).

Quantization parameters come from a value range (:func:`compute_qparams`), which itself comes from
a tensor reduced per the spec's granularity (:func:`reduce_range`).  Parameter shapes follow the
conventions in :mod:`quantfw.spec`; :func:`param_shape` gives the expected shape for a tensor and
:func:`broadcast_params` expands parameters to the tensor's shape.

Everything is computed in float32, like the runtimes.  One consequence: for the ``int32`` format
(biases / accumulators) codes beyond ``2**24`` are not resolved exactly, exactly as in a runtime
that divides in float32.

Rounding note: ONNX Runtime and TensorRT round half to even, which is what this module does.
TFLite's reference kernels round half away from zero; the two differ only when ``x / scale`` lands
exactly on ``k + 0.5``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import pairs
from .formats import FloatFormat, IntFormat
from .spec import Granularity, QuantParams, QuantSpec

__all__ = [
    "reduce_range",
    "compute_qparams",
    "params_from_tensor",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_dynamic",
    "broadcast_params",
    "param_shape",
    "quantization_error",
    "equalize",
    "equalization_multiplier",
]

_F32 = np.float32
_TINY = np.finfo(np.float32).tiny  # smallest normal float32


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _describe(spec: QuantSpec) -> str:
    """A compact one-line description of a spec for error messages."""
    parts = [spec.dtype, spec.granularity.value]
    if spec.axis is not None:
        parts.append(f"axis={spec.axis}")
    if spec.group_size is not None:
        parts.append(f"group_size={spec.group_size}")
    parts.append("symmetric" if spec.symmetric else "asymmetric")
    if spec.narrow_range:
        parts.append("narrow_range")
    if spec.dynamic:
        parts.append("dynamic")
    if spec.pair_limit is not None:
        parts.append(f"pair_limit={spec.pair_limit}")
    return "QuantSpec(" + ", ".join(parts) + ")"


def _norm_axis(spec: QuantSpec, ndim: int) -> int:
    """``spec.axis`` as a non-negative index into a tensor of rank ``ndim``."""
    axis = spec.axis
    if axis is None:  # pragma: no cover - QuantSpec guarantees an axis for these granularities
        raise ValueError(f"{_describe(spec)} has no axis")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of range for a tensor of rank {ndim} (spec {_describe(spec)})"
        )
    return axis % ndim


def _check_no_nan(x: np.ndarray, what: str) -> None:
    if x.dtype.kind in "fc" and np.isnan(x).any():
        n = int(np.isnan(x).sum())
        raise ValueError(f"{what}: input contains {n} NaN value(s) out of {x.size}")


def _as_array(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf" and arr.dtype.kind != "V":
        # ml_dtypes types (bfloat16, float8) report kind 'V'; anything else is unusable.
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    return arr


def param_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, ...]:
    """The shape the scale / zero point must have for a tensor of ``shape`` under ``spec``.

    :raises ValueError: when the spec's axis does not exist in ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return ()
    axis = _norm_axis(spec, len(shape))
    if g is Granularity.PER_CHANNEL:
        return (shape[axis],)
    if g is Granularity.PER_GROUP:
        out = list(shape)
        out[axis] = -(-shape[axis] // spec.group_size)
        return tuple(out)
    out = list(shape)  # per_token
    out[axis] = 1
    return tuple(out)


def _check_params(params: QuantParams, spec: QuantSpec, shape: tuple[int, ...]) -> None:
    expected = param_shape(shape, spec)
    got = tuple(params.scale.shape)
    if got != expected:
        raise ValueError(
            f"quantization parameters have shape {got} but a tensor of shape {tuple(shape)} "
            f"under {_describe(spec)} expects shape {expected}"
        )
    fmt = spec.format
    zp = params.zero_point
    if isinstance(fmt, FloatFormat):
        if np.any(zp != 0):
            raise ValueError(f"{spec.dtype} has no zero point, but non-zero zero points were given")
    elif zp.size and (zp.min() < fmt.qmin or zp.max() > fmt.qmax):
        raise ValueError(
            f"zero point(s) outside the {spec.dtype} range [{fmt.qmin}, {fmt.qmax}]: "
            f"min {int(zp.min())}, max {int(zp.max())}"
        )


def _expand(p: np.ndarray, spec: QuantSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Expand one parameter array (already shape-checked) so it broadcasts to ``shape``."""
    g = spec.granularity
    if g is Granularity.PER_TENSOR or g is Granularity.PER_TOKEN:
        return p
    axis = _norm_axis(spec, len(shape))
    if g is Granularity.PER_CHANNEL:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return p.reshape(view)
    rep = np.repeat(p, spec.group_size, axis=axis)  # per_group
    return np.take(rep, np.arange(shape[axis]), axis=axis)


def broadcast_params(
    params: QuantParams, spec: QuantSpec, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int32) expanded to ``shape``, one pair per element.

    Per-group parameters are repeated ``group_size`` times along the axis and cut to the tensor's
    length (so a last, partial group uses its own parameters).  The results may be read-only
    broadcast views; copy them before writing.

    :raises ValueError: when the parameter shape does not match ``shape`` under ``spec``.
    """
    shape = tuple(int(d) for d in shape)
    _check_params(params, spec, shape)
    scale = np.broadcast_to(_expand(params.scale, spec, shape), shape)
    zp = np.broadcast_to(_expand(params.zero_point, spec, shape), shape)
    return scale, zp


# ---------------------------------------------------------------------------------------------
# ranges and parameters
# ---------------------------------------------------------------------------------------------
def reduce_range(x: Any, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(min, max)`` of ``x`` per the spec's granularity, as float32 arrays of the param shape.

    * per_tensor: shape ``()``;
    * per_channel: shape ``(C,)``, reduced over every axis except ``spec.axis``;
    * per_group: the tensor's rank with ``axis`` shrunk to ``ceil(n / group_size)``; the last
      group may be partial;
    * per_token: ``x``'s shape with ``spec.axis`` kept as size 1.

    :raises ValueError: if ``x`` is empty, contains NaN, or lacks the spec's axis.
    """
    x = _as_array(x)
    if x.dtype.kind == "V":
        x = x.astype(_F32)
    if x.size == 0:
        raise ValueError(f"cannot compute a quantization range of an empty tensor {x.shape}")
    _check_no_nan(x, "reduce_range")
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        lo, hi = x.min(), x.max()
    elif g is Granularity.PER_CHANNEL:
        axis = _norm_axis(spec, x.ndim)
        others = tuple(i for i in range(x.ndim) if i != axis)
        lo, hi = x.min(axis=others), x.max(axis=others)
    elif g is Granularity.PER_GROUP:
        axis = _norm_axis(spec, x.ndim)
        starts = np.arange(0, x.shape[axis], spec.group_size)
        lo = np.minimum.reduceat(x, starts, axis=axis)
        hi = np.maximum.reduceat(x, starts, axis=axis)
    else:  # per_token
        axis = _norm_axis(spec, x.ndim)
        lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    return np.asarray(lo, dtype=_F32), np.asarray(hi, dtype=_F32)


def _finite_f32(v: Any, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains non-finite value {arr[bad].flat[0]!r}; a quantization range must be "
            "finite (check the calibration data for inf/NaN)"
        )
    with np.errstate(over="ignore"):
        out = arr.astype(_F32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} does not fit in float32: {arr[~np.isfinite(out)].flat[0]!r}")
    return out


def compute_qparams(min_val: Any, max_val: Any, spec: QuantSpec) -> QuantParams:
    """Scale and zero point covering ``[min_val, max_val]`` (scalars or param-shaped arrays).

    All arithmetic is float32, like ONNX Runtime's ``DynamicQuantizeLinear``.

    1. The range is widened to contain zero (``rmin = min(min, 0)``, ``rmax = max(max, 0)``) so
       that 0.0 is exactly representable (it maps to the zero point).
    2. Symmetric integer grids: zero point 0 (signed) or ``2**(bits-1)`` (unsigned);
       ``amax = max(|rmin|, |rmax|)`` and ``scale = amax / (qmax - zp)`` so ``+amax`` lands
       exactly on the top code (TensorRT's ``amax / 127``).  ``narrow_range`` only moves qmin.
    3. Asymmetric integer grids: ``scale = (rmax - rmin) / (qmax - qmin)`` and
       ``zp = clip(rint(qmin - rmin / scale), qmin, qmax)``.
    4. Float grids (fp8, fp16, bf16): zero point 0, ``scale = amax / max_value``.
    5. Degenerate ranges: when the scale would be zero or not a normal float32 (an all-zero range,
       or ``amax`` so small that the scale underflows; for bf16, whose range is float32's, that is
       any ``amax`` below about 4), the scale is 1.0 and the zero point follows the rules above
       (for asymmetric grids ``zp = clip(rint(qmin - rmin), qmin, qmax)``, i.e. qmin when the
       range is all zeros).  The scale is therefore always finite and positive.

    :raises ValueError: if a bound is inf/NaN, ``min_val > max_val`` anywhere, or a per-tensor /
        per-channel range has the wrong shape.
    """
    lo = _finite_f32(min_val, "min_val")
    hi = _finite_f32(max_val, "max_val")
    lo, hi = np.broadcast_arrays(lo, hi)
    if np.any(lo > hi):
        i = np.flatnonzero(lo > hi)[0]
        raise ValueError(
            f"min_val > max_val ({lo.flat[i]!r} > {hi.flat[i]!r}); pass the range as (min, max)"
        )
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        if lo.size != 1:
            raise ValueError(
                f"a per_tensor range must be a single value, got shape {lo.shape} "
                f"({_describe(spec)})"
            )
        lo, hi = lo.reshape(()), hi.reshape(())
    elif g is Granularity.PER_CHANNEL and lo.ndim != 1:
        raise ValueError(
            f"a per_channel range must be 1-D (one value per channel), got shape {lo.shape} "
            f"({_describe(spec)})"
        )

    rmin = np.minimum(lo, _F32(0))
    rmax = np.maximum(hi, _F32(0))
    fmt = spec.format
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if isinstance(fmt, FloatFormat):
            amax = np.maximum(np.abs(rmin), np.abs(rmax))
            scale = amax / _F32(fmt.max_value)
            scale = np.where(scale >= _TINY, scale, _F32(1.0)).astype(_F32)
            zp = np.zeros(scale.shape, np.int32)
            return QuantParams(scale, zp)
        assert isinstance(fmt, IntFormat)
        qmin, qmax = spec.qmin, spec.qmax
        if spec.symmetric:
            center = 0 if fmt.signed else 1 << (fmt.bits - 1)
            amax = np.maximum(np.abs(rmin), np.abs(rmax))
            scale = amax / _F32(qmax - center)
            scale = np.where(scale >= _TINY, scale, _F32(1.0)).astype(_F32)
            zp = np.full(scale.shape, center, np.int32)
            return QuantParams(scale, zp)
        width = rmax - rmin
        if not np.isfinite(width).all():  # float32 overflow of rmax - rmin: redo in float64
            width64 = rmax.astype(np.float64) - rmin.astype(np.float64)
            scale = (width64 / float(qmax - qmin)).astype(_F32)
        else:
            scale = width / _F32(qmax - qmin)
        scale = np.where(scale >= _TINY, scale, _F32(1.0)).astype(_F32)
        zp_f = _F32(qmin) - rmin / scale
        zp = np.clip(np.rint(zp_f), qmin, qmax).astype(np.int32)
    return QuantParams(scale, zp)


def params_from_tensor(x: Any, spec: QuantSpec) -> QuantParams:
    """Min/max calibration: ``compute_qparams(*reduce_range(x, spec), spec)``.

    With a ``pair_limit`` (:mod:`quantfw.pairs`) each channel's scale is then chosen between that
    and the pair-safe scale, for the least squared error of the limited codes."""
    params = compute_qparams(*reduce_range(x, spec), spec)
    if pairs.applies(spec):
        return pairs.pair_limited_params(_as_array(x), spec, params)
    return params


# ---------------------------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------------------------
def quantize(x: Any, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """Quantize ``x`` to codes in the format's storage dtype.

    Integer formats give int8/uint8 codes (sub-byte formats stay unpacked, one code per byte) or
    int32; float formats give ml_dtypes float8 / float16 / bfloat16 values.  Values beyond the
    grid saturate to qmin/qmax (±max_value for float formats, ±inf included).

    :raises ValueError: when the parameter shape does not fit ``x`` under ``spec``, or when ``x``
        holds NaN and the format is an integer grid (NaN has no integer code; float formats
        propagate it).
    """
    x = _as_array(x)
    shape = tuple(x.shape)
    scale, zp = broadcast_params(params, spec, shape)
    fmt = spec.format
    x32 = x.astype(_F32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = x32 / scale.astype(_F32)
    if isinstance(fmt, FloatFormat):
        m = _F32(fmt.max_value)
        return np.clip(y, -m, m).astype(fmt.storage)
    _check_no_nan(x32, f"quantize to {spec.dtype}")
    # Round in float32 (as the runtimes do); add the zero point and saturate in float64 so that
    # the int32 grid's bounds are exact.  For <= 8-bit grids this equals the float32 result.
    r = np.clip(np.rint(y).astype(np.float64) + zp, spec.qmin, spec.qmax)
    if pairs.applies(spec) and r.ndim >= 2:
        r = pairs.limit_pairs(r.astype(np.int64), y.astype(np.float64) + zp, spec)
    return np.asarray(r).astype(fmt.storage)


def dequantize(q: Any, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """Codes back to real values, float32: ``(q - zero_point).astype(float32) * scale``.

    Float formats: ``q.astype(float32) * scale``.

    :raises ValueError: when the parameter shape does not fit ``q`` under ``spec``.
    """
    q = _as_array(q)
    scale, zp = broadcast_params(params, spec, tuple(q.shape))
    if isinstance(spec.format, FloatFormat):
        return (q.astype(_F32) * scale).astype(_F32)
    diff = q.astype(np.int64) - zp.astype(np.int64)
    return (diff.astype(_F32) * scale).astype(_F32)


def fake_quantize(x: Any, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """``dequantize(quantize(x))``: ``x`` snapped to the grid, float32."""
    fmt = spec.format
    if isinstance(fmt, IntFormat) and fmt.bits <= 16 and not pairs.applies(spec) and np.ndim(x) > 0:
        return _fake_quantize_int(x, params, spec)
    return dequantize(quantize(x, params, spec), params, spec)


def _fake_quantize_int(x: Any, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """:func:`fake_quantize` on an integer grid of <= 16 bits, bit for bit, in float32 alone.

    Codes and zero points are integers below 2**17, exact in float32, so adding the zero point,
    saturating and subtracting it again give the values :func:`quantize` (float64 sums, integer
    codes) and :func:`dequantize` (int64 differences) give; an out-of-range ``rint(x / scale)``
    stays out of range after the float32 addition (rounding is monotonic), and saturates to the
    same code."""
    x = _as_array(x)
    scale, zp = broadcast_params(params, spec, tuple(x.shape))
    x32 = x.astype(_F32)
    _check_no_nan(x32, f"quantize to {spec.dtype}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = x32 / scale
    zp32 = zp.astype(_F32)
    np.rint(y, out=y)
    y += zp32
    np.clip(y, _F32(spec.qmin), _F32(spec.qmax), out=y)
    y -= zp32
    y *= scale
    return y


def quantize_dynamic(x: Any, spec: QuantSpec) -> tuple[np.ndarray, QuantParams]:
    """Quantize with parameters computed from ``x`` itself (per-token or per-tensor dynamic).

    :returns: ``(codes, params)``.
    :raises ValueError: if ``spec`` is not dynamic.
    """
    if not spec.dynamic:
        raise ValueError(
            f"quantize_dynamic needs a dynamic spec, got {_describe(spec)}; for static "
            "quantization use params_from_tensor() or calibrated params with quantize()"
        )
    params = params_from_tensor(x, spec)
    return quantize(x, params, spec), params


def quantization_error(
    x: Any, spec: QuantSpec, params: QuantParams | None = None
) -> dict[str, float]:
    """Error statistics of fake-quantizing ``x`` (params from ``x`` itself when not given).

    :returns: ``{"mse", "max_abs", "sqnr_db"}`` as Python floats; ``sqnr_db`` is
        ``10 * log10(mean(x**2) / mse)``, ``inf`` when the error is zero.
    """
    x = _as_array(x)
    if params is None:
        params = params_from_tensor(x, spec)
    ref = x.astype(np.float64)
    err = fake_quantize(x, params, spec).astype(np.float64) - ref
    mse = float(np.mean(err**2)) if err.size else 0.0
    max_abs = float(np.max(np.abs(err))) if err.size else 0.0
    signal = float(np.mean(ref**2)) if ref.size else 0.0
    if mse == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / mse)
    return {"mse": mse, "max_abs": max_abs, "sqnr_db": sqnr}


# ---------------------------------------------------------------------------------------------
# equalisation (per-channel rescaling of an activation on its consumers' edges)
# ---------------------------------------------------------------------------------------------
def equalization_multiplier(scale: Any) -> np.ndarray:
    """``1 / scale`` in float32: what an equalised activation is multiplied by on its consumers'
    edges (a multiply is cheaper than a divide at run time; every backend uses these bits)."""
    s = np.asarray(scale, dtype=_F32)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("equalisation factors must be a 1-D array of finite positive values")
    return (_F32(1.0) / s).astype(_F32)


def equalize(x: Any, scale: Any) -> np.ndarray:
    """What an equalised consumer reads: ``x * (1 / scale)`` in float32, one factor per channel
    of the last axis (see :class:`quantfw.recipe.Equalization`)."""
    return _as_array(x).astype(_F32) * equalization_multiplier(scale)
