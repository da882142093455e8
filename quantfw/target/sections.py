"""The parts of a target spec, one frozen dataclass per table of the TOML file.

``docs/targets.md`` says what every field means; :class:`~quantfw.target.TargetSpec` puts the
parts together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..graph import OpKind
from ..spec import QuantParams, QuantSpec


@dataclass(frozen=True)
class Requirements:
    """What the machine needs to run the target (``[requires]`` in docs/targets.md)."""

    cpu_flags: tuple[str, ...] = ()
    cpu_flags_any: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    gpu: bool = False


@dataclass(frozen=True)
class SpecTemplate:
    """Default QuantSpec fields for weights or activations; the axis is filled in per node."""

    dtype: str
    symmetric: bool = True
    narrow_range: bool = False
    granularity: str = "per_tensor"
    group_size: int | None = None
    pair_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "dtype": self.dtype,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "granularity": self.granularity,
        }
        if self.group_size is not None:
            d["group_size"] = self.group_size
        if self.pair_limit is not None:
            d["pair_limit"] = self.pair_limit
        return d

    def spec(self, axis: int | None = None, dynamic: bool = False) -> QuantSpec:
        """The template as a QuantSpec; ``axis`` is needed for per-channel / per-group."""
        return QuantSpec(**self.to_dict(), axis=axis, dynamic=dynamic)


@dataclass(frozen=True)
class AllowedSet:
    """Values a weight or activation spec may take; ``None`` means anything."""

    dtypes: tuple[str, ...] | None = None
    granularities: tuple[str, ...] | None = None
    symmetric: tuple[bool, ...] | None = None
    narrow_range: tuple[bool, ...] | None = None
    group_sizes: tuple[int, ...] | None = None

    def merged(self, other: AllowedSet) -> AllowedSet:
        """``self`` with every key that ``other`` restricts replaced by ``other``'s value."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def violations(self, spec: QuantSpec) -> list[tuple[str, Any, tuple[Any, ...]]]:
        """``(field, value, allowed values)`` for each field of ``spec`` this set rejects."""
        out: list[tuple[str, Any, tuple[Any, ...]]] = []
        checks: list[tuple[str, Any, tuple[Any, ...] | None]] = [
            ("dtype", spec.dtype, self.dtypes),
            ("granularity", spec.granularity.value, self.granularities),
            ("symmetric", spec.symmetric, self.symmetric),
            ("narrow_range", spec.narrow_range, self.narrow_range),
        ]
        if spec.group_size is not None:
            checks.append(("group_size", spec.group_size, self.group_sizes))
        for name, value, allowed in checks:
            if allowed is not None and value not in allowed:
                out.append((name, value, allowed))
        return out

    def to_dict(self, weights: bool = True) -> dict[str, Any]:
        """TOML-shaped: ``"*"`` for an unrestricted key (no ``group_sizes`` for activations)."""
        return {
            f.name: "*" if getattr(self, f.name) is None else list(getattr(self, f.name))
            for f in fields(self)
            if weights or f.name != "group_sizes"
        }


@dataclass(frozen=True)
class Allowed:
    """Everything a user override may choose, globally and per op kind."""

    weight: AllowedSet = field(default_factory=AllowedSet)
    activation: AllowedSet = field(default_factory=AllowedSet)
    per_op: Mapping[OpKind, tuple[AllowedSet, AllowedSet]] = field(default_factory=dict)
    weight_only_dtypes: tuple[str, ...] = ()
    weight_only_granularities: tuple[str, ...] = ()
    #: ``"own_type"``: an activation is quantized into its grid's own type (int4: INT4), so
    #: only whole types deploy; ``"clip_8bit"``: integer grids of at most 8 bits are carried in
    #: uint8/int8 codes restricted to the grid by a clip on the codes (docs/targets.md).
    narrow_activations: str = "own_type"

    def weight_only(self, spec: QuantSpec) -> bool:
        """Whether a layer whose weight gets ``spec`` runs weight-only (activations float)."""
        return (
            spec.dtype in self.weight_only_dtypes
            or spec.granularity.value in self.weight_only_granularities
        )

    def for_op(self, op: OpKind | str) -> tuple[AllowedSet, AllowedSet]:
        """``(weight set, activation set)`` in force for op kind ``op``."""
        extra = self.per_op.get(OpKind(op))
        if extra is None:
            return self.weight, self.activation
        return self.weight.merged(extra[0]), self.activation.merged(extra[1])


@dataclass(frozen=True)
class BiasRule:
    """How biases of quantized ops are stored (``int32``, ``float`` or ``none``)."""

    mode: str = "int32"


@dataclass(frozen=True)
class DynamicRule:
    """Dynamic activation quantization (``[dynamic]`` in docs/targets.md)."""

    supported: bool = False
    default: bool = False
    granularity: str = "per_tensor"
    ops: frozenset[OpKind] = frozenset()
    activation: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixedOutput:
    """Output quantization params imposed by the runtime for one op kind."""

    scale: float
    zero_point: int

    def params(self) -> QuantParams:
        return QuantParams(self.scale, self.zero_point)


@dataclass(frozen=True)
class OpRules:
    """Which op kinds are quantized, kept float, share scales, have fixed outputs."""

    quantize: frozenset[OpKind]
    float_only: frozenset[OpKind] = frozenset()
    shared_scale: frozenset[OpKind] = frozenset()
    quantize_outputs: str = "always"
    fixed_output: Mapping[OpKind, FixedOutput] = field(default_factory=dict)
    per_op: Mapping[OpKind, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    only_between_quantized: frozenset[OpKind] = frozenset()
    weight_only: frozenset[OpKind] = frozenset()
    min_reduction: int = 0
    float_outputs: frozenset[OpKind] = frozenset()
