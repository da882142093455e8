"""Cross-layer equalisation with high-bias absorption (Nagel et al., 2019, "Data-free
quantization through weight equalization and bias correction").

Two weighted layers in a chain, ``y2 = W2 f(W1 x + b1) + b2``, with ``f`` positive homogeneous
per channel (``f(s x) = s f(x)`` for ``s > 0``), compute the same after the rewrite
``W1 <- S^-1 W1, b1 <- S^-1 b1, W2 <- W2 S`` for any positive diagonal ``S``.  With
``s_i = sqrt(r1_i r2_i) / r2_i`` -- ``r1_i`` the range (``max |w|``) of the first layer's output
channel ``i``, ``r2_i`` that of the second's input channel ``i`` -- both become
``sqrt(r1_i r2_i)``: the channels' ranges are balanced, so one scale per tensor wastes far less
of the grid on channels with small weights.  Chains of more than two layers (a depthwise
convolution between two pointwise ones, MobileNet style) are equalised pair by pair, repeated
until the factors converge (``iters``, ``tol``).

**Chains.**  The first layer is a ``conv`` or ``linear`` whose output has exactly one reader;
between the two layers only ops that act on each channel on its own and commute with a positive
per-channel scale may sit, each with one input and one reader: ``relu``, ``leaky_relu``,
``identity`` and ``max_pool``.  ``clip`` (ReLU6) is *not* allowed (``min(s x, 6) != s min(x, 6)``)
nor are ``add`` (a residual branch reads the tensor unscaled), ``avg_pool`` with padding,
``flatten``/``reshape`` (the next layer's inputs are no longer the channels) or
``batchnorm`` (frontends fold it into the conv at capture).  The second layer reads only that
tensor; neither weight may be shared with another node, and no tensor of the chain may be a
graph output.  Grouped and depthwise convolutions are handled on either side (their input
channel ``i`` is the filter of group ``i // (in/groups)``).

**What is recorded.**  The rescaling is folded into both layers' weights, so the float model
itself changes (:meth:`~quantfw.api.context.StageContext.set_weight`: calibration sees the
equalised model and backends store the rewritten weights) while computing the same function.
A :class:`~quantfw.recipe.Equalization` entry would instead tell backends to insert a run-time
multiply on the edge -- needed for SmoothQuant, whose ``1/s`` cannot be folded into a producer,
but pointless work here.  The per-channel factors therefore go to
``recipe.provenance["cle"]["pairs"]`` only (``scale``: the accumulated ``s`` the first layer's
output channels were divided by).

**High-bias absorption** (``absorb``; default: on when calibration data is given).  Equalising
can blow up the first layer's biases, which widens the activation range after ReLU.  Where
``f`` includes a ReLU and the pre-activation of channel ``i`` stays above ``c_i = max(0,
mean_i - n_std * std_i)`` (measured on the float model over the calibration data, since
BatchNorm, whose ``beta - 3 gamma`` the paper uses, is already folded), ``relu(y) = relu(y - c)
+ c``, so ``b1 <- b1 - c`` and ``b2 <- b2 + W2 c`` (summed over the kernel for a conv) keep the
output.  Only ``relu``, ``identity`` and ``max_pool`` may sit between for absorption.  The
rewrite is approximate in two ways, both measured by the tests: inputs for which ``y_i < c_i``
(rare at ``n_std = 3``), and a second convolution that *zero-pads*: at the border its padded
taps see 0, not ``c``, yet the constant ``W2 c`` is added everywhere.  ``exact_only=True``
skips pairs whose second layer pads.  All pairs are absorbed from one pass of statistics (the
absorption of an earlier pair leaves later pre-activations unchanged up to the same
approximation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import Node, OpKind, QuantGraph
from .layouts import WeightLayout, activation_channel_axis, weight_layout

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext

__all__ = ["CrossLayerEqualization", "equalization_scales", "find_pairs", "LayerPair"]

#: ops allowed between the two layers of a pair: per channel and positive homogeneous
BETWEEN = frozenset({OpKind.RELU, OpKind.LEAKY_RELU, OpKind.IDENTITY, OpKind.MAX_POOL})
#: ops allowed between the layers of a pair for high-bias absorption (a shift by ``c`` passes)
ABSORB_BETWEEN = frozenset({OpKind.RELU, OpKind.IDENTITY, OpKind.MAX_POOL})


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i r2_i) / r2_i`` (float64), 1 where either range is zero (a dead
    channel: nothing to balance)."""
    r1 = np.asarray(r1, np.float64)
    r2 = np.asarray(r2, np.float64)
    s = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


@dataclass
class LayerPair:
    """Two weighted layers of a chain and the ops between them."""

    first: Node
    second: Node
    between: tuple[Node, ...]
    first_layout: WeightLayout
    second_layout: WeightLayout
    scale: np.ndarray = field(default=None)  # type: ignore[assignment]


def _usable(node: Node, graph: QuantGraph, users: dict[str, int]) -> WeightLayout | None:
    w = node.weights.get("weight")
    if node.op not in (OpKind.CONV, OpKind.LINEAR) or w is None or len(node.outputs) != 1:
        return None
    if any(users.get(t, 0) != 1 for t in node.weights.values()):
        return None
    return weight_layout(node, graph.initializers[w])


def find_pairs(graph: QuantGraph, blocked: list[str] | None = None) -> list[LayerPair]:
    """The chains of two weighted layers that cross-layer equalisation may rescale (see the
    module docstring), in graph order of their first layer.

    :param blocked: if given, gets the names of the first layers whose chain stops at a
        ``clip`` (ReLU6), the common near miss (MobileNetV2)."""
    users: dict[str, int] = {}
    for n in graph.nodes:
        for t in n.weights.values():
            users[t] = users.get(t, 0) + 1
    readers = graph.consumers()
    outputs = set(graph.outputs)
    pairs = []
    for node in graph.nodes:
        lay1 = _usable(node, graph, users)
        if lay1 is None:
            continue
        t, between = node.outputs[0], []
        while t not in outputs and len(readers.get(t, [])) == 1:
            r = readers[t][0]
            if r.inputs != [t] or len(r.outputs) != 1:
                break
            if r.op in (OpKind.CONV, OpKind.LINEAR):
                lay2 = _usable(r, graph, users)
                w1 = graph.initializers[node.weights["weight"]]
                w2 = graph.initializers[r.weights["weight"]]
                if lay2 is not None and lay1.out_channels(w1) == lay2.in_channels(w2):
                    pairs.append(LayerPair(node, r, tuple(between), lay1, lay2))
                break
            if r.op not in BETWEEN:
                if r.op is OpKind.CLIP and blocked is not None:
                    blocked.append(node.name)
                break
            between.append(r)
            t = r.outputs[0]
    return pairs


def _pads(node: Node) -> bool:
    p = node.attrs.get("padding")
    if p is None:
        return False
    if isinstance(p, (int, np.integer)):
        return int(p) != 0
    try:
        return any(int(v) != 0 for v in p)
    except (TypeError, ValueError):
        return True  # "same" and the like


