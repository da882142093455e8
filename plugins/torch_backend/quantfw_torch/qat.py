"""Quantization-aware training for torch models (:func:`quantfw.qat.prepare` / ``convert``).

:func:`qat_prepare` turns a PTQ result into a trainable ``torch.fx.GraphModule``:

* a copy of the exported module (the user's model is never trained in place);
* every quantized conv / linear / embedding re-implemented on an ``nn.Parameter`` initialised
  with the QuantGraph's weight — the one the backend will store: BatchNorm folded, SmoothQuant
  applied — and wrapped in a weight :class:`~quantfw_torch.fakequant.FakeQuantize`;
* every quantized activation behind a fake quantizer with the calibrated scale (one quantizer
  per share group, so tensors that must share parameters keep sharing them).

Gradients pass the rounding by the straight-through estimator.  By default weight scales follow
the weights (min/max each step, like the PTQ calibration) and activation scales stay as
calibrated; ``learn_scales=True`` trains both by LSQ.  Biases are fake-quantized to int32 with
scale ``s_x · s_w`` from the current scales (:class:`BiasFakeQuantize`), and :func:`qat_recipe`
derives the same parameters from the final scales, as the PTQ calibration does.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from quantfw.algorithms.calibrate import absmean_params, bias_params
from quantfw.api import QuantizationResult
from quantfw.recipe import Recipe, TensorRecipe

from .bind import WeightedOp, bind
from .fakequant import FakeQuantize, edge_modules
from .frontend import _weighted, exported_of

__all__ = ["BiasFakeQuantize", "QATState", "qat_prepare", "qat_recipe"]


@dataclass
class QATState:
    """What a QAT model carries (``model.quantfw_state``).

    :ivar result: the PTQ result it started from.
    :ivar ops: QuantGraph node name → its trainable :class:`~quantfw_torch.bind.WeightedOp`.
    :ivar activations: activation tensor name → its quantizer.
    """

    result: QuantizationResult
    ops: dict[str, WeightedOp] = field(default_factory=dict)
    activations: dict[str, FakeQuantize] = field(default_factory=dict)


class BiasFakeQuantize(nn.Module):
    """int32 bias fake quantization with scale ``s_x · s_w`` read from the input's and the
    weight's quantizers at each call (as :func:`quantfw.algorithms.calibrate.bias_params`
    derives it), so the QAT model computes what the converted recipe will."""

    def __init__(self, activation: FakeQuantize, weight: FakeQuantize) -> None:
        super().__init__()
        # plain references, not submodules: each quantizer already sits in the graph once
        object.__setattr__(self, "_sources", (activation, weight))

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        act, weight = self._sources
        s = act.scale.detach().reshape(()) * weight.scale.detach().reshape(-1)
        s = torch.clamp(s.to(torch.float32), min=torch.finfo(torch.float32).tiny)
        y = b / s
        q = torch.clamp(y + (torch.round(y) - y).detach(), -(2.0**31), 2.0**31 - 1)
        return q * s


def _param(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32, copy=True)))


def qat_prepare(result: QuantizationResult, *, learn_scales: bool = False) -> torch.fx.GraphModule:
    """A trainable fake-quant module for ``result`` (see the module docstring)."""
    graph, recipe = result.graph, result.recipe
    exp = exported_of(graph)
    state = QATState(result)
    for node in graph.nodes:
        if not _weighted(node):
            continue
        w = node.weights["weight"]
        wt = recipe.tensors.get(w)
        if wt is None or wt.role != "weight":
            continue
        base = recipe.weights.get(w, graph.initializers[w])
        b = node.weights.get("bias")
        bias = None if not b else _param(recipe.weights.get(b, graph.initializers[b]))
        observer = absmean_params if wt.spec.dtype == "ternary" else None
        fq = FakeQuantize(
            wt.spec,
            wt.params,
            learn_scale=learn_scales,
            observe_weight=not learn_scales,
            observer=observer,
            name=w,
        )
        state.ops[node.name] = WeightedOp(_param(base), bias, weight_fq=fq)
    groups: dict[str, FakeQuantize] = {}

    def make(name: str, t: TensorRecipe, scale: np.ndarray | None) -> FakeQuantize:
        # a share group shares one quantizer (one learned scale); an equalised edge has its own
        fq = groups.get(t.share_group) if t.share_group and scale is None else None
        if fq is None:
            fq = FakeQuantize(
                t.spec,
                t.params,
                equalize=scale,
                learn_scale=learn_scales and not t.spec.dynamic,
                name=name,
            )
            if t.share_group and scale is None:
                groups[t.share_group] = fq
        state.activations[name] = fq
        return fq

    acts = edge_modules(recipe, make)
    for name, op in state.ops.items():
        node = graph.node(name)
        b = node.weights.get("bias")
        act = state.activations.get(node.inputs[0])
        bt = recipe.tensors.get(b) if b else None
        if bt is not None and bt.role == "bias" and act is not None and op.weight_fq is not None:
            op.bias_fq = BiasFakeQuantize(act, op.weight_fq)
    with warnings.catch_warnings():  # torch's own pytree spec deprecation, raised by deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        module = copy.deepcopy(exp.module)  # train a copy, never the user's parameters
    gm = bind(module, graph, ops=state.ops, activations=acts, aliases=exp.aliases).module
    gm.quantfw_state = state
    return gm


def qat_recipe(model: Any) -> Recipe:
    """The recipe of a trained QAT model: its weights and biases as the recipe's rewritten
    weights, the quantizers' scales and zero points, int32 bias parameters recomputed."""
    state: QATState = model.quantfw_state
    result = state.result
    graph, start = result.graph, result.recipe
    recipe = copy.deepcopy(start)
    for name, op in state.ops.items():
        node = graph.node(name)
        w = node.weights["weight"]
        weight = op.weight.detach().cpu().numpy().astype(np.float32).copy()
        recipe.weights[w] = weight
        fq = op.weight_fq
        params = fq.current_params() if fq.learn_scale else fq.params_for(op.weight)
        recipe.tensors[w] = replace(recipe.tensors[w], params=params)
        b = node.weights.get("bias")
        if b and op.bias is not None:
            recipe.weights[b] = op.bias.detach().cpu().numpy().astype(np.float32).copy()
    for name, fq in state.activations.items():
        t = recipe.tensors[name]
        if not t.spec.dynamic:
            recipe.tensors[name] = replace(t, params=fq.current_params())
    for tp in result.plan.biases():
        if tp.name not in recipe.tensors or tp.bias_of is None:
            continue
        act, w = tp.bias_of
        at, wt = recipe.tensors.get(act), recipe.tensors.get(w)
        if at is None or wt is None or at.params is None:
            continue
        spec, params = bias_params(at.params, wt.params, wt.spec)
        recipe.tensors[tp.name] = replace(recipe.tensors[tp.name], spec=spec, params=params)
    recipe.provenance["qat"] = {
        "learn_scales": any(fq.learn_scale for fq in state.activations.values()),
        "trained_nodes": len(state.ops),
    }
    return recipe
