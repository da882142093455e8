"""Which nodes BRECQ and QDrop reconstruct together: the graph cut into blocks.

**The automatic rule.**  Walk the nodes in graph (topological) order; between two consecutive
nodes, the *live* tensors are the activations computed before the gap (or given to the graph)
and read after it.  A gap where exactly one tensor is live is a *cut point*: every path from the
inputs to the outputs passes through that tensor.  The nodes between two cut points form a
segment: a residual block (its skip tensor stays live across the branch, identity or
projection), the branches of a concat, a transformer sublayer from its LayerNorm to the
residual add.  A segment without a weighted layer that is only elementwise activations
(ReLU, GELU, …) or a LayerNorm joins the segment before it, so a block's output is taken after
its activation, or after the LayerNorm that ends a post-norm transformer sublayer; other
weight-free segments (pooling, reshapes) stay apart and are not reconstructed.  A segment
with more weighted layers than ``max_layers`` is split, in graph order, into runs of at most
``max_layers`` layers (such a piece may have several inputs and outputs, which the block
contract allows).  Tensors that hold shapes (``Shape`` and the
arithmetic on it that a traced ``x.flatten(1)`` leaves in the graph) are not activations and
do not count as live; nor do *side* tensors, derived from the model's inputs by weight-free
nodes alone (the attention mask a transformer's every layer reads), so a transformer's
sublayers are blocks of their own.

**User blocks.**  ``blocks=[["layer1.*"], ["conv3", "relu3"]]``: each list is one block, its
entries node names or fnmatch patterns.  Weighted layers in no user block are reconstructed
alone (with the elementwise activations right after them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from ..graph import SHAPE_OPS, OpKind, QuantGraph, shape_tensors

__all__ = [
    "ACTIVATION_KINDS",
    "JOINING_KINDS",
    "SHAPE_OPS",
    "auto_blocks",
    "shape_tensors",
    "side_tensors",
    "user_blocks",
]

#: Weight-free elementwise ops that join the block before them.
ACTIVATION_KINDS = frozenset(
    {
        OpKind.RELU,
        OpKind.CLIP,
        OpKind.LEAKY_RELU,
        OpKind.GELU,
        OpKind.SILU,
        OpKind.SIGMOID,
        OpKind.TANH,
        OpKind.IDENTITY,
    }
)


#: Weight-free ops whose segment joins the block before them: elementwise activations, and the
#: LayerNorm that ends a post-norm transformer sublayer (``LN(x + f(x))``), so the block's output
#: is what the next layers read, not the raw residual sum with its outlier channels.
JOINING_KINDS = ACTIVATION_KINDS | {OpKind.LAYERNORM}


def side_tensors(graph: QuantGraph) -> set[str]:
    """Tensors derived from the model's inputs by weight-free nodes alone -- an attention mask
    made from ``attention_mask``, position ids -- which many blocks read as they are: not the
    inputs themselves, nor anything a weighted layer's output reaches."""
    consts = set(graph.initializers)
    side: set[str] = set()
    base = set(graph.inputs)
    for n in graph.nodes:
        reads = [t for t in n.inputs if t not in consts]
        if not n.weights and reads and all(t in base or t in side for t in reads):
            side.update(n.outputs)
    return side


def _segments(graph: QuantGraph) -> list[list[str]]:
    """The nodes between cut points, in graph order (shape and side tensors do not count as
    live)."""
    nodes = graph.nodes
    consts = set(graph.initializers) | shape_tensors(graph) | side_tensors(graph)
    first: dict[str, int] = {t: -1 for t in graph.inputs}
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.outputs:
            if t not in consts:
                first.setdefault(t, i)
        for t in n.inputs:
            if t not in consts:
                last[t] = i
    for t in graph.outputs:
        last[t] = len(nodes)
    # live across the gap after node i: first[t] <= i < last[t]
    delta = [0] * (len(nodes) + 1)
    for t, a in first.items():
        b = last.get(t)
        if b is not None and b > max(a, 0):
            delta[max(a, 0)] += 1
            delta[min(b, len(nodes))] -= 1
    live, running = [], 0
    for d in delta[:-1]:
        running += d
        live.append(running)
    segments: list[list[str]] = [[]]
    for i, n in enumerate(nodes):
        segments[-1].append(n.name)
        if live[i] <= 1 and i < len(nodes) - 1:
            segments.append([])
    return [s for s in segments if s]


def auto_blocks(graph: QuantGraph, layers: Iterable[str], max_layers: int = 8) -> list[list[str]]:
    """The automatic partition (see the module docstring): blocks, each a list of node names
    in graph order, that hold at least one of ``layers`` (the weighted nodes to reconstruct)."""
    if max_layers < 1:
        raise ValueError(f"max_layers must be at least 1, got {max_layers}")
    wanted = set(layers)
    kinds = {n.name: n.op for n in graph.nodes}
    merged: list[list[str]] = []
    for seg in _segments(graph):
        has_layer = any(n in wanted for n in seg)
        elementwise = all(kinds[n] in JOINING_KINDS for n in seg)
        if not has_layer and elementwise and merged and any(n in wanted for n in merged[-1]):
            merged[-1].extend(seg)
        else:
            merged.append(list(seg))
    blocks: list[list[str]] = []
    for seg in merged:
        if not any(n in wanted for n in seg):
            continue
        piece: list[str] = []
        count = 0
        for n in seg:
            if n in wanted and count == max_layers:
                blocks.append(piece)
                piece, count = [], 0
            piece.append(n)
            count += n in wanted
        blocks.append(piece)
    return blocks


def user_blocks(
    graph: QuantGraph, specs: Sequence[Sequence[str]], layers: Iterable[str]
) -> list[list[str]]:
    """The user's blocks (lists of node names or fnmatch patterns), plus one block for every
    layer of ``layers`` in none of them, in graph order of their first node.

    :raises ValueError: a pattern that matches no node, or a node in two blocks.
    """
    names = [n.name for n in graph.nodes]
    owner: dict[str, int] = {}
    chosen: list[list[str]] = []
    for b, spec in enumerate(specs):
        if isinstance(spec, str) or not spec:
            raise ValueError(
                f"blocks[{b}] must be a non-empty list of node names or patterns, got {spec!r}"
            )
        members: set[str] = set()
        for pattern in spec:
            hit = [n for n in names if fnmatchcase(n, str(pattern))]
            if not hit:
                raise ValueError(
                    f"blocks[{b}]: {pattern!r} matches no node of graph {graph.name!r} "
                    f"(nodes: {names[:8]}{' …' if len(names) > 8 else ''})"
                )
            members.update(hit)
        for n in members:
            if n in owner:
                raise ValueError(f"node {n!r} is in blocks[{owner[n]}] and blocks[{b}]")
            owner[n] = b
        chosen.append([n for n in names if n in members])
    for layer in layers:
        if layer not in owner:
            chosen.append(_with_activations(graph, layer, owner))
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=lambda block: order[block[0]])


def _with_activations(graph: QuantGraph, layer: str, taken: dict[str, int]) -> list[str]:
    """``layer`` and the chain of elementwise activations that alone read its output."""
    readers: dict[str, list[str]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n.name)
    block = [layer]
    node = graph.node(layer)
    while len(node.outputs) == 1 and node.outputs[0] not in graph.outputs:
        r = readers.get(node.outputs[0], [])
        if len(r) != 1 or r[0] in taken:
            break
        nxt = graph.node(r[0])
        if nxt.op not in ACTIVATION_KINDS:
            break
        block.append(nxt.name)
        node = nxt
    return block
