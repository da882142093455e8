"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights.

Transformer activations carry a few channels whose magnitude is many times the rest; with one
scale per tensor those channels waste most of the int8 grid.  For a linear layer ``y = x W``
the per-channel rewrite ``y = (x / s) (s W)`` is exact in float, and with
``s_c = max|x_c|^alpha / max|W_c|^(1 - alpha)`` it balances the quantization difficulty between
the activation (now flatter) and the weight (quantized per output channel, so the extra spread
across input channels is cheap).

Where it applies: an activation computed by a float op (LayerNorm, GELU… — not by an integer
kernel whose requantization the runtime fuses) and read quantized only by its consumers
(``consumers`` set in the plan: QDQ on the consumers' edges), whose quantized readers are all
``linear`` nodes with a 2-D constant weight, reducing over the activation's last axis.  One ``s`` serves all such readers
(the Q/K/V projections share their input), so they share one set of codes.  Float readers (the
residual branch) keep reading ``x`` untouched.  At run time the division is one float
elementwise multiply by ``1 / s`` in front of the activation's quantizer (the recipe records it
as a :class:`~quantfw.recipe.Equalization`); folding it into a per-axis QuantizeLinear
instead measured 5x slower in ONNX Runtime 1.32, whose per-axis quantize kernel is not
vectorised.

``alpha="auto"`` (the default) picks the strength per activation by the error of its consumers'
quantized outputs, "no smoothing" included: on all-MiniLM-L6-v2 a fixed 0.5 made the embedding
cosine worse (0.988) than no smoothing (0.993), while the per-layer search reached 0.998.

Dynamic activations are smoothed too when calibration data is given (the ``Mul`` then sits in
front of the run-time quantizer): all-MiniLM-L6-v2 with per-tensor dynamic activations went
from cosine 0.9929 to 0.9952 at the same speed; without calibration data nothing is smoothed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..graph import OpKind

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext

__all__ = ["SmoothQuant", "smoothing_factors"]


