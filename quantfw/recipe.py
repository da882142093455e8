"""The Recipe: every quantization decision and number, ready for any backend.

On disk a recipe is two files side by side: ``NAME.json`` (specs, shapes, decisions, provenance —
small and diffable) and ``NAME.safetensors`` (scales, zero points, equalisation factors and
rewritten weights).  Nothing is pickled.  ``Recipe.load`` reads every older schema version and
refuses files written by a newer one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write_bytes, atomic_write_text
from .spec import QuantParams, QuantSpec

__all__ = ["SCHEMA_VERSION", "Recipe", "TensorRecipe", "Equalization", "RecipeError"]

#: Version of the on-disk format.  Bump on any incompatible change.  Version 2 records
#: SmoothQuant's per-activation ``smooth`` factors of version 1 as :class:`Equalization` entries.
SCHEMA_VERSION = 2

_ROLES = ("activation", "weight", "bias")


class RecipeError(ValueError):
    """A recipe file that cannot be read (missing arrays, newer schema, bad JSON…)."""


def _arrays_file(json_path: Path, name: Any) -> Path:
    """The arrays file a recipe's ``arrays_file`` names: a file name in the JSON file's folder."""
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        raise RecipeError(
            f"{json_path}: arrays_file {name!r} is not a file name next to the recipe; it must "
            "name the .safetensors file in the same folder (e.g. 'NAME.safetensors')"
        )
    return json_path.with_name(name)


def _check_sections(doc: dict[str, Any]) -> None:
    """The JSON types of a recipe's top-level sections (their entries: :func:`_check_entry`)."""
    for key, kind in (("provenance", dict), ("decisions", list)):
        if not isinstance(doc.get(key, kind()), kind):
            raise TypeError(f"{key!r} must be a JSON {'object' if kind is dict else 'array'}")
    for key in ("tensors", "equalizations", "weights"):
        section = doc.get(key, {})
        if not isinstance(section, dict) or not all(isinstance(e, dict) for e in section.values()):
            raise TypeError(f"{key!r} must be a JSON object of objects, one per tensor")
    if not isinstance(doc.get("target", ""), str):
        raise TypeError("'target' must be a string")


def _check_entry(entry: dict[str, Any], strings: tuple[str, ...], names: tuple[str, ...]) -> None:
    """Fields of one entry that must be strings (or null) or lists of names (or null); array
    keys (``scale``, ``zero_point``, ``smooth``, ``array``) must be strings."""
    for key in (*strings, "scale", "zero_point", "smooth", "array", "role"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise TypeError(f"{key!r} must be a string, not {entry[key]!r:.60}")
    for key in names:
        v = entry.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(i, str) for i in v)):
            raise TypeError(f"{key!r} must be a list of node names, not {v!r:.60}")


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise TypeError(f"'shape' must be a list of non-negative integers, not {value!r:.60}")
    return tuple(value)


@dataclass
class TensorRecipe:
    """Quantization of one tensor.

    :param name: tensor name in the QuantGraph.
    :param role: ``activation``, ``weight`` or ``bias``.
    :param spec: the scheme.
    :param params: scale / zero point; ``None`` for dynamic specs.
    :param node: node owning a weight or bias (``None`` for activations).
    :param shape: the tensor's shape where known (activations: as observed, batch axis included).
    :param share_group: tensors of the same group carry identical params.
    :param consumers: ``None`` when every reader sees the quantized value (the tensor is stored
        quantized); otherwise the names of the graph nodes that read it quantized, while other
        readers keep the float value (Q/DQ on those edges only).  When the recipe equalises the
        tensor (:class:`Equalization`), these are exactly the equalised consumers and ``params``
        describe the rescaled value.
    """

    name: str
    role: str
    spec: QuantSpec
    params: QuantParams | None = None
    node: str | None = None
    shape: tuple[int, ...] | None = None
    share_group: str | None = None
    consumers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.consumers is not None:
            self.consumers = tuple(self.consumers)
        if self.role not in _ROLES:
            raise RecipeError(f"tensor {self.name!r}: role {self.role!r} is not one of {_ROLES}")
        if self.params is None and not self.spec.dynamic:
            raise RecipeError(f"tensor {self.name!r}: a static spec needs params")
        if self.shape is not None:
            self.shape = tuple(int(d) for d in self.shape)


