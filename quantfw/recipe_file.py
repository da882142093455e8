"""Reading a recipe's file pair back: the checks behind :meth:`quantfw.recipe.Recipe.load`.

A recipe is ``NAME.json`` plus ``NAME.safetensors``.  The JSON records the arrays file's name as
saved (``arrays_file``) and the SHA-256 of its bytes (``arrays_sha256``; files written by
earlier releases have none).  The arrays file is looked for under the
JSON's own name first, so a pair renamed together loads, then under the recorded name, so a
JSON renamed alone still finds its arrays; with a recorded digest, a file whose bytes differ is
passed over and, when none matches, refused.

Every field is checked for its type and every referenced array for its presence, dtype and
shape, and a problem is a :class:`~quantfw.recipe.RecipeError` naming the file and the field
(``tensors.x.scale``), never a ``KeyError`` or ``TypeError`` from deep inside.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import QuantfwError
from .spec import Granularity, QuantParams, QuantSpec

__all__ = ["RecipeError", "RecipeReader", "arrays_digest", "describe"]

_MISSING = object()
_KINDS = {str: "a string", dict: "a JSON object", list: "a list", int: "an integer"}


class RecipeError(QuantfwError, ValueError):
    """A recipe file that cannot be read (missing arrays, newer schema, bad JSON…)."""


def arrays_digest(payload: bytes) -> str:
    """The hex SHA-256 a recipe's JSON records of its arrays file's bytes."""
    return hashlib.sha256(payload).hexdigest()


def describe(value: Any) -> str:
    """``value`` for a message: ``0 (int)``, ``true (a boolean)``, ``a list``."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else None
    kind = {bool: "a boolean", dict: "a JSON object", list: "a list", type(None): "null"}.get(
        type(value), type(value).__name__
    )
    return f"{text} ({kind})" if text is not None and value is not None else kind


def _is(value: Any, kind: type) -> bool:
    return type(value) is int if kind is int else isinstance(value, kind)


