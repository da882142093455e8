"""The target spec: every part of a validated target TOML file, and what can be asked of it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..graph import OpKind
from ..spec import QuantSpec
from .machine import missing_requirements
from .reader import fmt_values
from .sections import (
    Allowed,
    AllowedSet,
    BiasRule,
    DynamicRule,
    OpRules,
    Requirements,
    SpecTemplate,
)
from .validate import TargetParser


@dataclass(frozen=True)
class TargetSpec:
    """A validated target spec; build it with :func:`load_target` or :meth:`from_dict`.

    The fields mirror the TOML schema in docs/targets.md.  ``source`` is where it came from
    (a file path or ``"<dict>"``), used in messages.
    """

    name: str
    artifact: str
    weight: SpecTemplate
    activation: SpecTemplate
    bias: BiasRule
    ops: OpRules
    description: str = ""
    simulation_only: bool = False
    requires: Requirements = field(default_factory=Requirements)
    dynamic: DynamicRule = field(default_factory=DynamicRule)
    allowed: Allowed = field(default_factory=Allowed)
    fusions: tuple[tuple[OpKind, ...], ...] = ()
    backends: tuple[str, ...] = ()
    source: str = "<dict>"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> TargetSpec:
        """Validate a parsed TOML document (or any mapping of the same shape).

        :raises TargetSpecError: naming ``source``, the dotted key, the value and what is allowed.
        """
        parser = TargetParser(source)
        spec = cls(**parser.fields(data), source=source)
        spec._check_own_defaults(parser)
        return spec

    def _check_own_defaults(self, parser: TargetParser) -> None:
        """The target's own defaults must be consistent and pass its own ``allowed`` lists."""
        kinds = set(self.ops.quantize) | set(self.ops.per_op) | set(self.ops.weight_only)
        for kind in sorted(kinds, key=lambda k: k.value):
            w_allowed, a_allowed = self.allowed.for_op(kind)
            per_op = self.ops.per_op.get(kind, {})
            checks = [("weight", self.weight_template(kind), w_allowed, False)]
            if kind not in self.ops.weight_only:  # a weight-only op has no quantized activation
                checks.append(("activation", self.activation_template(kind), a_allowed, False))
            if self.dynamic.supported and kind in self.dynamic.ops:
                checks.append(("dynamic.activation", self.dynamic_template(kind), a_allowed, True))
            for role, d, allowed, dynamic in checks:
                key = f"ops.per_op.{kind.value}.{role}" if role in per_op else role
                parser.check_spec(d, key, dynamic=dynamic)
                axis = 0 if d.get("granularity") in ("per_channel", "per_group") else None
                qs = QuantSpec(**d, axis=axis, dynamic=dynamic)
                for fld, val, ok in allowed.violations(qs):
                    raise parser.fail(
                        f"{key}.{fld}",
                        f"{val!r} (the default {role} {fld} for op kind {kind.value}) is not in "
                        f"the target's own allowed list; allowed: {fmt_values(ok)}",
                    )

    # -- queries -------------------------------------------------------------------------------
    def availability(
        self,
        cpu_flags: Iterable[str] | None = None,
        cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo",
        gpu: bool | None = None,
    ) -> tuple[bool, str]:
        """``(True, "")`` when this machine can run the target, else ``(False, what is missing)``.

        :param cpu_flags: the machine's CPU flags (default: read from ``cpuinfo``).
        :param cpuinfo: file to read flags from when ``cpu_flags`` is not given.
        :param gpu: whether an NVIDIA GPU is present (default:
            :func:`~quantfw.target.nvidia_gpu_present`).
        """
        missing = missing_requirements(self.requires, cpu_flags, cpuinfo, gpu)
        if missing:
            return False, f"target {self.name!r} needs " + "; ".join(missing)
        return True, ""

    def allowed_for(self, op: OpKind | str) -> tuple[AllowedSet, AllowedSet]:
        """``(weight, activation)`` allowed sets in force for op kind ``op``."""
        return self.allowed.for_op(op)

    def weight_template(self, op: OpKind | str) -> dict[str, Any]:
        """Default weight spec fields for ``op`` (target default + ``ops.per_op``)."""
        return _merge_template(self.weight, self.ops.per_op.get(OpKind(op), {}).get("weight"))

    def activation_template(self, op: OpKind | str) -> dict[str, Any]:
        """Default activation spec fields for ``op`` (target default + ``ops.per_op``)."""
        return _merge_template(
            self.activation, self.ops.per_op.get(OpKind(op), {}).get("activation")
        )

    def dynamic_template(self, op: OpKind | str) -> dict[str, Any]:
        """Activation spec fields for ``op`` in dynamic mode (``dynamic=True`` not included)."""
        d = self.activation_template(op)
        d.update(self.dynamic.activation)
        d["granularity"] = self.dynamic.granularity
        d.pop("group_size", None)
        return d

    def to_dict(self) -> dict[str, Any]:
        """The spec in the TOML schema's shape (for listings and JSON)."""

        def kinds(s: Iterable[OpKind]) -> list[str]:
            return sorted(k.value for k in s)

        return {
            "name": self.name,
            "description": self.description,
            "simulation_only": self.simulation_only,
            "artifact": self.artifact,
            "backends": list(self.backends),
            "requires": {
                "cpu_flags": list(self.requires.cpu_flags),
                "cpu_flags_any": list(self.requires.cpu_flags_any),
                "modules": list(self.requires.modules),
                "gpu": self.requires.gpu,
            },
            "weight": self.weight.to_dict(),
            "activation": self.activation.to_dict(),
            "bias": {"mode": self.bias.mode},
            "dynamic": {
                "supported": self.dynamic.supported,
                "default": self.dynamic.default,
                "granularity": self.dynamic.granularity,
                "ops": kinds(self.dynamic.ops),
                "activation": dict(self.dynamic.activation),
            },
            "allowed": {
                "weight": self.allowed.weight.to_dict(),
                "activation": self.allowed.activation.to_dict(weights=False),
                "weight_only_dtypes": list(self.allowed.weight_only_dtypes),
                "weight_only_granularities": list(self.allowed.weight_only_granularities),
                "narrow_activations": self.allowed.narrow_activations,
                "per_op": {
                    k.value: {"weight": w.to_dict(), "activation": a.to_dict(weights=False)}
                    for k, (w, a) in self.allowed.per_op.items()
                },
            },
            "ops": {
                "quantize": kinds(self.ops.quantize),
                "float_only": kinds(self.ops.float_only),
                "weight_only": kinds(self.ops.weight_only),
                "shared_scale": kinds(self.ops.shared_scale),
                "quantize_outputs": self.ops.quantize_outputs,
                "only_between_quantized": kinds(self.ops.only_between_quantized),
                "min_reduction": self.ops.min_reduction,
                "float_outputs": sorted(k.value for k in self.ops.float_outputs),
                "fixed_output": {
                    k.value: {"scale": v.scale, "zero_point": v.zero_point}
                    for k, v in self.ops.fixed_output.items()
                },
                "per_op": {
                    k.value: {role: dict(d) for role, d in v.items()}
                    for k, v in self.ops.per_op.items()
                },
            },
            "fusions": [[k.value for k in chain] for chain in self.fusions],
        }


def _merge_template(base: SpecTemplate, changes: Mapping[str, Any] | None) -> dict[str, Any]:
    d = base.to_dict()
    d.update(changes or {})
    if d.get("granularity") != "per_group":
        d.pop("group_size", None)
    return d
