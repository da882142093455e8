"""AdaQuant (Hubara et al., 2021): fit each layer's quantized weights to its output.

Where AdaRound only chooses up or down, AdaQuant lets the weights move freely: layer by layer in
graph order it minimises the same reconstruction loss as AdaRound (see
:mod:`quantfw.algorithms.reconstruction`) over the *continuous* weight seen through a
straight-through fake quantizer, ``s * (clip(round(W / s) + z, qmin, qmax) - z)`` with the
rounding's gradient taken as 1, and optionally over the weight's scale (``learn_scale``) and the
layer's bias (``learn_bias``).  The weight is learned in units of the grid step and the scale as
a factor ``exp(r)`` of the calibrated one, so one step size suits every layer and the scale stays
positive.

The result: the weight on the grid (``recipe.weights``), the learned bias, and the learned
scale in the weight's recipe; where the scale changed, the int32 bias's parameters
(``s_input * s_weight`` per output channel) are derived again so the bias stays consistent.
On x86 AVX2 targets the codes are brought within the pair limit (:mod:`quantfw.pairs`).  A layer
whose result does not lower the loss over all its calibration data keeps round-to-nearest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..numerics import broadcast_params, fake_quantize
from ..spec import Granularity, QuantParams
from .calibrate import bias_params
from .reconstruction import (
    LayerData,
    LayerwiseMethod,
    check_options,
    nearest_codes,
    on_grid,
    verdict,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext
    from ..api.engines import Engine
    from ..api.layers import LayerProblem

__all__ = ["AdaQuant"]


class AdaQuant(LayerwiseMethod):
    """Round stage: per-layer weight (and scale, bias) fitting through a straight-through
    quantizer.

    :param iters: optimisation steps per layer.
    :param batch_size: calibration samples per step.
    :param lr: Adam's step size (weights in grid steps, the scale's log-factor, the bias in units
        of the layer output's standard deviation).
    :param learn_scale: also learn the weight's scale (per channel or per tensor, as planned;
        symmetric grids).
    :param learn_bias: also learn the layer's bias (when it has one).
    :param max_samples: calibration samples kept per layer.
    :param holdout: the fraction of each layer's data held out of the fitting; the result is
        kept only when it also beats round-to-nearest there (default 0: judged on the
        training data).
    :param inputs: ``"quantized"``: inputs with every earlier layer quantized; ``"float"``:
        the float model's; ``"auto"`` (default): float for linear layers on sequences, quantized
        otherwise (see :class:`~quantfw.algorithms.adaround.AdaRound`).
    :param seed: the sample order and mini-batches.
    :param engine: the compute engine (default: the first with autograd, torch); ``device``
        its device.
    """

    name = "adaquant"

    def __init__(
        self,
        iters: int = 1000,
        batch_size: int = 32,
        lr: float = 1e-4,
        learn_scale: bool = True,
        learn_bias: bool = True,
        max_samples: int = 1024,
        holdout: float = 0.0,
        inputs: str = "auto",
        seed: int = 0,
        engine: str | None = None,
        device: str | None = None,
    ) -> None:
        check_options(
            self.name, iters=iters, batch_size=batch_size, lr=lr, max_samples=max_samples,
            holdout=holdout, inputs=inputs, seed=seed,
        )  # fmt: skip
        for key, value in (("learn_scale", learn_scale), ("learn_bias", learn_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}: option {key}={value!r} must be true or false")
        self.iters, self.batch_size, self.lr = iters, batch_size, float(lr)
        self.learn_scale, self.learn_bias = learn_scale, learn_bias
        self.max_samples, self.seed, self.holdout = max_samples, seed, float(holdout)
        self.inputs = inputs
        self.engine_name, self.device = engine, device

    def header(self) -> dict[str, Any]:
        return {
            "iters": self.iters, "learn_scale": self.learn_scale, "learn_bias": self.learn_bias,
            "holdout": self.holdout,
            "inputs": self.inputs,
        }  # fmt: skip

    def learn(
        self, ctx: StageContext, engine: Engine, p: LayerProblem, index: int, data: LayerData
    ) -> dict[str, Any]:
        name = p.node.name
        wr = p.weight_recipe
        assert wr is not None and wr.params is not None
        params, spec = wr.params, wr.spec
        t0 = time.perf_counter()
        before = data.score(fake_quantize(p.weight, params, spec))

        xp = engine.xp
        scale_full, zp_full = broadcast_params(params, spec, p.weight.shape)
        lo = engine.asarray(np.float32(spec.qmin) - np.asarray(zp_full, np.float32))
        hi = engine.asarray(np.float32(spec.qmax) - np.asarray(zp_full, np.float32))
        shape = _param_view(params, spec, p.weight.ndim)
        s0 = engine.asarray(params.scale.reshape(shape))
        learn_scale = self.learn_scale and spec.symmetric
        u = engine.asarray(p.weight / scale_full, requires_grad=True)  # the weight in grid steps
        r = engine.asarray(
            np.zeros(params.scale.shape, np.float32).reshape(shape), requires_grad=learn_scale
        )
        learn_bias = self.learn_bias and p.bias is not None
        t_std = float(np.std(engine.to_numpy(data.target[: min(data.samples, 256)]))) or 1.0
        d = None
        if learn_bias:
            d = engine.asarray(np.zeros(p.bias.shape, np.float32), requires_grad=True)  # type: ignore[union-attr]
        b0 = data.bias

        def weight(u: Any, r: Any) -> Any:
            q = u * xp.exp(-r)
            q = q + engine.detach(xp.round(q) - q)  # straight through the rounding
            q = xp.minimum(xp.maximum(q, lo), hi)
            return q * (s0 * xp.exp(r))

        def bias(d: Any) -> Any:
            return b0 if d is None else b0 + d * t_std

        params_list = [u] + ([r] if learn_scale else []) + ([d] if d is not None else [])
        opt = engine.optimizer(params_list, lr=self.lr)
        rng = np.random.default_rng([self.seed, index])
        every = max(self.iters // 20, 1)
        for it in range(self.iters):
            x, t = data.batch(rng, self.batch_size)
            loss = data.loss(data.forward(x, weight(u, r), bias(d)), t)
            value = opt.step(loss)
            if it % every == 0 or it == self.iters - 1:
                ctx.progress(f"{self.name} {name}: loss {value:.3g}", it + 1, self.iters)

        # the result on the grid: codes of the learned weight at the learned scale
        new_scale = params.scale * np.exp(
            engine.to_numpy(engine.detach(r)).reshape(params.scale.shape)
        )
        new_scale = np.maximum(new_scale.astype(np.float32), np.finfo(np.float32).tiny)
        new_params = QuantParams(new_scale, params.zero_point)
        position = (
            engine.to_numpy(engine.detach(u)).astype(np.float64)
            * (scale_full / broadcast_params(new_params, spec, p.weight.shape)[0])
            + zp_full
        )
        codes = np.rint(position)
        w_new, moved = on_grid(codes, position, new_params, spec)
        b_new = None if d is None else engine.to_numpy(engine.detach(bias(d))).astype(np.float32)
        better, losses = verdict(before, data.score(w_new, b_new))
        described = data.describe()
        del data, u, r, d, opt  # release the layer's engine memory

        entry: dict[str, Any] = {
            **losses,
            "codes_changed": float(
                np.mean(
                    nearest_codes(w_new, new_params, spec) != nearest_codes(p.weight, params, spec)
                )
            ),
            "scale_changed": float(np.max(np.abs(new_scale / params.scale - 1.0))),
            "pair_limit_moved": moved,
            **described,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if better:
            wr.params = new_params
            p.set_weight(w_new)
            if b_new is not None:
                p.set_bias(b_new)
            _rederive_bias(ctx, p, new_params)
        else:  # the attempt is recorded, the deployed codes are nearest's
            entry["kept"] = "nearest"
            entry["codes_changed"] = 0.0
        ctx.progress(
            f"{self.name} {name}: loss {before.loss:.3g} -> {losses['loss_learned']:.3g}",
            self.iters,
            self.iters,
        )
        return entry


def _param_view(params: QuantParams, spec: Any, ndim: int) -> tuple[int, ...]:
    """The shape that broadcasts the weight's scale over the weight."""
    if spec.granularity is Granularity.PER_CHANNEL:
        view = [1] * ndim
        view[spec.axis % ndim] = -1
        return tuple(view)
    return ()


def _rederive_bias(ctx: StageContext, p: LayerProblem, weight_params: QuantParams) -> None:
    """The int32 bias's scale is ``s_input * s_weight``: derive it again for the new weight
    scale (as the calibrate stage did)."""
    if p.bias_name is None:
        return
    bias = ctx.recipe.tensors.get(p.bias_name)
    planned = ctx.plan.tensors.get(p.bias_name)
    if bias is None or bias.role != "bias" or planned is None or planned.bias_of is None:
        return
    act = ctx.recipe.tensors.get(planned.bias_of[0])
    wr = p.weight_recipe
    if act is None or act.params is None or wr is None:
        return
    bias.spec, bias.params = bias_params(act.params, weight_params, wr.spec)
