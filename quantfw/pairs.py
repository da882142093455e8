"""Weight codes whose adjacent pairs fit a 16-bit accumulator (``QuantSpec.pair_limit``).

x86 CPUs with AVX2 but no VNNI multiply uint8 activations by int8 weights with ``VPMADDUBSW``,
which adds the products of two *adjacent reduction elements* into a saturating int16 lane.  With
activation codes up to 255 that lane overflows once two paired weight codes of the same sign sum
beyond 128 in magnitude (``255 * 128 = 32640 <= 32767``).  Limiting every weight to 7 bits
(``|q| <= 63``) is the classic way out -- and halves the weight resolution.  Here the full 8-bit
grid is kept and only the *pairs* are constrained, so that ``|q[2j] + q[2j+1]| <= pair_limit``:

* :func:`limit_pairs` is applied by :func:`quantfw.numerics.quantize` (so the simulation, every
  algorithm and every backend see the same codes).  A pair over the limit gives up exactly its
  excess, split between its two codes to add the least squared rounding error (the closed-form
  optimum of ``(r0 + d)^2 + (r1 + e - d)^2``).  Pairs within the limit are untouched, so the
  function is idempotent and a weight already on a limited grid keeps its codes.
* :func:`pair_limited_params` chooses each channel's scale: between the plain min/max scale
  (pairs over the limit get projected) and the scale at which no pair needs it, the one with the
  least squared weight error.  On all-MiniLM-L6-v2 (SmoothQuant applied) the median scale is
  1.11x the plain int8 scale, where 7-bit weights cost 2x.

Which codes the kernel pairs (verified against ONNX Runtime's kernels on an AVX2-only CPU, the
``quantfw_onnx.cpu_mask`` emulation): the reduction is laid out as the integer GEMM reads it and
cut into consecutive pairs ``(0, 1), (2, 3), ...``:

* a 2-D weight (``MatMul`` ``[K, N]``, ``Gemm``/``Linear`` ``[N, K]``): along the axis that is not
  the channel axis (along the group axis for per-group weights); per-tensor, where the layout
  is unknown, every code is kept within half the limit instead (the same codes in either
  layout, so a torch ``[N, K]`` simulation and an ONNX ``[K, N]`` artifact agree);
* a convolution weight ``[C_out, C_in/group, *kernel]``: the kernel positions outer, the input
  channels of the group inner (``im2col`` in channels-last order), so with an odd ``C_in/group``
  a pair may join two kernel positions.

The products are of raw codes (zero points are applied afterwards), so the limit holds for any
activation zero point.  Formats other than signed integers of at most 8 bits ignore the limit.
"""

from __future__ import annotations

import numpy as np

from .formats import IntFormat
from .spec import Granularity, QuantParams, QuantSpec

__all__ = [
    "applies",
    "pair_views",
    "limit_pairs",
    "pairs_within",
    "max_pair_sum",
    "pair_limited_params",
]

#: scale candidates tried per channel between the plain and the pair-safe scale
_CANDIDATES = 9


def applies(spec: QuantSpec) -> bool:
    """Whether ``spec`` constrains pairs: a ``pair_limit`` on a signed integer grid of <= 8 bits
    that can reach it (two of the grid's largest codes exceed the limit)."""
    fmt = spec.format
    if spec.pair_limit is None or not isinstance(fmt, IntFormat) or not fmt.signed:
        return False
    if fmt.bits > 8:
        return False
    lo, hi = fmt.bounds(spec.narrow_range)
    return 2 * max(hi, -lo) > spec.pair_limit


def _orientations(ndim: int, spec: QuantSpec) -> list[str]:
    if ndim < 2:
        return []
    if ndim >= 3:
        return ["conv"]
    if spec.granularity is Granularity.PER_TENSOR or spec.axis is None:
        return ["rows", "cols"]
    if spec.granularity is Granularity.PER_GROUP:  # groups run along the reduction
        return ["rows"] if spec.axis % 2 == 1 else ["cols"]
    return ["cols"] if spec.axis % 2 == 1 else ["rows"]


def _to_view(a: np.ndarray, how: str) -> np.ndarray:
    """``a`` as ``[channels, K]`` in the kernel's reduction order (a copy)."""
    if how == "rows":  # [C, K]: pairs along axis 1
        return np.array(a, copy=True)
    if how == "cols":  # [K, N]: pairs along axis 0
        return np.ascontiguousarray(a.T)
    perm = (0, *range(2, a.ndim), 1)  # [C, Cin, *k] -> [C, *k, Cin]
    return np.ascontiguousarray(np.transpose(a, perm)).reshape(a.shape[0], -1)


