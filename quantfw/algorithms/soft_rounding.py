"""Learned rounding's building block: a weight on its integer grid with a trainable up/down choice.

AdaRound (Nagel et al., 2020) writes each weight as ``s * (floor(w / s) + h(V) - z)``: the floor
of its position on the grid plus a rounding offset ``h(V)`` in ``[0, 1]`` that a continuous
variable ``V`` controls.  ``h`` is the *rectified sigmoid* ``clip(sigmoid(V) * (zeta - gamma) +
gamma, 0, 1)`` (``zeta = 1.1``, ``gamma = -0.1``): stretched past ``[0, 1]`` and clipped, so it
reaches exactly 0 and 1 with a non-vanishing gradient near them.  The regulariser
``sum(1 - |2 h(V) - 1| ** beta)``, with ``beta`` annealed from large to small, pushes every
offset to 0 or 1 by the end; the hard choice ``h >= 0.5`` then gives integer codes.

BRECQ and QDrop learn the same variables for all the weights of a block; this module is shared
so they round exactly as AdaRound does.  Everything runs on a compute engine
(:mod:`quantfw.api.engines`): learning needs one with autograd (torch), while the hard weights
are also computed in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..numerics import broadcast_params

if TYPE_CHECKING:  # pragma: no cover
    from ..api.engines import Engine
    from ..spec import QuantParams, QuantSpec

__all__ = ["ZETA", "GAMMA", "SoftRounding", "beta_schedule"]

#: The rectified sigmoid's stretch: ``h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)``.
ZETA, GAMMA = 1.1, -0.1


def _initial_v(frac: np.ndarray) -> np.ndarray:
    """``V`` with ``h(V) = frac`` (the float weight's own position between two grid points), so
    learning starts from the float weight, as in the paper."""
    p = np.clip((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p)).astype(np.float32)


class SoftRounding:
    """One weight tensor's learned rounding on ``engine``.

    :param engine: where the arrays live; :attr:`v` is made with ``requires_grad`` when the engine
        has autograd.
    :param weight: the float weight (numpy, any layout the spec's axis refers to).
    :param params: its scale and zero point (from the recipe); ``spec`` its integer grid.
    :ivar v: the trainable rounding variables, one per weight element (an engine array).
    """

    def __init__(
        self, engine: Engine, weight: np.ndarray, params: QuantParams, spec: QuantSpec
    ) -> None:
        w = np.asarray(weight, dtype=np.float32)
        scale, zp = broadcast_params(params, spec, w.shape)
        scale = np.asarray(scale, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = w / scale  # in float32, as the reference numerics place a weight on the grid
        floor = np.floor(pos)
        self.engine = engine
        self.shape = w.shape
        self._scale_np = np.asarray(scale, dtype=np.float32)
        self._floor_np = floor.astype(np.float32)
        # the integer range relative to the zero point: floor + h must stay inside it
        self._lo = float(spec.qmin) - np.asarray(zp, dtype=np.float64)
        self._hi = float(spec.qmax) - np.asarray(zp, dtype=np.float64)
        self._nearest = np.clip(np.rint(pos), self._lo, self._hi)
        self.scale = engine.asarray(self._scale_np)
        self.floor = engine.asarray(self._floor_np)
        self.lo = engine.asarray(self._lo.astype(np.float32))
        self.hi = engine.asarray(self._hi.astype(np.float32))
        self.v = engine.asarray(_initial_v(pos - floor), requires_grad=engine.autograd)

    def offset(self, soft: bool = True) -> Any:
        """``h(V)`` (soft, in ``[0, 1]``) or its hard choice (0 or 1), an engine array."""
        xp = self.engine.xp
        h = xp.clip(1.0 / (1.0 + xp.exp(-self.v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
        if soft:
            return h
        return (h >= 0.5) * 1.0

    def weight(self, soft: bool = True) -> Any:
        """The weight as the quantized layer uses it: ``s * clip(floor + h, qmin - z, qmax - z)``
        (an engine array; differentiable in :attr:`v` when ``soft``)."""
        xp = self.engine.xp
        q = xp.minimum(xp.maximum(self.floor + self.offset(soft), self.lo), self.hi)
        return q * self.scale

    def regularizer(self, beta: float) -> Any:
        """``sum(1 - |2 h(V) - 1| ** beta)``: zero exactly when every offset is 0 or 1."""
        xp = self.engine.xp
        return xp.sum(1.0 - xp.abs(2.0 * self.offset() - 1.0) ** beta)

    def hard_weight(self) -> np.ndarray:
        """The final weight, float32 on the grid (numpy): every element rounded up or down as
        learned, saturated to the grid's range.  Quantizing it with the same parameters gives
        these codes back exactly."""
        h = self.engine.to_numpy(self.offset(soft=True)) >= 0.5
        codes = np.clip(self._floor_np.astype(np.float64) + h, self._lo, self._hi)
        return (codes * self._scale_np.astype(np.float64)).astype(np.float32)

    def codes_changed(self) -> float:
        """The fraction of elements whose learned rounding differs from round-to-nearest."""
        learned = np.rint(self.hard_weight().astype(np.float64) / self._scale_np)
        return float(np.mean(learned != self._nearest))


def beta_schedule(
    step: int, total: int, *, warmup: float = 0.2, start: float = 20.0, end: float = 2.0
) -> float | None:
    """The regulariser's ``beta`` at ``step`` of ``total``: ``None`` (no regulariser) for the
    first ``warmup`` fraction, then decaying from ``start`` to ``end`` (cosine, as in the
    reference implementation's linear-in-cosine schedule)."""
    first = int(warmup * total)
    if step < first:
        return None
    t = (step - first) / max(total - first, 1)
    return float(end + 0.5 * (start - end) * (1 + np.cos(np.pi * t)))
