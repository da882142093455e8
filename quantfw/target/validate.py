"""Validation of a parsed target document, one table at a time (the keys: docs/targets.md).

:class:`TargetParser` checks each value where it stands and builds the parts of a
:class:`~quantfw.target.TargetSpec`; its errors name the file, the dotted key, the value and what
is allowed (see :mod:`quantfw.target.reader`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..formats import FORMATS
from ..graph import WEIGHTED, OpKind
from ..spec import Granularity, QuantSpec, SpecError
from . import schema
from .reader import TomlReader, fmt_values
from .sections import (
    Allowed,
    AllowedSet,
    BiasRule,
    DynamicRule,
    FixedOutput,
    OpRules,
    Requirements,
    SpecTemplate,
)


class TargetParser(TomlReader):
    """Builds the parts of a target spec from a parsed document, checking every key."""

    def fields(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The target spec's fields (all but ``source``), each validated on its own."""
        data = self.table(data, "", schema.TOP_KEYS)
        name = self.required(data, "name", "", "a target name such as 'generic'")
        if not isinstance(name, str) or not schema.NAME_RE.match(name):
            raise self.bad(
                "name",
                name,
                "a valid target name",
                "lower-case letters, digits, '_', '-', '.', starting with a letter or digit",
            )
        known = fmt_values(schema.ARTIFACT_KINDS)
        artifact = self.required(data, "artifact", "", f"a format name such as {known}")
        if not isinstance(artifact, str) or not schema.NAME_RE.match(artifact):
            raise self.bad(
                "artifact",
                artifact,
                "an artifact kind",
                f"a lower-case format name such as {known}",
            )
        for k in schema.REQUIRED_TOP_KEYS:
            self.required(data, k, "", "a table" if k not in ("name", "artifact") else "a value")
        description = self.string(data.get("description", ""), "description")
        simulation_only = self.boolean(data.get("simulation_only", False), "simulation_only")
        requires = self.requires(data.get("requires", {}))
        weight = self.template(data["weight"], "weight")
        activation = self.template(data["activation"], "activation")
        bias_tbl = self.table(data.get("bias", {}), "bias", schema.BIAS_KEYS)
        bias = BiasRule(
            self.choice(
                bias_tbl.get("mode", "int32"), "bias.mode", schema.BIAS_MODES, "a bias mode"
            )
        )
        ops = self.ops(data["ops"])
        dynamic = self.dynamic(data.get("dynamic", {}), ops)
        allowed = self.allowed(data.get("allowed", {}))
        fusions = self.fusions(data.get("fusions", []), ops)
        backends = self.backends(data.get("backends", []))
        return {
            "name": name,
            "artifact": artifact,
            "weight": weight,
            "activation": activation,
            "bias": bias,
            "ops": ops,
            "description": description,
            "simulation_only": simulation_only,
            "requires": requires,
            "dynamic": dynamic,
            "allowed": allowed,
            "fusions": fusions,
            "backends": backends,
        }

    def backends(self, value: Any) -> tuple[str, ...]:
        items = self.array(value, "backends")
        for i, v in enumerate(items):
            if not isinstance(v, str) or not schema.NAME_RE.match(v):
                raise self.bad(
                    f"backends[{i}]",
                    v,
                    "a backend name",
                    "lower-case letters, digits, '_', '-', '.' (see `quantfw plugins`)",
                )
        return tuple(items)

    def requires(self, value: Any) -> Requirements:
        tbl = self.table(value, "requires", schema.REQUIRES_KEYS)

        def names(k: str, rx: re.Pattern[str], what: str, allowed: str) -> tuple[str, ...]:
            items = self.array(tbl.get(k, []), f"requires.{k}")
            for i, v in enumerate(items):
                if not isinstance(v, str) or not rx.match(v):
                    raise self.bad(f"requires.{k}[{i}]", v, what, allowed)
            return tuple(items)

        flag_help = "lower-case cpuinfo flag names such as avx2, avx512_vnni, asimddp"
        return Requirements(
            cpu_flags=names("cpu_flags", schema.FLAG_RE, "a CPU flag", flag_help),
            cpu_flags_any=names("cpu_flags_any", schema.FLAG_RE, "a CPU flag", flag_help),
            modules=names(
                "modules",
                schema.MODULE_RE,
                "a module name",
                "dotted Python module names such as onnxruntime, tflite_runtime",
            ),
            gpu=self.boolean(tbl.get("gpu", False), "requires.gpu"),
        )

    def template_fields(
        self,
        value: Any,
        key: str,
        partial: bool = False,
        keys: tuple[str, ...] = schema.TEMPLATE_KEYS,
    ) -> dict[str, Any]:
        """Spec fields of an inline table, each checked on its own."""
        tbl = self.table(value, key, keys)
        out: dict[str, Any] = {}
        if not partial:
            formats = fmt_values(FORMATS)
            self.required(tbl, "dtype", key, f"a number format: {formats}")
        if "dtype" in tbl:
            out["dtype"] = self.dtype(tbl["dtype"], f"{key}.dtype")
        for k in ("symmetric", "narrow_range"):
            if k in tbl:
                out[k] = self.boolean(tbl[k], f"{key}.{k}")
        if "granularity" in tbl:
            out["granularity"] = self.choice(
                tbl["granularity"],
                f"{key}.granularity",
                schema.STATIC_GRANULARITIES,
                "a granularity",
            )
        if "group_size" in tbl:
            out["group_size"] = self.positive_int(tbl["group_size"], f"{key}.group_size")
        if "pair_limit" in tbl:
            out["pair_limit"] = self.positive_int(tbl["pair_limit"], f"{key}.pair_limit")
        return out

    def check_spec(self, d: Mapping[str, Any], key: str, dynamic: bool = False) -> None:
        """The fields must also make sense together (e.g. fp8 cannot be asymmetric)."""
        try:
            QuantSpec(
                **{
                    **d,
                    "axis": 0 if d.get("granularity") in ("per_channel", "per_group") else None,
                    "dynamic": dynamic,
                }
            )
        except SpecError as exc:
            raise self.fail(key, f"inconsistent spec {dict(d)!r}: {exc}") from None

    def template(self, value: Any, key: str) -> SpecTemplate:
        d = self.template_fields(value, key)
        tpl = SpecTemplate(**d)
        self.check_spec(tpl.to_dict(), key)
        return tpl

    def dynamic(self, value: Any, ops: OpRules) -> DynamicRule:
        tbl = self.table(value, "dynamic", schema.DYNAMIC_KEYS)
        supported = self.boolean(tbl.get("supported", False), "dynamic.supported")
        default = self.boolean(tbl.get("default", False), "dynamic.default")
        if default and not supported:
            raise self.bad(
                "dynamic.default",
                default,
                "possible while dynamic.supported is false",
                "false (or set dynamic.supported = true)",
            )
        gran = self.choice(
            tbl.get("granularity", "per_tensor"),
            "dynamic.granularity",
            schema.DYNAMIC_GRANULARITIES,
            "a dynamic granularity",
        )
        if "ops" in tbl:
            dyn_ops = self.op_kinds(tbl["ops"], "dynamic.ops")
            for i, kind in enumerate(self.array(tbl["ops"], "dynamic.ops")):
                if OpKind(kind) not in ops.quantize:
                    raise self.bad(
                        f"dynamic.ops[{i}]",
                        kind,
                        "in ops.quantize",
                        fmt_values(sorted(k.value for k in ops.quantize)),
                    )
        else:
            dyn_ops = frozenset(ops.quantize & WEIGHTED)
        act = self.template_fields(
            tbl.get("activation", {}),
            "dynamic.activation",
            partial=True,
            keys=schema.DYNAMIC_ACTIVATION_KEYS,
        )
        return DynamicRule(supported, default, gran, dyn_ops, act)

    def allowed_set(self, value: Any, key: str, weights: bool) -> AllowedSet:
        keys = schema.ALLOWED_SET_KEYS if weights else schema.ALLOWED_ACTIVATION_SET_KEYS
        tbl = self.table(value, key, keys)
        out: dict[str, Any] = {}
        for k, v in tbl.items():
            sub = f"{key}.{k}"
            if v == "*":
                continue
            items = self.array(v, sub)
            if not items:
                raise self.fail(sub, 'an empty list allows nothing; write "*" to allow anything')
            vals: list[Any] = []
            for i, item in enumerate(items):
                where = f"{sub}[{i}]"
                if k == "dtypes":
                    vals.append(self.dtype(item, where))
                elif k == "granularities":
                    vals.append(
                        self.choice(item, where, [g.value for g in Granularity], "a granularity")
                    )
                elif k == "group_sizes":
                    vals.append(self.positive_int(item, where))
                else:
                    vals.append(self.boolean(item, where))
            out[k] = tuple(dict.fromkeys(vals))
        return AllowedSet(**out)

    def allowed(self, value: Any) -> Allowed:
        tbl = self.table(value, "allowed", schema.ALLOWED_KEYS)
        weight = self.allowed_set(tbl.get("weight", {}), "allowed.weight", True)
        act = self.allowed_set(tbl.get("activation", {}), "allowed.activation", False)
        per_op: dict[OpKind, tuple[AllowedSet, AllowedSet]] = {}
        per_op_tbl = tbl.get("per_op", {})
        if not isinstance(per_op_tbl, Mapping):
            raise self.bad(
                "allowed.per_op", per_op_tbl, "a table", "op kind = { weight, activation }"
            )
        for op_name, entry in per_op_tbl.items():
            kind = self.op_kind(op_name, "allowed.per_op")
            key = f"allowed.per_op.{op_name}"
            entry = self.table(entry, key, schema.PER_OP_KEYS)
            per_op[kind] = (
                self.allowed_set(entry.get("weight", {}), f"{key}.weight", True),
                self.allowed_set(entry.get("activation", {}), f"{key}.activation", False),
            )
        wod = self.array(tbl.get("weight_only_dtypes", []), "allowed.weight_only_dtypes")
        wo = tuple(self.dtype(v, f"allowed.weight_only_dtypes[{i}]") for i, v in enumerate(wod))
        wog = self.array(
            tbl.get("weight_only_granularities", []), "allowed.weight_only_granularities"
        )
        grans = tuple(
            self.choice(
                v,
                f"allowed.weight_only_granularities[{i}]",
                [g.value for g in Granularity],
                "a granularity",
            )
            for i, v in enumerate(wog)
        )
        narrow = self.choice(
            tbl.get("narrow_activations", "own_type"),
            "allowed.narrow_activations",
            schema.NARROW_ACTIVATIONS,
            "a way to deploy narrow activations",
        )
        return Allowed(weight, act, per_op, wo, grans, narrow)

    def ops(self, value: Any) -> OpRules:
        tbl = self.table(value, "ops", schema.OPS_KEYS)
        quantize = self.op_kinds(
            self.required(tbl, "quantize", "ops", "an array of op kinds"), "ops.quantize"
        )
        float_only = self.op_kinds(tbl.get("float_only", []), "ops.float_only")
        shared = self.op_kinds(tbl.get("shared_scale", []), "ops.shared_scale")
        for key, kinds in (("ops.quantize", quantize), ("ops.shared_scale", shared)):
            both = kinds & float_only
            if both:
                names = sorted(k.value for k in both)
                raise self.fail(
                    "ops.float_only",
                    f"{names[0]!r} is also in {key}; an op kind cannot be both "
                    f"(float-only kinds: {fmt_values(sorted(k.value for k in float_only))})",
                )
        policy = self.choice(
            tbl.get("quantize_outputs", "always"),
            "ops.quantize_outputs",
            schema.OUTPUT_POLICIES,
            "an output policy",
        )
        fixed: dict[OpKind, FixedOutput] = {}
        fixed_tbl = tbl.get("fixed_output", {})
        if not isinstance(fixed_tbl, Mapping):
            raise self.bad(
                "ops.fixed_output", fixed_tbl, "a table", "op kind = { scale, zero_point }"
            )
        for op_name, entry in fixed_tbl.items():
            kind = self.op_kind(op_name, "ops.fixed_output")
            key = f"ops.fixed_output.{op_name}"
            if kind not in quantize:
                raise self.bad(
                    key,
                    op_name,
                    "in ops.quantize (only quantized ops have outputs to fix)",
                    fmt_values(sorted(k.value for k in quantize)),
                )
            if kind in shared:
                raise self.fail(
                    key,
                    f"{op_name!r} is in ops.shared_scale; its output scale "
                    "cannot be both fixed and shared with its input",
                )
            entry = self.table(entry, key, schema.FIXED_KEYS)
            scale = self.scale(
                self.required(entry, "scale", key, "a positive number"), f"{key}.scale"
            )
            zp = self.required(entry, "zero_point", key, "an integer")
            if isinstance(zp, bool) or not isinstance(zp, int):
                raise self.bad(f"{key}.zero_point", zp, "an integer", "e.g. -128, 0, 127")
            fixed[kind] = FixedOutput(scale, zp)
        per_op: dict[OpKind, dict[str, dict[str, Any]]] = {}
        per_op_tbl = tbl.get("per_op", {})
        if not isinstance(per_op_tbl, Mapping):
            raise self.bad("ops.per_op", per_op_tbl, "a table", "op kind = { weight, activation }")
        for op_name, entry in per_op_tbl.items():
            kind = self.op_kind(op_name, "ops.per_op")
            key = f"ops.per_op.{op_name}"
            entry = self.table(entry, key, schema.PER_OP_KEYS)
            per_op[kind] = {
                role: self.template_fields(entry[role], f"{key}.{role}", partial=True)
                for role in ("weight", "activation")
                if role in entry
            }
        between = self.op_kinds(tbl.get("only_between_quantized", []), "ops.only_between_quantized")
        if not between <= quantize:
            extra = sorted(k.value for k in between - quantize)
            raise self.bad(
                "ops.only_between_quantized",
                extra[0],
                "in ops.quantize",
                fmt_values(sorted(k.value for k in quantize)),
            )
        weight_only = self.weight_only_kinds(tbl.get("weight_only", []), quantize, float_only)
        min_reduction = tbl.get("min_reduction", 0)
        if (
            isinstance(min_reduction, bool)
            or not isinstance(min_reduction, int)
            or min_reduction < 0
        ):
            raise self.bad(
                "ops.min_reduction", min_reduction, "a non-negative integer", "e.g. 0, 16, 32"
            )
        float_outputs = self.op_kinds(tbl.get("float_outputs", []), "ops.float_outputs")
        return OpRules(
            quantize,
            float_only,
            shared,
            policy,
            fixed,
            per_op,
            between,
            weight_only,
            min_reduction,
            float_outputs,
        )

    def weight_only_kinds(
        self, value: Any, quantize: frozenset[OpKind], float_only: frozenset[OpKind]
    ) -> frozenset[OpKind]:
        kinds = self.op_kinds(value, "ops.weight_only")
        weighted = fmt_values(sorted(k.value for k in WEIGHTED))
        for i, name in enumerate(self.array(value, "ops.weight_only")):
            kind = OpKind(name)
            where = f"ops.weight_only[{i}]"
            if kind not in WEIGHTED:
                raise self.bad(where, name, "an op kind with a constant weight", weighted)
            for key, other, why in (
                ("ops.quantize", quantize, "which already quantizes its weight"),
                ("ops.float_only", float_only, "which quantizes nothing on its behalf"),
            ):
                if kind in other:
                    raise self.fail(
                        where,
                        f"{name!r} is also in {key} ({why}); an op kind cannot be both: "
                        f"remove it from one of the lists",
                    )
        return kinds

    def fusions(self, value: Any, ops: OpRules) -> tuple[tuple[OpKind, ...], ...]:
        chains: list[tuple[OpKind, ...]] = []
        for i, chain in enumerate(self.array(value, "fusions")):
            key = f"fusions[{i}]"
            items = self.array(chain, key)
            if len(items) < 2:
                raise self.bad(key, chain, "a chain", 'two or more op kinds, e.g. ["conv", "relu"]')
            kinds = tuple(self.op_kind(v, f"{key}[{j}]") for j, v in enumerate(items))
            if kinds[0] not in ops.quantize:
                raise self.bad(
                    f"{key}[0]",
                    items[0],
                    "a quantized op kind (a fused chain starts with an op in ops.quantize)",
                    fmt_values(sorted(k.value for k in ops.quantize)),
                )
            for j, kind in enumerate(kinds):
                if kind in ops.float_only:
                    raise self.fail(
                        f"{key}[{j}]",
                        f"{items[j]!r} is float-only and cannot be part "
                        "of a quantized fusion; remove it from ops.float_only or from "
                        "the chain",
                    )
            if kinds in chains:
                raise self.fail(key, f"{list(items)!r} is listed twice")
            chains.append(kinds)
        return tuple(chains)
