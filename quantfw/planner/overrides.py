"""What the user changes about a target's defaults (:class:`Overrides`), checked on construction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..formats import canonical_name
from ..graph import OpKind
from ..spec import Granularity
from ..target.reader import fmt_values


class PlanError(ValueError):
    """Overrides that are malformed or that the target does not allow."""


_SPEC_KEYS = (
    "dtype",
    "symmetric",
    "narrow_range",
    "granularity",
    "axis",
    "group_size",
    "bits",
    "pair_limit",
)
_LAYER_KEYS = ("weight", "activation", "bits")


def _check_spec_changes(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}: expected a mapping of spec fields, got {value!r}")
    unknown = [k for k in value if k not in _SPEC_KEYS]
    if unknown:
        hint = " (use overrides.dynamic for dynamic activations)" if "dynamic" in unknown else ""
        raise PlanError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {fmt_values(_SPEC_KEYS)}{hint}"
        )
    out = dict(value)
    if "dtype" in out:
        try:
            out["dtype"] = canonical_name(out["dtype"])
        except ValueError as exc:
            raise PlanError(f"{where}.dtype: {exc}") from None
    if "granularity" in out:
        allowed = [g.value for g in Granularity]
        if out["granularity"] not in allowed:
            raise PlanError(
                f"{where}.granularity: {out['granularity']!r} is not a granularity; "
                f"allowed: {fmt_values(allowed)}"
            )
    for k in ("symmetric", "narrow_range"):
        if k in out and not isinstance(out[k], bool):
            raise PlanError(f"{where}.{k}: {out[k]!r} is not a boolean; allowed: true, false")
    for k in ("bits", "group_size", "axis", "pair_limit"):
        v = out.get(k)
        if k == "pair_limit" and v is None:
            continue  # removes the target's limit
        if k in out and (isinstance(v, bool) or not isinstance(v, int)):
            raise PlanError(f"{where}.{k}: {v!r} is not an integer")
    return out


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PlanError(f"{where}: expected a list of strings, got {value!r}")
    items = tuple(value)
    for v in items:
        if not isinstance(v, str):
            raise PlanError(f"{where}: {v!r} is not a string")
    return items


@dataclass(frozen=True)
class Overrides:
    """What the user changes about the target's defaults.

    :param ignore_names: node names kept in float.
    :param ignore_patterns: fnmatch globs over node names kept in float (``"*.attention.*"``).
    :param ignore_ops: op kinds kept in float.
    :param weight: spec fields changed for every weight (``{"dtype": "int4"}``, ``{"bits": 4}``:
        the 4-bit format of the same signedness).
    :param activation: spec fields changed for every activation.
    :param layers: glob over node names → ``{"weight": {...}, "activation": {...}}`` and/or
        ``{"bits": n}`` (shorthand for the weight's bits).  All matching patterns apply, in order;
        later ones win.  A layer's activation fields apply to the tensors it quantizes (its inputs
        and, unless a consumer claims it, its output).
    :param dynamic: ``True`` for dynamic activations (target must support them), ``False`` for
        static, ``None`` for the target's default.
    """

    ignore_names: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    ignore_ops: tuple[OpKind, ...] = ()
    weight: Mapping[str, Any] = field(default_factory=dict)
    activation: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dynamic: bool | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ignore_names", _names(self.ignore_names, "overrides.ignore_names"))
        set_(self, "ignore_patterns", _names(self.ignore_patterns, "overrides.ignore_patterns"))
        kinds = []
        for i, k in enumerate(
            _names(
                [k.value if isinstance(k, OpKind) else k for k in self.ignore_ops]
                if not isinstance(self.ignore_ops, str)
                else self.ignore_ops,
                "overrides.ignore_ops",
            )
        ):
            try:
                kinds.append(OpKind.parse(k, where=f"overrides.ignore_ops[{i}]"))
            except ValueError as exc:
                raise PlanError(str(exc)) from None
        set_(self, "ignore_ops", tuple(kinds))
        set_(self, "weight", _check_spec_changes(self.weight, "overrides.weight"))
        set_(self, "activation", _check_spec_changes(self.activation, "overrides.activation"))
        if not isinstance(self.layers, Mapping):
            raise PlanError(
                f"overrides.layers: expected a mapping of pattern → settings, got {self.layers!r}"
            )
        layers: dict[str, dict[str, Any]] = {}
        for pattern, entry in self.layers.items():
            where = f"overrides.layers[{pattern!r}]"
            if not isinstance(pattern, str):
                raise PlanError(f"overrides.layers: pattern {pattern!r} is not a string")
            if not isinstance(entry, Mapping):
                raise PlanError(
                    f"{where}: expected a mapping with keys {fmt_values(_LAYER_KEYS)}, got {entry!r}"
                )
            unknown = [k for k in entry if k not in _LAYER_KEYS]
            if unknown:
                raise PlanError(
                    f"{where}: unknown key {unknown[0]!r}; allowed keys: {fmt_values(_LAYER_KEYS)}"
                )
            clean: dict[str, Any] = {}
            for role in ("weight", "activation"):
                if role in entry:
                    clean[role] = _check_spec_changes(entry[role], f"{where}.{role}")
            if "bits" in entry:
                clean["bits"] = _check_spec_changes({"bits": entry["bits"]}, where)["bits"]
            layers[pattern] = clean
        set_(self, "layers", layers)
        if self.dynamic is not None and not isinstance(self.dynamic, bool):
            raise PlanError(
                f"overrides.dynamic: {self.dynamic!r} is not a boolean; allowed: true, false, null"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Overrides:
        """Build from a plain mapping (JSON), rejecting unknown keys."""
        if not isinstance(data, Mapping):
            raise PlanError(f"overrides: expected a mapping, got {data!r}")
        allowed = [f for f in cls.__dataclass_fields__]
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise PlanError(
                f"overrides: unknown key {unknown[0]!r}; allowed keys: {fmt_values(allowed)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The plain-mapping form that :meth:`from_dict` reads back."""
        return {
            "ignore_names": list(self.ignore_names),
            "ignore_patterns": list(self.ignore_patterns),
            "ignore_ops": [k.value for k in self.ignore_ops],
            "weight": dict(self.weight),
            "activation": dict(self.activation),
            "layers": {p: dict(v) for p, v in self.layers.items()},
            "dynamic": self.dynamic,
        }
