"""AdaRound (Nagel et al., 2020): learn whether each weight rounds up or down.

Rounding every weight to its nearest grid point minimises each weight's own error, not the
layer's output error: the errors of a row add up in the dot product.  AdaRound keeps each weight
on ``floor(w / s)`` or ``floor(w / s) + 1`` and learns the choice per element, layer by layer in
graph order, minimising

    || act(W x + b) - act(W~(V) x~ + b) ||^2  +  lam * sum(1 - |2 h(V) - 1| ** beta)

where ``x`` is the float model's input to the layer, ``x~`` the input with every earlier layer
already quantized (and fake-quantized as this layer reads it), ``act`` the activation the runtime
fuses into the layer (ReLU, Clip), ``W~(V)`` the soft-rounded weight of
:class:`~quantfw.algorithms.soft_rounding.SoftRounding` and ``beta`` annealed by
:func:`~quantfw.algorithms.soft_rounding.beta_schedule` so every choice ends at 0 or 1.  See
:mod:`quantfw.algorithms.reconstruction` for the data, the loss and why the target is the float
layer on the float input.

The result is a weight on the grid (``recipe.weights``) that the backend re-quantizes, with the
calibrated parameters, to exactly the learned codes; on x86 AVX2 targets the codes are first
brought within the pair limit (:mod:`quantfw.pairs`).  A layer whose learned rounding does not
lower the loss over all its calibration data keeps round-to-nearest.  Learning needs a compute
engine with autograd (the torch plugin's), on CPU or GPU (options ``engine``, ``device``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..numerics import fake_quantize
from .reconstruction import (
    LayerData,
    LayerwiseMethod,
    check_options,
    grid_position,
    nearest_codes,
    on_grid,
    verdict,
)
from .soft_rounding import SoftRounding, beta_schedule

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext
    from ..api.engines import Engine
    from ..api.layers import LayerProblem

__all__ = ["AdaRound"]


def _pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, str):  # the command line's "20:2"
        parts = value.split(":")
        try:
            value = tuple(float(v) for v in parts)
        except ValueError:
            pass
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and value[0] >= value[1] > 0
    )
    if not ok:
        raise ValueError(
            f"adaround: option {name}={value!r} must be (start, end) with start >= end > 0, "
            "e.g. (20, 2), or on the command line beta=20:2"
        )
    return float(value[0]), float(value[1])


class AdaRound(LayerwiseMethod):
    """Round stage: learned up/down rounding per weight, layer by layer.

    :param iters: optimisation steps per layer (the paper uses 10 000 on ImageNet models;
        1 000 already gets most of the gain on small layers).
    :param batch_size: calibration samples per step.
    :param lam: the rounding regulariser's weight (the paper's 0.01).
    :param beta: the regulariser's exponent, annealed from ``beta[0]`` to ``beta[1]``
        (``"20:2"`` also reads as ``(20, 2)``).
    :param warmup: the fraction of ``iters`` run without the regulariser first.
    :param lr: Adam's step size on the rounding variables.
    :param max_samples: calibration samples kept per layer (memory: one layer's input and
        output for that many samples).
    :param holdout: the fraction of each layer's data (samples, or token rows) held out of the
        optimisation; the learned rounding is kept only when it also beats round-to-nearest
        there (learned rounding can fit the calibration data and lose on other data).  The
        default 0 judges on the training data: holding data out costs accuracy when
        calibration data is scarce.
    :param inputs: ``"quantized"`` (the paper's): the layer reads its input from the model
        with every earlier layer quantized, so the rounding also makes up for their error;
        ``"float"``: from the float model (one model pass per layer instead of two);
        ``"auto"`` (default): ``"float"`` for linear layers on sequences (transformers, where
        the quantized-input version made all-MiniLM-L6-v2 worse than nearest rounding) and
        ``"quantized"`` for the rest.
    :param seed: the sample order and mini-batches; the same seed gives the same codes.
    :param engine: the compute engine (default: the first with autograd, torch); ``device``
        its device (``"cpu"``, ``"cuda"``).  Both default to ``options["engine"]`` /
        ``options["device"]`` of :func:`quantfw.quantize`.
    """

    name = "adaround"

    def __init__(
        self,
        iters: int = 1000,
        batch_size: int = 32,
        lam: float = 0.01,
        beta: tuple[float, float] | list[float] = (20.0, 2.0),
        warmup: float = 0.2,
        lr: float = 1e-2,
        max_samples: int = 1024,
        holdout: float = 0.0,
        inputs: str = "auto",
        seed: int = 0,
        engine: str | None = None,
        device: str | None = None,
    ) -> None:
        check_options(
            self.name, iters=iters, batch_size=batch_size, lam=lam, warmup=warmup, lr=lr,
            max_samples=max_samples, holdout=holdout, inputs=inputs, seed=seed,
        )  # fmt: skip
        self.iters, self.batch_size, self.lam = iters, batch_size, float(lam)
        self.beta = _pair("beta", beta)
        self.warmup, self.lr = float(warmup), float(lr)
        self.max_samples, self.seed, self.holdout = max_samples, seed, float(holdout)
        self.inputs = inputs
        self.engine_name, self.device = engine, device

    def header(self) -> dict[str, Any]:
        return {
            "iters": self.iters, "lam": self.lam, "beta": list(self.beta),
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
        nearest = nearest_codes(p.weight, params, spec)
        before = data.score(fake_quantize(p.weight, params, spec))  # nearest, as deployed
        sr = SoftRounding(engine, p.weight, params, spec)
        opt = engine.optimizer([sr.v], lr=self.lr)
        rng = np.random.default_rng([self.seed, index])
        every = max(self.iters // 20, 1)
        for it in range(self.iters):
            x, t = data.batch(rng, self.batch_size)
            rec = data.loss(data.forward(x, sr.weight(soft=True)), t)
            beta = beta_schedule(
                it, self.iters, warmup=self.warmup, start=self.beta[0], end=self.beta[1]
            )
            loss = rec if beta is None else rec + self.lam * sr.regularizer(beta)
            opt.step(loss)
            if it % every == 0 or it == self.iters - 1:
                value = float(engine.to_numpy(engine.detach(rec)))
                ctx.progress(f"{self.name} {name}: loss {value:.3g}", it + 1, self.iters)
        # the learned codes (raw, zero point included), within the pair limit where it applies
        position = grid_position(p.weight, params, spec)
        learned = np.rint(grid_position(sr.hard_weight(), params, spec)).astype(np.int64)
        weight, moved = on_grid(learned, position, params, spec)
        better, losses = verdict(before, data.score(weight))
        entry: dict[str, Any] = {
            **losses,
            "codes_changed": float(np.mean(nearest_codes(weight, params, spec) != nearest)),
            "pair_limit_moved": moved,
            **data.describe(),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        del data, sr, opt  # release the layer's engine memory before the next layer
        if better:
            p.set_weight(weight)
        else:  # the attempt is recorded, the deployed codes are nearest's
            entry["kept"] = "nearest"
            entry["codes_changed"] = 0.0
        ctx.progress(
            f"{self.name} {name}: loss {before.loss:.3g} -> {losses['loss_learned']:.3g}",
            self.iters,
            self.iters,
        )
        return entry
