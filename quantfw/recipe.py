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
from .recipe_file import RecipeError, RecipeReader, arrays_digest
from .spec import QuantParams, QuantSpec

__all__ = ["SCHEMA_VERSION", "Recipe", "TensorRecipe", "Equalization", "RecipeError"]

#: Version of the on-disk format.  Bump on any incompatible change.  Version 2 records
#: SmoothQuant's per-activation ``smooth`` factors of version 1 as :class:`Equalization` entries.
SCHEMA_VERSION = 2

_ROLES = ("activation", "weight", "bias")


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
        """Write ``<path>.json`` and ``<path>.safetensors`` atomically; returns both paths.

        The JSON records the arrays file's name and SHA-256, so that :meth:`load` can tell
        whether a ``.safetensors`` file next to it is the one written with it."""
        from safetensors.numpy import save as st_save

        json_path, arrays_path = self.paths(path)
        doc, arrays = self.to_json_dict()
        payload = st_save(arrays, metadata={"format": "quantfw-recipe"}) if arrays else b""
        doc["arrays_file"] = arrays_path.name
        doc["arrays_sha256"] = arrays_digest(payload)
        atomic_write_bytes(arrays_path, payload)
        atomic_write_text(json_path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
        return json_path, arrays_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a recipe written by :meth:`save`: ``NAME.json`` and, next to it,
        ``NAME.safetensors`` (or the arrays file's name as saved, when only the JSON was
        renamed).  Every field and array is checked (:mod:`quantfw.recipe_file`).

        :raises RecipeError: naming the file, the field and what is wrong.
        """
        json_path, arrays_path = cls.paths(path)
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"recipe file {str(json_path)!r} does not exist") from None
        except IsADirectoryError:
            raise RecipeError(f"{json_path} is a folder, not a recipe JSON file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{json_path}: not a valid recipe JSON file ({exc})") from None
        except RecursionError:  # json recurses once per nested array / object
            raise RecipeError(
                f"{json_path}: not a valid recipe JSON file (arrays or objects nested too deeply)"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != "quantfw-recipe":
            raise RecipeError(f"{json_path}: not a quantfw recipe (missing format marker)")
        version = doc.get("schema_version")
        supported = f"this quantfw reads versions 1 to {SCHEMA_VERSION}"
        if version is None:
            raise RecipeError(f"{json_path}: schema_version is missing; {supported}")
        if type(version) is not int or version < 1:  # bool is an int to Python, not here
            shown = json.dumps(version)
            raise RecipeError(
                f"{json_path}: schema_version {shown} is not a recipe schema version (a positive "
                f"integer); {supported}"
            )
        if version > SCHEMA_VERSION:
            raise RecipeError(
                f"{json_path} was written with recipe schema version {version}, but this quantfw "
                f"reads versions up to {SCHEMA_VERSION}: upgrade quantfw to load it"
            )
        r = RecipeReader(doc, json_path, arrays_path)
        decisions = r.field(doc, "decisions", list, "", [])
        for i, d in enumerate(decisions):
            if not isinstance(d, dict):
                raise r.error(f"decisions[{i}]", "is not a JSON object")
        recipe = cls(
            target=r.field(doc, "target", str, "", ""),
            decisions=list(decisions),
            provenance=dict(r.field(doc, "provenance", dict, "", {})),
        )
        try:
            for name, where, entry in r.entries("tensors"):
                spec = r.spec(entry, where)
                shape = r.shape(entry, "shape", where)
                t = TensorRecipe(
                    name=name,
                    role=r.field(entry, "role", str, where),
                    spec=spec,
                    params=r.params(entry, where, spec, shape)
                    if "scale" in entry or "zero_point" in entry
                    else None,
                    node=r.field(entry, "node", str, where, None),
                    shape=None if shape is None else tuple(shape),
                    share_group=r.field(entry, "share_group", str, where, None),
                    consumers=r.names(entry, "consumers", where),
                )
                recipe.add(t)
                if "smooth" in entry:  # schema 1: SmoothQuant's factors lived on the tensor
                    smooth = r.array(entry, "smooth", where, "f", "floating-point factors")
                    recipe.equalizations[name] = Equalization(
                        name, smooth, t.consumers or (), "smoothquant"
                    )
            for name, where, entry in r.entries("equalizations"):
                recipe.equalizations[name] = Equalization(
                    name,
                    r.array(entry, "scale", where, "f", "floating-point factors"),
                    r.names(entry, "consumers", where, required=True),
                    r.field(entry, "source", str, where, ""),
                )
            for name, where, entry in r.entries("weights"):
                w = r.array(entry, "array", where, "fiu", "a numeric array")
                shape = r.shape(entry, "shape", where, required=True)
                if list(w.shape) != shape:
                    raise RecipeError(
                        f"{json_path}: weight {name!r} has shape {list(w.shape)} in the arrays "
                        f"file {r.arrays_path.name} but {shape} in the JSON"
                    )
                dtype = r.field(entry, "dtype", str, where, None)
                if dtype is not None and str(w.dtype) != dtype:
                    raise RecipeError(
                        f"{json_path}: weight {name!r} is {w.dtype} in the arrays file "
                        f"{r.arrays_path.name} but {dtype} in the JSON"
                    )
                recipe.weights[name] = w
            recipe.check()
        except RecipeError as exc:
            if str(exc).startswith((str(json_path), str(r.arrays_path))):
                raise
            raise RecipeError(f"{json_path}: {exc}") from None
        return recipe
