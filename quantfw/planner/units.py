"""What one quantized unit (an eligible node, or a fused chain headed by one) claims: its weight,
its activation inputs, its int32 bias, its output, fixed output params and shared scales."""

from __future__ import annotations

from ..graph import Node, OpKind
from ..spec import Granularity, QuantSpec
from ..target.reader import fmt_values
from .state import PlanState


def plan_unit(st: PlanState, members: list[Node], dynamic: bool) -> str:
    """Claim the tensors of the unit ``members`` (one node, or a fused chain: head first).

    :return: the reason recorded in the head's decision.
    """
    t = st.t
    head, last = members[0], members[-1]
    op = head.op.value
    internal = {x for m in members[:-1] for x in m.outputs}
    st.blocked |= internal
    # weights
    wspec = None
    for m in members:
        if "weight" in m.weights and m.op in t.ops.quantize:
            spec = st.specs.resolve(m, "weight")
            if t.allowed.weight_only(spec) and spec.pair_limit is not None:
                spec = spec.replace(pair_limit=None)  # no integer kernel reads it
            st.claim_parameter(m.weights["weight"], m.name, spec, "weight")
            if m is head:
                wspec = spec
    weight_only = wspec is not None and t.allowed.weight_only(wspec)
    chain = "+".join(m.op.value for m in members)
    fused = (
        f", fused with {fmt_values(m.name for m in members[1:])} ({chain})"
        if len(members) > 1
        else ""
    )
    if weight_only:
        return f"quantized weight-only ({wspec.dtype}): {op}{fused}"
    aspec = st.specs.resolve(head, "activation", dynamic)
    # activation inputs (float constants are quantized like weights, with this spec)
    first_input = None
    for m in members:
        for x in st.data_inputs(m):
            if x in internal:
                continue
            first_input = first_input or x
            kind = "weight" if x in st.g.initializers else "input"
            st.claim(x, m, aspec, kind, read=True)
    # bias
    bias = head.weights.get("bias")
    if (
        bias is not None
        and wspec is not None
        and t.bias.mode == "int32"
        and not dynamic
        and first_input is not None
        and _int32_bias_ok(wspec, aspec)
    ):
        per_channel = wspec.granularity is Granularity.PER_CHANNEL
        bspec = QuantSpec(
            "int32",
            symmetric=True,
            granularity="per_channel" if per_channel else "per_tensor",
            axis=0 if per_channel else None,
        )
        st.claim_parameter(bias, head.name, bspec, "bias")
        st.bias_of[bias] = (first_input, head.weights["weight"])
    if dynamic:
        return f"quantized (dynamic activations): {op}{fused}"
    # output
    if t.ops.quantize_outputs == "always":
        for x in last.outputs:
            st.claim(x, last, aspec, "output", read=False)
    fixed = t.ops.fixed_output.get(last.op)
    extra = ""
    if fixed is not None:
        for x in last.outputs:
            st.fixed[x] = fixed.params()
        extra = f" (fixed output scale {fixed.scale:g}, zero point {fixed.zero_point})"
    for m in members:
        if m.op in t.ops.shared_scale:
            st.union(st.data_inputs(m) + list(m.outputs), m)
            extra += " (inputs and output share one scale)"
    return f"quantized: {op}{fused}{extra}"


def plan_weight_only(st: PlanState, node: Node) -> str:
    """A node of an ``ops.weight_only`` kind: its weight alone is quantized."""
    spec = st.specs.resolve(node, "weight")
    if spec.pair_limit is not None:  # no integer kernel reads it: nothing to saturate
        spec = spec.replace(pair_limit=None)
    st.claim_parameter(node.weights["weight"], node.name, spec, "weight")
    what = "table" if node.op is OpKind.EMBEDDING else "weight"
    return f"weight-only: {node.op.value} {what} {spec.dtype} {_granularity_words(st, node, spec)}"


def _granularity_words(st: PlanState, node: Node, spec: QuantSpec) -> str:
    """``spec``'s granularity for people: per tensor, per row of a table, per channel (axis)…"""
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return "per tensor"
    w = st.g.weight(node)
    axis = int(spec.axis or 0)
    if w is not None and w.ndim:
        axis %= w.ndim
    if g is Granularity.PER_CHANNEL:
        if node.op is OpKind.EMBEDDING and w is not None and w.ndim == 2:
            return "per row" if axis == 0 else "per column"
        return f"per channel (axis {axis})"
    return f"per group of {spec.group_size} (axis {axis})"


def _int32_bias_ok(wspec: QuantSpec, aspec: QuantSpec) -> bool:
    """Whether an int32 bias with scale s_x * s_w can follow from these weight and input specs."""
    return (
        not wspec.is_float
        and not aspec.is_float
        and not aspec.dynamic
        and wspec.granularity in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
    )
