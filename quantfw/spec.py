"""How one tensor is quantized (:class:`QuantSpec`) and with what numbers (:class:`QuantParams`).

Conventions shared by every module, plugin and artifact:

* ``per_tensor``: one scale / zero point (arrays of shape ``()``).
* ``per_channel``: one per index along ``axis``; params have shape ``(x.shape[axis],)``.
* ``per_group``: blocks of ``group_size`` consecutive elements along ``axis``; params have the
  tensor's rank with ``axis`` shrunk to ``ceil(x.shape[axis] / group_size)`` (the layout of ONNX
  blocked ``DequantizeLinear``).
* ``per_token``: dynamic, one scale per row of the last dimension (reduced over ``axis``, default
  ``-1``); params have the tensor's shape with ``axis`` kept as size 1.
* Integer formats: ``real = (q - zero_point) * scale``; float formats (fp8): ``real = q * scale``
  with zero point 0.
* ``pair_limit`` (weights of integer kernels that add adjacent products in 16 bits): no two
  codes the kernel pairs may sum beyond it in magnitude; see :mod:`quantfw.pairs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from .formats import FloatFormat, IntFormat, NumberFormat, canonical_name, get_format

__all__ = ["Granularity", "QuantSpec", "QuantParams", "SpecError"]


class SpecError(ValueError):
    """A QuantSpec whose fields contradict each other or name unknown values."""


class Granularity(str, Enum):
    """How many scale/zero-point pairs a tensor gets."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"
    PER_TOKEN = "per_token"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


_SPEC_FIELDS = (
    "dtype",
    "symmetric",
    "narrow_range",
    "granularity",
    "axis",
    "group_size",
    "dynamic",
    "pair_limit",
)


@dataclass(frozen=True)
class QuantSpec:
    """The quantization scheme of one tensor.

    :param dtype: a format name from :mod:`quantfw.formats` (``int8``, ``uint4``, ``fp8_e4m3fn``…).
    :param symmetric: zero point fixed at the grid's centre (0 for signed, 2**(bits-1) for unsigned).
    :param narrow_range: drop the most negative code so the grid is symmetric (int8 → [-127, 127]).
    :param granularity: see the module docstring.
    :param axis: channel / group / token axis (required for per-channel and per-group).
    :param group_size: elements per group (per-group only).
    :param dynamic: parameters are computed from each input at run time, not calibrated.
    :param pair_limit: for weights read by an integer kernel that adds the products of adjacent
        reduction elements in a saturating 16-bit lane (x86 AVX2 ``VPMADDUBSW`` with uint8
        activations): every such pair of signed codes sums to at most this in magnitude, so
        the kernel cannot saturate (128 for uint8 activations).  :func:`quantfw.numerics.quantize`
        enforces it (:mod:`quantfw.pairs`) on signed integer grids of at most 8 bits; other
        formats (uint8 weights run on a kernel that widens first) ignore it.  ``None``: none.
    """

    dtype: str = "int8"
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    group_size: int | None = None
    dynamic: bool = False
    pair_limit: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "dtype", canonical_name(self.dtype))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        try:
            object.__setattr__(self, "granularity", Granularity(self.granularity))
        except ValueError:
            allowed = ", ".join(g.value for g in Granularity)
            raise SpecError(
                f"unknown granularity {self.granularity!r}; allowed: {allowed}"
            ) from None
        g = self.granularity
        if self.axis is not None and (
            not isinstance(self.axis, int) or isinstance(self.axis, bool)
        ):
            raise SpecError(f"axis must be an integer, not {self.axis!r:.40}")
        if g in (Granularity.PER_CHANNEL, Granularity.PER_GROUP) and self.axis is None:
            raise SpecError(f"granularity {g.value} needs an axis")
        if g is Granularity.PER_GROUP:
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise SpecError(
                    f"per_group needs a positive integer group_size, got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise SpecError(f"group_size is only meaningful with per_group, not {g.value}")
        if g is Granularity.PER_TOKEN:
            if not self.dynamic:
                raise SpecError("per_token quantization is dynamic: set dynamic=True")
            if self.axis is None:
                object.__setattr__(self, "axis", -1)
        if isinstance(self.format, FloatFormat):
            if not self.symmetric:
                raise SpecError(f"{self.dtype} has no zero point: it must be symmetric")
            if self.narrow_range:
                raise SpecError(f"narrow_range applies to integer formats, not {self.dtype}")
        if self.dtype == "ternary" and not self.symmetric:
            raise SpecError("ternary {-1, 0, 1} is symmetric by definition")
        if self.pair_limit is not None and (
            isinstance(self.pair_limit, bool)
            or not isinstance(self.pair_limit, int)
            or self.pair_limit < 1
        ):
            raise SpecError(f"pair_limit must be a positive integer, got {self.pair_limit!r}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def format(self) -> NumberFormat:
        return get_format(self.dtype)

    @property
    def bits(self) -> int:
        return self.format.bits

    @property
    def is_float(self) -> bool:
        return isinstance(self.format, FloatFormat)

    @property
    def qmin(self) -> int:
        fmt = self.format
        if not isinstance(fmt, IntFormat):
            return int(-fmt.max_value)
        return fmt.bounds(self.narrow_range)[0]

    @property
    def qmax(self) -> int:
        fmt = self.format
        if not isinstance(fmt, IntFormat):
            return int(fmt.max_value)
        return fmt.bounds(self.narrow_range)[1]

    def with_bits(self, bits: int) -> QuantSpec:
        """The same scheme on an integer grid of ``bits`` bits, keeping signedness."""
        from .formats import int_format_for_bits

        signed = self.format.signed if isinstance(self.format, IntFormat) else True
        return replace(self, dtype=int_format_for_bits(bits, signed).name)

    def replace(self, **changes: Any) -> QuantSpec:
        return replace(self, **changes)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["granularity"] = self.granularity.value
        if d["pair_limit"] is None:  # the common case: keep recipes as they were
            del d["pair_limit"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> QuantSpec:
        """Build a spec from a mapping, rejecting unknown keys with a message naming ``where``."""
        if "bits" in data:
            data = dict(data)
            bits = data.pop("bits")
            base = cls.from_dict(data, where) if data else cls()
            return base.with_bits(int(bits))
        unknown = set(data) - set(_SPEC_FIELDS)
        if unknown:
            raise SpecError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(_SPEC_FIELDS)}, bits"
            )
        try:
            return cls(**data)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        except TypeError as exc:  # pragma: no cover - defensive
            raise SpecError(f"{where}: {exc}") from None


@dataclass
class QuantParams:
    """Scale and zero point of one tensor (shapes follow the module docstring).

    ``zero_point`` is stored as int32 whatever the format, so that it can hold any grid's values;
    backends cast it to the storage type the runtime wants.
    """

    scale: np.ndarray
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros((), np.int32))

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=np.int32)
        if self.zero_point.shape != self.scale.shape:
            self.zero_point = np.broadcast_to(self.zero_point, self.scale.shape).copy()
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError(f"scales must be finite and positive, got {self.scale!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.scale.shape == other.scale.shape
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )
