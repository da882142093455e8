"""Splicing quantfw's changes into the exported FX module, at the QuantGraph's tensor names.

The QuantGraph of a torch model is its ONNX export's (:mod:`quantfw_torch.export`), whose value
names are FX node names.  :func:`bind` copies the FX graph (not the weights) and

* re-implements the QuantGraph's weighted nodes (``conv``, ``linear``, ``embedding``) that the
  caller names, from the graph's own attributes and *its* initializers — the ONNX layout, with
  BatchNorm folded, SmoothQuant's ``s · W`` applied — so quantizing a weight means wrapping that
  tensor in a :class:`~quantfw_torch.fakequant.FakeQuantize`, exactly as the backends see it;
* puts a quantizer on every activation the caller names: on the tensor itself when every
  reader sees it quantized, or on the edges into the named consumers only (the FX users of the
  tensor on the way to each consumer's output), as the ONNX lowering does.

The result is an ordinary ``torch.fx.GraphModule`` taking the model's own inputs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from quantfw.graph import Node, OpKind, QuantGraph

__all__ = ["BindError", "WeightedOp", "Bound", "bind", "WEIGHTED_KINDS"]

#: Node kinds :func:`bind` can re-implement.
WEIGHTED_KINDS = (OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.LINEAR, OpKind.EMBEDDING)


class BindError(ValueError):
    """A QuantGraph tensor or node with no counterpart in the FX module."""


@dataclass
class WeightedOp:
    """How to re-implement one weighted node.

    :param weight: the weight tensor (a buffer, or a parameter for QAT), QuantGraph layout.
    :param bias: the bias, or ``None``.
    :param weight_fq: quantizer applied to the weight on every call (``None``: as is).
    :param bias_fq: quantizer applied to the bias.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    weight_fq: nn.Module | None = None
    bias_fq: nn.Module | None = None


@dataclass
class Bound:
    """:func:`bind`'s result: the module and where each QuantGraph tensor lives in it."""

    module: torch.fx.GraphModule
    nodes: dict[str, torch.fx.Node] = field(default_factory=dict)


# -- the re-implemented ops (FX calls them by reference) --------------------------------------
def qf_conv(x, w, b, stride, padding, dilation, groups):  # noqa: ANN001, ANN201
    nd = w.dim() - 2
    begin, end = list(padding[:nd]), list(padding[nd:])
    if begin != end:
        pairs: list[int] = []
        for i in reversed(range(nd)):
            pairs += [begin[i], end[i]]
        x = F.pad(x, pairs)
        begin = [0] * nd
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return fn(x, w, b, list(stride), begin, list(dilation), groups)


def qf_conv_transpose(x, w, b, stride, padding, dilation, groups, output_padding):  # noqa: ANN001, ANN201
    nd = w.dim() - 2
    begin, end = list(padding[:nd]), list(padding[nd:])
    if begin != end:
        raise BindError("ConvTranspose with asymmetric pads is not supported in torch simulation")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    return fn(x, w, b, list(stride), begin, list(output_padding), groups, list(dilation))


def qf_linear(x, w, b, out_in):  # noqa: ANN001, ANN201
    if out_in:
        return F.linear(x, w, b)
    y = torch.matmul(x, w)
    return y if b is None else y + b


def qf_embedding(idx, w):  # noqa: ANN001, ANN201
    return F.embedding(idx, w)


def _call_args(node: Node, x, w, b):  # noqa: ANN001, ANN202
    a = node.attrs
    if node.op is OpKind.CONV:
        if "auto_pad" in a:
            raise BindError(f"node {node.name!r}: auto_pad {a['auto_pad']!r} with unknown shapes")
        return qf_conv, (x, w, b, a["stride"], a["padding"], a["dilation"], a.get("groups", 1))
    if node.op is OpKind.CONV_TRANSPOSE:
        if "output_shape" in a or "auto_pad" in a:
            raise BindError(f"node {node.name!r}: ConvTranspose output_shape/auto_pad unsupported")
        nd = len(a["kernel_shape"])
        outpad = a.get("output_padding", (0,) * nd)
        return qf_conv_transpose, (
            x, w, b, a["stride"], a["padding"], a["dilation"], a.get("groups", 1), outpad,
        )  # fmt: skip
    if node.op is OpKind.LINEAR:
        return qf_linear, (x, w, b, int(a.get("channel_axis", 0)) == 0)
    if node.op is OpKind.EMBEDDING:
        return qf_embedding, (x, w)
    raise BindError(f"node {node.name!r}: {node.op.value} has no torch re-implementation")


def _ancestors_until(stop: torch.fx.Node, start: torch.fx.Node) -> set[torch.fx.Node]:
    """Nodes ``start`` depends on (itself included), not walking past ``stop``."""
    seen: set[torch.fx.Node] = set()
    todo = [start]
    while todo:
        n = todo.pop()
        if n in seen or n is stop:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


