"""Dense byte layouts for quantized codes.

:func:`quantfw.numerics.quantize` keeps one code per storage element (sub-byte integers sit in
int8/uint8).  Runtimes and artifact files want them packed:

* ``int4`` / ``uint4``: two codes per byte, **low nibble first** (the element with the lower
  flat index goes in bits 0-3, the next in bits 4-7), the layout of ONNX ``INT4``/``UINT4``
  tensors.  Signed codes are stored as 4-bit two's complement.
* ``int3``: also one nibble per code (two per byte), as 4-bit two's complement.  No runtime we
  target consumes a 3-bit-dense bitstream, whereas every int4 kernel and container accepts int3
  values (they are a subset of int4's range); a nibble layout keeps byte-aligned random access
  and lets int3 weights travel through the int4 path unchanged.
* ``int2`` / ``ternary``: four codes per byte, lowest bits first (element ``4k`` in bits 0-1,
  ``4k+1`` in bits 2-3, ...), as 2-bit two's complement (``-1 -> 0b11``, ``-2 -> 0b10``).
* 8-bit formats (``int8``, ``uint8``, fp8): the storage bytes themselves.  Wider formats
  (``int32``, ``fp16``, ``bf16``) are returned as their little-endian bytes.

Elements are taken in row-major (C) order; a trailing partial byte is padded with zero bits.
The result of :func:`pack` is always a 1-D uint8 array (for formats of 8 bits or more it may be a
view of the input's memory); :func:`unpack` needs the original shape and always returns a copy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .formats import FloatFormat, IntFormat, get_format

__all__ = ["pack", "unpack", "packed_nbytes", "bits_per_code"]


def bits_per_code(dtype: str) -> int:
    """Bits one code occupies once packed (4 for int3: see the module docstring)."""
    fmt = get_format(dtype)
    if isinstance(fmt, IntFormat) and fmt.bits < 8:
        return 4 if fmt.bits > 2 else 2
    return fmt.storage.itemsize * 8


def packed_nbytes(count: int, dtype: str) -> int:
    """Bytes needed to pack ``count`` codes of format ``dtype``."""
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    bits = bits_per_code(dtype)
    if bits >= 8:
        return count * (bits // 8)
    per_byte = 8 // bits
    return -(-count // per_byte)


def _le(dt: np.dtype) -> np.dtype:
    """The little-endian variant of a numpy dtype (ml_dtypes types have no byte order)."""
    return dt.newbyteorder("<") if dt.byteorder in "<>=" and dt.itemsize > 1 else dt


def _check_int_range(q: np.ndarray, fmt: IntFormat) -> None:
    if q.dtype.kind not in "iub":
        raise ValueError(
            f"{fmt.name} codes must be an integer array, got dtype {q.dtype} "
            "(quantize before packing)"
        )
    if q.size == 0:
        return
    lo, hi = int(q.min()), int(q.max())
    if lo < fmt.qmin or hi > fmt.qmax:
        bad = lo if lo < fmt.qmin else hi
        raise ValueError(f"value {bad} is outside the {fmt.name} range [{fmt.qmin}, {fmt.qmax}]")


def pack(q: Any, dtype: str) -> np.ndarray:
    """Pack codes of format ``dtype`` into a 1-D uint8 array (layout in the module docstring).

    :raises ValueError: if a value lies outside the format's range, or the array's dtype cannot
        hold the format's codes (floats for an integer format; anything but the storage dtype for
        a float format).
    """
    fmt = get_format(dtype)
    q = np.asarray(q)
    if isinstance(fmt, FloatFormat):
        if q.dtype != fmt.storage:
            raise ValueError(
                f"{fmt.name} codes must have dtype {fmt.storage}, got {q.dtype} "
                "(quantize before packing)"
            )
        return (
            np.ascontiguousarray(q.astype(_le(fmt.storage), copy=False)).reshape(-1).view(np.uint8)
        )
    _check_int_range(q, fmt)
    bits = bits_per_code(fmt.name)
    if bits >= 8:
        return np.ascontiguousarray(q, dtype=_le(fmt.storage)).reshape(-1).view(np.uint8)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    codes = (q.reshape(-1).astype(np.int16) & mask).astype(np.uint8)
    pad = (-codes.size) % per_byte
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, np.uint8)])
    codes = codes.reshape(-1, per_byte)
    out = np.zeros(codes.shape[0], np.uint8)
    for i in range(per_byte):
        out |= codes[:, i] << np.uint8(i * bits)
    return out


def unpack(packed: Any, dtype: str, shape: tuple[int, ...] | int) -> np.ndarray:
    """Inverse of :func:`pack`: codes of format ``dtype`` in their storage dtype and ``shape``.

    :raises ValueError: if ``packed`` has the wrong number of bytes for ``shape``, or decodes to
        a value outside the format's range (e.g. ``-2`` for ternary).
    """
    fmt = get_format(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
    count = math.prod(shape)
    buf = np.asarray(packed)
    if buf.dtype != np.uint8:
        raise ValueError(f"packed data must be uint8, got dtype {buf.dtype}")
    buf = buf.reshape(-1)
    need = packed_nbytes(count, fmt.name)
    if buf.size != need:
        raise ValueError(
            f"{fmt.name} data for shape {shape} ({count} values) takes {need} bytes, got {buf.size}"
        )
    bits = bits_per_code(fmt.name)
    if bits >= 8:
        values = np.frombuffer(buf.tobytes(), dtype=_le(fmt.storage))
        return values.astype(fmt.storage).reshape(shape)
    assert isinstance(fmt, IntFormat)
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    fields = [(buf >> np.uint8(i * bits)) & mask for i in range(per_byte)]
    codes = np.stack(fields, axis=1).reshape(-1)[:count].astype(np.int16)
    if fmt.signed:
        sign = 1 << (bits - 1)
        codes = (codes ^ sign) - sign
    if codes.size and (codes.min() < fmt.qmin or codes.max() > fmt.qmax):
        bad = int(codes.min()) if codes.min() < fmt.qmin else int(codes.max())
        raise ValueError(
            f"packed data decodes to {bad}, outside the {fmt.name} range [{fmt.qmin}, {fmt.qmax}]"
        )
    return codes.astype(fmt.storage).reshape(shape)