def _from_view(v: np.ndarray, how: str, shape: tuple[int, ...]) -> np.ndarray:
    if how == "rows":
        return v
    if how == "cols":
        return np.ascontiguousarray(v.T)
    moved = (shape[0], *shape[2:], shape[1])
    inv = (0, len(shape) - 1, *range(1, len(shape) - 1))
    return np.ascontiguousarray(v.reshape(moved).transpose(inv))


def pair_views(shape: tuple[int, ...], spec: QuantSpec) -> list[str]:
    """The reduction layouts :func:`limit_pairs` constrains for a weight of ``shape``
    (``"rows"``: ``[C, K]``; ``"cols"``: ``[K, N]``; ``"conv"``: channels-last im2col)."""
    return _orientations(len(shape), spec)


def _project(q: np.ndarray, r: np.ndarray, limit: int) -> np.ndarray:
    """Pairs ``(2j, 2j+1)`` along axis 1 of int64 codes ``q`` (``r``: each code's rounding
    residual ``y - q``) brought within ``limit``; returns the new codes."""
    c, k = q.shape
    if k % 2:  # the kernel pads the reduction with a zero, which never needs to move
        q = np.concatenate([q, np.zeros((c, 1), q.dtype)], axis=1)
        r = np.concatenate([r, np.zeros((c, 1), r.dtype)], axis=1)
    a, b = q[:, 0::2], q[:, 1::2]
    s = a + b
    excess = np.abs(s) - limit
    over = excess > 0
    if not over.any():
        return q[:, :k]
    sign = np.sign(s[over])
    e = excess[over]
    # in the direction of the sum: lower a by d and b by e - d; cost (ra + d)^2 + (rb + e - d)^2
    ra = sign * r[:, 0::2][over]
    rb = sign * r[:, 1::2][over]
    d = np.clip(np.rint((e + rb - ra) / 2.0), 0, e).astype(np.int64)
    a = a.copy()
    b = b.copy()
    a[over] -= sign * d
    b[over] -= sign * (e - d)
    out = np.empty_like(q)
    out[:, 0::2] = a
    out[:, 1::2] = b
    return out[:, :k]


