"""The planner's driver: :func:`plan` applies the rules of :mod:`quantfw.planner` in order and
records, for every node, whether it runs quantized and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..graph import Node, QuantGraph
from ..target import TargetSpec
from ..target.reader import fmt_values
from .finalize import finalize
from .overrides import Overrides, PlanError
from .result import NodeDecision, QuantPlan
from .rules import (
    between_quantized,
    check_layer_patterns,
    float_output_readers,
    match_fusions,
    match_ignores,
    propagate_shared,
    short_reductions,
    warn_ineffective_layers,
)
from .state import PlanState
from .units import plan_unit, plan_weight_only


def plan(
    graph: QuantGraph, target: TargetSpec, overrides: Overrides | Mapping[str, Any] | None = None
) -> QuantPlan:
    """Decide which tensor of ``graph`` gets which QuantSpec on ``target`` (rules:
    :mod:`quantfw.planner`).

    :param overrides: an :class:`Overrides` or its plain-mapping form.
    :raises PlanError: an override the target does not allow, or a malformed one.
    """
    if overrides is None:
        overrides = Overrides()
    elif isinstance(overrides, Mapping):
        overrides = Overrides.from_dict(overrides)
    return _run(PlanState(graph, target, overrides))


def _run(st: PlanState) -> QuantPlan:
    """Apply the rules of :mod:`quantfw.planner` in order and gather the decisions."""
    g, t, ov = st.g, st.t, st.ov
    ignored = match_ignores(st)
    check_layer_patterns(st)
    if ov.dynamic is None:
        dynamic = t.dynamic.default
    elif ov.dynamic and not t.dynamic.supported:
        raise PlanError(
            f"overrides.dynamic: True is not allowed: target {t.name!r} does not support "
            "dynamic activation quantization; allowed: false"
        )
    else:
        dynamic = ov.dynamic

    too_short = short_reductions(st)
    float_input = float_output_readers(st)

    def base_eligible(n: Node) -> bool:
        if n.name in ignored or n.name in too_short or n.op not in t.ops.quantize:
            return False
        if n.name in float_input:
            return False
        return not dynamic or n.op in t.dynamic.ops

    not_between = between_quantized(st, base_eligible)

    def eligible(n: Node) -> bool:
        return base_eligible(n) and n.name not in not_between

    fusion_of, tail_of, fusions = match_fusions(st, eligible, ignored)
    reasons: dict[str, tuple[bool, str]] = {}
    units: list[str] = []
    for n in g.nodes:
        if n.name in tail_of:
            continue
        if eligible(n):
            units.append(n.name)
            reasons[n.name] = (True, plan_unit(st, fusion_of.get(n.name, [n]), dynamic))
        elif n.op in t.ops.weight_only and n.name not in ignored and "weight" in n.weights:
            units.append(n.name)
            reasons[n.name] = (True, plan_weight_only(st, n))

    passthrough: set[str] = set()
    if not dynamic:
        passthrough = propagate_shared(st, ignored, fusion_of, tail_of)

    tensors, groups = finalize(st)

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
        elif n.name in float_input:
            decision = (False, float_input[n.name])
            rule = f"reads an output of an ops.float_outputs kind on target {t.name!r}"
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
            kinds = fmt_values(sorted(k.value for k in t.dynamic.ops))
            decision = (
                False,
                f"kept float in dynamic mode: target {t.name!r} quantizes only {kinds} dynamically",
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

    warn_ineffective_layers(st, set(units) | passthrough)
    if g.nodes and not any(d.quantized for d in decisions):
        hint = (
            f"; in dynamic mode target {t.name!r} quantizes only "
            f"{fmt_values(sorted(k.value for k in t.dynamic.ops))}: try static quantization"
            if dynamic
            else ""
        )
        st.warnings.append(
            f"no node of graph {g.name!r} is quantized on target {t.name!r}: the artifact "
            f"computes in float (each node's reason is in the plan){hint}"
        )
    return QuantPlan(
        target=t.name,
        tensors=tensors,
        decisions=decisions,
        fusions=fusions,
        share_groups=groups,
        warnings=st.warnings,
        dynamic=dynamic,
    )
