"""BRECQ (Li et al., 2021) and QDrop (Wei et al., 2022): learned rounding, block by block.

Both learn AdaRound's rounding variables (:mod:`quantfw.algorithms.soft_rounding`) for every
weight of a *block* -- a residual block, a transformer sublayer
(:mod:`quantfw.algorithms.block_partition`) -- at once, minimising the squared error between the
quantized block's output and the float model's, plus the regulariser that drives every rounding
choice to up or down.  Block by block in graph order, each block reads its inputs from the
quantized model with the blocks before it already rounded (sequential reconstruction), so it
learns to correct the error that reaches it.

QDrop differs in what the block sees while it learns (``p``, default 0.5): every activation
quantizer inside the block, those of the block's inputs included, keeps each element float with
probability ``p`` (:meth:`BlockModule.set_activation_drop`), and the block's input is, per
element, the float model's with probability ``p`` and the quantized model's otherwise (the
reference implementation's mixing).  The flatter loss landscape this trains for is what makes
W4A4 and below work; with ``p = 0`` QDrop is BRECQ, exactly.

BRECQ's ``fisher=True`` weights each element of the block's output error by how much the
model's prediction depends on it.  There are no labels, so the loss whose gradient measures
this is the prediction loss ``KL(softmax(float model output) || softmax(quantized model
output))`` summed over samples (:meth:`~quantfw.api.blocks.BlockProblem.output_gradients`:
the quantized model as the recipe stands -- blocks before this one reconstructed, this one and
the rest at nearest -- with straight-through gradients through rounding), as in the reference
implementation; the weight of an element is ``(1 + |g| / mean|g|) ** 2`` (the reference's
``(1 + |g|) ** 2`` with the gradient in units of its mean magnitude, so it does not depend on
how the loss is averaged), normalised to mean 1.  It assumes the model outputs logits (a
classifier, a language model); for other outputs leave it off.

Not implemented: the learned activation step sizes of both papers (activation scales stay
calibrated).

The optimisation runs on an engine with autograd (torch, :mod:`quantfw.api.engines`): the block
module a frontend provides (:class:`~quantfw.api.blocks.ProvidesBlocks`) takes its arrays; on
``device="cuda"`` module and data move to the GPU.  Memory: one block's data at a time (its
inputs, quantized and, for QDrop, float, and its float outputs over all calibration samples).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import pairs
from ..api.blocks import ProvidesBlocks
from ..api.layers import LAYER_KINDS
from .block_data import Group, device_group, gather
from .block_partition import auto_blocks, user_blocks
from .soft_rounding import SoftRounding, beta_schedule

if TYPE_CHECKING:  # pragma: no cover
    from ..api.blocks import BlockProblem
    from ..api.context import StageContext
    from ..api.engines import Engine

__all__ = ["Brecq", "QDrop", "MIN_SAMPLES"]

#: Calibration samples below which learned rounding is warned about (the papers use 1024).
MIN_SAMPLES = 256


def _check(name: str, option: str, ok: bool, want: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name}: option {option!r} must be {want}, got {value!r}")


class Brecq:
    """Round stage: BRECQ's block reconstruction (see the module docstring).

    :param iters: optimisation steps per block (the paper: 20000).
    :param batch_size: samples per step.
    :param lam: weight of the rounding regulariser.
    :param beta: the regulariser's ``(start, end)`` exponent, annealed after ``warmup``.
    :param warmup: the fraction of ``iters`` without the regulariser.
    :param lr: Adam's learning rate for the rounding variables.
    :param seed: seeds batch sampling (and QDrop's dropping): a fixed seed gives identical
        weights.
    :param device: the engine's device (``"cpu"``, ``"cuda"``); default the ``device`` option
        of ``quantize``, else the engine's.
    :param blocks: user blocks, lists of node names or fnmatch patterns (default: the automatic
        partition at cut points).
    :param max_block_layers: the most weighted layers in one automatic block.
    :param fisher: weight the output error by the squared prediction-loss gradient (see the
        module docstring; needs a frontend that computes gradients: torch).
    """

    name = "brecq"
    drop = 0.0

    def __init__(
        self,
        *,
        iters: int = 1000,
        batch_size: int = 32,
        lam: float = 0.01,
        beta: Sequence[float] = (20.0, 2.0),
        warmup: float = 0.2,
        lr: float = 1e-2,
        seed: int = 0,
        device: str | None = None,
        blocks: Sequence[Sequence[str]] | None = None,
        max_block_layers: int = 8,
        fisher: bool = False,
    ) -> None:
        n = self.name
        _check(n, "fisher", isinstance(fisher, bool), "True or False", fisher)
        self.fisher = fisher
        _check(n, "iters", isinstance(iters, int) and iters >= 1, "an integer >= 1", iters)
        _check(n, "batch_size", isinstance(batch_size, int) and batch_size >= 1, ">= 1", batch_size)
        _check(n, "lam", isinstance(lam, (int, float)) and lam >= 0, "a number >= 0", lam)
        ok = isinstance(beta, (list, tuple)) and len(beta) == 2
        ok = ok and all(isinstance(b, (int, float)) and b > 0 for b in beta)
        _check(n, "beta", ok, "a pair (start, end) of positive numbers", beta)
        ok = isinstance(warmup, (int, float)) and 0 <= warmup < 1
        _check(n, "warmup", ok, "in [0, 1)", warmup)
        ok = isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)
        _check(n, "lr", ok, "a positive number", lr)
        _check(n, "seed", isinstance(seed, int) and seed >= 0, "an integer >= 0", seed)
        ok = isinstance(max_block_layers, int) and max_block_layers >= 1
        _check(n, "max_block_layers", ok, "an integer >= 1", max_block_layers)
        ok = blocks is None or (
            isinstance(blocks, (list, tuple))
            and all(isinstance(b, (list, tuple)) and b for b in blocks)
        )
        _check(n, "blocks", ok, "a list of non-empty lists of node names or patterns", blocks)
        self.iters, self.batch_size, self.lam = iters, batch_size, float(lam)
        self.beta = (float(beta[0]), float(beta[1]))
        self.warmup, self.lr, self.seed = float(warmup), float(lr), seed
        self.device, self.blocks, self.max_block_layers = device, blocks, max_block_layers

    # -- the stage -----------------------------------------------------------------------------
    def run(self, ctx: StageContext) -> None:
        if not isinstance(ctx.frontend, ProvidesBlocks):
            raise ValueError(
                f"{self.name}: the {ctx.frontend_name!r} frontend cannot build trainable block "
                f"modules, which {self.name} learns through; use a layer-wise method (adaround, "
                "adaquant) for this model, or give quantize() the torch.nn.Module itself (the "
                "torch frontend builds block modules)"
            )
        layers = self._layers(ctx)
        if self.blocks is not None:
            partition = user_blocks(ctx.graph, self.blocks, layers)
        else:
            partition = auto_blocks(ctx.graph, layers, self.max_block_layers)
        record: dict[str, Any] = {
            "p": self.drop,
            "iters": self.iters,
            "fisher": self.fisher,
            "blocks": [],
        }
        ctx.recipe.provenance[self.name] = record
        ctx.recipe.provenance["rounding"] = self.name
        engine = None
        for k, nodes in enumerate(partition):
            label = f"{self.name} block {k + 1}/{len(partition)} ({nodes[0]}..{nodes[-1]})"
            if not any(n in layers for n in nodes):
                ctx.warn(
                    f"{label}: nothing to learn: none of its nodes is a linear or conv layer "
                    "whose weight the plan quantizes to an integer grid"
                )
                continue
            bp = ctx.block_problem(nodes)
            if engine is None or engine.name != bp.block.engine:
                engine = ctx.engine(bp.block.engine, self.device, autograd=True)
            entry = self._block(ctx, engine, bp, [n for n in bp.nodes if n in layers], k, label)
            record["blocks"].append(entry)

    def _layers(self, ctx: StageContext) -> dict[str, str]:
        """Weighted layers whose planned weight has integer static parameters: node → weight."""
        planned = {tp.name for tp in ctx.plan.weights()}
        out = {}
        for n in ctx.graph.nodes:
            w = n.weights.get("weight")
            if n.op not in LAYER_KINDS or w not in planned:
                continue
            t = ctx.recipe.tensors.get(w)
            if t is None or t.params is None:
                raise ValueError(
                    f"{self.name}: weight {w!r} of layer {n.name!r} has no parameters; the "
                    "calibrate stage must run first"
                )
            if t.spec.is_float or t.spec.dynamic:
                ctx.warn(
                    f"{self.name}: layer {n.name!r} left at nearest rounding: its weight is "
                    f"{t.spec.dtype}{' dynamic' if t.spec.dynamic else ''}, not a static "
                    "integer grid"
                )
                continue
            out[n.name] = w
        limited = [n for n, w in out.items() if pairs.applies(ctx.recipe.tensors[w].spec)]
        if limited:
            ctx.warn(
                f"{self.name}: the target limits pairs of int8 weight codes (x86-avx2) in "
                f"{len(limited)} layer(s) ({limited[0]}, …); the limit applies after rounding "
                "is learned, so some learned codes change (target x86-vnni keeps them)"
            )
        return out

    # -- one block -----------------------------------------------------------------------------
    def _block(
        self,
        ctx: StageContext,
        engine: Engine,
        bp: BlockProblem,
        layers: list[str],
        k: int,
        label: str,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        block = bp.block
        block.to_device(engine.device)
        names = [ctx.graph.node(n).weights["weight"] for n in layers]
        groups = gather(bp, floats=self.drop > 0, fisher=self.fisher)
        entry: dict[str, Any] = {
            "nodes": list(bp.nodes),
            "weights": names,
            "inputs": list(bp.arguments),
        }
        if len(groups) > 1:
            entry["shape_groups"] = len(groups)
        sizes = np.array([g.rows for g in groups])
        rows = int(sizes.sum())
        if rows < max(MIN_SAMPLES, self.batch_size):
            ctx.warn(
                f"{self.name}: {rows} calibration samples to learn the rounding of "
                f"{len(names)} weight tensor(s) of block {nodes_text(bp.nodes)}; learned rounding "
                f"overfits so few: give at least {max(MIN_SAMPLES, self.batch_size)} (the papers "
                "use 1024)"
            )
        xp = engine.xp
        # QDrop mixes float activations only: not integer ones (token ids), not model inputs
        mixed = [i < len(bp.inputs) and a.dtype.kind == "f" for i, a in enumerate(groups[0].args)]
        groups = [device_group(engine, g) for g in groups]

        def run(g: Group, idx: np.ndarray, ins: list[Any] | None = None) -> Any:
            outs = block.module(*(ins if ins is not None else [a[idx] for a in g.args]))
            weights = None if g.weights is None else [w[idx] for w in g.weights]
            return self._rec(outs, [y[idx] for y in g.targets], weights)

        current = block.weights()
        rounding = {}
        for w in names:
            t = ctx.recipe.tensors[w]
            rounding[w] = SoftRounding(engine, current[w], t.params, t.spec)
        nograd = getattr(xp, "no_grad", nullcontext)

        def loss_all() -> float:
            total = 0.0
            with nograd():
                for g in groups:
                    for s in range(0, g.rows, self.batch_size):
                        idx = np.arange(s, min(g.rows, s + self.batch_size))
                        total += float(engine.to_numpy(run(g, idx))) * len(idx)
            return total / rows

        before = loss_all()
        for w, sr in rounding.items():
            block.substitute_weight(w, partial(sr.weight, True))
        opt = xp.optim.Adam([sr.v for sr in rounding.values()], lr=self.lr)
        rng = np.random.default_rng([self.seed, k])
        if self.drop > 0:
            block.set_activation_drop(self.drop, seed=self.seed * 1_000_003 + k)
        every = max(1, self.iters // 20)
        for step in range(self.iters):
            g = groups[0] if len(groups) == 1 else groups[rng.choice(len(groups), p=sizes / rows)]
            idx = np.sort(rng.choice(g.rows, size=min(self.batch_size, g.rows), replace=False))
            ins = [a[idx] for a in g.args]
            if g.floats is not None and self.drop > 0:
                ins = [
                    self._mix(engine, rng, q, f[idx]) if mixed[i] else q
                    for i, (q, f) in enumerate(zip(ins, g.floats, strict=True))
                ]
            rec = run(g, idx, ins)
            loss = rec
            beta = beta_schedule(step, self.iters, warmup=self.warmup, start=self.beta[0],
                                 end=self.beta[1])  # fmt: skip
            if beta is not None and self.lam > 0:
                loss = loss + self.lam * sum(sr.regularizer(beta) for sr in rounding.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % every == 0 or step + 1 == self.iters:
                ctx.progress(
                    f"{label} loss {float(engine.to_numpy(rec)):.4g}", step + 1, self.iters
                )
        block.set_activation_drop(0.0)
        for w, sr in rounding.items():
            block.substitute_weight(w, partial(sr.weight, False))
        after = loss_all()
        entry.update(
            loss_nearest=before,
            loss_learned=after,
            changed={w: sr.codes_changed() for w, sr in rounding.items()},
            seconds=round(time.perf_counter() - t0, 3),
        )
        if not after <= before:
            ctx.warn(
                f"{label}: left at nearest rounding: the learned rounding's block output error "
                f"{after:.4g} is not below nearest rounding's {before:.4g} (try more iters or "
                "calibration samples)"
            )
            return {**entry, "kept": "nearest"}
        for w, sr in rounding.items():
            ctx.set_quantized_weight(w, sr.hard_weight())
        return {**entry, "kept": "learned"}

    @staticmethod
    def _rec(outs: Sequence[Any], targets: Sequence[Any], weights: Sequence[Any] | None) -> Any:
        """Squared error (times the Fisher weights, if any) summed over each sample's channels,
        averaged over samples and positions (the reference implementations' ``lp_loss``),
        summed over the block's outputs."""
        total = 0.0
        for i, (o, t) in enumerate(zip(outs, targets, strict=True)):
            d = (o - t) ** 2
            if weights is not None:
                d = d * weights[i]
            total = total + (d.sum(1).mean() if d.ndim > 1 else d.mean())
        return total

    def _mix(self, engine: Engine, rng: np.random.Generator, q: Any, f: Any) -> Any:
        """QDrop's input: the float model's value per element with probability ``drop``."""
        mask = engine.asarray((rng.random(tuple(q.shape)) < self.drop).astype(np.float32))
        return engine.xp.where(mask > 0.5, f, q)


class QDrop(Brecq):
    """Round stage: QDrop (see the module docstring); BRECQ's options and ``p``, the
    probability of keeping an activation element float while learning (default 0.5)."""

    name = "qdrop"

    def __init__(
        self,
        *,
        p: float = 0.5,
        iters: int = 1000,
        batch_size: int = 32,
        lam: float = 0.01,
        beta: Sequence[float] = (20.0, 2.0),
        warmup: float = 0.2,
        lr: float = 1e-2,
        seed: int = 0,
        device: str | None = None,
        blocks: Sequence[Sequence[str]] | None = None,
        max_block_layers: int = 8,
    ) -> None:
        ok = isinstance(p, (int, float)) and 0.0 <= p <= 1.0
        _check("qdrop", "p", ok, "a probability in [0, 1]", p)
        super().__init__(
            iters=iters, batch_size=batch_size, lam=lam, beta=beta, warmup=warmup, lr=lr,
            seed=seed, device=device, blocks=blocks, max_block_layers=max_block_layers,
        )  # fmt: skip
        self.drop = float(p)


def nodes_text(nodes: Sequence[str]) -> str:
    """``[a, b, c]`` or ``[a .. z] (n nodes)`` for messages."""
    if len(nodes) <= 3:
        return "[" + ", ".join(nodes) + "]"
    return f"[{nodes[0]} .. {nodes[-1]}] ({len(nodes)} nodes)"