def limit_pairs(codes: np.ndarray, scaled: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """``codes`` (integer, raw) with every pair the kernel adds within ``spec.pair_limit``.

    :param scaled: ``x / scale + zero_point`` before rounding, the same shape: where a pair
        must give up some of its sum, the code that was rounded away from its value gives first.
    """
    if not applies(spec) or codes.ndim < 2:
        return codes
    limit = int(spec.pair_limit)  # type: ignore[arg-type]
    shape = tuple(codes.shape)
    q = codes.astype(np.int64)
    hows = _orientations(len(shape), spec)
    if len(hows) > 1:  # layout unknown
        half = limit // 2
        return np.clip(q, -half, half).astype(codes.dtype)
    y = np.asarray(scaled, dtype=np.float64)
    for how in hows:
        qv = _to_view(q, how)
        rv = _to_view(y, how) - qv
        q = _from_view(_project(qv, rv, limit), how, shape)
    return q.astype(codes.dtype)


def max_pair_sum(codes: np.ndarray, layout: str) -> int:
    """The largest ``|q[2j] + q[2j+1]|`` of raw ``codes`` laid out as ``layout``: ``"rows"``
    (``[C, K]``, a ``Gemm`` with ``transB``), ``"cols"`` (``[K, N]``, ``MatMul``) or ``"conv"``
    (``[C_out, C_in/group, *kernel]``)."""
    if layout not in ("rows", "cols", "conv"):
        raise ValueError(f"unknown layout {layout!r}; allowed: rows, cols, conv")
    if codes.ndim < 2 or codes.size == 0:
        return int(np.abs(codes.astype(np.int64)).max(initial=0))
    v = _to_view(codes.astype(np.int64), layout)
    if v.shape[1] % 2:
        v = np.concatenate([v, np.zeros((v.shape[0], 1), v.dtype)], axis=1)
    return int(np.abs(v[:, 0::2] + v[:, 1::2]).max(initial=0))


def pairs_within(codes: np.ndarray, spec: QuantSpec, limit: int | None = None) -> bool:
    """Whether every pair of raw ``codes`` the kernel adds is within ``limit`` (default
    ``spec.pair_limit``) in magnitude, for a weight laid out as ``spec`` describes."""
    limit = spec.pair_limit if limit is None else limit
    if limit is None or codes.ndim < 2:
        return True
    q = codes.astype(np.int64)
    for how in _orientations(q.ndim, spec):
        v = _to_view(q, how)
        if v.shape[1] % 2:
            v = np.concatenate([v, np.zeros((v.shape[0], 1), v.dtype)], axis=1)
        if np.abs(v[:, 0::2] + v[:, 1::2]).max(initial=0) > limit:
            return False
    return True


def pair_limited_params(x: np.ndarray, spec: QuantSpec, plain: QuantParams) -> QuantParams:
    """Per channel, the scale between ``plain``'s (min/max) and the one at which no pair of
    ``x`` exceeds the limit that gives the least squared error after :func:`limit_pairs`.

    Only symmetric per-channel / per-tensor specs are searched (the zero point stays 0);
    anything else, or a weight no pair of which reaches the limit, keeps ``plain``.
    """
    hows = _orientations(x.ndim, spec)
    if (
        not applies(spec)
        or not hows
        or not spec.symmetric
        or spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
    ):
        return plain
    limit = float(spec.pair_limit)  # type: ignore[arg-type]
    x32 = np.asarray(x, dtype=np.float32)
    per_channel = spec.granularity is Granularity.PER_CHANNEL
    axis = (spec.axis % x.ndim) if per_channel else None
    others = tuple(i for i in range(x.ndim) if i != axis) if per_channel else None

    # the scale at which the largest pair sum lands on the limit
    need = np.zeros(plain.scale.shape, np.float64)
    if len(hows) > 1:  # layout unknown: limit_pairs keeps codes within half the limit
        need = np.asarray(np.abs(x32).max(initial=0.0) / (limit // 2), np.float64)
        hows = []
    for how in hows:
        v = _to_view(x32.astype(np.float64), how)
        if v.shape[1] % 2:
            v = np.concatenate([v, np.zeros((v.shape[0], 1))], axis=1)
        sums = np.abs(v[:, 0::2] + v[:, 1::2]).max(axis=1)  # per view row
        rows_are_channels = per_channel and (
            (how == "cols" and axis == 1) or (how in ("rows", "conv") and axis == 0)
        )
        need = np.maximum(
            need, sums / limit if rows_are_channels else sums.max(initial=0.0) / limit
        )
    lo = plain.scale.astype(np.float64)
    hi = np.maximum(lo, need)
    search = hi > lo
    if not search.any():
        return plain
    if (
        per_channel
        and len(hows) == 1
        and ((hows[0] == "cols" and axis == 1) or (hows[0] in ("rows", "conv") and axis == 0))
    ):
        # only the channels that have a pair to give up: each one's row of the [C, K] view,
        # projected there directly (what limit_pairs does to them, without the transposes)
        view = _to_view(x32, hows[0])[search]
        best = _search_rows(view, lo[search], hi[search], spec)
        out = lo.astype(np.float32)
        out[search] = best
        return QuantParams(out, np.zeros(out.shape, np.int32))
    best_err = None
    best_scale = lo.astype(np.float32)
    shape = [1] * x.ndim
    if per_channel:
        shape[axis] = -1  # type: ignore[index]
    for t in np.linspace(0.0, 1.0, _CANDIDATES):
        scale = (lo + t * (hi - lo)).astype(np.float32)
        s = scale.reshape(shape)
        # quantfw.numerics.quantize for a symmetric grid (zero point 0), then the limit
        y = x32 / s
        q = limit_pairs(np.clip(np.rint(y), spec.qmin, spec.qmax).astype(np.int64), y, spec)
        err = (q.astype(np.float32) * s - x32).astype(np.float64) ** 2
        err = err.sum(axis=others) if per_channel else np.asarray(err.sum())
        if best_err is None:
            best_err, best_scale = err, scale.copy()
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    return QuantParams(best_scale.astype(np.float32), np.zeros(best_scale.shape, np.int32))


def _search_rows(view: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Per row of ``view`` ([C, K], float32), the candidate scale in ``[lo, hi]`` with the least
    squared error of its pair-limited codes."""
    limit = int(spec.pair_limit)  # type: ignore[arg-type]
    best_err = np.full(view.shape[0], np.inf)
    best = lo.astype(np.float32)
    for t in np.linspace(0.0, 1.0, _CANDIDATES):
        scale = (lo + t * (hi - lo)).astype(np.float32)
        y = view / scale[:, None]
        q = np.clip(np.rint(y), spec.qmin, spec.qmax).astype(np.int64)
        q = _project(q, y.astype(np.float64) - q, limit)
        err = ((q.astype(np.float32) * scale[:, None] - view).astype(np.float64) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, scale, best)
    return best
