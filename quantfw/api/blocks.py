"""Block problems: a run of layers reconstructed together (BRECQ, QDrop), where a frontend can
supply one.

A block is a set of graph nodes; its *inputs* are the activations its nodes read that no node of
the block computes, its *outputs* the tensors its nodes compute that something outside reads (or
the graph returns), shapes excepted.  Reconstructing it needs what a layer problem cannot give:
a differentiable module of the whole block, with the recipe's quantizers in it and its weights
as trainable parameters.  That module is framework-native, so a frontend supplies it through the
:class:`ProvidesBlocks` capability (the torch frontend does); the core computes the block's
boundary and streams its inputs and float outputs batch by batch, as for layer problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..graph import QuantGraph, shape_tensors

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Recipe
    from .layers import LayerHost

__all__ = [
    "BlockModule",
    "BlockProblem",
    "ProvidesBlocks",
    "ProvidesOutputGradients",
    "block_boundary",
]


@dataclass
class BlockModule:
    """What a frontend builds for a block.

    :ivar module: callable on the block's inputs (engine arrays, in ``BlockProblem.inputs``
        order) returning its outputs (a tuple, in ``BlockProblem.outputs`` order); its weights
        are trainable and the recipe's quantizers (weights and activations) sit in it.
    :ivar engine: the compute engine whose arrays ``module`` takes (``"torch"``).
    :ivar weights: the current values of the block's trainable weights, by initializer name (in
        the layout the graph stores them).
    :ivar parameters: the trainable weights themselves (engine arrays), by initializer name.
    :ivar substitute: the frontend's implementation of :meth:`substitute_weight` (``None``: it
        has none).
    :ivar drop: the frontend's implementation of :meth:`set_activation_drop` (``None``: none).
    :ivar place: the frontend's implementation of :meth:`to_device` (``None``: CPU only).
    :ivar model_inputs: graph inputs that the block's computation reads besides its boundary
        inputs -- a sequence length or mask a captured program takes from the model's input
        inside the block -- which :attr:`module` takes after the boundary inputs, in this order
        (the values the model was fed, any dtype; default none).

    Learned rounding (BRECQ, QDrop) uses the two hooks: it replaces each weight's fake
    quantizer by its own rounded weight (:meth:`substitute_weight`), and QDrop randomly keeps
    activations float while it trains (:meth:`set_activation_drop`).  Both change only this
    module, never the recipe: the algorithm writes what it learned
    (:meth:`StageContext.set_quantized_weight`, or :meth:`BlockProblem.commit` for the
    module's parameters).
    """

    module: Any
    engine: str
    weights: Callable[[], dict[str, np.ndarray]]
    parameters: dict[str, Any] = field(default_factory=dict)
    substitute: Callable[[str, Callable[[], Any] | None], None] | None = None
    drop: Callable[[float, int], None] | None = None
    place: Callable[[str], None] | None = None
    model_inputs: tuple[str, ...] = ()

    def substitute_weight(self, name: str, value: Callable[[], Any] | None) -> None:
        """From now on, wherever the block reads the fake-quantized weight ``name`` (an
        initializer of one of its nodes), it reads ``value()`` instead -- called on every run of
        :attr:`module`, so it may return a different (soft, differentiable) array each time; an
        engine array in the graph's layout of the weight, on the module's device.  ``None``
        restores the weight's own fake quantizer.

        :raises KeyError: ``name`` is no weight of the block.
        :raises NotImplementedError: the frontend's block modules cannot substitute weights.
        """
        if self.substitute is None:
            raise NotImplementedError(f"the {self.engine!r} block module cannot substitute weights")
        self.substitute(name, value)

    def set_activation_drop(self, p: float, seed: int = 0) -> None:
        """QDrop's dropping: on every run of :attr:`module`, each activation quantizer inside
        the block (those on the block's inputs included) passes each element's float value
        instead of its fake-quantized one with probability ``p``, independently per element,
        drawn from a generator seeded with ``seed`` now.  ``p = 0`` (the default state) is plain
        fake quantization, exactly.

        :raises ValueError: ``p`` outside ``[0, 1]``.
        :raises NotImplementedError: the frontend's block modules cannot drop quantization.
        """
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"activation drop probability must be in [0, 1], got {p!r}")
        if self.drop is None:
            raise NotImplementedError(f"the {self.engine!r} block module cannot drop activations")
        self.drop(float(p), int(seed))

    def to_device(self, device: str) -> None:
        """Move :attr:`module` and :attr:`parameters` to ``device`` (an engine device string,
        ``"cpu"``, ``"cuda:0"``), so it takes arrays of an engine on that device."""
        if self.place is None:
            if str(device) != "cpu":
                raise ValueError(f"the {self.engine!r} block module runs on the CPU only")
            return
        self.place(str(device))


@runtime_checkable
class ProvidesBlocks(Protocol):
    """A frontend that can build a trainable module for a block of its graph."""

    def block_module(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        nodes: Sequence[str],
        inputs: Sequence[str],
        outputs: Sequence[str],
    ) -> BlockModule:
        """A differentiable module of ``nodes`` from ``inputs`` (as their producers computed
        them, before their own quantizers) to ``outputs`` (likewise), with ``recipe``'s
        quantization inside and the weights of ``nodes`` (``recipe.weights`` first) trainable.

        :raises ValueError: naming what in the block cannot be separated from the model.
        """


@runtime_checkable
class ProvidesOutputGradients(Protocol):
    """A frontend that can tell how much the model's prediction depends on inner tensors:
    BRECQ's Fisher weighting of a block's output error (``fisher=True``)."""

    def output_gradients(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        tensors: Sequence[str],
        batches: Iterable[Any],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per batch, the gradient with respect to each of ``tensors`` (as its producer
        computes it, before its own quantizer) of the prediction loss
        ``sum over samples and graph outputs of KL(softmax(float) || softmax(quantized))``:
        softmax over each float output's last axis, *float* the float model's outputs (with the
        float rewrites ``weights``), *quantized* the outputs of the model with ``recipe``
        applied as fake quantization (rounding passes gradients straight through).  Without
        labels, this is how far the quantized model's prediction is from the float model's, so
        its gradient says which elements of a tensor the prediction is sensitive to.  Arrays
        shaped like the tensors; one batch alive at a time.
        """


def block_boundary(graph: QuantGraph, nodes: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(inputs, outputs)`` of the block ``nodes`` of ``graph``, in graph order.

    :raises KeyError: an unknown node.
    :raises ValueError: an empty block.
    """
    names = set(nodes)
    known = {n.name for n in graph.nodes}
    unknown = sorted(names - known)
    if unknown:
        raise KeyError(f"graph {graph.name!r} has no node(s) named {unknown}")
    if not names:
        raise ValueError("a block needs at least one node")
    inside = [n for n in graph.nodes if n.name in names]
    produced = {t for n in inside for t in n.outputs}
    inputs = list(dict.fromkeys(t for n in inside for t in n.inputs if t not in produced))
    inputs = [t for t in inputs if t not in graph.initializers]
    read_outside = {t for n in graph.nodes if n.name not in names for t in n.inputs}
    shapes = shape_tensors(graph)  # sizes, not activations to reconstruct
    outputs = [
        t
        for n in inside
        for t in n.outputs
        if (t in read_outside or t in graph.outputs) and t not in shapes
    ]
    return inputs, outputs


@dataclass
class BlockProblem:
    """A block to reconstruct: its nodes, boundary, trainable module and data.

    :ivar nodes: the block's graph nodes; ``inputs`` and ``outputs`` its boundary tensors.
    :ivar block: the frontend's :class:`BlockModule`.
    """

    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    block: BlockModule
    host: LayerHost | None = field(default=None, repr=False, compare=False)

    @property
    def arguments(self) -> tuple[str, ...]:
        """What :attr:`BlockModule.module` takes, in order: the boundary :attr:`inputs`, then
        the model inputs it also reads (:attr:`BlockModule.model_inputs`)."""
        return self.inputs + tuple(t for t in self.block.model_inputs if t not in self.inputs)

    def input_batches(self, *, quantized: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """The block's :attr:`arguments` per calibration batch: boundary inputs with every
        quantizer upstream applied as the recipe says now (default), or the float model's;
        model inputs as fed."""
        yield from self._host().collect(self.arguments, quantized=quantized)

    def output_batches(self, *, quantized: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """The block's outputs per calibration batch: the float model's (default, the usual
        reconstruction target) or the quantized model's."""
        yield from self._host().collect(self.outputs, quantized=quantized)

    def pairs(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(quantized-model inputs, float outputs)`` per batch, side by side."""
        yield from zip(self.input_batches(), self.output_batches(), strict=True)

    def output_gradients(self) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch, the gradient of the prediction loss with respect to each block
        output (see :meth:`ProvidesOutputGradients.output_gradients`), with the recipe as it is
        now, batch for batch alongside :meth:`pairs`.

        :raises ValueError: the frontend cannot compute gradients.
        """
        yield from self._host().output_gradients(self.outputs)

    def commit(self) -> list[str]:
        """Write the module's current weights into the recipe (the quantized model's weights);
        the names written."""
        host = self._host()
        values = self.block.weights()
        for name, value in values.items():
            host.set_quantized_weight(name, value)
        return list(values)

    def _host(self) -> LayerHost:
        if self.host is None:
            raise RuntimeError("this BlockProblem was not made by StageContext.block_problem")
        return self.host
