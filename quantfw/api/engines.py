"""Compute engines: where a layer-wise algorithm does its arithmetic.

A layer-wise algorithm (AdaRound, GPTQ, …) is written once against :class:`Engine`: it moves a
:class:`~quantfw.api.layers.LayerProblem`'s numpy arrays into the engine (:meth:`Engine.asarray`),
computes with the engine's array namespace ``xp`` (``numpy``, or ``torch`` for the torch engine,
whose tensors can carry gradients and live on a GPU) and the layer's own forward
(:meth:`Engine.layer_output`), and hands numpy arrays back (:meth:`Engine.to_numpy`).  The
frontend that captured the model does not matter: an ONNX model's layers can be reconstructed on
the torch engine and a torch model's on numpy.

Engines are registrations (:class:`~quantfw.api.components.EngineInfo`); the built-in ``numpy``
engine is always there, the torch plugin adds ``torch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..graph import Node

__all__ = ["Engine", "NumpyEngine", "Optimizer"]

_NO_AUTOGRAD = (
    "the numpy engine has no autograd; choose an engine that has (torch: "
    'pip install "quantfw[torch]")'
)


@runtime_checkable
class Optimizer(Protocol):
    """Gradient descent on engine arrays, made by :meth:`Engine.optimizer`."""

    def step(self, loss: Any) -> float:
        """Differentiate the scalar ``loss`` (an engine array computed from the optimizer's
        parameters) with respect to the parameters, update them in place by one step, and
        return the loss's value."""


@runtime_checkable
class Engine(Protocol):
    """Array arithmetic for layer-wise algorithms.

    :ivar name: the registered engine name.
    :ivar device: where arrays live (``"cpu"``, ``"cuda:0"``).
    :ivar autograd: whether arrays made with ``requires_grad=True`` carry gradients.
    :ivar xp: the array namespace (``numpy`` or ``torch``): ``xp.linalg.solve``, ``xp.zeros`` …
    """

    name: str
    device: str
    autograd: bool
    xp: Any

    def asarray(
        self, value: np.ndarray, *, dtype: str = "float32", requires_grad: bool = False
    ) -> Any:
        """``value`` as an engine array of ``dtype`` (``"float32"`` or ``"float64"``) on
        :attr:`device`; make every array an algorithm combines this way (constants too), so
        they live on the same device.

        :raises ValueError: ``requires_grad`` on an engine without autograd.
        """

    def to_numpy(self, value: Any) -> np.ndarray:
        """An engine array back as a numpy array (detached, on the CPU)."""

    def layer_output(self, node: Node, x: Any, weight: Any, bias: Any | None = None) -> Any:
        """The float output of a ``linear`` or ``conv`` node for input ``x`` (engine arrays),
        following the node's layout attributes (``channel_axis``, ``stride``, ``padding``,
        ``dilation``, ``groups``) exactly as the reference interpreter does."""

    def detach(self, value: Any) -> Any:
        """``value`` with the same numbers but no gradient flowing back through it: a
        straight-through rounding is ``x + detach(round(x) - x)``."""

    def optimizer(self, params: Sequence[Any], *, lr: float) -> Optimizer:
        """Adam (betas 0.9 / 0.999) over ``params``, arrays made with ``requires_grad=True``,
        with step size ``lr``.

        :raises ValueError: on an engine without autograd.
        """


class NumpyEngine:
    """The built-in engine: numpy on the CPU, no autograd."""

    name = "numpy"
    device = "cpu"
    autograd = False
    xp = np

    def __init__(self, device: str | None = None) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy engine runs on 'cpu' only, not {device!r}")

    def asarray(
        self, value: np.ndarray, *, dtype: str = "float32", requires_grad: bool = False
    ) -> np.ndarray:
        if requires_grad:
            raise ValueError(_NO_AUTOGRAD)
        return np.asarray(value, dtype=dtype)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def layer_output(
        self, node: Node, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
    ) -> np.ndarray:
        from ..interpreter import layer_output

        return layer_output(node, x, weight, bias)

    def detach(self, value: np.ndarray) -> np.ndarray:
        return value

    def optimizer(self, params: Sequence[Any], *, lr: float) -> Optimizer:
        raise ValueError(_NO_AUTOGRAD)
