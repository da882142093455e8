"""The planner's graph rules: which nodes the overrides ignore, which chains the runtime fuses,
which nodes stay float by a target rule (``ops.min_reduction``, ``ops.only_between_quantized``),
and how a scale spreads through shared-scale ops."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from ..graph import Node, OpKind
from ..target.reader import fmt_values
from .state import PlanState


def match_ignores(st: PlanState) -> dict[str, str]:
    """Nodes the overrides keep in float, with the reason; warns of names and patterns that
    match nothing."""
    ov, g = st.ov, st.g
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
            st.warnings.append(
                f"overrides.ignore_names: no node named {name!r} in graph {g.name!r}"
            )
    for p in ov.ignore_patterns:
        if p not in used_patterns and not any(fnmatchcase(x, p) for x in node_names):
            st.warnings.append(f"overrides.ignore_patterns: pattern {p!r} matches no node")
    for k in ov.ignore_ops:
        if not any(n.op is k for n in g.nodes):
            st.warnings.append(
                f"overrides.ignore_ops: no node of op kind {k.value!r} in graph {g.name!r}"
            )
    return ignored


def check_layer_patterns(st: PlanState) -> None:
    """Warn of ``overrides.layers`` patterns that match no node."""
    for p in st.ov.layers:
        if not any(fnmatchcase(n.name, p) for n in st.g.nodes):
            st.warnings.append(f"overrides.layers: pattern {p!r} matches no node")


def warn_ineffective_layers(st: PlanState, units: set[str]) -> None:
    """Warn of ``overrides.layers`` patterns whose nodes are none of the quantized ``units``."""
    for p in st.ov.layers:
        matched = [n.name for n in st.g.nodes if fnmatchcase(n.name, p)]
        if matched and not any(m in units for m in matched):
            st.warnings.append(
                f"overrides.layers: pattern {p!r} matches only nodes whose specs it cannot "
                f"change (kept float, or fused into another node): "
                f"{fmt_values(matched[:5])}{', …' if len(matched) > 5 else ''}; it has no effect"
            )


def match_fusions(
    st: PlanState, eligible: Callable[[Node], bool], ignored: Mapping[str, str]
) -> tuple[dict[str, list[Node]], dict[str, tuple[str, str]], list[tuple[str, ...]]]:
    """Match the target's fusion chains, longest first, from each eligible node along
    single-consumer edges.

    :return: ``(head → members, tail member → (head, chain label), member-name chains)``.
    """
    chains = sorted(st.t.fusions, key=len, reverse=True)
    fusion_of: dict[str, list[Node]] = {}
    tail_of: dict[str, tuple[str, str]] = {}
    fusions: list[tuple[str, ...]] = []
    for n in st.g.nodes:
        if n.name in tail_of or not eligible(n):
            continue
        for chain in chains:
            if chain[0] is not n.op:
                continue
            members = [n]
            for kind in chain[1:]:
                nxt = single_consumer(st, members[-1])
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


def single_consumer(st: PlanState, node: Node) -> Node | None:
    """The only reader of ``node``'s only output, unless that output is also a graph output."""
    if len(node.outputs) != 1:
        return None
    out = node.outputs[0]
    if out in st.graph_outputs:
        return None
    readers = st.consumers.get(out, [])
    return readers[0] if len(readers) == 1 else None


def short_reductions(st: PlanState) -> dict[str, str]:
    """Ungrouped convolutions whose per-output reduction is below ``ops.min_reduction``."""
    limit = st.t.ops.min_reduction
    out: dict[str, str] = {}
    if not limit:
        return out
    for n in st.g.nodes:
        w = st.g.weight(n)
        if n.op is not OpKind.CONV or w is None or w.ndim < 3:
            continue
        if int(n.attrs.get("groups", 1)) > 1:
            continue  # grouped / depthwise convolutions have their own fast integer kernels
        red = int(np.prod(w.shape[1:]))  # (out, in/groups, k...)
        if red < limit:
            out[n.name] = (
                f"kept float: each output sums only {red} products, below target "
                f"{st.t.name!r}'s ops.min_reduction = {limit} (the integer kernel would be slower)"
            )
    return out


def float_output_readers(st: PlanState) -> dict[str, str]:
    """Nodes that read, directly or through shared-scale ops, the output of an
    ``ops.float_outputs`` kind: they stay float, as their input is never quantized."""
    kinds = st.t.ops.float_outputs
    if not kinds:
        return {}
    producers = st.g.producers()
    passing = set(st.t.ops.shared_scale)
    out: dict[str, str] = {}
    for n in st.g.nodes:
        if n.op not in st.t.ops.quantize:
            continue
        for x in st.data_inputs(n):
            p = producers.get(x)
            for _ in range(16):  # through reshape/transpose/identity...
                if p is None or p.op not in passing or not p.inputs:
                    break
                p = producers.get(p.inputs[0])
            if p is not None and p.op in kinds:
                out[n.name] = (
                    f"kept float: it reads the output of {p.name!r} ({p.op.value}), which "
                    f"target {st.t.name!r} never quantizes (ops.float_outputs)"
                )
                break
    return out


def between_quantized(st: PlanState, eligible: Callable[[Node], bool]) -> dict[str, str]:
    """Nodes of ``ops.only_between_quantized`` kinds that would break out of an integer chain,
    with the reason: the greatest set of candidates whose data inputs all come from
    quantized ops and whose output some quantized op reads (seen through relu/clip and
    shared-scale ops, which pass an integer tensor on)."""
    kinds = st.t.ops.only_between_quantized
    candidates = {n.name for n in st.g.nodes if n.op in kinds and eligible(n)}
    if not candidates:
        return {}
    producers = st.g.producers()
    consumers = st.g.consumers()
    transparent = {OpKind.RELU, OpKind.CLIP} | set(st.t.ops.shared_scale)
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
            n = st.g.node(name)
            why = ""
            for t_in in st.data_inputs(n):
                if t_in in st.g.initializers:
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
                    f"kept float: on target {st.t.name!r} {n.op.value} is quantized only "
                    f"between quantized ops, and {why}"
                )
                changed = True
    return rejected


def propagate_shared(
    st: PlanState,
    ignored: Mapping[str, str],
    fusion_of: Mapping[str, Any],
    tail_of: Mapping[str, Any],
) -> set[str]:
    """Quantize shared-scale nodes outside ``ops.quantize`` once a neighbouring tensor is
    quantized (repeated until nothing changes), joining their tensors into one share group.

    :return: the names of the nodes that became quantized.
    """
    t = st.t
    candidates = [
        n
        for n in st.g.nodes
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
            tensors = st.data_inputs(n) + list(n.outputs)
            if not any(st.claimed(x) for x in tensors):
                continue
            done.add(n.name)
            changed = True
            spec = st.specs.resolve(n, "activation")
            for x in st.data_inputs(n):
                kind = "weight" if x in st.g.initializers else "shared"
                st.claim(x, n, spec, kind, read=True)
            for x in n.outputs:
                st.claim(x, n, spec, "shared", read=False)
            st.union(tensors, n)
    return done