@dataclass
class Equalization:
    """A per-channel rescaling of one activation for some of its readers.

    The nodes in ``consumers`` compute with ``x * (1 / scale)`` (one factor per channel of the
    last axis, the float32 multiplier of :func:`quantfw.numerics.equalization_multiplier`)
    instead of ``x``, and their weights were multiplied by ``scale`` along their input-channel
    axis (in ``Recipe.weights``), so the float product is unchanged while what gets quantized is
    not: SmoothQuant moves activation outliers into the weights this way, AWQ protects a weight's
    salient input channels.  Backends apply it as one elementwise multiply on those edges (in
    front of the quantizer where the activation is quantized there).  A rescaling that can be
    folded into the producer's own weights (cross-layer equalisation) needs no record: it is a
    rewrite of both layers' weights.

    :param tensor: the activation's name.
    :param scale: positive, finite divisors, one per channel of the last axis (float32).
    :param consumers: the graph nodes that read the rescaled value.
    :param source: the algorithm that chose it (``"smoothquant"``), for provenance.
    """

    tensor: str
    scale: np.ndarray
    consumers: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.consumers = tuple(self.consumers)
        if self.scale.ndim != 1 or not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise RecipeError(
                f"equalisation of {self.tensor!r}: the scale must be a 1-D array of finite "
                "positive values"
            )
        if not self.consumers:
            raise RecipeError(f"equalisation of {self.tensor!r} names no consumer")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Equalization):
            return NotImplemented
        return (self.tensor, self.consumers, self.source) == (
            other.tensor,
            other.consumers,
            other.source,
        ) and np.array_equal(self.scale, other.scale)


