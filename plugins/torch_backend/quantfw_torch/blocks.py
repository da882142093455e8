"""Block modules for block-wise reconstruction (BRECQ, QDrop): a piece of the simulated model.

The block is cut out of the fake-quant module of the whole model (:func:`~quantfw_torch.frontend.
simulated_module`, with the block's weights made trainable): a new FX graph whose placeholders
are the block's input tensors -- as their producers computed them, so the quantizers that the
recipe puts on them are inside the block -- and whose outputs are the block's output tensors,
before their own quantizers.  Nodes of the model outside the block are not part of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from quantfw.api import BlockModule
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe

__all__ = ["block_module"]


def block_module(
    graph: QuantGraph,
    recipe: Recipe,
    nodes: Sequence[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
) -> BlockModule:
    """The block ``nodes`` of a torch capture as a trainable module (see the module docstring).

    :raises ValueError: when the block's computation reaches a model input that is not among
        ``inputs`` (a shape read from the model's input, say), so it cannot run on its own.
    """
    from .frontend import _simulated, _weighted, trainable_op

    ops = {n: trainable_op(graph, recipe, graph.node(n)) for n in nodes if _weighted(graph.node(n))}
    params: dict[str, torch.nn.Parameter] = {}
    for name, op in ops.items():
        node = graph.node(name)
        params[node.weights["weight"]] = op.weight
        if op.bias is not None:
            params[node.weights["bias"]] = op.bias
    bound = _simulated(graph, recipe, trainable=ops)
    gm = bound.module
    entries = {t: bound.nodes[t] for t in inputs}
    exits = [bound.nodes[t] for t in outputs]
    sub = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for i, (tensor, fx_node) in enumerate(entries.items()):
        env[fx_node] = sub.placeholder(f"block_input_{i}")
        env[fx_node].meta["quantfw_tensor"] = tensor
    needed = _ancestors(exits, stop=set(entries.values()))
    for n in gm.graph.nodes:
        if n not in needed or n in env:
            continue
        if n.op == "placeholder":
            raise ValueError(
                f"the block {list(nodes)} reads the model input {n.name!r} beyond its inputs "
                f"{list(inputs)} (a shape or mask taken from the model's input); choose a block "
                "whose computation depends on its input tensors only"
            )
        env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(tuple(env[e] for e in exits))
    module = torch.fx.GraphModule(gm, sub)

    def weights() -> dict[str, np.ndarray]:
        return {k: p.detach().cpu().numpy().copy() for k, p in params.items()}

    return BlockModule(module=module, engine="torch", weights=weights, parameters=params)


def _ancestors(starts: list[torch.fx.Node], stop: set[torch.fx.Node]) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    todo = list(starts)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n not in stop:
            todo.extend(n.all_input_nodes)
    return seen
