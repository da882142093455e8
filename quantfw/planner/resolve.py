"""Which QuantSpec a node's weight or activations get: the target's defaults for the op kind,
changed by the user's overrides, then checked against what the target allows."""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ..formats import IntFormat, get_format, int_format_for_bits
from ..graph import Node, OpKind, QuantGraph
from ..spec import QuantSpec, SpecError
from ..target import TargetSpec
from ..target.reader import fmt_values
from .overrides import Overrides, PlanError


class SpecResolver:
    """Resolves (and remembers) the spec of each node and role for one graph on one target."""

    def __init__(self, graph: QuantGraph, target: TargetSpec, overrides: Overrides) -> None:
        self.g, self.t, self.ov = graph, target, overrides
        self.cache: dict[tuple[str, str, bool], QuantSpec] = {}

    def resolve(self, node: Node, role: str, dynamic: bool = False) -> QuantSpec:
        """The spec of ``node``'s ``role`` (``weight`` or ``activation``; ``dynamic`` activations).

        :raises PlanError: an override makes the spec invalid or the target does not allow it.
        """
        key = (node.name, role, dynamic)
        if key not in self.cache:
            self.cache[key] = self._resolve(node, role, dynamic)
        return self.cache[key]

    def _resolve(self, node: Node, role: str, dynamic: bool) -> QuantSpec:
        t, ov = self.t, self.ov
        if role == "weight":
            d = t.weight_template(node.op)
        else:
            d = t.dynamic_template(node.op) if dynamic else t.activation_template(node.op)
        if d.get("granularity") != "per_group":
            d.pop("group_size", None)
        src = {k: f"target {t.name!r} default" for k in (*d, "axis", "group_size")}
        changes: list[tuple[str, Mapping[str, Any]]] = []
        if role == "weight" and ov.weight:
            changes.append(("overrides.weight", ov.weight))
        if role == "activation" and ov.activation:
            changes.append(("overrides.activation", ov.activation))
        for pattern, entry in ov.layers.items():
            if fnmatchcase(node.name, pattern):
                label = f"overrides.layers[{pattern!r}]"
                if role in entry:
                    changes.append((f"{label}.{role}", entry[role]))
                if role == "weight" and "bits" in entry:
                    changes.append((label, {"bits": entry["bits"]}))
        for label, ch in changes:
            for k, v in ch.items():
                if k != "bits":
                    d[k] = v
                    src[k] = label
            if "bits" in ch:
                fmt = get_format(d["dtype"])
                signed = fmt.signed if isinstance(fmt, IntFormat) else True
                try:
                    d["dtype"] = int_format_for_bits(ch["bits"], signed).name
                except ValueError as exc:
                    raise PlanError(
                        f"{_where(node)}: {role} bits {ch['bits']!r} (set by {label}): {exc}"
                    ) from None
                src["dtype"] = label
            if d.get("granularity") != "per_group" and "group_size" not in ch:
                d.pop("group_size", None)
        if src.get("dtype", "").startswith("overrides"):
            # A user-chosen format drops inherited fields it cannot take: fp8 has no zero point
            # and no narrow range, ternary is symmetric by definition.
            fmt = get_format(d["dtype"])
            user = {k for k, s in src.items() if s.startswith("overrides")}
            if not isinstance(fmt, IntFormat) and "narrow_range" not in user:
                d["narrow_range"] = False
            if (
                not isinstance(fmt, IntFormat) or fmt.name == "ternary"
            ) and "symmetric" not in user:
                d["symmetric"] = True
        gran = d.get("granularity", "per_tensor")
        if role == "weight" and "axis" not in d and gran in ("per_channel", "per_group"):
            d["axis"] = self.weight_axis(node, gran)
            src["axis"] = f"node {node.name!r} attrs"
        if dynamic and role == "activation":
            d["dynamic"] = True
        try:
            spec = QuantSpec(**d)
        except SpecError as exc:
            sources = sorted({s for k, s in src.items() if k in d and not s.startswith("target")})
            by = f" (set by {', '.join(sources)})" if sources else ""
            raise PlanError(f"{_where(node)}: invalid {role} spec{by}: {exc}") from None
        w_allowed, a_allowed = t.allowed_for(node.op)
        allowed = w_allowed if role == "weight" else a_allowed
        for fld, value, ok in allowed.violations(spec):
            raise PlanError(
                f"{_where(node)}: {role} {fld} {value!r} (set by {src.get(fld, '?')}) is not "
                f"allowed on target {t.name!r}; allowed: {fmt_values(ok)}"
            )
        if role == "weight" and spec.axis is not None:
            w = self.g.weight(node)
            if w is not None and not -w.ndim <= spec.axis < w.ndim:
                raise PlanError(
                    f"{_where(node)}: weight axis {spec.axis} (from {src['axis']}) is out of "
                    f"range for a weight of shape {tuple(w.shape)}; allowed: "
                    f"{fmt_values(range(-w.ndim, w.ndim))}"
                )
        return spec

    def weight_axis(self, node: Node, granularity: str) -> int:
        """The weight axis that carries one scale per channel, or along which groups run."""
        w = self.g.weight(node)
        ndim = 2 if w is None else w.ndim
        default_ch = 1 if node.op is OpKind.CONV_TRANSPOSE else 0
        ch = int(node.attrs.get("channel_axis", default_ch))
        if granularity == "per_channel":
            return ch
        if "reduction_axis" in node.attrs:
            return int(node.attrs["reduction_axis"])
        ch = ch % ndim if ndim else ch
        if ch == 0:
            return 1
        if ch == 1:
            return 0
        return ndim - 2 if ch == ndim - 1 else 1


def _where(node: Node) -> str:
    return f"layer {node.name!r} ({node.op.value})"
