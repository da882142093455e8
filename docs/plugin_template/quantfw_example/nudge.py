"""A layer-wise round-stage algorithm, written once for every frontend: the template for AdaRound-,
GPTQ- or AdaQuant-style methods.

For each ``linear`` layer the plan quantizes, it moves the float weight part of the way towards
the least-squares optimum of the layer's output on the inputs the *quantized* model feeds it:

    W* = argmin_W  sum_batches || xq @ W - xf @ Wf ||^2

where ``xf`` is the float model's input to the layer, ``xq`` the input once every earlier layer
is quantized (the recipe so far, this algorithm's earlier rewrites included) and quantized as
the layer reads it, and ``Wf`` the layer's float weight.  The normal equations need only
``G = sum xq^T xq`` and ``C = sum xq^T (xf @ Wf)`` -- a (in x in) and an (in x out) matrix -- so a
layer's inputs stream through batch by batch and memory stays bounded by one layer.

Everything framework-specific stays behind the seam: the layer problems come from
:meth:`quantfw.api.StageContext.layer_problems` (the frontend computes the inputs), and the
arithmetic runs on whichever compute engine the user picks (``options={"engine": "torch"}``):
the same code serves ONNX, torch and Keras models, on numpy or on torch (CPU or GPU).
"""

from __future__ import annotations

import numpy as np

from quantfw.api import LayerProblem, StageContext
from quantfw.graph import OpKind
from quantfw.numerics import fake_quantize

__all__ = ["LeastSquaresNudge", "layer_objective"]


def _input_as_read(p: LayerProblem, x: np.ndarray) -> np.ndarray:
    """``x`` as the layer reads it at run time: quantized when its input is (static specs)."""
    t = p.input_recipe
    if t is None or t.params is None:
        return x
    return fake_quantize(x, t.params, t.spec)


def _in_out(p: LayerProblem, w: np.ndarray) -> np.ndarray:
    """The weight as an ``(in, out)`` matrix (``x @ W``), whatever its stored layout."""
    return w.T if int(p.node.attrs.get("channel_axis", 0)) == 0 else w


def layer_objective(p: LayerProblem, weight: np.ndarray) -> float:
    """``mean || xq @ W - xf @ Wf ||^2`` of ``weight`` over the calibration data (numpy), the
    quantity the nudge lowers; for tests and reports."""
    wf = _in_out(p, p.weight)
    w = _in_out(p, weight)
    total, count = 0.0, 0
    for xf, xq in p.input_pairs():
        xf = xf.reshape(-1, wf.shape[0]).astype(np.float64)
        xq = _input_as_read(p, xq).reshape(-1, wf.shape[0]).astype(np.float64)
        total += float(((xq @ w - xf @ wf) ** 2).sum())
        count += xf.shape[0]
    return total / max(count, 1)


class LeastSquaresNudge:
    """Round stage: nudge each linear layer's weight towards its least-squares optimum.

    :param step: how far to move, from 0 (keep the weight) to 1 (the optimum itself).
    :param damp: ridge term towards the float weight, as a fraction of the mean diagonal of
        ``G`` (keeps the solve stable when some input channels are always zero).
    :param engine: compute engine name (default: the context's choice, ``options["engine"]``).
    :param device: the engine's device (``"cuda"`` for torch on a GPU).
    """

    def __init__(
        self,
        step: float = 0.5,
        damp: float = 0.01,
        engine: str | None = None,
        device: str | None = None,
    ) -> None:
        if not 0.0 <= float(step) <= 1.0:
            raise ValueError(f"ls-nudge: step must be in [0, 1], got {step!r}")
        if float(damp) < 0:
            raise ValueError(f"ls-nudge: damp must be >= 0, got {damp!r}")
        self.step, self.damp = float(step), float(damp)
        self.engine, self.device = engine, device

    def run(self, ctx: StageContext) -> None:
        eng = ctx.engine(self.engine, self.device)
        xp = eng.xp
        changed = []
        for p in ctx.layer_problems(quantized_inputs=True):
            if p.node.op is not OpKind.LINEAR:
                continue  # the toy keeps to matrix layers; a conv would unfold its input first
            wf = eng.asarray(_in_out(p, p.weight), dtype="float64")
            n_in = wf.shape[0]
            g = c = None
            for xf, xq in p.input_pairs():
                xf_e = eng.asarray(xf.reshape(-1, n_in), dtype="float64")
                xq_e = eng.asarray(_input_as_read(p, xq).reshape(-1, n_in), dtype="float64")
                target = xf_e @ wf  # the float layer's output (bias left out: it cancels)
                g = xq_e.T @ xq_e if g is None else g + xq_e.T @ xq_e
                c = xq_e.T @ target if c is None else c + xq_e.T @ target
            if g is None:
                continue  # no calibration batch reached this layer
            ridge = self.damp * float(xp.mean(xp.diagonal(g))) + 1e-12
            eye = eng.asarray(np.eye(n_in), dtype="float64")
            # the ridge pulls towards the float weight, not towards zero
            best = xp.linalg.solve(g + ridge * eye, c + ridge * wf)
            w_io = eng.to_numpy(wf)
            w_io = w_io + self.step * (eng.to_numpy(best) - w_io)
            p.set_weight(_in_out(p, w_io.astype(np.float32)))
            changed.append(p.node.name)
        ctx.recipe.provenance["ls-nudge"] = {
            "layers": changed,
            "step": self.step,
            "engine": f"{eng.name} ({eng.device})",
        }