class CrossLayerEqualization:
    """Transform stage: cross-layer equalisation (and high-bias absorption) of conv/linear
    chains; see the module docstring.

    :param iters: most sweeps over the pairs (each equalises every pair once).
    :param tol: stop once every factor of a sweep is within ``tol`` of 1 (relative).
    :param absorb: high-bias absorption; ``None`` (default): when calibration data is given.
    :param n_std: ``c = max(0, mean - n_std * std)`` per channel for absorption.
    :param exact_only: absorb only into layers that do not zero-pad (where it is exact up to
        inputs below ``c``).
    """

    def __init__(
        self,
        iters: int = 20,
        tol: float = 1e-4,
        absorb: bool | None = None,
        n_std: float = 3.0,
        exact_only: bool = False,
    ) -> None:
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"cle: iters must be a positive integer, got {iters!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"cle: tol must be a number in (0, 1), got {tol!r}")
        if absorb is not None and not isinstance(absorb, bool):
            raise ValueError(f"cle: absorb must be true, false or null (auto), got {absorb!r}")
        if isinstance(n_std, bool) or not isinstance(n_std, (int, float)) or not n_std >= 0:
            raise ValueError(f"cle: n_std must be a number >= 0, got {n_std!r}")
        if not isinstance(exact_only, bool):
            raise ValueError(f"cle: exact_only must be true or false, got {exact_only!r}")
        self.iters, self.tol, self.absorb = iters, float(tol), absorb
        self.n_std, self.exact_only = float(n_std), exact_only

    def run(self, ctx: StageContext) -> None:
        if self.absorb and ctx.calibration is None:
            raise ValueError(
                "cle: absorb=True needs calibration data (the pre-activation statistics come "
                "from the float model); pass calibration data or absorb=False"
            )
        pairs, blocked = [], []
        found = find_pairs(ctx.graph, blocked)
        if blocked:
            ctx.warn(
                f"cle: {len(blocked)} chain(s) stop at a clip (ReLU6), which is not positive "
                f"homogeneous, so CLE cannot pass it: after {', '.join(blocked[:5])}"
                + (" ..." if len(blocked) > 5 else "")
                + "; a model trained with ReLU instead of ReLU6 can be equalised there"
            )
        for pair in found:
            names = [*pair.first.weights.values(), *pair.second.weights.values()]
            rewritten = [n for n in names if n in ctx.recipe.weights and n not in ctx.float_weights]
            if rewritten:  # e.g. SmoothQuant's s*W: a float rewrite would drop it
                ctx.warn(
                    f"cle: skipped {pair.first.name!r} -> {pair.second.name!r}: an earlier "
                    f"algorithm rewrote {rewritten[0]!r} for the quantized model only"
                )
                continue
            pairs.append(pair)
        record: dict[str, Any] = {"pairs": [], "iterations": 0, "converged": True}
        ctx.recipe.provenance["cle"] = record
        if not pairs:
            ctx.warn("cle: no chain of two conv/linear layers to equalise in this model")
            return
        w: dict[str, np.ndarray] = {}  # float64 working copies
        for p in pairs:
            for n in p.first.weights.values():
                w.setdefault(n, np.asarray(ctx.float_weight(n), np.float64))
            for n in p.second.weights.values():
                w.setdefault(n, np.asarray(ctx.float_weight(n), np.float64))
            p.scale = np.ones(p.first_layout.out_channels(w[p.first.weights["weight"]]))
        converged = False
        for it in range(self.iters):
            worst = 0.0
            for p in pairs:
                w1n, w2n = p.first.weights["weight"], p.second.weights["weight"]
                s = equalization_scales(
                    p.first_layout.out_absmax(w[w1n]), p.second_layout.in_absmax(w[w2n])
                )
                worst = max(worst, float(np.abs(np.log(s)).max()))
                w[w1n] = p.first_layout.scale_out(w[w1n], 1.0 / s)
                b1 = p.first.weights.get("bias")
                if b1 is not None:
                    w[b1] = w[b1] / s
                w[w2n] = p.second_layout.scale_in(w[w2n], s)
                p.scale = p.scale * s
            record["iterations"] = it + 1
            ctx.progress(f"cle sweeps (max |log s| {worst:.3g})", it + 1, self.iters)
            if worst <= self.tol:
                converged = True
                break
        record["converged"] = converged
        if not converged:
            ctx.warn(
                f"cle: the scales did not converge in {self.iters} sweeps (last change "
                f"{worst:.3g}); raise iters"
            )
        for name, value in w.items():
            ctx.set_weight(name, value.astype(ctx.float_weight(name).dtype))
        for p in pairs:
            record["pairs"].append(
                {
                    "first": p.first.name,
                    "second": p.second.name,
                    "between": [n.op.value for n in p.between],
                    "scale": [float(v) for v in p.scale],
                }
            )
        absorb = self.absorb if self.absorb is not None else ctx.calibration is not None
        if absorb:
            record["absorbed"] = self._absorb(ctx, pairs)

    def _absorb(self, ctx: StageContext, pairs: list[LayerPair]) -> dict[str, Any]:
        chosen = []
        for p in pairs:
            what = f"cle: no high-bias absorption from {p.first.name!r} into {p.second.name!r}"
            ops = {n.op for n in p.between}
            if OpKind.RELU not in ops or not ops <= ABSORB_BETWEEN:
                continue  # nothing to absorb: no ReLU (or an op the shift does not pass)
            if "bias" not in p.first.weights or "bias" not in p.second.weights:
                ctx.warn(f"{what}: both layers need a bias")
                continue
            if self.exact_only and p.second.op is OpKind.CONV and _pads(p.second):
                ctx.warn(f"{what}: it zero-pads (exact_only=True)")
                continue
            chosen.append(p)
        if not chosen:
            return {}
        tensors = [p.first.outputs[0] for p in chosen]
        n: dict[str, float] = {}
        s1: dict[str, np.ndarray] = {}
        s2: dict[str, np.ndarray] = {}
        for outs in ctx.collect(tensors):
            for p in chosen:
                y = np.asarray(outs[p.first.outputs[0]], np.float64)
                ax = activation_channel_axis(p.first, y.ndim)
                flat = np.moveaxis(y, ax, -1).reshape(-1, y.shape[ax])
                t = p.first.outputs[0]
                n[t] = n.get(t, 0) + flat.shape[0]
                s1[t] = s1.get(t, 0) + flat.sum(axis=0)
                s2[t] = s2.get(t, 0) + (flat * flat).sum(axis=0)
            outs = y = flat = None  # free this batch before the next one runs
        absorbed: dict[str, Any] = {}
        for p in chosen:
            t = p.first.outputs[0]
            mean = s1[t] / n[t]
            std = np.sqrt(np.maximum(s2[t] / n[t] - mean * mean, 0.0))
            c = np.maximum(0.0, mean - self.n_std * std)
            if not np.any(c > 0):
                continue
            b1n, b2n = p.first.weights["bias"], p.second.weights["bias"]
            w2 = ctx.float_weight(p.second.weights["weight"])
            b1 = np.asarray(ctx.float_weight(b1n), np.float64) - c
            b2 = np.asarray(ctx.float_weight(b2n), np.float64) + p.second_layout.in_sums(w2, c)
            ctx.set_weight(b1n, b1.astype(ctx.float_weight(b1n).dtype))
            ctx.set_weight(b2n, b2.astype(ctx.float_weight(b2n).dtype))
            absorbed[f"{p.first.name}->{p.second.name}"] = {
                "c": [float(v) for v in c],
                "padded": p.second.op is OpKind.CONV and _pads(p.second),
            }
        return absorbed
