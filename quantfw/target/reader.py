"""Typed reads of one value at a dotted key of a target spec, with errors people can act on.

Every error is a :class:`TargetSpecError` whose message names the file, the dotted key, the
offending value and what is allowed, e.g.::

    generic.toml: ops.quantize[2]: 'convv' is not an op kind; allowed: conv, conv_transpose, …
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from ..formats import FORMATS, canonical_name
from ..graph import OpKind


class TargetSpecError(ValueError):
    """A target spec that cannot be read or breaks the schema (message names file and key)."""


def fmt_values(values: Iterable[Any]) -> str:
    """``values`` for a message: strings bare, anything else as its repr, comma-separated."""
    return ", ".join(v if isinstance(v, str) else repr(v) for v in values)


class TomlReader:
    """Reads values out of a parsed document, raising TargetSpecError for ``source``."""

    def __init__(self, source: str) -> None:
        self.source = source

    # -- error helpers -------------------------------------------------------------------------
    def fail(self, key: str, message: str) -> TargetSpecError:
        where = f"{key}: " if key else "top level: "
        return TargetSpecError(f"{self.source}: {where}{message}")

    def bad(self, key: str, value: Any, what: str, allowed: str) -> TargetSpecError:
        return self.fail(key, f"{value!r} is not {what}; allowed: {allowed}")

    def table(self, value: Any, key: str, allowed_keys: Iterable[str]) -> Mapping[str, Any]:
        allowed_keys = tuple(allowed_keys)
        if not isinstance(value, Mapping):
            raise self.bad(key, value, "a table", f"a table with keys {fmt_values(allowed_keys)}")
        for k, v in value.items():
            if k not in allowed_keys:
                where = f"{key}.{k}" if key else str(k)
                shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
                keys = fmt_values(allowed_keys)
                raise self.fail(where, f"unknown key {k!r} (value {shown}); allowed keys: {keys}")
        return value

    def required(self, tbl: Mapping[str, Any], k: str, prefix: str, expected: str) -> Any:
        if k not in tbl:
            where = f"{prefix}.{k}" if prefix else k
            raise self.fail(where, f"required key is missing; expected {expected}")
        return tbl[k]

    # -- scalar helpers ------------------------------------------------------------------------
    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.bad(key, value, "a boolean", "true, false")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.bad(key, value, "a string", "any text in quotes")
        return value

    def choice(self, value: Any, key: str, choices: Iterable[str], what: str) -> str:
        choices = tuple(choices)
        if not isinstance(value, str) or value not in choices:
            raise self.bad(key, value, what, fmt_values(choices))
        return value

    def positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.bad(key, value, "a positive integer", "1, 2, 3, …")
        return value

    def array(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.bad(key, value, "an array", "[…] of values")
        return value

    def dtype(self, value: Any, key: str) -> str:
        try:
            if not isinstance(value, str):
                raise ValueError
            return canonical_name(value)
        except ValueError:
            formats = fmt_values(FORMATS)
            raise self.bad(key, value, "a number format", formats) from None

    def op_kind(self, value: Any, key: str) -> OpKind:
        try:
            return OpKind(value)
        except ValueError:
            raise self.bad(key, value, "an op kind", fmt_values(k.value for k in OpKind)) from None

    def op_kinds(self, value: Any, key: str) -> frozenset[OpKind]:
        items = self.array(value, key)
        kinds: list[OpKind] = []
        for i, v in enumerate(items):
            kind = self.op_kind(v, f"{key}[{i}]")
            if kind in kinds:
                raise self.fail(f"{key}[{i}]", f"{v!r} is listed twice; list each op kind once")
            kinds.append(kind)
        return frozenset(kinds)

    def scale(self, value: Any, key: str) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                num = float(Fraction(value.replace(" ", "")))
            elif isinstance(value, (int, float)):
                num = float(value)
            else:
                raise ValueError
            if not (num > 0 and num != float("inf")):
                raise ValueError
        except (ValueError, ZeroDivisionError):
            raise self.bad(
                key,
                value,
                "a positive scale",
                'a positive number or a fraction string such as "1/256"',
            ) from None
        return num