class RecipeReader:
    """Typed access to a recipe's JSON document and the arrays file that belongs to it; every
    failure is a :class:`RecipeError` naming the file and the field.

    :param doc: the parsed JSON of ``json_path`` (format marker and schema already checked).
    :param own_arrays: ``NAME.safetensors`` for ``NAME.json``.
    """

    def __init__(self, doc: dict, json_path: Path, own_arrays: Path):
        from safetensors.numpy import load as st_load

        self.doc = doc
        self.json_path = json_path
        self.arrays_path, raw = _resolve_arrays(json_path, own_arrays, doc)
        try:
            self.arrays: dict[str, np.ndarray] = st_load(raw) if raw else {}
        except Exception as exc:  # safetensors raises its own error types
            raise RecipeError(f"{self.arrays_path}: unreadable safetensors file ({exc})") from None

    def error(self, where: str, message: str) -> RecipeError:
        return RecipeError(f"{self.json_path}: {where} {message}")

    def entries(self, key: str) -> list[tuple[str, str, dict]]:
        """``(name, field path, entry)`` of the JSON object ``doc[key]`` (empty if absent),
        each entry checked to be an object."""
        out = []
        for name, entry in self.field(self.doc, key, dict, "", {}).items():
            where = f"{key}.{name}"
            if not isinstance(entry, dict):
                raise self.error(where, f"is {describe(entry)}; expected a JSON object")
            out.append((name, where, entry))
        return out

    def spec(self, entry: dict, where: str) -> QuantSpec:
        raw = self.field(entry, "spec", dict, where)
        try:
            return QuantSpec.from_dict(raw, where=f"{self.json_path}: {where}.spec")
        except (TypeError, ValueError) as exc:
            if str(exc).startswith(str(self.json_path)):
                raise RecipeError(str(exc)) from None
            raise self.error(f"{where}.spec", f"is not a valid spec ({exc})") from None

    def field(self, obj: dict, key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
        name = f"{where}.{key}" if where else key
        if key not in obj or (obj[key] is None and default is None):
            if default is _MISSING:
                raise self.error(name, "is missing")
            return default
        value = obj[key]
        if not _is(value, kind):
            raise self.error(name, f"is {describe(value)}; expected {_KINDS[kind]}")
        return value

    def names(self, obj: dict, key: str, where: str, required: bool = False) -> list[str] | None:
        value = self.field(obj, key, list, where, _MISSING if required else None)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.error(f"{where}.{key}", "must be a list of strings")
        return value

    def shape(self, obj: dict, key: str, where: str, required: bool = False) -> list[int] | None:
        value = self.field(obj, key, list, where, _MISSING if required else None)
        if value is not None and not all(type(d) is int and d >= 0 for d in value):
            raise self.error(f"{where}.{key}", f"{value} is not a shape (non-negative integers)")
        return value

    def array(self, obj: dict, key: str, where: str, kinds: str, what: str) -> np.ndarray:
        """The array ``obj[key]`` names, checked to be of a dtype kind in ``kinds``."""
        name = self.field(obj, key, str, where)
        field = f"{where}.{key}"
        if name not in self.arrays:
            raise RecipeError(
                f"{self.arrays_path}: array {name!r} (named by {field} in {self.json_path.name}) "
                "is missing: the two files do not belong together"
            )
        a = self.arrays[name]
        if a.dtype.kind not in kinds:
            raise RecipeError(
                f"{self.arrays_path}: array {name!r} ({field}) is {a.dtype}; expected {what}"
            )
        return a

    def params(
        self, entry: dict, where: str, spec: QuantSpec, shape: list[int] | None
    ) -> QuantParams:
        """The scale and zero point ``entry`` names, checked against the spec and tensor shape."""
        scale = self.array(entry, "scale", where, "f", "a floating-point scale")
        zp = self.array(entry, "zero_point", where, "iu", "an integer zero point")
        want = _param_shape(spec, shape)
        if want is not None and scale.size != math.prod(want):
            raise RecipeError(
                f"{self.arrays_path}: {where}.scale has shape {list(scale.shape)}; a "
                f"{spec.granularity.value} {spec.dtype} tensor of shape {shape} needs {list(want)}"
            )
        if zp.shape != scale.shape and zp.size != 1:
            raise RecipeError(
                f"{self.arrays_path}: {where}: zero point shape {list(zp.shape)} does not fit scale "
                f"shape {list(scale.shape)}"
            )
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise RecipeError(
                f"{self.arrays_path}: {where}.scale holds non-finite or non-positive scales"
            )
        return QuantParams(scale, zp)


def _resolve_arrays(json_path: Path, own: Path, doc: dict) -> tuple[Path, bytes]:
    """The arrays file that belongs to ``json_path`` and its bytes (see the module docstring)."""
    stored = doc.get("arrays_file")
    if stored is not None and (
        not isinstance(stored, str) or Path(stored).name != stored or stored in ("", ".", "..")
    ):
        raise RecipeError(
            f"{json_path}: arrays_file is {describe(stored)}; expected the file name of the "
            "arrays file next to it"
        )
    digest = doc.get("arrays_sha256")
    if digest is not None and not isinstance(digest, str):
        raise RecipeError(f"{json_path}: arrays_sha256 is {describe(digest)}; expected a string")
    candidates = [own]
    if stored and json_path.with_name(stored) != own:
        candidates.append(json_path.with_name(stored))
    present = [p for p in candidates if p.is_file()]
    if not present:
        also = (
            f" (it was saved as {candidates[1].name!r}, which is not there either)"
            if len(candidates) > 1
            else ""
        )
        raise RecipeError(
            f"{json_path}: its arrays file {str(own)!r} is missing{also}; keep the .json and "
            f".safetensors files together, and when renaming a recipe rename both "
            f"(NAME.json + NAME.safetensors)"
        )
    for path in present:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read the recipe's arrays ({exc.strerror})") from None
        if digest is None or arrays_digest(raw) == digest:
            return path, raw
    names = " and ".join(repr(p.name) for p in present)
    raise RecipeError(
        f"{json_path}: its arrays file {names} {'does' if len(present) == 1 else 'do'} not "
        f"match it (SHA-256 differs from the one recorded when the recipe was saved): they come "
        "from different saves; use the .safetensors file written together with this .json"
    )


def _param_shape(spec: QuantSpec, shape: list[int] | None) -> tuple[int, ...] | None:
    """The scale shape ``spec`` gives a tensor of ``shape`` (``None``: not known here)."""
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return ()
    if shape is None or spec.axis is None or not -len(shape) <= spec.axis < len(shape):
        return None
    axis = spec.axis % len(shape)
    if g is Granularity.PER_CHANNEL:
        return (shape[axis],)
    if g is Granularity.PER_GROUP:
        out = list(shape)
        out[axis] = math.ceil(shape[axis] / spec.group_size)
        return tuple(out)
    return None
