"""Applying a Recipe as simulated (fake) quantization, framework-neutral.

Frontends that execute models through :mod:`quantfw.interpreter` use these helpers directly;
others (ONNX, torch) mirror them in their own runtime, and their tests compare against these.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import QuantGraph
from .interpreter import TensorHook
from .numerics import dequantize, fake_quantize, quantize_dynamic
from .recipe import Recipe

__all__ = ["simulated_weights", "activation_hook"]


def simulated_weights(graph: QuantGraph, recipe: Recipe) -> dict[str, np.ndarray]:
    """Initializers as the quantized model sees them: the recipe's rewritten weights, then
    fake-quantized where the recipe quantizes them (weights and int32 biases)."""
    out: dict[str, np.ndarray] = dict(recipe.weights)
    for name, t in recipe.tensors.items():
        if t.role not in ("weight", "bias"):
            continue
        base = recipe.weights.get(name)
        if base is None:
            try:
                base = graph.initializers[name]
            except KeyError:
                raise KeyError(
                    f"recipe quantizes {t.role} {name!r}, which graph {graph.name!r} does not have; "
                    "was the recipe made for another model?"
                ) from None
        if t.params is None:
            raise ValueError(f"{t.role} {name!r} has no params in the recipe")
        out[name] = fake_quantize(np.asarray(base, dtype=np.float32), t.params, t.spec)
    return out


def activation_hook(recipe: Recipe) -> TensorHook:
    """A tensor hook fake-quantizing every activation the recipe quantizes (dynamic specs are
    quantized from each value itself, as the runtime would)."""
    acts: Mapping = recipe.of_role("activation")

    def hook(name: str, value: np.ndarray) -> np.ndarray:
        t = acts.get(name)
        if t is None or value.dtype.kind != "f":
            return value
        if t.spec.dynamic:
            q, params = quantize_dynamic(value, t.spec)
            return dequantize(q, params, t.spec)
        return fake_quantize(value, t.params, t.spec)

    return hook
