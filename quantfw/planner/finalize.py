"""The last step of planning: one spec per tensor (rule 7), one spec and one set of fixed params
per share group (rule 6), as :class:`~quantfw.planner.TensorPlan` entries in graph order."""

from __future__ import annotations

from ..spec import QuantSpec
from ..target.reader import fmt_values
from .result import TensorPlan
from .state import CLAIM_PRIORITY, PlanState


def finalize(st: PlanState) -> tuple[dict[str, TensorPlan], dict[str, list[str]]]:
    """Settle every claim: the quantized tensors in graph order, and share group → members.

    Disagreements between claims, and between members of a share group, become warnings.
    """
    chosen: dict[str, QuantSpec] = {}
    roles: dict[str, str] = {}
    for x, claims in st.claims.items():
        if x in st.blocked:
            continue
        kinds = {c.kind for c in claims}
        if "bias" in kinds:
            roles[x], pick = "bias", [c for c in claims if c.kind == "bias"]
        elif "weight" in kinds:
            roles[x], pick = "weight", [c for c in claims if c.kind == "weight"]
        else:
            roles[x] = "activation"
            pick = sorted(claims, key=lambda c: CLAIM_PRIORITY[c.kind])
        spec = pick[0].spec
        chosen[x] = spec
        others = {(c.node, c.spec) for c in pick if c.spec != spec}
        if others:
            node, other = sorted(others, key=lambda o: st.index[o[0]])[0]
            st.warnings.append(
                f"tensor {x!r}: {pick[0].node!r} wants {_brief(spec)} but {node!r} wants "
                f"{_brief(other)}; using {pick[0].node!r}'s"
            )
    # share groups: one spec (and one set of fixed params) per group
    members: dict[str, list[str]] = {}
    for x in st.parent:
        if x in chosen:
            members.setdefault(st.find(x), []).append(x)
    groups: dict[str, list[str]] = {}
    group_of: dict[str, str] = {}
    for root, xs in sorted(members.items(), key=lambda kv: st.group_owner[kv[0]]):
        if len(xs) < 2:
            continue
        xs.sort(key=lambda x: st.order.get(x, 0))
        name = st.group_owner[root][1]
        groups[name] = xs
        lead = min(xs, key=lambda x: (_rank(st, x), st.order.get(x, 0)))
        spec = chosen[lead]
        differ = [x for x in xs if chosen[x] != spec]
        if differ:
            st.warnings.append(
                f"share group {name!r}: {fmt_values(differ)} use {lead!r}'s spec {_brief(spec)} "
                "so that the group shares one scale"
            )
        fixed = [(x, st.fixed[x]) for x in xs if x in st.fixed]
        if fixed:
            for x, params in fixed[1:]:
                if params != fixed[0][1]:
                    st.warnings.append(
                        f"share group {name!r}: {x!r} and {fixed[0][0]!r} have different "
                        f"fixed params; using {fixed[0][0]!r}'s"
                    )
        for x in xs:
            chosen[x] = spec
            group_of[x] = name
            if fixed:
                st.fixed[x] = fixed[0][1]
    tensors: dict[str, TensorPlan] = {}
    for x in sorted(chosen, key=lambda x: st.order.get(x, 0)):
        role = roles[x]
        spec = chosen[x]
        fixed_params = st.fixed.get(x) if role == "activation" else None
        if fixed_params is not None and not spec.is_float:
            zp = int(fixed_params.zero_point)
            if not spec.qmin <= zp <= spec.qmax:
                st.warnings.append(
                    f"tensor {x!r}: fixed zero point {zp} is outside the {spec.dtype} grid "
                    f"[{spec.qmin}, {spec.qmax}]"
                )
        readers = tuple(st.readers.get(x, ()))
        producer = st.producers.get(x)
        tensors[x] = TensorPlan(
            name=x,
            role=role,
            spec=spec,
            node=readers[0] if role != "activation" and readers else None,
            share_group=group_of.get(x),
            bias_of=st.bias_of.get(x) if role == "bias" else None,
            consumers=readers,
            producer=producer.name if producer is not None and role == "activation" else None,
            fixed_params=fixed_params,
            all_readers=role != "activation"
            or (st.t.ops.quantize_outputs == "always" and not spec.dynamic),
        )
    return tensors, groups


def _rank(st: PlanState, x: str) -> int:
    """How strongly ``x``'s claims speak for its group's spec (lowest first: inputs)."""
    return min(CLAIM_PRIORITY.get(c.kind, 0) for c in st.claims[x])


def _brief(spec: QuantSpec) -> str:
    """A spec in a few words for warnings: ``int8/per_tensor/sym``."""
    parts = [spec.dtype, spec.granularity.value, "sym" if spec.symmetric else "asym"]
    if spec.dynamic:
        parts.append("dynamic")
    return "/".join(parts)
