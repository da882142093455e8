"""Per-channel output statistics of weighted layers, float and quantized, for the finalize-stage
corrections (:mod:`~quantfw.algorithms.bias_correction`): the float model's layer outputs over
the calibration data in one pass, and one layer's output as the quantized model computes it
(its quantized input as read, its weight on the recipe's grid) by the reference numerics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..graph import Node
from ..numerics import dequantize, fake_quantize, quantize_dynamic
from .layouts import activation_channel_axis

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext
    from ..api.layers import LayerProblem

__all__ = ["Moments", "float_output_moments", "quantized_output_moments", "quantized_weight"]


class Moments:
    """Running count, sum and sum of squares per channel (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: np.ndarray | float = 0.0
        self.s2: np.ndarray | float = 0.0

    def update(self, y: np.ndarray, axis: int) -> None:
        flat = np.moveaxis(np.asarray(y, np.float64), axis, -1).reshape(-1, y.shape[axis])
        self.n += flat.shape[0]
        self.s1 = self.s1 + flat.sum(axis=0)
        self.s2 = self.s2 + (flat * flat).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.s1) / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        m = self.mean
        return np.sqrt(np.maximum(np.asarray(self.s2) / max(self.n, 1) - m * m, 0.0))


def layer_nodes(ctx: StageContext) -> list[Node]:
    """The nodes :meth:`~quantfw.api.context.StageContext.layer_problems` hands out, in order."""
    from ..api.layers import LAYER_KINDS

    planned = {tp.name for tp in ctx.plan.weights()}
    return [
        n
        for n in ctx.graph.nodes
        if n.op in LAYER_KINDS and n.inputs and n.weights.get("weight") in planned
    ]


def float_output_moments(ctx: StageContext, nodes: Iterable[Node]) -> dict[str, Moments]:
    """Per-channel moments of each node's output in the float model, by node name (one pass)."""
    nodes = list(nodes)
    out = {n.name: Moments() for n in nodes}
    for outs in ctx.collect([n.outputs[0] for n in nodes]):
        for n in nodes:
            y = outs[n.outputs[0]]
            out[n.name].update(y, activation_channel_axis(n, y.ndim))
        outs = y = None  # free this batch before the next one runs
    return out


def quantized_weight(p: LayerProblem) -> np.ndarray:
    """The layer's current weight on the recipe's grid (as is when the plan keeps it float)."""
    if p.weight_recipe is None or p.weight_recipe.params is None:
        return p.weight
    return fake_quantize(p.weight, p.weight_recipe.params, p.weight_recipe.spec)


def quantized_input(p: LayerProblem, x: np.ndarray) -> np.ndarray:
    """``x`` as the layer multiplies it in the quantized model: through its input quantizer."""
    r = p.input_recipe
    if r is None or (r.params is None and not r.spec.dynamic):
        return x
    if r.params is None:  # dynamic: parameters from each batch
        codes, params = quantize_dynamic(x, r.spec)
        return dequantize(codes, params, r.spec)
    return fake_quantize(x, r.params, r.spec)


def quantized_output_moments(p: LayerProblem, weight: np.ndarray | None = None) -> Moments:
    """Per-channel moments of the layer's output in the quantized model over the calibration
    data: every earlier quantizer applied as the recipe says now, its own input quantized, its
    weight ``weight`` (default: the current weight on the grid) and its current bias."""
    wq = quantized_weight(p) if weight is None else weight
    m = Moments()
    for x in p.inputs(quantized=True):
        y = p.output(quantized_input(p, x), wq)
        m.update(y, activation_channel_axis(p.node, y.ndim))
    return m
