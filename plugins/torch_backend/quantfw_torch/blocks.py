"""Block modules for block-wise reconstruction (BRECQ, QDrop): a piece of the simulated model.

The block is cut out of the fake-quant module of the whole model (:func:`~quantfw_torch.frontend.
simulated_module`, with the block's weights made trainable): a new FX graph whose placeholders
are the block's input tensors -- as their producers computed them, so the quantizers that the
recipe puts on them are inside the block -- and whose outputs are the block's output tensors,
before their own quantizers.  Nodes of the model outside the block are not part of it.

The module implements the block contract's hooks (:class:`quantfw.api.BlockModule`):

* every weight quantizer sits in a :class:`WeightSlot`, which returns a substituted weight
  (learned rounding's) instead of fake-quantizing the parameter once one is set;
* every activation quantizer of the block sits in a :class:`DropQuantize`, which with
  probability ``p`` per element passes the float value (after the edge's equalisation, where
  the recipe has one) instead of the fake-quantized one, from a seeded ``torch.Generator``
  per device; ``p = 0`` returns the quantizer's output itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from quantfw.api import BlockModule
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe

__all__ = ["block_module", "output_gradients", "WeightSlot", "DropQuantize"]


def block_module(
    graph: QuantGraph,
    recipe: Recipe,
    nodes: Sequence[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
) -> BlockModule:
    """The block ``nodes`` of a torch capture as a trainable module (see the module docstring).

    Model inputs that the block's computation reads beyond ``inputs`` (a sequence length taken
    from ``token_type_ids``, say) become further arguments of the module, after the block's
    inputs (:attr:`~quantfw.api.BlockModule.model_inputs`).

    :raises ValueError: when the block's computation reaches a placeholder of the captured
        program that is no model input, so it cannot run on its own.
    """
    from .frontend import _simulated, _weighted, trainable_op

    ops = {n: trainable_op(graph, recipe, graph.node(n)) for n in nodes if _weighted(graph.node(n))}
    params: dict[str, torch.nn.Parameter] = {}
    slots: dict[str, WeightSlot] = {}
    for name, op in ops.items():
        node = graph.node(name)
        params[node.weights["weight"]] = op.weight
        slots[node.weights["weight"]] = op.weight_fq = WeightSlot(op.weight_fq)
        if op.bias is not None:
            params[node.weights["bias"]] = op.bias
            slots[node.weights["bias"]] = op.bias_fq = WeightSlot(op.bias_fq)
    bound = _simulated(graph, recipe, trainable=ops)
    gm = bound.module
    missing = [t for t in (*inputs, *outputs) if t not in bound.nodes]
    if missing:
        raise ValueError(
            f"the block {list(nodes)} has boundary tensor(s) {missing} that the captured "
            "program does not compute as such (a shape the translation made explicit); give a "
            "block that also holds the nodes computing them"
        )
    entries = {t: bound.nodes[t] for t in inputs}
    exits = [bound.nodes[t] for t in outputs]
    sub = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for i, (tensor, fx_node) in enumerate(entries.items()):
        env[fx_node] = sub.placeholder(f"block_input_{i}")
        env[fx_node].meta["quantfw_tensor"] = tensor
    needed = _ancestors(exits, stop=set(entries.values()))
    graph_inputs = {bound.nodes[t]: t for t in graph.inputs if t in bound.nodes}
    model_inputs: list[str] = []
    body = [n for n in gm.graph.nodes if n in needed and n not in env]
    for n in body:  # model inputs read beyond the block's inputs (shapes, masks) come last
        if n.op == "placeholder":
            tensor = graph_inputs.get(n)
            if tensor is None:
                raise ValueError(
                    f"the block {list(nodes)} reads {n.name!r}, a placeholder of the captured "
                    "program that is no model input, beyond its inputs "
                    f"{list(inputs)}; choose a block whose computation depends on its input "
                    "tensors and the model's inputs only"
                )
            env[n] = sub.placeholder(f"model_input_{len(model_inputs)}")
            env[n].meta["quantfw_tensor"] = tensor
            model_inputs.append(tensor)
    for n in body:
        if n not in env:
            env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(tuple(env[e] for e in exits))
    module = torch.fx.GraphModule(gm, sub)
    dropping = _DropState()
    for n in sub.nodes:  # the activation quantizers bind() attached ("quantfw_fq_<i>")
        if n.op == "call_module" and str(n.target).startswith("quantfw_fq_"):
            fq = module.get_submodule(n.target)
            setattr(module, n.target, DropQuantize(fq, dropping))

    def weights() -> dict[str, np.ndarray]:
        return {k: p.detach().cpu().numpy().copy() for k, p in params.items()}

    def substitute(name: str, value: Callable[[], Any] | None) -> None:
        if name not in slots:
            raise KeyError(
                f"{name!r} is no weight of the block {list(nodes)}; its weights: {sorted(slots)}"
            )
        slots[name].override = value

    def place(device: str) -> None:
        module.to(device)

    return BlockModule(
        module=module,
        engine="torch",
        weights=weights,
        parameters=params,
        substitute=substitute,
        drop=dropping.set,
        place=place,
        model_inputs=tuple(model_inputs),
    )


class WeightSlot(nn.Module):
    """A weight's quantizer (or none) that a substituted weight can stand in for.

    :ivar fq: the weight's fake quantizer (``None``: the weight is used as is).
    :ivar override: ``None``, or a callable whose result replaces the weight on every call.
    """

    def __init__(self, fq: nn.Module | None) -> None:
        super().__init__()
        self.fq = fq
        self.override: Callable[[], torch.Tensor] | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.override is not None:
            return self.override()
        return w if self.fq is None else self.fq(w)


class _DropState:
    """The drop probability and seeded generators that a block's :class:`DropQuantize` share."""

    def __init__(self) -> None:
        self.p = 0.0
        self.seed = 0
        self.generators: dict[torch.device, torch.Generator] = {}

    def set(self, p: float, seed: int) -> None:
        self.p, self.seed = p, seed
        self.generators = {}

    def generator(self, device: torch.device) -> torch.Generator:
        g = self.generators.get(device)
        if g is None:
            g = self.generators[device] = torch.Generator(device=device)
            g.manual_seed(self.seed)
        return g