def bind(
    module: torch.fx.GraphModule,
    graph: QuantGraph,
    *,
    ops: Mapping[str, WeightedOp] | None = None,
    activations: Mapping[str, tuple[tuple[str, ...] | None, nn.Module]] | None = None,
    constants: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Bound:
    """A copy of ``module`` with ``ops`` (node name → :class:`WeightedOp`) re-implemented,
    ``activations`` (tensor name → ``(consumers or None, quantizer)``) quantized and
    ``constants`` (node name → {initializer name: value}) substituted: the constant operands of
    other nodes (an attention scale, a layer-scale parameter) replaced by the given values.
    ``aliases`` maps QuantGraph names to FX node names where they differ
    (:attr:`quantfw_torch.export.Exported.aliases`).

    :raises BindError: naming the tensor or node that has no FX counterpart.
    """
    ops = dict(ops or {})
    activations = dict(activations or {})
    with warnings.catch_warnings():  # torch's own pytree spec deprecation, raised by deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        gm = torch.fx.GraphModule(module, copy.deepcopy(module.graph))
    g = gm.graph
    fx = {n.name: n for n in g.nodes}
    aliases = {a: fx[t] for a, t in (aliases or {}).items() if t in fx}
    fx.update(aliases)
    bound = Bound(gm)

    def find(tensor: str, why: str) -> torch.fx.Node:
        n = fx.get(tensor)
        if n is None:
            raise BindError(
                f"tensor {tensor!r} ({why}) of graph {graph.name!r} has no FX node of that name in "
                "the exported module; it was created by the ONNX translation.  Keep the node that "
                "reads it float (overrides={'ignore': [...]}) to quantize the rest."
            )
        return n

    counter = iter(range(1 << 30))

    def attach(obj: nn.Module | torch.Tensor, kind: str) -> str:
        name = f"quantfw_{kind}_{next(counter)}"
        if isinstance(obj, nn.Module):
            gm.add_submodule(name, obj)
        elif isinstance(obj, nn.Parameter):
            gm.register_parameter(name, obj)
        else:
            gm.register_buffer(name, obj)
        return name

    # 1. activation quantizers
    reader: dict[str, torch.fx.Node] = {}  # what an all-readers tensor's consumers now read
    edge: dict[tuple[str, str], torch.fx.Node] = {}  # (tensor, consumer node) → quantized value
    for tensor, (consumers, fq) in activations.items():
        t = find(tensor, "a quantized activation")
        target = attach(fq, "fq")
        with g.inserting_after(t):
            q = g.call_module(target, (t,))
        if consumers is None:
            t.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
            reader[tensor] = q
            continue
        for cname in consumers:
            edge[(tensor, cname)] = q
            if cname in ops:
                continue  # the re-implementation reads q directly
            cnode = graph.node(cname)
            out = find(cnode.outputs[0], f"output of node {cname!r}")
            upstream = _ancestors_until(t, out)
            users = [u for u in list(t.users) if u in upstream and u is not q]
            if not users:
                raise BindError(
                    f"tensor {tensor!r}: no FX path from it to node {cname!r} (output "
                    f"{cnode.outputs[0]!r})"
                )
            for u in users:
                u.replace_input_with(t, q)

    # 2. constant operands
    for name, values in (constants or {}).items():
        node = graph.node(name)
        f = find(node.outputs[0], f"output of node {name!r}")
        for init, value in values.items():
            target = attach(value, "c")
            with g.inserting_before(f):
                c = g.get_attr(target)
            if not _replace_constant(f, init, graph.initializers[init], c):
                g.erase_node(c)
                raise BindError(
                    f"node {name!r}: cannot find its constant {init!r} among the operands of FX "
                    f"node {f.name!r} ({f.target}); the torch simulation cannot quantize it"
                )

    # 3. weighted nodes
    for name, op in ops.items():
        node = graph.node(name)
        if node.op not in WEIGHTED_KINDS:
            raise BindError(f"node {name!r} is a {node.op.value}, not a weighted op")
        out = find(node.outputs[0], f"output of {node.op.value} node {name!r}")
        src = node.inputs[0]
        x = edge.get((src, name)) or reader.get(src) or find(src, f"input of node {name!r}")
        with g.inserting_before(out):
            w = g.get_attr(attach(op.weight, "w"))
            if op.weight_fq is not None:
                w = g.call_module(attach(op.weight_fq, "wfq"), (w,))
            b = None
            if op.bias is not None:
                b = g.get_attr(attach(op.bias, "b"))
                if op.bias_fq is not None:
                    b = g.call_module(attach(op.bias_fq, "bfq"), (b,))
            fn, args = _call_args(node, x, w, b)
            new = g.call_function(fn, args)
        out.replace_all_uses_with(new)
        bound.nodes[node.outputs[0]] = bound.nodes[out.name] = new
    g.eliminate_dead_code()
    gm.recompile()
    for n in g.nodes:
        bound.nodes.setdefault(n.name, n)
    for a, n in aliases.items():
        bound.nodes.setdefault(a, bound.nodes.get(n.name, n))
    return bound


def _replace_constant(f: torch.fx.Node, init: str, value, c: torch.fx.Node) -> bool:  # noqa: ANN001
    """Point ``f``'s operand holding initializer ``init`` (a parameter read by ``get_attr``, or
    a Python number equal to it) at node ``c``; ``True`` when found."""
    import numpy as np

    scalar = None
    arr = np.asarray(value)
    if arr.size == 1:
        scalar = float(arr.reshape(()))
    for i, a in enumerate(f.args):
        hit = isinstance(a, torch.fx.Node) and a.op == "get_attr" and a.target == init
        if (
            not hit
            and scalar is not None
            and isinstance(a, (int, float))
            and not isinstance(a, bool)
        ):
            hit = np.float32(a) == np.float32(scalar)
        if hit:
            args = list(f.args)
            args[i] = c
            f.args = tuple(args)
            return True
    return False
