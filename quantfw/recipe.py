"""The Recipe: every quantization decision and number, ready for any backend.

On disk a recipe is two files side by side: ``NAME.json`` (specs, shapes, decisions, provenance —
small and diffable) and ``NAME.safetensors`` (scales, zero points and rewritten weights).  Nothing
is pickled.  ``Recipe.load`` refuses files written by a newer schema version.
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

__all__ = ["SCHEMA_VERSION", "Recipe", "TensorRecipe", "RecipeError"]

#: Version of the on-disk format.  Bump on any incompatible change.
SCHEMA_VERSION = 1

_ROLES = ("activation", "weight", "bias")


class RecipeError(ValueError):
    """A recipe file that cannot be read (missing arrays, newer schema, bad JSON…)."""


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
        readers keep the float value (Q/DQ on those edges only).
    :param smooth: per-channel divisors (last axis) for a smoothed activation: its consumers read
        ``x / smooth`` quantized with ``params`` and their weights were multiplied by ``smooth``
        (see :func:`quantfw.numerics.fake_quantize_smoothed`).
    """

    name: str
    role: str
    spec: QuantSpec
    params: QuantParams | None = None
    node: str | None = None
    shape: tuple[int, ...] | None = None
    share_group: str | None = None
    consumers: tuple[str, ...] | None = None
    smooth: np.ndarray | None = field(default=None, compare=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorRecipe):
            return NotImplemented
        same_smooth = (self.smooth is None) == (other.smooth is None) and (
            self.smooth is None or np.array_equal(self.smooth, other.smooth)
        )
        return same_smooth and all(
            getattr(self, f) == getattr(other, f)
            for f in ("name", "role", "spec", "params", "node", "shape", "share_group", "consumers")
        )

    def __post_init__(self) -> None:
        if self.smooth is not None:
            self.smooth = np.asarray(self.smooth, dtype=np.float32)
        if self.consumers is not None:
            self.consumers = tuple(self.consumers)
        if self.role not in _ROLES:
            raise RecipeError(f"tensor {self.name!r}: role {self.role!r} is not one of {_ROLES}")
        if self.params is None and not self.spec.dynamic:
            raise RecipeError(f"tensor {self.name!r}: a static spec needs params")
        if self.shape is not None:
            self.shape = tuple(int(d) for d in self.shape)


@dataclass
class Recipe:
    """The result of a quantization run.

    :param target: the target spec's name.
    :param tensors: tensor name → :class:`TensorRecipe`.
    :param weights: rewritten float weights by initializer name (bn folding, equalisation,
        learned rounding); backends use them in place of the model's own.
    :param decisions: per node ``{"node", "op", "quantized", "reason"}``, from the plan.
    :param provenance: target, algorithms, calibration size, versions, …
    """

    target: str
    tensors: dict[str, TensorRecipe] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- convenience ---------------------------------------------------------------------------
    def add(self, tensor: TensorRecipe) -> None:
        self.tensors[tensor.name] = tensor

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
                if t.smooth is not None:
                    entry["smooth"] = f"params/{name}/smooth"
                    arrays[entry["smooth"]] = np.array(t.smooth, order="C")
                if t.params.scale.size <= 4:  # readable in a diff
                    entry["scale_values"] = [float(v) for v in t.params.scale.ravel()]
                    entry["zero_point_values"] = [int(v) for v in t.params.zero_point.ravel()]
            tensors[name] = entry
        weights = {}
        for name, w in self.weights.items():
            key = f"weights/{name}"
            arrays[key] = np.array(w, order="C")
            weights[name] = {"array": key, "shape": list(w.shape), "dtype": str(w.dtype)}
        doc = {
            "schema_version": SCHEMA_VERSION,
            "format": "quantfw-recipe",
            "target": self.target,
            "provenance": self.provenance,
            "tensors": tensors,
            "weights": weights,
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
            arrays_path = json_path.with_name(doc["arrays_file"])
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

        recipe = cls(
            target=doc.get("target", ""),
            decisions=list(doc.get("decisions", [])),
            provenance=dict(doc.get("provenance", {})),
        )
        try:
            for name, entry in doc.get("tensors", {}).items():
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
                        shape=tuple(entry["shape"]) if "shape" in entry else None,
                        share_group=entry.get("share_group"),
                        consumers=entry.get("consumers"),
                        smooth=array(entry["smooth"]) if "smooth" in entry else None,
                    )
                )
            for name, entry in doc.get("weights", {}).items():
                w = array(entry["array"])
                if list(w.shape) != list(entry["shape"]):
                    raise RecipeError(
                        f"{json_path}: weight {name!r} has shape {list(w.shape)} in the arrays "
                        f"file but {entry['shape']} in the JSON"
                    )
                recipe.weights[name] = w
        except KeyError as exc:
            raise RecipeError(f"{json_path}: missing key {exc}") from None
        except ValueError as exc:
            if isinstance(exc, RecipeError):
                raise
            raise RecipeError(f"{json_path}: {exc}") from None
        return recipe