class DropQuantize(nn.Module):
    """An activation quantizer with QDrop's random dropping (see the module docstring)."""

    def __init__(self, fq: nn.Module, state: _DropState) -> None:
        super().__init__()
        self.fq = fq
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.fq(x)
        p = self.state.p
        if p <= 0.0 or not torch.is_floating_point(x):
            return q
        inv = getattr(self.fq, "inv_scale", None)
        f = x * inv if inv is not None else x
        gen = self.state.generator(x.device)
        keep_float = torch.rand(x.shape, generator=gen, device=x.device) < p
        return torch.where(keep_float, f, q)


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


def output_gradients(
    graph: QuantGraph,
    recipe: Recipe,
    tensors: Sequence[str],
    batches: Iterable[Any],
    weights: Mapping[str, np.ndarray] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """See :meth:`quantfw.api.ProvidesOutputGradients.output_gradients`: the simulated model
    runs with each wanted tensor made a leaf that requires a gradient (so the gradient is with
    respect to the value its producer computed), the float model beside it."""
    import gc

    import torch.nn.functional as F

    from .export import flat_inputs
    from .frontend import _bind_float, _simulated, _weighted, _ws, exported_of

    exp = exported_of(graph)
    rewritten = set(weights or ())
    changed = {n.name for n in graph.nodes if _weighted(n) and rewritten & set(_ws(n))}
    float_model = _bind_float(exp, graph, changed, weights or {}).module
    bound = _simulated(graph, recipe)
    wanted: dict[torch.fx.Node, list[str]] = {}
    for t in tensors:
        node = bound.nodes.get(t)
        if node is None:
            raise KeyError(f"tensor {t!r} of graph {graph.name!r} has no FX node")
        wanted.setdefault(node, []).append(t)

    class Leaves(torch.fx.Interpreter):
        def run_node(self, n):  # noqa: ANN001, ANN202
            out = super().run_node(n)
            if n in wanted and isinstance(out, torch.Tensor) and torch.is_floating_point(out):
                out = out.detach().requires_grad_(True)
                for name in wanted[n]:
                    self.leaves[name] = out
            return out

    def leaves_of(outs: Any) -> list[torch.Tensor]:
        return [o for o in torch.utils._pytree.tree_leaves(outs) if isinstance(o, torch.Tensor)]

    try:
        for batch in batches:
            args = flat_inputs(exp, batch)
            with torch.no_grad():
                reference = leaves_of(float_model(*args))
            interp = Leaves(bound.module)
            interp.leaves = {}
            with torch.enable_grad():
                quantized = leaves_of(interp.run(*args))
                loss = None
                for f, q in zip(reference, quantized, strict=True):
                    if not torch.is_floating_point(f):
                        continue
                    kl = F.kl_div(F.log_softmax(q, dim=-1), F.softmax(f, dim=-1), reduction="sum")
                    loss = kl if loss is None else loss + kl
                found = [interp.leaves[t] for t in tensors if t in interp.leaves]
                grads = (
                    torch.autograd.grad(loss, found, allow_unused=True)
                    if loss is not None and found
                    else [None] * len(found)
                )
            by_leaf = {id(leaf): g for leaf, g in zip(found, grads, strict=True)}
            values = {}
            for t in tensors:
                leaf = interp.leaves.get(t)
                if leaf is None:
                    raise KeyError(f"tensor {t!r} is not a float tensor of the simulated model")
                g = by_leaf.get(id(leaf))
                values[t] = (torch.zeros_like(leaf) if g is None else g).detach().numpy().copy()
            yield values
    finally:
        del bound, float_model
        gc.collect()