def smoothing_factors(
    act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float
) -> np.ndarray:
    """``s = a^alpha / w^(1-alpha)`` per channel, 1 where either side is zero, float32."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    ok = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


#: Migration strengths tried by ``alpha="auto"`` (``None``: no smoothing at all).
AUTO_ALPHAS: tuple[float | None, ...] = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


class SmoothQuant:
    """Transform stage: per-channel smoothing of linear-layer inputs.

    :param alpha: migration strength in [0, 1] (1 moves all of the activation's range into the
        weights; the paper uses 0.5 for OPT, up to 0.85 elsewhere), or ``"auto"`` (default): for
        each activation, the strength among :data:`AUTO_ALPHAS` (no smoothing included) that
        minimises the squared error of its consumers' outputs, quantized as the plan says, on
        ``samples`` calibration rows.
    :param samples: calibration rows (tokens) kept per activation for the ``"auto"`` search.
    """

    def __init__(self, alpha: float | str = "auto", samples: int = 512) -> None:
        if alpha != "auto" and not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
            raise ValueError(f"smoothquant: alpha must be 'auto' or in [0, 1], got {alpha!r}")
        self.alpha = alpha if alpha == "auto" else float(alpha)
        self.samples = int(samples)

    def _reduction_axis(self, node, w: np.ndarray) -> int:
        if "reduction_axis" in node.attrs:
            return int(node.attrs["reduction_axis"]) % w.ndim
        return 1 - int(node.attrs.get("channel_axis", 0)) % 2

    def run(self, ctx: StageContext) -> None:
        graph, plan = ctx.graph, ctx.plan
        weight_users: dict[str, int] = {}
        for n in graph.nodes:
            for w in n.weights.values():
                weight_users[w] = weight_users.get(w, 0) + 1
        chosen: dict[str, list] = {}
        quantized_nodes = set(plan.quantized_nodes())
        for tp in plan.activations():
            if tp.all_readers or tp.spec.is_float or not tp.consumers:
                continue
            if tp.spec.dynamic and ctx.calibration is None:
                continue
            if tp.producer is not None and tp.producer in quantized_nodes:
                # written by an integer kernel (a conv/gemm chain, a shared-scale op): a multiply
                # between it and the quantizer would break the runtime's requantizing fusion
                continue
            readers = [graph.node(c) for c in tp.consumers]
            ok = all(
                r.op is OpKind.LINEAR
                and r.inputs
                and r.inputs[0] == tp.name
                and "weight" in r.weights
                and r.weights["weight"] in plan.tensors
                and weight_users.get(r.weights["weight"], 0) == 1
                and ctx.weight(r.weights["weight"]).ndim == 2
                for r in readers
            )
            if ok:
                chosen[tp.name] = readers
        if not chosen:
            return
        lo: dict[str, np.ndarray] = {}  # per-channel extremes: the range calibration will see
        hi: dict[str, np.ndarray] = {}
        rows: dict[str, list[np.ndarray]] = {}
        have: dict[str, int] = {}
        rng = np.random.default_rng(0)
        for outs in ctx.collect(list(chosen)):
            # only the first `samples` rows of each are searched: once every activation has
            # them, later draws change nothing (and their rows need not be kept)
            sampling = self.alpha == "auto" and any(have.get(n, 0) < self.samples for n in chosen)
            for name, v in outs.items():
                flat = np.asarray(v, np.float32).reshape(-1, v.shape[-1])
                b_lo, b_hi = flat.min(axis=0), flat.max(axis=0)
                if name in lo:
                    lo[name] = np.minimum(lo[name], b_lo)
                    hi[name] = np.maximum(hi[name], b_hi)
                else:
                    lo[name], hi[name] = b_lo, b_hi
                if sampling:
                    take = min(len(flat), self.samples)
                    rows.setdefault(name, []).append(
                        flat[rng.choice(len(flat), take, replace=False)]
                    )
                    have[name] = have.get(name, 0) + take
            outs = v = flat = None  # free this batch before the next one runs
        # max |x| per channel without an |x| copy (+ 0 turns a -0.0 into 0.0)
        amax = {n: np.maximum(hi[n], -lo[n]) + np.float32(0) for n in lo}
        chosen_alpha: dict[str, float | None] = {}
        for name, readers in chosen.items():
            weights = []
            wmax = None
            for r in readers:
                w = ctx.weight(r.weights["weight"])
                red = self._reduction_axis(r, w)
                w_in = np.moveaxis(w, red, 0)  # (in, out)
                if w_in.shape[0] != amax[name].shape[0]:
                    break
                weights.append((r, w, red, w_in))
                m = np.abs(w_in).max(axis=1)
                wmax = m if wmax is None else np.maximum(wmax, m)
            else:
                if self.alpha == "auto":
                    sample = np.concatenate(rows[name])[: self.samples]
                    alpha = self._search(
                        ctx, name, sample, (lo[name], hi[name]), amax[name], wmax, weights
                    )
                else:
                    alpha = self.alpha
                chosen_alpha[name] = alpha
                if alpha is None:
                    continue
                s = smoothing_factors(amax[name], wmax, alpha)
                ctx.equalize(name, s, [r.name for r in readers], source="smoothquant")
                for r, w, red, _ in weights:
                    shape = [1, 1]
                    shape[red] = -1
                    # only the quantized model sees s*W (paired with x/s on the quantized edge):
                    # the float model that calibration runs keeps its own weights
                    ctx.set_quantized_weight(
                        r.weights["weight"], (w * s.reshape(shape)).astype(w.dtype)
                    )
        ctx.recipe.provenance["smoothquant"] = {
            "alpha": self.alpha,
            "chosen": {k: v for k, v in chosen_alpha.items()},
        }

    def _search(self, ctx, name, x, ranges, amax, wmax, weights) -> float | None:
        """The strength among AUTO_ALPHAS with the least squared output error on the sample
        rows ``x``, the activation quantized over the range of *all* its calibration values
        (``ranges``: per-channel minima and maxima, divided by the candidate's factors) -- the
        range a min-max calibration will give it, which rare outlier tokens can widen beyond
        what a few hundred sample rows show (on all-MiniLM-L6-v2, 256 x 128 tokens, the two
        gave the same embedding cosine, 0.9978)."""
        from ..numerics import compute_qparams, fake_quantize, reduce_range

        aspec = ctx.plan.tensors[name].spec
        refs = [x @ w_in for _, _, _, w_in in weights]
        best, best_err = None, np.inf
        for alpha in AUTO_ALPHAS:
            s = np.ones_like(amax) if alpha is None else smoothing_factors(amax, wmax, alpha)
            inv = np.float32(1.0) / s
            xs = x * inv
            if aspec.granularity.value == "per_tensor" and not aspec.dynamic:
                xp = compute_qparams((ranges[0] * inv).min(), (ranges[1] * inv).max(), aspec)
            else:  # per-token / dynamic: each row's own range, as at run time
                xp = compute_qparams(*reduce_range(xs, aspec), aspec)
            xq = fake_quantize(xs, xp, aspec)
            err = 0.0
            for (r, _, _, w_in), ref in zip(weights, refs, strict=True):
                wspec = ctx.plan.tensors[r.weights["weight"]].spec
                w2 = w_in * s[:, None]
                # in the (in, out) view the output-channel axis is 1, the reduction axis 0
                spec_io = wspec
                if wspec.granularity.value == "per_channel":
                    spec_io = wspec.replace(axis=1)
                elif wspec.granularity.value == "per_group":
                    spec_io = wspec.replace(axis=0)
                # the strength is chosen for the plain grid, without a pair limit
                # (quantfw.pairs): its per-channel scale search would cost ~9 quantizations
                # per candidate, and on all-MiniLM-L6-v2 strengths chosen with the limit's
                # projection (plain scales) gave a worse model (cosine 0.9976 vs 0.9980)
                spec_io = spec_io.replace(pair_limit=None)
                wp = compute_qparams(*reduce_range(w2, spec_io), spec_io)
                wq = fake_quantize(w2, wp, spec_io)
                err += float(((xq @ wq - ref) ** 2).mean())
            if err < best_err:
                best, best_err = alpha, err
        return best
