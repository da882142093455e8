"""Planning: which tensor of a :class:`~quantfw.graph.QuantGraph` gets which QuantSpec on a target.

:func:`plan` is core logic, the same for every framework.  It follows the QDQ placement that ONNX
Runtime's and TensorRT's quantizers use, driven entirely by the :class:`~quantfw.target.TargetSpec`
and the user's :class:`Overrides`.

Rules, in the order they are applied
------------------------------------

1. **Ignored nodes** (``ignore_names``, ``ignore_patterns`` as :mod:`fnmatch` globs over node
   names, ``ignore_ops``) run in float.  Like float-only nodes, *nothing is quantized on their
   behalf*; a tensor they read or write may still be quantized because a quantized neighbour needs
   it (a quantized producer's output, a quantized consumer's input).
2. **Eligible nodes** are those whose op kind is in the target's ``ops.quantize`` and that are not
   ignored.  In dynamic mode only the kinds in ``dynamic.ops`` are eligible (ONNX Runtime's
   dynamic quantization covers weighted ops only); the rest stay float.
3. **Fusions**: starting from an eligible node, each target chain (longest first) is matched along
   single-consumer edges (the intermediate tensor must have exactly one reader and must not be a
   graph output; no member may be ignored or already fused).  A matched chain is one quantized
   unit: its intermediate tensors stay float, its external inputs are quantized, and the last
   member's output is the unit's output.
4. **A quantized unit** (an eligible node or a fused chain, specs resolved for its first node):

   * its activation inputs get the activation spec (index inputs of ``embedding``/``gather``,
     extra inputs of single-data ops such as reshape's shape, and integer constants are skipped;
     float constants become ``weight``-role tensors quantized with the activation spec);
   * its ``weights["weight"]`` gets the weight spec; per-channel axis from
     ``attrs["channel_axis"]`` (default 0; 1 for conv_transpose), per-group axis from
     ``attrs["reduction_axis"]`` (default: the other axis of a 2-D weight, i.e. 1 for ``(out,
     in)``);
   * its ``weights["bias"]`` becomes an int32 ``bias`` tensor with ``bias_of = (input activation,
     weight)`` when the target's bias mode is ``int32``, activations are static integers and the
     weight is an integer per-tensor or per-channel spec; otherwise the bias stays float (not in
     the plan);
   * its output is quantized when the target's ``ops.quantize_outputs`` is ``always`` (ONNX
     Runtime QDQ, TFLite: a quantized kernel writes a quantized tensor, so Q/DQ pairs are
     complete), or, with ``when_consumed`` (TensorRT), only when a quantized consumer reads it;
   * a **weight-only** unit (weight dtype in the target's ``allowed.weight_only_dtypes``)
     quantizes its weight and nothing else;
   * in **dynamic mode** activation inputs get a dynamic spec (``dynamic.granularity``), outputs
     and biases stay float, and there are no shared or fixed scales.

   **Weight-only kinds** (the target's ``ops.weight_only``, e.g. ``embedding``): a node of such a
   kind that is not ignored quantizes its ``weights["weight"]`` with the weight spec (per-channel
   axis from ``attrs["channel_axis"]``, default 0: one scale per row of an embedding table) and
   nothing else -- its indices, output and bias stay float -- in static and dynamic mode alike.
5. **Fixed-output** kinds record the runtime's params in the output's ``fixed_params``.
6. **Shared scales** (static mode): a shared-scale node in ``ops.quantize`` (concat) is a unit whose
   data inputs and output are joined into one share group.  A shared-scale node *not* in
   ``ops.quantize`` (max_pool, reshape…) becomes quantized as soon as one of its data inputs or its
   output is quantized by someone else (repeated until nothing changes), and joins its tensors to
   the group too.  Groups are merged transitively (union-find), so a concat of two branches
   followed by a max_pool is one group.  Every member of a group gets the same spec (and the same
   fixed params, when one member has them).
7. **One spec per tensor**: a tensor read by a quantized consumer takes that consumer's activation
   spec (the first such consumer in graph order); otherwise its producer's.  Disagreements are
   reported as warnings.

Overrides that the target does not allow raise :class:`PlanError` naming the layer, the field,
the value, where it was set, and the target's allowed values.  Patterns and names that match no
node give warnings in :attr:`QuantPlan.warnings`, not errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from .formats import IntFormat, canonical_name, get_format, int_format_for_bits
from .graph import Node, OpKind, QuantGraph
from .spec import Granularity, QuantParams, QuantSpec, SpecError
from .target import TargetSpec

__all__ = [
    "PlanError",
    "Overrides",
    "TensorPlan",
    "NodeDecision",
    "QuantPlan",
    "plan",
]


class PlanError(ValueError):
    """Overrides that are malformed or that the target does not allow."""


_SPEC_KEYS = ("dtype", "symmetric", "narrow_range", "granularity", "axis", "group_size", "bits")
_LAYER_KEYS = ("weight", "activation", "bits")
_ROLES = ("activation", "weight", "bias")

#: Ops whose every activation input carries data (the others: only ``inputs[0]``).
_ALL_INPUTS_DATA = frozenset(
    {
        OpKind.CONV,
        OpKind.CONV_TRANSPOSE,
        OpKind.LINEAR,
        OpKind.MATMUL,
        OpKind.ADD,
        OpKind.SUB,
        OpKind.MUL,
        OpKind.DIV,
        OpKind.CONCAT,
        OpKind.OTHER,
    }
)


def _fmt(values: Iterable[Any]) -> str:
    return ", ".join(v if isinstance(v, str) else repr(v) for v in values)


# ------------------------------------------------------------------------------------------------
# Overrides
# ------------------------------------------------------------------------------------------------


def _check_spec_changes(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}: expected a mapping of spec fields, got {value!r}")
    unknown = [k for k in value if k not in _SPEC_KEYS]
    if unknown:
        hint = " (use overrides.dynamic for dynamic activations)" if "dynamic" in unknown else ""
        raise PlanError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {_fmt(_SPEC_KEYS)}{hint}"
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
                f"allowed: {_fmt(allowed)}"
            )
    for k in ("symmetric", "narrow_range"):
        if k in out and not isinstance(out[k], bool):
            raise PlanError(f"{where}.{k}: {out[k]!r} is not a boolean; allowed: true, false")
    for k in ("bits", "group_size", "axis"):
        v = out.get(k)
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
                    f"{where}: expected a mapping with keys {_fmt(_LAYER_KEYS)}, got {entry!r}"
                )
            unknown = [k for k in entry if k not in _LAYER_KEYS]
            if unknown:
                raise PlanError(
                    f"{where}: unknown key {unknown[0]!r}; allowed keys: {_fmt(_LAYER_KEYS)}"
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
            raise PlanError(f"overrides: unknown key {unknown[0]!r}; allowed keys: {_fmt(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ignore_names": list(self.ignore_names),
            "ignore_patterns": list(self.ignore_patterns),
            "ignore_ops": [k.value for k in self.ignore_ops],
            "weight": dict(self.weight),
            "activation": dict(self.activation),
            "layers": {p: dict(v) for p, v in self.layers.items()},
            "dynamic": self.dynamic,
        }


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is quantized.

    :param name: tensor (or initializer) name.
    :param role: ``activation``, ``weight`` (also float constants read by quantized ops) or
        ``bias``.
    :param spec: the scheme.
    :param node: for weights and biases, the node that uses it; ``None`` for activations.
    :param share_group: name of the group of tensors that must carry identical params.
    :param bias_of: for int32 biases, ``(input activation, weight)``: scale = s_x * s_w.
    :param consumers: quantized nodes that read this tensor quantized.
    :param producer: the node writing an activation (``None`` for graph inputs and constants).
    :param fixed_params: params the runtime imposes (TFLite softmax: 1/256, -128), else ``None``.
    :param all_readers: ``True`` when every reader sees the quantized value (the tensor itself is
        stored quantized: targets with ``quantize_outputs = "always"``); ``False`` when only
        ``consumers`` read it quantized and other readers keep the float value (QDQ on the
        consumers' edges: ``when_consumed`` targets and dynamic activations).
    """

    name: str
    role: str
    spec: QuantSpec | None
    node: str | None = None
    share_group: str | None = None
    bias_of: tuple[str, str] | None = None
    consumers: tuple[str, ...] = ()
    producer: str | None = None
    fixed_params: QuantParams | None = None
    all_readers: bool = True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "spec": None if self.spec is None else self.spec.to_dict(),
            "node": self.node,
            "producer": self.producer,
            "consumers": list(self.consumers),
            "share_group": self.share_group,
            "bias_of": None if self.bias_of is None else list(self.bias_of),
            "all_readers": self.all_readers,
        }
        if self.fixed_params is not None:
            d["fixed_params"] = {
                "scale": self.fixed_params.scale.tolist(),
                "zero_point": self.fixed_params.zero_point.tolist(),
            }
        return d


