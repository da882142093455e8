"""Layer problems: one weighted layer at a time, framework-neutral, for layer-wise algorithms.

AdaRound, AdaQuant, GPTQ and bias correction all look at one layer ``y = f(x; W, b)`` at a
time: its float weight and bias, how the plan quantizes the weight and the input, and the input
activations over the calibration data -- either the float model's or the ones the layer sees
once every earlier layer is quantized.  :meth:`StageContext.layer_problems
<quantfw.api.context.StageContext.layer_problems>` hands them out in graph order; the inputs are
computed by the frontend that captured the model (its ``collect``), batch by batch, so one
implementation serves ONNX, torch and Keras models alike, and only one layer's data is alive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..graph import Node, OpKind
from ..numerics import equalize

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Equalization, TensorRecipe
    from ..spec import QuantParams, QuantSpec

__all__ = ["LayerProblem", "LayerHost", "LAYER_KINDS"]

#: Op kinds handed out as layer problems.
LAYER_KINDS = frozenset({OpKind.LINEAR, OpKind.CONV})


class LayerHost(Protocol):
    """What a layer problem asks of the context that made it (the
    :class:`~quantfw.api.context.StageContext`)."""

    def collect(
        self, tensors: Sequence[str], *, quantized: bool = False
    ) -> Iterator[dict[str, np.ndarray]]: ...

    def set_quantized_weight(self, name: str, value: np.ndarray) -> None: ...

    def output_gradients(self, tensors: Sequence[str]) -> Iterator[dict[str, np.ndarray]]: ...


@dataclass
class LayerProblem:
    """One weighted layer: what it computes, how it is quantized, and what it reads.

    :ivar node: the graph node (op kind and layout attributes: ``channel_axis``, ``stride``…).
    :ivar weight_name: the weight's initializer name; ``weight`` its current value (the
        quantized model's: SmoothQuant's rescaling and earlier rewrites included), float32.
    :ivar bias_name: the bias initializer, or ``None``; ``bias`` its current value.
    :ivar weight_recipe: the weight's spec and parameters from the recipe (``None`` before the
        calibrate stage has run).
    :ivar input_name: the activation the layer reads; ``input_recipe`` how it is quantized for
        this layer (``None``: it reads a float input), ``equalization`` the rescaling on this
        edge, if any.
    :ivar quantized_inputs: the default of :meth:`inputs`.
    """

    node: Node
    weight_name: str
    weight: np.ndarray
    bias_name: str | None
    bias: np.ndarray | None
    weight_recipe: TensorRecipe | None
    input_name: str
    input_recipe: TensorRecipe | None
    equalization: Equalization | None
    quantized_inputs: bool = False
    host: LayerHost | None = field(default=None, repr=False, compare=False)

    @property
    def weight_spec(self) -> QuantSpec | None:
        """How the weight is quantized (``None`` before the calibrate stage)."""
        return None if self.weight_recipe is None else self.weight_recipe.spec

    @property
    def weight_params(self) -> QuantParams | None:
        """The weight's scale and zero point (``None`` before the calibrate stage)."""
        return None if self.weight_recipe is None else self.weight_recipe.params

    def inputs(self, *, quantized: bool | None = None) -> Iterator[np.ndarray]:
        """The layer's input, one array per calibration batch, as the layer multiplies it with
        its weight: rescaled where the edge is equalised, but *before* the input's own
        quantizer (``input_recipe`` says how the runtime quantizes it).

        :param quantized: ``True``: computed with every quantizer upstream applied as the
            recipe says when this is called (rewritten weights of earlier layers included);
            ``False``: the float model's value.  Default: the problem's ``quantized_inputs``.
        """
        quantized = self.quantized_inputs if quantized is None else quantized
        for outs in self._host().collect([self.input_name], quantized=quantized):
            yield self._edge(outs[self.input_name])

    def input_pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(float input, quantized-model input)`` per batch, computed side by side (two runs of
        the model, one batch of each alive at a time)."""
        yield from zip(self.inputs(quantized=False), self.inputs(quantized=True), strict=True)

    def output(self, x: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """The layer's output for input ``x`` with ``weight`` (default: the current one) and the
        current bias, in float: no quantizer is applied (fake-quantize ``x`` with
        ``input_recipe`` and the weight with ``weight_recipe`` to see what the runtime
        computes), by the reference interpreter."""
        from ..interpreter import layer_output

        return layer_output(self.node, x, self.weight if weight is None else weight, self.bias)

    def set_weight(self, value: np.ndarray) -> None:
        """Use ``value`` as this layer's weight in the quantized model (``recipe.weights``)."""
        self.weight = self._replace("weight", self.weight_name, self.weight, value)

    def set_bias(self, value: np.ndarray) -> None:
        """Use ``value`` as this layer's bias in the quantized model (bias correction)."""
        if self.bias_name is None or self.bias is None:
            raise ValueError(f"layer {self.node.name!r} has no bias to set")
        self.bias = self._replace("bias", self.bias_name, self.bias, value)

    def _replace(self, role: str, name: str, current: np.ndarray, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=current.dtype)
        if value.shape != current.shape:
            raise ValueError(
                f"layer {self.node.name!r}: new {role} has shape {value.shape}, the layer's is "
                f"{current.shape}"
            )
        self._host().set_quantized_weight(name, value)
        return value

    def _edge(self, x: np.ndarray) -> np.ndarray:
        if self.equalization is not None and x.dtype.kind == "f":
            return equalize(x, self.equalization.scale)
        return x

    def _host(self) -> LayerHost:
        if self.host is None:
            raise RuntimeError("this LayerProblem was not made by StageContext.layer_problems")
        return self.host
