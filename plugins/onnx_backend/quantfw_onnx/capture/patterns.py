"""Patterns of several ONNX nodes that the capture merges into one QuantGraph node.

* ``MatMul`` with a constant 2-D weight followed by ``Add`` of a constant 1-D bias (the MatMul
  output read by that Add only) -> one ``linear`` node whose output is the Add's;
* the erf GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))`` in its common orders -> one ``gelu`` node
  (5 ONNX nodes);
* ``x * sigmoid(x)`` -> one ``silu`` node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantfw.graph import OpKind

from ..opset import DEFAULT_DOMAINS
from .view import FLOAT_TYPES, GraphView

__all__ = ["Fused", "find_fusions"]


@dataclass
class Fused:
    """One merged pattern: the QuantGraph node it becomes and the ONNX nodes it covers."""

    op: OpKind
    covered: list[int]  # node indices, ascending
    inputs: list[str]
    output: str
    weights: dict[str, str]
    attrs: dict[str, Any]


def find_fusions(v: GraphView) -> dict[int, Fused]:
    """The merged patterns of the graph by their first node's index; no node is in two."""
    fused: dict[int, Fused] = {}
    taken: set[int] = set()

    def add(f: Fused) -> None:
        if taken.isdisjoint(f.covered):
            f.covered.sort()
            taken.update(f.covered)
            fused[f.covered[0]] = f

    for i, n in enumerate(v.nodes):
        if n.domain not in DEFAULT_DOMAINS:
            continue
        f = None
        if n.op_type == "MatMul":
            f = _match_linear_bias(v, i)
        elif n.op_type == "Erf":
            f = _match_gelu(v, i)
        elif n.op_type == "Sigmoid":
            f = _match_silu(v, i)
        if f is not None:
            add(f)
    return fused


def _close(value: float | None, target: float, rel: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= rel * abs(target)


def _match_linear_bias(v: GraphView, i: int) -> Fused | None:
    n = v.nodes[i]
    if len(n.input) != 2 or not v.is_const(n.input[1]) or v.is_const(n.input[0]):
        return None
    w_dims = v.shapes[n.input[1]]
    if len(w_dims) != 2 or v.types.get(n.input[1]) not in FLOAT_TYPES:
        return None
    j = v.only_consumer(n.output[0])
    if not v.is_op(j, "Add"):
        return None
    add = v.nodes[j]
    others = [t for t in add.input if t != n.output[0]]
    if len(others) != 1 or len(add.input) != 2:
        return None
    b = others[0]
    if not v.is_const(b) or v.shapes[b] != (w_dims[1],):
        return None
    if v.types.get(b) not in FLOAT_TYPES:
        return None
    return Fused(
        OpKind.LINEAR,
        [i, j],
        [n.input[0]],
        add.output[0],
        {"weight": n.input[1], "bias": b},
        {"channel_axis": 1},
    )


def _other_operand(v: GraphView, idx: int, known: str) -> str | None:
    n = v.nodes[idx]
    if len(n.input) != 2:
        return None
    if n.input[0] == known:
        return n.input[1]
    if n.input[1] == known:
        return n.input[0]
    return None


def _scalar_mul(v: GraphView, idx: int | None, value: float) -> str | None:
    """If node ``idx`` is ``Mul(x, c)`` / ``Mul(c, x)`` with constant ``c ≈ value``: x."""
    if not v.is_op(idx, "Mul"):
        return None
    n = v.nodes[idx]  # type: ignore[index]
    if len(n.input) != 2:
        return None
    for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
        if _close(v.scalar(b), value) and not v.is_const(a):
            return a
    return None


def _match_gelu(v: GraphView, i: int) -> Fused | None:
    erf = v.nodes[i]
    d = erf.input[0]
    p = v.producer.get(d)
    if p is None or v.only_consumer(d) != i:
        return None
    pn = v.nodes[p]
    x = None
    if v.is_op(p, "Div") and _close(v.scalar(pn.input[1]), math.sqrt(2.0)):
        x = pn.input[0]
    else:
        x = _scalar_mul(v, p, 1.0 / math.sqrt(2.0))
    if x is None or v.is_const(x):
        return None
    a_idx = v.only_consumer(erf.output[0])
    if not v.is_op(a_idx, "Add"):
        return None
    one = _other_operand(v, a_idx, erf.output[0])  # type: ignore[arg-type]
    if not _close(v.scalar(one) if one else None, 1.0):
        return None
    a_out = v.nodes[a_idx].output[0]  # type: ignore[index]
    m1 = v.only_consumer(a_out)
    if not v.is_op(m1, "Mul"):
        return None
    other = _other_operand(v, m1, a_out)  # type: ignore[arg-type]
    m1_out = v.nodes[m1].output[0]  # type: ignore[index]
    if _scalar_mul(v, m1, 0.5) == a_out:  # x * ((1 + erf) * 0.5): torch.export's form
        m2 = v.only_consumer(m1_out)
        if not v.is_op(m2, "Mul") or _other_operand(v, m2, m1_out) != x:  # type: ignore[arg-type]
            return None
        covered = [p, i, a_idx, m1, m2]
        out = v.nodes[m2].output[0]  # type: ignore[index]
    elif other == x:  # (x * (1 + erf)) * 0.5
        m2 = v.only_consumer(m1_out)
        if _scalar_mul(v, m2, 0.5) != m1_out:
            return None
        covered = [p, i, a_idx, m1, m2]
        out = v.nodes[m2].output[0]  # type: ignore[index]
    else:  # (x * 0.5) * (1 + erf)
        h = v.producer.get(other or "")
        if h is None or v.only_consumer(other) != m1 or _scalar_mul(v, h, 0.5) != x:
            return None
        covered = [h, p, i, a_idx, m1]
        out = m1_out
    return Fused(OpKind.GELU, covered, [x], out, {}, {"approximate": "none"})  # type: ignore[arg-type]


def _match_silu(v: GraphView, i: int) -> Fused | None:
    sig = v.nodes[i]
    x, s = sig.input[0], sig.output[0]
    m = v.only_consumer(s)
    if not v.is_op(m, "Mul") or _other_operand(v, m, s) != x:  # type: ignore[arg-type]
        return None
    if v.is_const(x):
        return None
    return Fused(OpKind.SILU, [i, m], [x], v.nodes[m].output[0], {}, {})  # type: ignore[index]