@dataclass(frozen=True)
class NodeDecision:
    """Whether a node runs quantized, and why.

    :ivar reason: a sentence for people, naming this node's own evidence.
    :ivar rule: the general rule that decided, without node names, so that summaries can group
        nodes by it (``"op kind softmax is float-only on target 'x86'"``).
    """

    node: str
    op: str
    quantized: bool
    reason: str
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "node": self.node,
            "op": self.op,
            "quantized": self.quantized,
            "reason": self.reason,
        }
        if self.rule and self.rule != self.reason:
            d["rule"] = self.rule
        return d


@dataclass
class QuantPlan:
    """The result of :func:`plan`.

    :param target: the target's name.
    :param tensors: quantized tensors by name, in graph order (float tensors are absent).
    :param decisions: one per node, in graph order.
    :param fusions: node-name chains fused by the runtime.
    :param share_groups: group name → member tensors (graph order).
    :param warnings: things the user should know (unmatched patterns, spec conflicts…).
    :param dynamic: whether activations are quantized dynamically.
    """

    target: str
    tensors: dict[str, TensorPlan]
    decisions: list[NodeDecision]
    fusions: list[tuple[str, ...]] = field(default_factory=list)
    share_groups: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dynamic: bool = False

    def _role(self, role: str) -> list[TensorPlan]:
        return [t for t in self.tensors.values() if t.role == role]

    def activations(self) -> list[TensorPlan]:
        return self._role("activation")

    def weights(self) -> list[TensorPlan]:
        return self._role("weight")

    def biases(self) -> list[TensorPlan]:
        return self._role("bias")

    def quantized_nodes(self) -> list[str]:
        return [d.node for d in self.decisions if d.quantized]

    def float_nodes(self) -> list[str]:
        return [d.node for d in self.decisions if not d.quantized]

    def decision(self, node: str) -> NodeDecision:
        for d in self.decisions:
            if d.node == node:
                return d
        raise KeyError(f"no decision for node {node!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dynamic": self.dynamic,
            "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
            "decisions": [d.to_dict() for d in self.decisions],
            "fusions": [list(f) for f in self.fusions],
            "share_groups": {k: list(v) for k, v in self.share_groups.items()},
            "warnings": list(self.warnings),
        }

    def explain(self) -> str:
        """A short human-readable report: one line per node, then warnings."""
        width = max((len(d.node) for d in self.decisions), default=0)
        lines = [f"plan for target {self.target!r}" + (" (dynamic)" if self.dynamic else "")]
        for d in self.decisions:
            mark = "Q" if d.quantized else "-"
            lines.append(f"  {mark} {d.node:<{width}}  {d.reason}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------------


def plan(graph: QuantGraph, target: TargetSpec, overrides: Overrides | None = None) -> QuantPlan:
    """Decide which tensor of ``graph`` gets which QuantSpec on ``target`` (rules: module doc).

    :raises PlanError: an override the target does not allow, or a malformed one.
    """
    if overrides is None:
        overrides = Overrides()
    elif isinstance(overrides, Mapping):
        overrides = Overrides.from_dict(overrides)
    return _Planner(graph, target, overrides).run()


@dataclass
class _Claim:
    node: str
    spec: QuantSpec
    kind: str  # input | output | shared | weight | bias


_PRIORITY = {"input": 0, "output": 1, "shared": 2}


class _Planner:
    def __init__(self, graph: QuantGraph, target: TargetSpec, ov: Overrides) -> None:
        self.g, self.t, self.ov = graph, target, ov
        self.warnings: list[str] = []
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.graph_outputs = set(graph.outputs)
        self.claims: dict[str, list[_Claim]] = {}
        self.readers: dict[str, list[str]] = {}
        self.blocked: set[str] = set()
        self.parent: dict[str, str] = {}
        self.group_owner: dict[str, tuple[int, str]] = {}
        self.fixed: dict[str, QuantParams] = {}
        self.bias_of: dict[str, tuple[str, str]] = {}
        self.index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.spec_cache: dict[tuple[str, str, bool], QuantSpec] = {}
        self.order = self._tensor_order()

    # -- helpers -------------------------------------------------------------------------------
    def _tensor_order(self) -> dict[str, int]:
        order: dict[str, int] = {}
        for t in self.g.inputs:
            order.setdefault(t, len(order))
        for n in self.g.nodes:
            for t in list(n.inputs) + list(n.weights.values()) + list(n.outputs):
                order.setdefault(t, len(order))
        return order

    def where(self, node: Node) -> str:
        return f"layer {node.name!r} ({node.op.value})"

    def data_inputs(self, node: Node) -> list[str]:
        if node.op is OpKind.EMBEDDING:
            return []
        inputs = node.inputs if node.op in _ALL_INPUTS_DATA else node.inputs[:1]
        out = []
        for t in inputs:
            const = self.g.initializers.get(t)
            if const is not None and np.asarray(const).dtype.kind not in "fc":
                continue  # integer / boolean constants (shapes, indices) are never quantized
            out.append(t)
        return out

    def claim(self, tensor: str, node: Node, spec: QuantSpec, kind: str, read: bool) -> None:
        self.claims.setdefault(tensor, []).append(_Claim(node.name, spec, kind))
        if read and node.name not in self.readers.setdefault(tensor, []):
            self.readers[tensor].append(node.name)

    def claimed(self, tensor: str) -> bool:
        return tensor in self.claims and tensor not in self.blocked

    def find(self, t: str) -> str:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, tensors: list[str], node: Node) -> None:
        if len(tensors) < 2:
            return
        owner = (self.index[node.name], node.name)
        roots = {self.find(t) for t in tensors}
        owners = [self.group_owner.pop(r, owner) for r in roots] + [owner]
        first = roots.pop()
        for r in roots:
            self.parent[r] = first
        self.group_owner[first] = min(owners)

    # -- spec resolution -----------------------------------------------------------------------
    def resolve(self, node: Node, role: str, dynamic: bool = False) -> QuantSpec:
        key = (node.name, role, dynamic)
        if key not in self.spec_cache:
            self.spec_cache[key] = self._resolve(node, role, dynamic)
        return self.spec_cache[key]

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
                        f"{self.where(node)}: {role} bits {ch['bits']!r} (set by {label}): {exc}"
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
            raise PlanError(f"{self.where(node)}: invalid {role} spec{by}: {exc}") from None
        w_allowed, a_allowed = t.allowed_for(node.op)
        allowed = w_allowed if role == "weight" else a_allowed
        for fld, value, ok in allowed.violations(spec):
            raise PlanError(
                f"{self.where(node)}: {role} {fld} {value!r} (set by {src.get(fld, '?')}) is not "
                f"allowed on target {t.name!r}; allowed: {_fmt(ok)}"
            )
        if role == "weight" and spec.axis is not None:
            w = self.g.weight(node)
            if w is not None and not -w.ndim <= spec.axis < w.ndim:
                raise PlanError(
                    f"{self.where(node)}: weight axis {spec.axis} (from {src['axis']}) is out of "
                    f"range for a weight of shape {tuple(w.shape)}; allowed: "
                    f"{_fmt(range(-w.ndim, w.ndim))}"
                )
        return spec

    def weight_axis(self, node: Node, granularity: str) -> int:
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

    # -- the algorithm -------------------------------------------------------------------------
    def run(self) -> QuantPlan:
        g, t, ov = self.g, self.t, self.ov
        ignored = self.match_ignores()
        self.check_layer_patterns()
        if ov.dynamic is None:
            dynamic = t.dynamic.default
        elif ov.dynamic and not t.dynamic.supported:
            raise PlanError(
                f"overrides.dynamic: True is not allowed: target {t.name!r} does not support "
                "dynamic activation quantization; allowed: false"
            )
        else:
            dynamic = ov.dynamic
        self.dynamic = dynamic

        too_short = self.short_reductions()

        def base_eligible(n: Node) -> bool:
            if n.name in ignored or n.name in too_short or n.op not in t.ops.quantize:
                return False
            return not dynamic or n.op in t.dynamic.ops

        not_between = self.between_quantized(base_eligible)

        def eligible(n: Node) -> bool:
            return base_eligible(n) and n.name not in not_between

        fusion_of, tail_of, fusions = self.match_fusions(eligible, ignored)
        reasons: dict[str, tuple[bool, str]] = {}
        units: list[str] = []
        for n in g.nodes:
            if n.name in tail_of:
                continue
            if eligible(n):
                units.append(n.name)
                reasons[n.name] = (True, self.plan_unit(fusion_of.get(n.name, [n]), dynamic))
            elif n.op in t.ops.weight_only and n.name not in ignored and "weight" in n.weights:
                units.append(n.name)
                reasons[n.name] = (True, self.plan_weight_only(n))

        passthrough: set[str] = set()
        if not dynamic:
            passthrough = self.propagate_shared(ignored, fusion_of, tail_of)

        tensors, groups = self.finalize()

        decisions = []
        for n in g.nodes:
            op = n.op.value
            rule = ""
            if n.name in ignored:
                decision = (False, ignored[n.name])
                rule = "ignored by an override"
            elif n.name in tail_of:
                head, chain = tail_of[n.name]
                decision = (True, f"fused into {head} ({chain})")
                rule = f"fused ({chain})"
            elif n.name in reasons:
                decision = reasons[n.name]
            elif n.name in too_short:
                decision = (False, too_short[n.name])
                rule = f"conv reduction below ops.min_reduction = {t.ops.min_reduction}"
            elif n.name in not_between:
                decision = (False, not_between[n.name])
                rule = f"{op} is quantized only between quantized ops on target {t.name!r}"
            elif n.name in passthrough:
                decision = (
                    True,
                    f"quantized: {op} passes its input's scale through (shared-scale op)",
                )
            elif n.op in t.ops.float_only:
                decision = (False, f"op kind {op} is float-only on target {t.name!r}")
            elif dynamic and n.op in t.ops.quantize:
                kinds = _fmt(sorted(k.value for k in t.dynamic.ops))
                decision = (
                    False,
                    f"kept float in dynamic mode: target {t.name!r} quantizes "
                    f"only {kinds} dynamically",
                )
            elif n.op in t.ops.shared_scale and dynamic:
                decision = (
                    False,
                    f"kept float in dynamic mode: {op} has no static scale to "
                    "share with its neighbours",
                )
            elif n.op in t.ops.shared_scale:
                decision = (
                    False,
                    f"kept float: {op} shares its neighbours' scale and none of them is quantized",
                )
            else:
                decision = (False, f"op kind {op} is not quantized on target {t.name!r}")
            decisions.append(NodeDecision(n.name, op, *decision, rule=rule or decision[1]))

        self.warn_ineffective_layers(set(units) | passthrough)
        if g.nodes and not any(d.quantized for d in decisions):
            hint = (
                f"; in dynamic mode target {t.name!r} quantizes only "
                f"{_fmt(sorted(k.value for k in t.dynamic.ops))}: try static quantization"
                if dynamic
                else ""
            )
            self.warnings.append(
                f"no node of graph {g.name!r} is quantized on target {t.name!r}: the artifact "
                f"computes in float (each node's reason is in the plan){hint}"
            )
        return QuantPlan(
            target=t.name,
            tensors=tensors,
            decisions=decisions,
            fusions=fusions,
            share_groups=groups,
            warnings=self.warnings,
            dynamic=dynamic,
        )

    def short_reductions(self) -> dict[str, str]:
        """Ungrouped convolutions whose per-output reduction is below ``ops.min_reduction``."""
        limit = self.t.ops.min_reduction
        out: dict[str, str] = {}
        if not limit:
            return out
        for n in self.g.nodes:
            w = self.g.weight(n)
            if n.op is not OpKind.CONV or w is None or w.ndim < 3:
                continue
            if int(n.attrs.get("groups", 1)) > 1:
                continue  # grouped / depthwise convolutions have their own fast integer kernels
            red = int(np.prod(w.shape[1:]))  # (out, in/groups, k...)
            if red < limit:
                out[n.name] = (
                    f"kept float: each output sums only {red} products, below target "
                    f"{self.t.name!r}'s ops.min_reduction = {limit} (the integer kernel would be slower)"
                )
        return out

    def between_quantized(self, eligible: Any) -> dict[str, str]:
        """Nodes of ``ops.only_between_quantized`` kinds that would break out of an integer chain,
        with the reason: the greatest set of candidates whose data inputs all come from
        quantized ops and whose output some quantized op reads (seen through relu/clip and
        shared-scale ops, which pass an integer tensor on)."""
        kinds = self.t.ops.only_between_quantized
        candidates = {n.name for n in self.g.nodes if n.op in kinds and eligible(n)}
        if not candidates:
            return {}
        producers = self.g.producers()
        consumers = self.g.consumers()
        transparent = {OpKind.RELU, OpKind.CLIP} | set(self.t.ops.shared_scale)
        rejected: dict[str, str] = {}

        def quantized(n: Node) -> bool:
            return eligible(n) and (n.name in candidates or n.op not in kinds)

        def source(t: str) -> Node | None:
            """The op that really computes tensor ``t`` (None: a graph input or constant)."""
            n = producers.get(t)
            while n is not None and n.op in transparent and not quantized(n) and n.inputs:
                n = producers.get(n.inputs[0])
            return n

        def readers(t: str, depth: int = 0) -> list[Node]:
            found = []
            for c in consumers.get(t, []):
                if c.op in transparent and not quantized(c) and depth < 16:
                    found.extend(readers(c.outputs[0], depth + 1))
                else:
                    found.append(c)
            return found

        changed = True
        while changed:
            changed = False
            for name in sorted(candidates):
                n = self.g.node(name)
                why = ""
                for t_in in self.data_inputs(n):
                    if t_in in self.g.initializers:
                        continue
                    src = source(t_in)
                    if src is not None and not quantized(src):
                        why = f"its input {t_in!r} comes from {src.name} ({src.op.value}, float)"
                        break
                if not why:
                    outs = readers(n.outputs[0])
                    if not any(quantized(r) for r in outs):
                        float_readers = ", ".join(f"{r.name} ({r.op.value})" for r in outs[:3])
                        why = f"its output feeds only float ops ({float_readers or 'none'})"
                if why:
                    candidates.discard(name)
                    rejected[name] = (
                        f"kept float: on target {self.t.name!r} {n.op.value} is quantized only "
                        f"between quantized ops, and {why}"
                    )
                    changed = True
        return rejected

    def match_ignores(self) -> dict[str, str]:
        ov, g = self.ov, self.g
        ignored: dict[str, str] = {}
        names = set(ov.ignore_names)
        used_patterns: set[str] = set()
        used_ops: set[OpKind] = set()
        for n in g.nodes:
            if n.name in names:
                ignored[n.name] = f"ignored by override name {n.name!r}"
                continue
            pattern = next((p for p in ov.ignore_patterns if fnmatchcase(n.name, p)), None)
            if pattern is not None:
                used_patterns.add(pattern)
                ignored[n.name] = f"ignored by override pattern {pattern!r}"
            elif n.op in ov.ignore_ops:
                used_ops.add(n.op)
                ignored[n.name] = f"ignored by override op kind {n.op.value!r}"
        node_names = {n.name for n in g.nodes}
        for name in ov.ignore_names:
            if name not in node_names:
                self.warnings.append(
                    f"overrides.ignore_names: no node named {name!r} in graph {g.name!r}"
                )
        for p in ov.ignore_patterns:
            if p not in used_patterns and not any(fnmatchcase(x, p) for x in node_names):
                self.warnings.append(f"overrides.ignore_patterns: pattern {p!r} matches no node")
        for k in ov.ignore_ops:
            if not any(n.op is k for n in g.nodes):
                self.warnings.append(
                    f"overrides.ignore_ops: no node of op kind {k.value!r} in graph {g.name!r}"
                )
        return ignored

    def check_layer_patterns(self) -> None:
        for p in self.ov.layers:
            if not any(fnmatchcase(n.name, p) for n in self.g.nodes):
                self.warnings.append(f"overrides.layers: pattern {p!r} matches no node")

    def warn_ineffective_layers(self, units: set[str]) -> None:
        for p in self.ov.layers:
            matched = [n.name for n in self.g.nodes if fnmatchcase(n.name, p)]
            if matched and not any(m in units for m in matched):
                self.warnings.append(
                    f"overrides.layers: pattern {p!r} matches only nodes whose specs it cannot "
                    f"change (kept float, or fused into another node): "
                    f"{_fmt(matched[:5])}{', …' if len(matched) > 5 else ''}; it has no effect"
                )

    def match_fusions(
        self, eligible: Any, ignored: Mapping[str, str]
    ) -> tuple[dict[str, list[Node]], dict[str, tuple[str, str]], list[tuple[str, ...]]]:
        chains = sorted(self.t.fusions, key=len, reverse=True)
        fusion_of: dict[str, list[Node]] = {}
        tail_of: dict[str, tuple[str, str]] = {}
        fusions: list[tuple[str, ...]] = []
        for n in self.g.nodes:
            if n.name in tail_of or not eligible(n):
                continue
            for chain in chains:
                if chain[0] is not n.op:
                    continue
                members = [n]
                for kind in chain[1:]:
                    nxt = self.single_consumer(members[-1])
                    if (
                        nxt is None
                        or nxt.op is not kind
                        or nxt.name in ignored
                        or nxt.name in tail_of
                        or nxt.name in fusion_of
                    ):
                        break
                    members.append(nxt)
                if len(members) == len(chain):
                    label = "+".join(k.value for k in chain)
                    fusion_of[n.name] = members
                    for m in members[1:]:
                        tail_of[m.name] = (n.name, label)
                    fusions.append(tuple(m.name for m in members))
                    break
        return fusion_of, tail_of, fusions

    def single_consumer(self, node: Node) -> Node | None:
        if len(node.outputs) != 1:
            return None
        out = node.outputs[0]
        if out in self.graph_outputs:
            return None
        readers = self.consumers.get(out, [])
        return readers[0] if len(readers) == 1 else None

    def plan_unit(self, members: list[Node], dynamic: bool) -> str:
        t = self.t
        head, last = members[0], members[-1]
        op = head.op.value
        internal = {x for m in members[:-1] for x in m.outputs}
        self.blocked |= internal
        # weights
        wspec = None
        for m in members:
            if "weight" in m.weights and m.op in t.ops.quantize:
                spec = self.resolve(m, "weight")
                self.claims.setdefault(m.weights["weight"], []).append(
                    _Claim(m.name, spec, "weight")
                )
                self.readers.setdefault(m.weights["weight"], []).append(m.name)
                if m is head:
                    wspec = spec
        weight_only = wspec is not None and wspec.dtype in t.allowed.weight_only_dtypes
        chain = "+".join(m.op.value for m in members)
        fused = (
            f", fused with {_fmt(m.name for m in members[1:])} ({chain})"
            if len(members) > 1
            else ""
        )
        if weight_only:
            return f"quantized weight-only ({wspec.dtype}): {op}{fused}"
        aspec = self.resolve(head, "activation", dynamic)
        # activation inputs (float constants are quantized like weights, with this spec)
        first_input = None
        for m in members:
            for x in self.data_inputs(m):
                if x in internal:
                    continue
                first_input = first_input or x
                kind = "weight" if x in self.g.initializers else "input"
                self.claim(x, m, aspec, kind, read=True)
        # bias
        bias = head.weights.get("bias")
        if (
            bias is not None
            and wspec is not None
            and t.bias.mode == "int32"
            and not dynamic
            and first_input is not None
            and self.int32_bias_ok(wspec, aspec)
        ):
            per_channel = wspec.granularity is Granularity.PER_CHANNEL
            bspec = QuantSpec(
                "int32",
                symmetric=True,
                granularity="per_channel" if per_channel else "per_tensor",
                axis=0 if per_channel else None,
            )
            self.claims.setdefault(bias, []).append(_Claim(head.name, bspec, "bias"))
            self.readers.setdefault(bias, []).append(head.name)
            self.bias_of[bias] = (first_input, head.weights["weight"])
        if dynamic:
            return f"quantized (dynamic activations): {op}{fused}"
        # output
        if t.ops.quantize_outputs == "always":
            for x in last.outputs:
                self.claim(x, last, aspec, "output", read=False)
        fixed = t.ops.fixed_output.get(last.op)
        extra = ""
        if fixed is not None:
            for x in last.outputs:
                self.fixed[x] = fixed.params()
            extra = f" (fixed output scale {fixed.scale:g}, zero point {fixed.zero_point})"
        for m in members:
            if m.op in t.ops.shared_scale:
                self.union(self.data_inputs(m) + list(m.outputs), m)
                extra += " (inputs and output share one scale)"
        return f"quantized: {op}{fused}{extra}"

    def plan_weight_only(self, node: Node) -> str:
        """A node of an ``ops.weight_only`` kind: its weight alone is quantized."""
        spec = self.resolve(node, "weight")
        self.claims.setdefault(node.weights["weight"], []).append(_Claim(node.name, spec, "weight"))
        self.readers.setdefault(node.weights["weight"], []).append(node.name)
        what = "table" if node.op is OpKind.EMBEDDING else "weight"
        return (
            f"weight-only: {node.op.value} {what} {spec.dtype} {self.granularity_words(node, spec)}"
        )

    def granularity_words(self, node: Node, spec: QuantSpec) -> str:
        g = spec.granularity
        if g is Granularity.PER_TENSOR:
            return "per tensor"
        w = self.g.weight(node)
        axis = int(spec.axis or 0)
        if w is not None and w.ndim:
            axis %= w.ndim
        if g is Granularity.PER_CHANNEL:
            if node.op is OpKind.EMBEDDING and w is not None and w.ndim == 2:
                return "per row" if axis == 0 else "per column"
            return f"per channel (axis {axis})"
        return f"per group of {spec.group_size} (axis {axis})"

    @staticmethod
    def int32_bias_ok(wspec: QuantSpec, aspec: QuantSpec) -> bool:
        return (
            not wspec.is_float
            and not aspec.is_float
            and not aspec.dynamic
            and wspec.granularity in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
        )

    def propagate_shared(
        self, ignored: Mapping[str, str], fusion_of: Mapping[str, Any], tail_of: Mapping[str, Any]
    ) -> set[str]:
        t = self.t
        candidates = [
            n
            for n in self.g.nodes
            if n.op in t.ops.shared_scale
            and n.op not in t.ops.quantize
            and n.name not in ignored
            and n.name not in fusion_of
            and n.name not in tail_of
        ]
        done: set[str] = set()
        changed = True
        while changed:
            changed = False
            for n in candidates:
                if n.name in done:
                    continue
                tensors = self.data_inputs(n) + list(n.outputs)
                if not any(self.claimed(x) for x in tensors):
                    continue
                done.add(n.name)
                changed = True
                spec = self.resolve(n, "activation")
                for x in self.data_inputs(n):
                    kind = "weight" if x in self.g.initializers else "shared"
                    self.claim(x, n, spec, kind, read=True)
                for x in n.outputs:
                    self.claim(x, n, spec, "shared", read=False)
                self.union(tensors, n)
        return done

    def finalize(self) -> tuple[dict[str, TensorPlan], dict[str, list[str]]]:
        chosen: dict[str, QuantSpec] = {}
        roles: dict[str, str] = {}
        for x, claims in self.claims.items():
            if x in self.blocked:
                continue
            kinds = {c.kind for c in claims}
            if "bias" in kinds:
                roles[x], pick = "bias", [c for c in claims if c.kind == "bias"]
            elif "weight" in kinds:
                roles[x], pick = "weight", [c for c in claims if c.kind == "weight"]
            else:
                roles[x] = "activation"
                pick = sorted(claims, key=lambda c: _PRIORITY[c.kind])
            spec = pick[0].spec
            chosen[x] = spec
            others = {(c.node, c.spec) for c in pick if c.spec != spec}
            if others:
                node, other = sorted(others, key=lambda o: self.index[o[0]])[0]
                self.warnings.append(
                    f"tensor {x!r}: {pick[0].node!r} wants {_brief(spec)} but {node!r} wants "
                    f"{_brief(other)}; using {pick[0].node!r}'s"
                )
        # share groups: one spec (and one set of fixed params) per group
        members: dict[str, list[str]] = {}
        for x in self.parent:
            if x in chosen:
                members.setdefault(self.find(x), []).append(x)
        groups: dict[str, list[str]] = {}
        group_of: dict[str, str] = {}
        for root, xs in sorted(members.items(), key=lambda kv: self.group_owner[kv[0]]):
            if len(xs) < 2:
                continue
            xs.sort(key=lambda x: self.order.get(x, 0))
            name = self.group_owner[root][1]
            groups[name] = xs
            lead = min(xs, key=lambda x: (self._rank(x), self.order.get(x, 0)))
            spec = chosen[lead]
            differ = [x for x in xs if chosen[x] != spec]
            if differ:
                self.warnings.append(
                    f"share group {name!r}: {_fmt(differ)} use {lead!r}'s spec {_brief(spec)} "
                    "so that the group shares one scale"
                )
            fixed = [(x, self.fixed[x]) for x in xs if x in self.fixed]
            if fixed:
                for x, params in fixed[1:]:
                    if params != fixed[0][1]:
                        self.warnings.append(
                            f"share group {name!r}: {x!r} and {fixed[0][0]!r} have different "
                            f"fixed params; using {fixed[0][0]!r}'s"
                        )
            for x in xs:
                chosen[x] = spec
                group_of[x] = name
                if fixed:
                    self.fixed[x] = fixed[0][1]
        tensors: dict[str, TensorPlan] = {}
        for x in sorted(chosen, key=lambda x: self.order.get(x, 0)):
            role = roles[x]
            spec = chosen[x]
            fixed_params = self.fixed.get(x) if role == "activation" else None
            if fixed_params is not None and not spec.is_float:
                zp = int(fixed_params.zero_point)
                if not spec.qmin <= zp <= spec.qmax:
                    self.warnings.append(
                        f"tensor {x!r}: fixed zero point {zp} is outside the {spec.dtype} grid "
                        f"[{spec.qmin}, {spec.qmax}]"
                    )
            readers = tuple(self.readers.get(x, ()))
            producer = self.producers.get(x)
            tensors[x] = TensorPlan(
                name=x,
                role=role,
                spec=spec,
                node=readers[0] if role != "activation" and readers else None,
                share_group=group_of.get(x),
                bias_of=self.bias_of.get(x) if role == "bias" else None,
                consumers=readers,
                producer=producer.name if producer is not None and role == "activation" else None,
                fixed_params=fixed_params,
                all_readers=role != "activation"
                or (self.t.ops.quantize_outputs == "always" and not spec.dynamic),
            )
        return tensors, groups

    def _rank(self, x: str) -> int:
        return min(_PRIORITY.get(c.kind, 0) for c in self.claims[x])


def _brief(spec: QuantSpec) -> str:
    parts = [spec.dtype, spec.granularity.value, "sym" if spec.symmetric else "asym"]
    if spec.dynamic:
        parts.append("dynamic")
    return "/".join(parts)
