"""The ``round`` stage's default: round weights to the nearest grid point (half to even).

Backends quantize weights with the recipe's parameters through the reference numerics, which
round to nearest; this algorithm therefore only checks that every planned weight has
parameters, and records the choice.  Learned rounding (AdaRound, GPTQ) instead writes its
already-rounded float weights into ``recipe.weights``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..api.context import StageContext

__all__ = ["NearestRounding"]


class NearestRounding:
    """Round to nearest; no options."""

    def run(self, ctx: StageContext) -> None:
        missing = [tp.name for tp in ctx.plan.weights() if tp.name not in ctx.recipe.tensors]
        if missing:
            raise ValueError(
                f"round-to-nearest found weights without parameters: {missing[:5]}; the calibrate "
                "stage must run first"
            )
        ctx.recipe.provenance.setdefault("rounding", "nearest")
