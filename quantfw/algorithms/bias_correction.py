"""Finalize-stage corrections of each quantized layer's output statistics, from data.

``bias_correction`` -- empirical bias correction (Nagel et al., 2019, "Data-free quantization";
Finkelstein et al., 2019, "Fighting quantization bias with bias").  Rounding weights and inputs
shifts the mean of a layer's output per channel; the shift, measured over the calibration data
as ``E[y_float] - E[y_quant]`` per output channel, is added to the layer's bias.  Layers are
corrected in graph order with the quantized inputs as they are when the layer's turn comes, so
each correction sees the earlier ones.  ``y_float`` is the float model's layer output;
``y_quant`` the layer's output with its quantized input (as the recipe quantizes it) and its
weight on the recipe's grid, by the reference numerics.  The int32 bias keeps its parameters
(``scale = s_input * s_weight``): only its value changes, and a correction that would not fit
int32 is skipped with a warning.  A layer without a bias is skipped with a warning: the seam
cannot add an initializer.

``bn_reestimate`` -- re-estimating BatchNorm statistics after quantization, for models whose
BatchNorm the frontend already folded into the conv (the graph has no batchnorm op left).  In
the literature (Nagel et al., 2022, "Overcoming oscillations in quantization-aware training",
and earlier QAT practice) BN re-estimation recomputes the running mean and variance of each BN
layer with the *quantized* network over some data, so that the normalisation matches what the
quantized preceding conv really produces; folded into the conv, a BN is a per-output-channel
affine map, so re-estimating it amounts to a per-channel scale ``f = sigma_float /
sigma_quant`` of the layer's output and a new bias.  Here the target statistics are the float
model's (as the original BN was fitted to them), so after the rewrite each output channel of
each quantized layer has the float model's mean *and* standard deviation over the calibration
data -- bias correction also matching the second moment (closest in spirit to the per-channel
mean and variance correction of Banner et al., 2019, but measured on the outputs, with data,
rather than on the weights).  It is measured at the layer's output, where the folded BN sat:
before the activation.  It helps where weight quantization changes a channel's gain, i.e. at
low bit widths (4 bits and fewer, per-tensor especially); at 8 bits ``f`` is within a fraction
of a percent of 1.

How the scale is applied.  With per-output-channel weight parameters the weight's *scale* is
multiplied by ``f`` and its codes kept: the weight becomes ``f * W_q`` exactly, the int32 bias
parameters follow (``s_input * s_weight``), and the new bias is ``mean_f - f (mean_q - b)``.
With per-tensor (or per-group) weights one scale serves several channels, so ``f * W_q`` is
written as the weight and rounded again on the unchanged grid; its mean is then measured in
a second pass and the bias matches it, so the means match exactly and the standard deviations
up to that rounding.  ``max_factor`` bounds ``f`` (a channel whose quantized output is nearly
constant would otherwise be blown up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..spec import Granularity, QuantParams
from .calibrate import bias_params
from .layouts import weight_layout
from .output_stats import (
    float_output_moments,
    layer_nodes,
    quantized_output_moments,
    quantized_weight,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext
    from ..api.layers import LayerProblem

__all__ = ["BiasCorrection", "BNReestimation"]

_INT32_MAX = 2**31 - 1


def _check_nodes(algorithm: str, nodes: Iterable[str] | None) -> tuple[str, ...] | None:
    if nodes is None:
        return None
    if isinstance(nodes, str) or not all(isinstance(n, str) for n in nodes):
        raise ValueError(f"{algorithm}: nodes must be a list of node names, got {nodes!r}")
    return tuple(nodes)


def _shared(ctx: StageContext) -> set[str]:
    users: dict[str, int] = {}
    for n in ctx.graph.nodes:
        for t in n.weights.values():
            users[t] = users.get(t, 0) + 1
    return {t for t, k in users.items() if k > 1}


def _fits_int32(ctx: StageContext, bias_name: str, value: np.ndarray) -> bool:
    t = ctx.recipe.tensors.get(bias_name)
    if t is None or t.params is None:
        return True  # a float bias (dynamic input)
    codes = np.asarray(value, np.float64) / t.params.scale.astype(np.float64)
    return bool(np.all(np.abs(codes) <= _INT32_MAX))


class _LayerWise:
    name = ""

    def __init__(self, nodes: Iterable[str] | None) -> None:
        self.nodes = _check_nodes(self.name, nodes)

    def _layers(self, ctx: StageContext) -> tuple[dict[str, Any], list[str]]:
        if ctx.calibration is None:
            raise ValueError(
                f"{self.name}: needs calibration data (it compares the float and the quantized "
                "model's layer outputs over it)"
            )
        nodes = [n for n in layer_nodes(ctx) if self.nodes is None or n.name in self.nodes]
        if self.nodes is not None:
            unknown = set(self.nodes) - {n.name for n in nodes}
            if unknown:
                raise ValueError(
                    f"{self.name}: nodes {sorted(unknown)} are not quantized conv/linear layers "
                    "of this model"
                )
        shared = _shared(ctx)
        usable = []
        for n in nodes:
            bias = n.weights.get("bias")
            if bias is None:
                ctx.warn(f"{self.name}: skipped layer {n.name!r}: it has no bias to correct")
            elif bias in shared or n.weights["weight"] in shared:
                ctx.warn(f"{self.name}: skipped layer {n.name!r}: its weight or bias is shared")
            else:
                usable.append(n)
        return float_output_moments(ctx, usable) if usable else {}, [n.name for n in usable]


class BiasCorrection(_LayerWise):
    """Finalize stage: empirical bias correction (see the module docstring).

    :param nodes: correct only these layers (node names); default every quantized conv/linear.
    """

    name = "bias_correction"

    def __init__(self, nodes: Iterable[str] | None = None) -> None:
        super().__init__(nodes)

    def run(self, ctx: StageContext) -> None:
        ref, names = self._layers(ctx)
        record: dict[str, Any] = {}
        ctx.recipe.provenance["bias_correction"] = {"layers": record}
        for i, p in enumerate(ctx.layer_problems(names, quantized_inputs=True)):
            assert p.bias is not None
            shift = ref[p.node.name].mean - quantized_output_moments(p).mean
            new = p.bias.astype(np.float64) + shift
            if not _fits_int32(ctx, p.bias_name or "", new):
                ctx.warn(f"bias_correction: skipped layer {p.node.name!r}: the corrected bias "
                         "would not fit its int32 grid")  # fmt: skip
                continue
            p.set_bias(new)
            top = float(np.abs(shift).max())
            record[p.node.name] = {"max_shift": top}
            ctx.progress(f"bias correction {p.node.name} (max shift {top:.3g})", i + 1, len(names))


class BNReestimation(_LayerWise):
    """Finalize stage: match each quantized layer's per-channel output mean and standard
    deviation to the float model's (see the module docstring).

    :param nodes: re-estimate only these layers (node names); default every quantized
        conv/linear.
    :param max_factor: ``f`` is clipped to ``[1 / max_factor, max_factor]``.
    """

    name = "bn_reestimate"

    def __init__(self, nodes: Iterable[str] | None = None, max_factor: float = 2.0) -> None:
        super().__init__(nodes)
        if (
            isinstance(max_factor, bool)
            or not isinstance(max_factor, (int, float))
            or not max_factor >= 1
        ):
            raise ValueError(f"bn_reestimate: max_factor must be a number >= 1, got {max_factor!r}")
        self.max_factor = float(max_factor)

    def run(self, ctx: StageContext) -> None:
        ref, names = self._layers(ctx)
        record: dict[str, Any] = {}
        ctx.recipe.provenance["bn_reestimate"] = {"layers": record}
        for i, p in enumerate(ctx.layer_problems(names, quantized_inputs=True)):
            layout = weight_layout(p.node, p.weight)
            if layout is None or p.weight_recipe is None or p.weight_recipe.params is None:
                ctx.warn(f"bn_reestimate: skipped layer {p.node.name!r}: no per-channel layout "
                         "or no static weight parameters")  # fmt: skip
                continue
            got = quantized_output_moments(p)
            want = ref[p.node.name]
            ok = got.std > 1e-12 * max(float(got.std.max()), 1e-30)
            f = np.where(ok, want.std / np.where(ok, got.std, 1.0), 1.0)
            f = np.clip(f, 1.0 / self.max_factor, self.max_factor)
            exact = self._apply(ctx, p, layout, f)
            b = p.bias.astype(np.float64)  # type: ignore[union-attr]
            if exact:
                new = want.mean - f * (got.mean - b)
            else:  # the weight was rounded again: measure its mean
                new = b + want.mean - quantized_output_moments(p).mean
            if not _fits_int32(ctx, p.bias_name or "", new):
                ctx.warn(f"bn_reestimate: layer {p.node.name!r}: the new bias would not fit its "
                         "int32 grid; kept the old one")  # fmt: skip
            else:
                p.set_bias(new)
            record[p.node.name] = {
                "scale": [float(v) for v in f],
                "exact": exact,
            }
            ctx.progress(
                f"bn re-estimation {p.node.name} (max |log f| {float(np.abs(np.log(f)).max()):.3g})",
                i + 1,
                len(names),
            )

    @staticmethod
    def _apply(ctx: StageContext, p: LayerProblem, layout, f: np.ndarray) -> bool:
        """Scale output channel ``o`` of the quantized weight by ``f[o]``; ``True`` when done
        exactly by scaling per-channel weight parameters (codes kept)."""
        wr = p.weight_recipe
        assert wr is not None and wr.params is not None
        wq = quantized_weight(p)
        scaled = layout.scale_out(wq.astype(np.float64), f).astype(np.float32)
        spec = wr.spec
        exact = (
            spec.granularity is Granularity.PER_CHANNEL
            and (spec.axis or 0) % p.weight.ndim == layout.out_axis
        )
        if exact:
            scale = wr.params.scale.astype(np.float64) * f.reshape(wr.params.scale.shape)
            params = QuantParams(scale.astype(np.float32), wr.params.zero_point)
            ctx.recipe.tensors[p.weight_name] = dataclasses.replace(wr, params=params)
            bias = ctx.recipe.tensors.get(p.bias_name or "")
            planned = ctx.plan.tensors.get(p.bias_name or "")
            if bias is not None and planned is not None and planned.bias_of is not None:
                act = ctx.recipe.tensors.get(planned.bias_of[0])
                if act is not None and act.params is not None:
                    bspec, bparams = bias_params(act.params, params, spec)
                    ctx.recipe.tensors[bias.name] = dataclasses.replace(
                        bias, spec=bspec, params=bparams
                    )
        p.set_weight(scaled)
        return exact