@dataclass
class Recipe:
    """The result of a quantization run.

    :param target: the target spec's name.
    :param tensors: tensor name → :class:`TensorRecipe`.
    :param weights: rewritten float weights by initializer name (bn folding, equalisation,
        learned rounding); backends use them in place of the model's own.
    :param equalizations: activation name → :class:`Equalization` (per-channel rescalings on
        some of its readers' edges).
    :param decisions: per node ``{"node", "op", "quantized", "reason"}``, from the plan.
    :param provenance: target, algorithms, calibration size, versions, …
    """

    target: str
    tensors: dict[str, TensorRecipe] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    equalizations: dict[str, Equalization] = field(default_factory=dict)

    # -- convenience ---------------------------------------------------------------------------
    def add(self, tensor: TensorRecipe) -> None:
        self.tensors[tensor.name] = tensor

    def equalization_for(self, tensor: str, consumer: str) -> Equalization | None:
        """The equalisation ``consumer`` reads ``tensor`` through, if any."""
        eq = self.equalizations.get(tensor)
        return eq if eq is not None and consumer in eq.consumers else None

    def check(self) -> None:
        """Check that the entries fit together.

        :raises RecipeError: an equalised activation that is quantized for readers other than
            exactly its equalised consumers (its parameters could not describe both values).
        """
        for name, eq in self.equalizations.items():
            t = self.tensors.get(name)
            if t is None or t.role != "activation":
                continue
            if t.consumers is None or set(t.consumers) != set(eq.consumers):
                readers = "every reader" if t.consumers is None else sorted(t.consumers)
                raise RecipeError(
                    f"activation {name!r} is equalised for {sorted(eq.consumers)} but quantized "
                    f"for {readers}; an equalised activation must be quantized on exactly its "
                    "equalised consumers' edges"
                )

    def of_role(self, role: str) -> dict[str, TensorRecipe]:
        return {k: v for k, v in self.tensors.items() if v.role == role}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipe):
            return NotImplemented
        return (
            self.target == other.target
            and self.tensors == other.tensors
            and self.weights.keys() == other.weights.keys()
            and all(
                self.weights[k].dtype == other.weights[k].dtype
                and np.array_equal(self.weights[k], other.weights[k])
                for k in self.weights
            )
            and self.decisions == other.decisions
            and self.provenance == other.provenance
            and self.equalizations == other.equalizations
        )

    # -- persistence ---------------------------------------------------------------------------
    @staticmethod
    def paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """``(json_path, arrays_path)`` for a recipe saved at ``path`` (suffix optional)."""
        p = Path(path)
        base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
        return base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")

    def to_json_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The JSON document and the arrays it refers to."""
        arrays: dict[str, np.ndarray] = {}
        tensors = {}
        for name, t in self.tensors.items():
            entry: dict[str, Any] = {"role": t.role, "spec": t.spec.to_dict()}
            if t.node is not None:
                entry["node"] = t.node
            if t.shape is not None:
                entry["shape"] = list(t.shape)
            if t.share_group is not None:
                entry["share_group"] = t.share_group
            if t.consumers is not None:
                entry["consumers"] = list(t.consumers)
            if t.params is not None:
                entry["scale"] = f"params/{name}/scale"
                entry["zero_point"] = f"params/{name}/zero_point"
                arrays[entry["scale"]] = np.array(t.params.scale, order="C")
                arrays[entry["zero_point"]] = np.array(t.params.zero_point, order="C")
                if t.params.scale.size <= 4:  # readable in a diff
                    entry["scale_values"] = [float(v) for v in t.params.scale.ravel()]
                    entry["zero_point_values"] = [int(v) for v in t.params.zero_point.ravel()]
            tensors[name] = entry
        weights = {}
        for name, w in self.weights.items():
            key = f"weights/{name}"
            arrays[key] = np.array(w, order="C")
            weights[name] = {"array": key, "shape": list(w.shape), "dtype": str(w.dtype)}
        equalizations = {}
        for name, eq in self.equalizations.items():
            key = f"equalizations/{name}/scale"
            arrays[key] = np.array(eq.scale, order="C")
            equalizations[name] = {
                "scale": key,
                "consumers": list(eq.consumers),
                "source": eq.source,
            }
        doc = {
            "schema_version": SCHEMA_VERSION,
            "format": "quantfw-recipe",
            "target": self.target,
            "provenance": self.provenance,
            "tensors": tensors,
            "weights": weights,
            "equalizations": equalizations,
            "decisions": self.decisions,
        }
        return doc, arrays

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<path>.json`` and ``<path>.safetensors`` atomically; returns both paths."""
        from safetensors.numpy import save as st_save

        json_path, arrays_path = self.paths(path)
        doc, arrays = self.to_json_dict()
        doc["arrays_file"] = arrays_path.name
        payload = st_save(arrays, metadata={"format": "quantfw-recipe"}) if arrays else b""
        atomic_write_bytes(arrays_path, payload)
        atomic_write_text(json_path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
        return json_path, arrays_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a recipe written by :meth:`save`.

        :raises RecipeError: naming the file and what is wrong.
        """
        from safetensors.numpy import load as st_load

        json_path, arrays_path = cls.paths(path)
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"recipe file {str(json_path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{json_path}: not a valid recipe JSON file ({exc})") from None
        except RecursionError:  # json recurses once per nested array / object
            raise RecipeError(
                f"{json_path}: not a valid recipe JSON file (arrays or objects nested too deeply)"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != "quantfw-recipe":
            raise RecipeError(f"{json_path}: not a quantfw recipe (missing format marker)")
        version = doc.get("schema_version")
        if not isinstance(version, int):
            raise RecipeError(f"{json_path}: schema_version missing or not an integer")
        if version > SCHEMA_VERSION:
            raise RecipeError(
                f"{json_path} was written with recipe schema version {version}, but this quantfw "
                f"reads versions up to {SCHEMA_VERSION}: upgrade quantfw to load it"
            )
        if doc.get("arrays_file"):
            arrays_path = _arrays_file(json_path, doc["arrays_file"])
        try:
            raw = arrays_path.read_bytes()
        except FileNotFoundError:
            raise RecipeError(
                f"{json_path}: its arrays file {str(arrays_path)!r} is missing; keep the .json "
                "and .safetensors files together"
            ) from None
        try:
            arrays = st_load(raw) if raw else {}
        except Exception as exc:  # safetensors raises its own error types
            raise RecipeError(f"{arrays_path}: unreadable safetensors file ({exc})") from None

        def array(key: str) -> np.ndarray:
            try:
                return arrays[key]
            except KeyError:
                raise RecipeError(f"{arrays_path}: array {key!r} is missing") from None

        where = "top level"
        try:
            _check_sections(doc)
            recipe = cls(
                target=doc.get("target", ""),
                decisions=list(doc.get("decisions", [])),
                provenance=dict(doc.get("provenance", {})),
            )
            for name, entry in doc.get("tensors", {}).items():
                where = f"tensors.{name}"
                _check_entry(entry, ("node", "share_group"), ("consumers",))
                spec = QuantSpec.from_dict(entry["spec"], where=f"{json_path}: tensors.{name}.spec")
                params = None
                if "scale" in entry:
                    params = QuantParams(array(entry["scale"]), array(entry["zero_point"]))
                recipe.add(
                    TensorRecipe(
                        name=name,
                        role=entry["role"],
                        spec=spec,
                        params=params,
                        node=entry.get("node"),
                        shape=_shape(entry["shape"]) if "shape" in entry else None,
                        share_group=entry.get("share_group"),
                        consumers=entry.get("consumers"),
                    )
                )
                if "smooth" in entry:  # schema 1: SmoothQuant's factors lived on the tensor
                    recipe.equalizations[name] = Equalization(
                        name, array(entry["smooth"]), entry.get("consumers") or (), "smoothquant"
                    )
            for name, entry in doc.get("equalizations", {}).items():
                where = f"equalizations.{name}"
                _check_entry(entry, ("source",), ("consumers",))
                recipe.equalizations[name] = Equalization(
                    name, array(entry["scale"]), entry["consumers"], entry.get("source", "")
                )
            for name, entry in doc.get("weights", {}).items():
                where = f"weights.{name}"
                _check_entry(entry, (), ())
                w = array(entry["array"])
                if list(w.shape) != list(_shape(entry["shape"])):
                    raise RecipeError(
                        f"{json_path}: weight {name!r} has shape {list(w.shape)} in the arrays "
                        f"file but {entry['shape']} in the JSON"
                    )
                recipe.weights[name] = w
            where = "top level"
            recipe.check()
        except KeyError as exc:
            raise RecipeError(f"{json_path}: {where}: missing key {exc}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, RecipeError) and any(
                str(p) in str(exc) for p in (json_path, arrays_path)
            ):
                raise
            raise RecipeError(f"{json_path}: {where}: {exc}") from None
        return recipe
