"""The ``calibrate`` stage: parameters for every planned tensor from observed ranges.

One algorithm per observer (``minmax``, ``moving_average``, ``percentile``, ``entropy``,
``mse``).  Each

* computes weight parameters from the weights themselves (min-max by default, the MSE search
  with ``weight_method="mse"``, or ``"absmean"``; ternary weights default to absmean, the
  scaling of BitNet b1.58, since a min-max scale would round almost every weight to zero);
* runs the float model over the calibration data once, feeding every static activation to its
  own observer (one batch in memory at a time).  ``minmax`` on per-tensor activations needs only
  their extremes, which it asks the first float pass of an earlier stage (SmoothQuant's) to
  gather (:meth:`~quantfw.api.context.StageContext.request_channel_ranges`): then it runs no pass
  of its own, with bit-identical ranges;
* merges the ranges of tensors that must share one scale (concat inputs and output, …) and
  applies the target's fixed output parameters (softmax on TFLite, …);
* derives int32 bias parameters, ``scale = s_input · s_weight`` (per output channel), zero
  point 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import OpKind, QuantGraph
from ..numerics import compute_qparams, equalization_multiplier, equalize, params_from_tensor
from ..observers import Observer, make_observer
from ..recipe import TensorRecipe
from ..spec import Granularity, QuantParams, QuantSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext

__all__ = ["ObserverCalibration", "bias_params", "absmean_params"]


def absmean_params(w: np.ndarray, spec: QuantSpec) -> QuantParams:
    """Scale = mean |w| (per tensor, or per channel along ``spec.axis``), zero point 0.

    BitNet b1.58 quantizes weights to {-1, 0, 1} as ``clip(round(w / mean|w|), -1, 1)``; on other
    symmetric grids the same rule maps the mean magnitude onto code 1.
    """
    if not spec.symmetric or spec.granularity not in (
        Granularity.PER_TENSOR,
        Granularity.PER_CHANNEL,
    ):
        raise ValueError(
            f"absmean weight scaling needs a symmetric per-tensor or per-channel spec, got {spec}"
        )
    a = np.abs(np.asarray(w, dtype=np.float64))
    if spec.granularity is Granularity.PER_CHANNEL:
        axis = spec.axis % a.ndim
        scale = a.mean(axis=tuple(i for i in range(a.ndim) if i != axis))
    else:
        scale = np.asarray(a.mean())
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zp = np.full(scale.shape, 0 if spec.format.signed else 1 << (spec.bits - 1), np.int32)
    return QuantParams(scale, zp)


def bias_params(
    act: QuantParams, weight: QuantParams, weight_spec: QuantSpec
) -> tuple[QuantSpec, QuantParams]:
    """int32 bias spec and params for ``y = x·W + b``: scale ``s_x · s_w`` per output channel."""
    if act.scale.size != 1:
        raise ValueError("int32 bias needs a per-tensor input scale")
    if weight_spec.granularity is Granularity.PER_CHANNEL:
        scale = act.scale.reshape(()) * weight.scale.reshape(-1)
        spec = QuantSpec("int32", symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    elif weight.scale.size == 1:
        scale = act.scale.reshape(()) * weight.scale.reshape(())
        spec = QuantSpec("int32", symmetric=True)
    else:
        raise ValueError(
            f"int32 bias needs a per-tensor or per-channel weight, not {weight_spec.granularity.value}"
        )
    scale = np.maximum(scale.astype(np.float32), np.finfo(np.float32).tiny)
    return spec, QuantParams(scale, np.zeros(scale.shape, np.int32))


#: ops whose output holds exactly the values of their first input (so the same extremes)
_SAME_VALUES = frozenset(
    {OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.FLATTEN, OpKind.SQUEEZE, OpKind.IDENTITY}
)


def _value_aliases(graph: QuantGraph, names: list[str]) -> dict[str, str]:
    """``{tensor: source}`` for each of ``names`` made by a layout op from another of them
    (followed to the first tensor of the chain), whose extremes are its source's."""
    wanted, producers, out = set(names), graph.producers(), {}
    for name in names:
        source, node = name, producers.get(name)
        while node is not None and node.op in _SAME_VALUES and node.inputs:
            if node.inputs[0] not in wanted:
                break
            source = node.inputs[0]
            node = producers.get(source)
        if source != name:
            out[name] = source
    return out


def _static(ctx: StageContext) -> list:
    """The activations calibration observes (static, parameters not fixed by the target)."""
    return [tp for tp in ctx.plan.activations() if not tp.spec.dynamic and tp.fixed_params is None]


