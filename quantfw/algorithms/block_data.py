"""A block's calibration data for block reconstruction (BRECQ, QDrop), held in shape groups.

A block learns from whole samples: every step runs the block module on some samples' inputs
and compares its outputs with the float model's.  Samples stack only when their tensors have
the same shape after the batch axis, so calibration batches are grouped by the shapes of
everything the block reads and writes -- token sequences padded per batch (to each batch's
longest sentence) make one group per length, images one group.  Within a group the batches
are concatenated along the batch axis; a step draws its samples from one group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..api.blocks import BlockProblem

__all__ = ["Group", "device_group", "gather"]


@dataclass
class Group:
    """Calibration samples of one shape.

    :ivar args: the block module's arguments from the quantized model (boundary inputs, then
        model inputs), in :attr:`BlockProblem.arguments` order; float arrays as float32,
        others (token ids) as they came.
    :ivar floats: the same from the float model (QDrop's mixing), or ``None``.
    :ivar targets: the float model's block outputs, in :attr:`BlockProblem.outputs` order.
    :ivar weights: Fisher weights of the outputs' elements, or ``None``.
    """

    args: list[np.ndarray]
    floats: list[np.ndarray] | None
    targets: list[np.ndarray]
    weights: list[np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return int(self.args[0].shape[0])


def gather(bp: BlockProblem, *, floats: bool, fisher: bool) -> list[Group]:
    """The block's data over all calibration batches, in groups of one shape (in order of
    first appearance): quantized-model arguments and float outputs, with the float model's
    arguments when ``floats`` and Fisher weights when ``fisher``."""
    args = bp.arguments
    keys: list[tuple] = []  # per calibration batch: the shapes after the batch axis
    xs: list[list[np.ndarray]] = []
    ys: list[list[np.ndarray]] = []
    for ins, outs in bp.pairs():
        xs.append([np.asarray(ins[t]) for t in args])
        ys.append([np.asarray(outs[t]) for t in bp.outputs])
        keys.append(tuple(a.shape[1:] for a in (*xs[-1], *ys[-1])))
    fs = gs = None
    if floats:
        fs = [[np.asarray(ins[t]) for t in args] for ins in bp.input_batches(quantized=False)]
    if fisher:
        gs = [[np.asarray(g[t]) for t in bp.outputs] for g in bp.output_gradients()]

    def stack(per_batch: list[list[np.ndarray]], key: tuple) -> list[np.ndarray]:
        chosen = [arrays for k, arrays in zip(keys, per_batch, strict=True) if k == key]
        return _cat([list(column) for column in zip(*chosen, strict=True)])

    groups = [
        Group(
            args=stack(xs, key),
            floats=None if fs is None else stack(fs, key),
            targets=stack(ys, key),
            weights=None if gs is None else stack(gs, key),
        )
        for key in dict.fromkeys(keys)
    ]
    if fisher:  # (1 + |g| / mean|g|) ** 2, the mean over every group's samples
        for i in range(len(bp.outputs)):
            raw = _raw_fisher([g.weights[i] for g in groups])
            mean = sum(float(r.sum()) for r in raw) / sum(r.size for r in raw)
            for g, r in zip(groups, raw, strict=True):
                g.weights[i] = (r / mean).astype(np.float32)
    return groups


def _cat(lists: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    cats = [np.concatenate(v, axis=0) for v in lists]
    return [a.astype(np.float32, copy=False) if a.dtype.kind == "f" else a for a in cats]


def _raw_fisher(grads: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``(1 + |g| / m) ** 2`` for each array, ``m`` the mean of ``|g|`` over all of them (ones
    when that is zero)."""
    a = [np.abs(np.asarray(g, dtype=np.float64)) for g in grads]
    n = sum(x.size for x in a)
    m = sum(float(x.sum()) for x in a) / n if n else 0.0
    if not m > 0:
        return [np.ones(x.shape) for x in a]
    return [(1.0 + x / m) ** 2 for x in a]


def device_group(engine: Any, g: Group) -> Group:
    """``g`` with every array an engine array (dtype kept: token ids stay integers)."""

    def dev(arrays: list[np.ndarray] | None) -> list[Any] | None:
        if arrays is None:
            return None
        return [
            engine.asarray(a, dtype="float32" if a.dtype.kind == "f" else str(a.dtype))
            for a in arrays
        ]

    return Group(args=dev(g.args), floats=dev(g.floats), targets=dev(g.targets),
                 weights=dev(g.weights))  # fmt: skip
