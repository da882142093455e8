"""What AdaRound and AdaQuant share: one layer's reconstruction data, loss and bookkeeping.

Both learn, layer by layer in graph order, the quantized weight that best reproduces the layer's
output.  For each layer this module

* decides whether the layer can be reconstructed (:func:`unsupported`): an integer weight grid,
  per tensor or per channel, with parameters; an input that is float or statically quantized;
* gathers its data (:func:`gather`) from every calibration batch into engine memory: the input
  *with every earlier layer quantized* as the recipe now says, fake-quantized as the layer reads
  it (``input_recipe``), and the target, the *float* layer's output on the *float* model's
  input, through the activation the runtime fuses into the layer (ReLU, Clip) if any.  This is
  the paper's "asymmetric reconstruction": the learned rounding also makes up for the error
  earlier layers left in the input (AdaRound, sec. 4; QDrop and BRECQ use the same target).
  Linear layers on sequences (transformers) read the float model's input instead by default
  (``inputs="auto"``, see :func:`gather`);
* measures the reconstruction loss, ``sum over output channels, mean over the other positions``
  of the squared error (the loss of the AdaRound reference code and BRECQ, so that the
  regulariser weight ``0.01`` of the paper keeps its meaning);
* projects learned codes onto the pair limit of AVX2 targets (:func:`on_grid`), so that the
  weight written to the recipe re-quantizes to exactly the codes the runtime uses.

Only one layer's data is alive at a time; the algorithm releases it before the next layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import pairs
from ..formats import IntFormat
from ..graph import OpKind
from ..numerics import broadcast_params, dequantize, fake_quantize
from ..spec import Granularity, QuantParams, QuantSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext
    from ..api.engines import Engine
    from ..api.layers import LayerProblem

__all__ = [
    "LayerData",
    "Score",
    "verdict",
    "LayerwiseMethod",
    "check_options",
    "fused_activation",
    "gather",
    "on_grid",
    "output_channels",
    "unsupported",
]


def check_options(algo: str, **values: Any) -> None:
    """Validate the options the learned-rounding algorithms share (``ValueError`` naming the
    algorithm and the option)."""

    def bad(name: str, want: str) -> ValueError:
        return ValueError(f"{algo}: option {name}={values[name]!r} must be {want}")

    for name in ("iters", "batch_size", "max_samples"):
        v = values.get(name)
        if name in values and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad(name, "a positive integer")
    for name in ("lr", "lam"):
        v = values.get(name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if name in values and (not ok or v < 0 or (name == "lr" and v == 0)):
            raise bad(name, "a positive number" if name == "lr" else "a number >= 0")
    if "warmup" in values:
        v = values["warmup"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
            raise bad("warmup", "a fraction of iters in [0, 1)")
    if "holdout" in values:
        v = values["holdout"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 0.5:
            raise bad("holdout", "a fraction of the data in [0, 0.5]")
    if "inputs" in values and values["inputs"] not in ("auto", "quantized", "float"):
        raise bad("inputs", "'auto', 'quantized' (earlier layers quantized) or 'float'")
    if "seed" in values:
        v = values["seed"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad("seed", "an integer >= 0")


def unsupported(p: LayerProblem) -> str | None:
    """Why the layer cannot be reconstructed (it then keeps nearest rounding), or ``None``."""
    wr = p.weight_recipe
    if wr is None or wr.params is None:
        return "its weight has no quantization parameters"
    spec = wr.spec
    if not isinstance(spec.format, IntFormat):
        return f"its weight grid is {spec.dtype}, not an integer grid"
    if spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL):
        return f"its weight is quantized {spec.granularity.value}, not per tensor or per channel"
    ir = p.input_recipe
    if ir is not None and (ir.spec.dynamic or ir.params is None):
        return "its input is quantized dynamically (the runtime's scale depends on each batch)"
    return None


def fused_activation(ctx: StageContext, node: str) -> tuple[OpKind, tuple[float, float]] | None:
    """The activation the plan fuses right after ``node`` (``relu`` or ``clip``, as
    ``(op, (lo, hi))``), if any: the runtime quantizes the layer's output after it, so the
    reconstruction includes it."""
    by_name = {n.name: n for n in ctx.graph.nodes}
    for chain in ctx.plan.fusions:
        if len(chain) >= 2 and chain[0] == node:
            act = by_name.get(chain[1])
            if act is None:
                return None
            if act.op is OpKind.RELU:
                return act.op, (0.0, math.inf)
            if act.op is OpKind.CLIP:
                lo, hi = act.attrs.get("clip", (0.0, 6.0))
                return act.op, (float(lo), float(hi))
    return None


def _apply(xp: Any, y: Any, act: tuple[OpKind, tuple[float, float]] | None) -> Any:
    if act is None:
        return y
    lo, hi = act[1]
    return xp.clip(y, lo, None if math.isinf(hi) else hi)


def output_channels(p: LayerProblem) -> int:
    """The number of output channels (the weight's ``channel_axis``, 0 by default)."""
    axis = int(p.node.attrs.get("channel_axis", 0)) if p.node.op is OpKind.LINEAR else 0
    return int(p.weight.shape[axis % p.weight.ndim])


@dataclass(frozen=True)
class Score:
    """A weight's reconstruction loss over all of a layer's data, and over its held-out part
    (``None`` when none is held out)."""

    loss: float
    held_out: float | None


def verdict(nearest: Score, learned: Score) -> tuple[bool, dict[str, float]]:
    """Whether the learned weight beats nearest rounding -- on the held-out data when there is
    some, else on all of it -- and the comparison's provenance fields."""
    fields = {"loss_nearest": nearest.loss, "loss_learned": learned.loss}
    if learned.held_out is None or nearest.held_out is None:
        return learned.loss < nearest.loss, fields
    fields.update(held_out_nearest=nearest.held_out, held_out_learned=learned.held_out)
    return learned.held_out < nearest.held_out, fields


@dataclass
class LayerData:
    """One layer's reconstruction data in engine memory, in a fixed random order.

    A linear layer applied to every position of a sequence (a transformer's ``(batch, tokens,
    features)`` input) is reconstructed on its token rows: the input is flattened to ``(rows,
    features)`` and the rows are shuffled together, so that every step sees tokens of many
    sentences (not whole sentences, whose tokens are alike), and calibration batches of
    different lengths join.  Other layers keep whole samples on axis 0.

    :ivar x: the layer's input (from the model with earlier layers quantized, or from the float
        model: :attr:`inputs`), fake-quantized as the layer reads it.
    :ivar target: the float layer's output on the float model's input (fused activation applied).
    :ivar samples: calibration samples; ``rows`` the rows of the layer's input matrix
        (samples times output positions: tokens, pixels); ``features`` its columns (the
        reduction length: input features, or ``C_in / groups * kernel`` for a conv).
    :ivar per_sample: entries of ``x``'s axis 0 per calibration sample (1, or the average
        number of token rows of a sample when the input is flattened); a batch of ``n``
        samples takes ``n * per_sample`` entries.
    :ivar inputs: where ``x`` came from: ``"quantized"`` (the model with earlier layers
        quantized) or ``"float"`` (the float model).
    :ivar held: the last ``held`` entries (of the shuffled data) are held out: mini-batches
        never draw them, and :meth:`full_loss` can score them alone, so the method keeps a
        learned weight only when it also lowers the error on data it was not fitted to.
    """

    engine: Engine
    p: LayerProblem
    act: tuple[OpKind, tuple[float, float]] | None
    x: Any
    target: Any
    samples: int
    rows: int
    features: int
    channels: int
    bias: Any | None
    per_sample: float = 1.0
    held: int = 0
    inputs: str = "quantized"

    @property
    def entries(self) -> int:
        """The length of ``x``'s axis 0."""
        return int(self.x.shape[0])

    def batch(self, rng: np.random.Generator, size: int) -> tuple[Any, Any]:
        """A random window of the shuffled training data (the held-out entries excluded)
        worth ``size`` calibration samples."""
        n = self.entries - self.held
        size = min(max(int(round(size * self.per_sample)), 1), n)
        start = int(rng.integers(0, n - size + 1))
        return self.x[start : start + size], self.target[start : start + size]

    def forward(self, x: Any, weight: Any, bias: Any | None = None) -> Any:
        """The quantized layer's output (before its output quantizer) with ``weight``."""
        y = self.engine.layer_output(self.p.node, x, weight, self.bias if bias is None else bias)
        return _apply(self.engine.xp, y, self.act)

    def loss(self, y: Any, target: Any) -> Any:
        """Squared error summed over output channels, averaged over everything else."""
        xp = self.engine.xp
        return xp.mean((y - target) ** 2) * float(self.channels)

    def full_loss(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        chunk: int = 256,
        *,
        held_out: bool = False,
    ) -> float:
        """:meth:`loss` for a numpy weight (no gradients), in chunks of ``chunk`` samples: over
        all the data, or over the held-out entries only (``held_out=True``; all the data when
        none are held out)."""
        eng = self.engine
        w = eng.asarray(weight)
        b = None if bias is None else eng.asarray(bias)
        total = 0.0
        first = self.entries - self.held if held_out and self.held else 0
        chunk = max(int(chunk * self.per_sample), 1)
        for s in range(first, self.entries, chunk):
            y = self.forward(self.x[s : s + chunk], w, b)
            part = self.loss(y, self.target[s : s + chunk])
            n = min(chunk, self.entries - s)
            total += float(eng.to_numpy(eng.detach(part))) * n
        return total / (self.entries - first)

    def score(self, weight: np.ndarray, bias: np.ndarray | None = None) -> Score:
        """:meth:`full_loss` over all the data and, when some is held out, over that part."""
        held = self.full_loss(weight, bias, held_out=True) if self.held else None
        return Score(self.full_loss(weight, bias), held)

    def describe(self) -> dict[str, Any]:
        """The provenance fields that say what the layer was learned from."""
        return {
            "activation": None if self.act is None else self.act[0].value,
            "inputs": self.inputs,
        }

    def too_few(self) -> str | None:
        """A warning when the data cannot pin the weights down: fewer rows of the input matrix
        than its columns leave directions of the weight the loss never sees (the Gram matrix
        ``X^T X`` is singular), so learned rounding can fit the calibration data and not the
        task."""
        if self.rows >= self.features:
            return None
        per_sample = max(self.rows // max(self.samples, 1), 1)
        need = -(-self.features // per_sample)
        return (
            f"layer {self.p.node.name!r}: {self.samples} calibration samples give {self.rows} rows "
            f"of its input matrix for {self.features} input features; learned rounding needs at "
            f"least as many rows as features, so give at least {need} calibration samples"
        )


#: The fewest held-out entries a decision is made on; with less data, learned rounding is judged
#: on the data it was fitted to.
MIN_HELD = 32


def gather(
    ctx: StageContext,
    p: LayerProblem,
    engine: Engine,
    *,
    max_samples: int,
    seed: int,
    holdout: float = 0.0,
    inputs: str = "auto",
) -> LayerData | None:
    """The layer's data from the calibration batches (at most ``max_samples`` samples), moved
    into ``engine`` in a random order fixed by ``seed``, the last ``holdout`` fraction of it
    held out (:attr:`LayerData.held`; none when that would be fewer than :data:`MIN_HELD`
    entries, too few to judge by); ``None`` when no batch reached it.

    ``inputs="quantized"`` (the paper's asymmetric reconstruction) reads the layer's input from
    the model with every earlier layer quantized; ``"float"`` from the float model (then only
    the layer's own input quantizer applies, and no quantized pass is run); ``"auto"`` is
    ``"float"`` for a linear layer on sequences (its input has 3 or more dimensions: a
    transformer's projections and MLP, where learning to cancel the earlier layers' error
    misfires through attention and LayerNorm) and ``"quantized"`` otherwise."""
    ir = p.input_recipe
    act = fused_activation(ctx, p.node.name)
    token_rows = _token_rows(p)
    xs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    n = 0
    used = inputs if inputs != "auto" else _auto_inputs(p, token_rows)
    pairs_iter = ((x, x) for x in p.inputs(quantized=False)) if used == "float" else p.input_pairs()
    for x_float, x_quant in pairs_iter:
        take = min(len(x_float), max_samples - n)
        x_float, x_quant = x_float[:take], x_quant[:take]
        if ir is not None:
            x_quant = fake_quantize(x_quant, ir.params, ir.spec)  # type: ignore[arg-type]
        target = _apply(np, p.output(x_float), act)
        x_quant, target = np.asarray(x_quant, np.float32), np.asarray(target, np.float32)
        if token_rows and x_quant.ndim > 2:
            x_quant = x_quant.reshape(-1, x_quant.shape[-1])
            target = target.reshape(-1, target.shape[-1])
        xs.append(x_quant)
        ts.append(target)
        n += take
        if n >= max_samples:
            pairs_iter.close()  # the remaining batches are not needed
            break
    if n == 0:
        return None
    entries = int(sum(len(x) for x in xs))
    order = np.random.default_rng(seed).permutation(entries)
    channels = output_channels(p)
    rows = int(sum(t.size for t in ts) // channels)
    x_eng = _to_engine(engine, xs, order)  # one copy alive at a time besides the engine's
    t_eng = _to_engine(engine, ts, order)
    return LayerData(
        engine=engine,
        p=p,
        act=act,
        x=x_eng,
        target=t_eng,
        samples=n,
        rows=rows,
        features=int(p.weight.size // channels),
        channels=channels,
        bias=None if p.bias is None else engine.asarray(p.bias),
        per_sample=entries / n,
        held=held if (held := int(entries * holdout)) >= MIN_HELD else 0,
        inputs=used,
    )


def _auto_inputs(p: LayerProblem, token_rows: bool) -> str:
    """``inputs="auto"``: ``"float"`` for a linear layer whose input has 3 or more dimensions
    (read from the first calibration batch of the float model), else ``"quantized"``."""
    if not token_rows:
        return "quantized"
    batches = p.inputs(quantized=False)
    try:
        first = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return "float" if first is not None and np.ndim(first) > 2 else "quantized"


def _token_rows(p: LayerProblem) -> bool:
    """Whether the layer is a linear layer with a 2-D weight: one whose input, when it has 3 or
    more dimensions (a transformer's ``(batch, tokens, features)``), is reconstructed row by
    row, since each output row depends on its own input row only."""
    return p.node.op is OpKind.LINEAR and p.weight.ndim == 2


def _to_engine(engine: Engine, parts: list[np.ndarray], order: np.ndarray) -> Any:
    """``parts`` joined along axis 0, shuffled by ``order``, as an engine array; ``parts`` is
    emptied on the way so the batches are freed before the engine's copy is made."""
    joined = np.concatenate(parts)
    parts.clear()
    joined = joined[order]
    return engine.asarray(joined)


def on_grid(
    codes: np.ndarray, position: np.ndarray, params: QuantParams, spec: QuantSpec
) -> tuple[np.ndarray, int]:
    """Integer ``codes`` (raw, zero point included) as the float weight to write to the recipe,
    after bringing them within the spec's pair limit (x86 AVX2 targets): a pair over the limit
    gives up its excess where the learned value (``position``, on the same scale as the codes)
    was furthest from its code.  Returns the weight and how many codes the limit moved.

    Quantizing the returned weight with ``params`` gives these codes back exactly, so the
    runtime computes with the learned codes."""
    codes = np.clip(codes, spec.qmin, spec.qmax).astype(np.int64)
    moved = 0
    if pairs.applies(spec):
        limited = pairs.limit_pairs(codes, np.asarray(position, np.float64), spec).astype(np.int64)
        moved = int(np.count_nonzero(limited != codes))
        codes = limited
    return dequantize(codes.astype(spec.format.storage), params, spec), moved


def nearest_codes(weight: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """The codes round-to-nearest gives (the pair limit applied), int64."""
    from ..numerics import quantize

    return quantize(weight, params, spec).astype(np.int64)


def grid_position(weight: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """``weight / scale + zero_point`` in float64 (the weight's place on the integer grid)."""
    scale, zp = broadcast_params(params, spec, weight.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(weight, np.float32) / scale).astype(np.float64) + zp


#: What both methods reconstruct, as their provenance records say.
TARGET = "float layer output on the float input"


class LayerwiseMethod:
    """The loop AdaRound and AdaQuant share: every layer problem in graph order, with quantized
    inputs; a layer that cannot be reconstructed, or that no calibration batch reached, keeps
    nearest rounding and the user is told; too few samples gets a warning.  Subclasses set
    :attr:`name`, the options used here, and implement :meth:`header` and :meth:`learn`."""

    name: str
    engine_name: str | None
    device: str | None
    max_samples: int
    seed: int
    holdout: float = 0.0
    inputs: str = "auto"

    def header(self) -> dict[str, Any]:
        """The options recorded in ``recipe.provenance[name]``."""
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def learn(
        self, ctx: StageContext, engine: Engine, p: LayerProblem, index: int, data: LayerData
    ) -> dict[str, Any]:
        """Reconstruct one layer from ``data``; the layer's provenance entry."""
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def run(self, ctx: StageContext) -> None:
        engine = ctx.engine(self.engine_name, self.device, autograd=True)
        record: dict[str, Any] = {
            **self.header(), "engine": engine.name, "target": TARGET, "layers": {},
        }  # fmt: skip
        ctx.recipe.provenance[self.name] = record
        for index, p in enumerate(ctx.layer_problems(quantized_inputs=True)):
            name = p.node.name
            why = unsupported(p)
            if why is not None:
                ctx.warn(f"{self.name}: layer {name!r} keeps nearest rounding: {why}")
                continue
            data = gather(
                ctx, p, engine, max_samples=self.max_samples, seed=self.seed + index,
                holdout=self.holdout, inputs=self.inputs,
            )  # fmt: skip
            if data is None:
                ctx.warn(
                    f"{self.name}: layer {name!r} keeps nearest rounding: no calibration batch "
                    "reached it"
                )
                record["layers"][name] = {"kept": "nearest", "reason": "no data"}
                continue
            few = data.too_few()
            if few is not None:
                ctx.warn(f"{self.name}: {few}")
            record["layers"][name] = self.learn(ctx, engine, p, index, data)
