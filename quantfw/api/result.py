"""What a quantization returns: :class:`QuantizationResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..graph import QuantGraph
from ..planner import QuantPlan
from ..recipe import Recipe
from ..summary import Summary
from .data import Artifact, Batch

__all__ = ["QuantizationResult", "Simulates"]


class Simulates(Protocol):
    """What a result needs of its frontend (every :class:`~quantfw.api.protocols.Frontend`
    has it)."""

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]: ...


@dataclass
class QuantizationResult:
    """What :func:`quantfw.quantize` (and :func:`quantfw.qat.convert`) return.

    :ivar recipe: every decision and number.
    :ivar artifact: what the backend wrote, or ``None`` without ``output``.
    :ivar summary: what was quantized, what stayed float and why, timings.
    :ivar graph: the captured graph; ``plan`` the plan made for it.
    :ivar model: the model as the frontend bound it; ``frontend`` the frontend that captured it.
    """

    recipe: Recipe
    artifact: Artifact | None
    summary: Summary
    graph: QuantGraph
    plan: QuantPlan
    model: object = field(repr=False, default=None)
    frontend: Simulates | None = field(repr=False, default=None)

    def simulate(self) -> Callable[[Batch], dict[str, np.ndarray]]:
        """A callable running the model with the recipe applied as fake quantization."""
        if self.frontend is None:
            raise ValueError("this result carries no frontend to simulate with")
        return self.frontend.simulate(self.model, self.graph, self.recipe)