class ObserverCalibration:
    """Calibrate with one observer kind.

    :param method: observer name (see :data:`quantfw.observers.OBSERVERS`).
    :param weight_method: ``"minmax"`` (default), ``"absmean"`` or any observer name, applied to
        each weight.
    :param options: passed to every activation observer (e.g. ``percentile=99.9``).
    """

    def __init__(self, method: str, weight_method: str = "minmax", **options: Any) -> None:
        self.method = method
        self.weight_method = weight_method
        self.options = options
        # fail early on unknown names and options rather than mid-run
        make_observer(method, QuantSpec("uint8", symmetric=False), **options)
        if weight_method not in ("minmax", "absmean"):
            make_observer(weight_method, QuantSpec("int8"))

    def _weight_params(self, w: np.ndarray, spec: QuantSpec) -> QuantParams:
        method = self.weight_method
        if (
            method == "minmax"
            and spec.dtype == "ternary"
            and spec.granularity is not Granularity.PER_GROUP
        ):
            method = "absmean"
        if method == "absmean":
            return absmean_params(w, spec)
        if method == "minmax" or spec.granularity is Granularity.PER_GROUP:
            return params_from_tensor(w, spec)
        obs = make_observer(method, spec)
        obs.update(w)
        return obs.compute_params()

    def _shares_a_pass(self, spec: QuantSpec) -> bool:
        # the exact extremes of the values, whatever the batches: exactly what a per-tensor
        # min-max observer keeps, so extremes gathered by an earlier float pass serve it
        return self.method == "minmax" and spec.granularity is Granularity.PER_TENSOR

    def prepare(self, ctx: StageContext) -> None:
        """Before any stage runs: ask the first float-model pass (SmoothQuant's) to gather the
        extremes of the tensors this calibrator observes, so it needs no pass of its own."""
        if ctx.calibration is not None:
            names = [tp.name for tp in _static(ctx) if self._shares_a_pass(tp.spec)]
            ctx.request_channel_ranges(names, _value_aliases(ctx.graph, names))

    def _from_shared_pass(
        self, ctx: StageContext, observers: dict[str, Observer], shapes: dict[str, tuple[int, ...]]
    ) -> list[str]:
        """Feed the observers the extremes an earlier pass gathered; the tensors left over."""
        shared = ctx.channel_ranges()
        if shared is None:
            return list(observers)
        pending = []
        for name, obs in observers.items():
            eq = ctx.recipe.equalizations.get(name)
            got = None
            if self._shares_a_pass(obs.spec):
                mult = None if eq is None else equalization_multiplier(eq.scale)
                got = shared.extrema(name, mult)
            if got is None:
                pending.append(name)
                continue
            obs.update(np.stack(got))  # the same range as every (equalised) value
            shapes[name] = shared.shapes[name]
        return pending

    def run(self, ctx: StageContext) -> None:
        plan, recipe = ctx.plan, ctx.recipe
        for tp in plan.weights():
            w = ctx.weight(tp.name)
            recipe.add(
                TensorRecipe(
                    tp.name,
                    "weight",
                    tp.spec,
                    self._weight_params(w, tp.spec),
                    node=tp.node,
                    shape=w.shape,
                )
            )

        static = _static(ctx)
        observers = {tp.name: make_observer(self.method, tp.spec, **self.options) for tp in static}
        shapes: dict[str, tuple[int, ...]] = {}
        pending = self._from_shared_pass(ctx, observers, shapes)
        if pending:
            for outs in ctx.collect(pending):
                for name, value in outs.items():
                    # an equalised activation is quantized as its consumers read it: rescaled
                    eq = ctx.recipe.equalizations.get(name)
                    observers[name].update(value if eq is None else equalize(value, eq.scale))
                    shapes[name] = tuple(value.shape)
                outs = value = None  # free this batch before the next one runs

        ranges = {name: obs.compute_range() for name, obs in observers.items()}
        for members in plan.share_groups.values():
            present = [m for m in members if m in ranges]
            if len(present) > 1:
                lo = np.minimum.reduce([ranges[m][0] for m in present])
                hi = np.maximum.reduce([ranges[m][1] for m in present])
                for m in present:
                    ranges[m] = (lo, hi)

        for tp in plan.activations():
            fixed = tp.fixed_params
            if tp.spec.dynamic:
                params = None
            elif fixed is not None:
                params = fixed
            else:
                params = compute_qparams(*ranges[tp.name], tp.spec)
            recipe.add(
                TensorRecipe(
                    tp.name,
                    "activation",
                    tp.spec,
                    params,
                    shape=shapes.get(tp.name),
                    share_group=tp.share_group,
                    consumers=None if tp.all_readers else tp.consumers,
                )
            )

        for tp in plan.biases():
            act_name, w_name = tp.bias_of
            act, wt = recipe.tensors.get(act_name), recipe.tensors.get(w_name)
            if act is None or wt is None or act.params is None:
                continue  # dynamic activations: the runtime computes the bias in float
            spec, params = bias_params(act.params, wt.params, wt.spec)
            recipe.add(
                TensorRecipe(
                    tp.name, "bias", spec, params, node=tp.node, shape=ctx.weight(tp.name).shape
                )
            )
