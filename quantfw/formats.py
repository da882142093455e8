"""Number formats that quantized tensors are stored in.

Each format knows its representable range and the numpy dtype that holds its values in memory
(sub-byte integers live in int8/uint8 until they are packed; fp8 uses ml_dtypes).  Formats are
looked up by name with :func:`get_format`; the names are the ones used in target specs, recipes
and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = [
    "IntFormat",
    "FloatFormat",
    "NumberFormat",
    "FORMATS",
    "get_format",
    "format_names",
]


@dataclass(frozen=True)
class IntFormat:
    """A signed or unsigned integer grid ``[qmin, qmax]``.

    ``narrow_qmin`` is the lower bound used with ``narrow_range=True`` (the grid made symmetric
    around zero by dropping the most negative code, e.g. int8 in [-127, 127]).
    """

    name: str
    bits: int
    signed: bool
    qmin: int
    qmax: int
    storage: np.dtype

    kind = "int"

    @property
    def narrow_qmin(self) -> int:
        """Lowest code when narrow range is requested."""
        if self.signed:
            return -self.qmax
        return self.qmin + 1

    def bounds(self, narrow_range: bool = False) -> tuple[int, int]:
        """``(qmin, qmax)`` of the grid, honouring ``narrow_range``."""
        if narrow_range:
            return self.narrow_qmin, self.qmax
        return self.qmin, self.qmax


@dataclass(frozen=True)
class FloatFormat:
    """A low-precision floating-point format (fp8, fp16, bf16).

    Values are scaled so that ``amax`` maps to ``max_value`` and then cast (round half to even)
    to ``storage``; there is no zero point.
    """

    name: str
    bits: int
    storage: np.dtype
    max_value: float

    kind = "float"
    signed = True


NumberFormat = IntFormat | FloatFormat


def _int(name: str, bits: int, signed: bool) -> IntFormat:
    if signed:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        qmin, qmax = 0, (1 << bits) - 1
    storage = np.dtype(np.int8 if signed else np.uint8)
    return IntFormat(name, bits, signed, qmin, qmax, storage)


def _float(name: str, dtype: type) -> FloatFormat:
    dt = np.dtype(dtype)
    return FloatFormat(name, dt.itemsize * 8, dt, float(ml_dtypes.finfo(dt).max))


FORMATS: dict[str, NumberFormat] = {
    "int8": _int("int8", 8, True),
    "uint8": _int("uint8", 8, False),
    # 7-bit signed weights for x86 CPUs without VNNI (ONNX Runtime's reduce_range): u8 x s7 pair
    # sums fit the saturating int16 of VPMADDUBSW.
    "int7": _int("int7", 7, True),
    "int4": _int("int4", 4, True),
    "uint4": _int("uint4", 4, False),
    "int3": _int("int3", 3, True),
    "uint3": _int("uint3", 3, False),
    "int2": _int("int2", 2, True),
    "uint2": _int("uint2", 2, False),
    # Ternary {-1, 0, 1}: a 2-bit signed code that never uses -2 (always narrow).
    "ternary": IntFormat("ternary", 2, True, -1, 1, np.dtype(np.int8)),
    # Accumulator / bias format (scale = input scale * weight scale, zero point 0).
    "int32": IntFormat("int32", 32, True, -(1 << 31), (1 << 31) - 1, np.dtype(np.int32)),
    "fp8_e4m3fn": _float("fp8_e4m3fn", ml_dtypes.float8_e4m3fn),
    "fp8_e5m2": _float("fp8_e5m2", ml_dtypes.float8_e5m2),
    "fp16": _float("fp16", np.float16),
    "bf16": _float("bf16", ml_dtypes.bfloat16),
}

_ALIASES = {
    "fp8": "fp8_e4m3fn",
    "e4m3": "fp8_e4m3fn",
    "fp8_e4m3": "fp8_e4m3fn",
    "e5m2": "fp8_e5m2",
    "float16": "fp16",
    "bfloat16": "bf16",
    "qint8": "int8",
    "quint8": "uint8",
}


def format_names() -> list[str]:
    """Canonical names of every known format."""
    return list(FORMATS)


def get_format(name: str) -> NumberFormat:
    """Look a format up by canonical name or common alias (``fp8`` → ``fp8_e4m3fn``).

    :raises ValueError: naming the unknown format and listing the known ones.
    """
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    try:
        return FORMATS[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown number format {name!r}; known formats: {', '.join(FORMATS)}"
        ) from None


def canonical_name(name: str) -> str:
    """The canonical spelling of a format name or alias."""
    return get_format(name).name


def int_format_for_bits(bits: int, signed: bool = True) -> IntFormat:
    """The integer format with ``bits`` bits (signed: 2, 3, 4, 7 or 8; unsigned: 2, 3, 4 or 8)."""
    name = f"{'' if signed else 'u'}int{bits}"
    fmt = FORMATS.get(name)
    if not isinstance(fmt, IntFormat):
        options = sorted(
            {f.bits for f in FORMATS.values() if isinstance(f, IntFormat) and f.signed == signed}
        )
        raise ValueError(
            f"no {'signed' if signed else 'unsigned'} integer format with {bits} bits; "
            f"choose bits from {options}"
        )
    return fmt
