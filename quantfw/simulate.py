"""Applying a Recipe as simulated (fake) quantization, framework-neutral.

Frontends that execute models through :mod:`quantfw.interpreter` use these helpers directly;
others (ONNX, torch) mirror them in their own runtime, and their tests compare against these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .graph import Node, QuantGraph
from .interpreter import InputHook, TensorHook
from .numerics import dequantize, equalize, fake_quantize, quantize_dynamic
from .recipe import Recipe, TensorRecipe

__all__ = ["simulated_weights", "activation_hooks", "reference_runner"]


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


def activation_hooks(recipe: Recipe) -> tuple[TensorHook, InputHook]:
    """Hooks for :func:`quantfw.interpreter.run_graph` that fake-quantize the recipe's
    activations: ``on_tensor`` for tensors stored quantized (every reader sees the quantized
    value), ``on_input`` for tensors quantized on their consumers' edges only, after the
    recipe's equalisation of that edge if it has one.  Dynamic specs are quantized from each
    value itself, as the runtime would."""
    acts: Mapping[str, TensorRecipe] = recipe.of_role("activation")

    def fq(t: TensorRecipe, value: np.ndarray) -> np.ndarray:
        if value.dtype.kind != "f":
            return value
        if t.spec.dynamic:
            q, params = quantize_dynamic(value, t.spec)
            return dequantize(q, params, t.spec)
        return fake_quantize(value, t.params, t.spec)

    def on_tensor(name: str, value: np.ndarray) -> np.ndarray:
        t = acts.get(name)
        return value if t is None or t.consumers is not None else fq(t, value)

    def on_input(node: Node, name: str, value: np.ndarray) -> np.ndarray:
        eq = recipe.equalization_for(name, node.name)
        if eq is not None and value.dtype.kind == "f":
            value = equalize(value, eq.scale)
        t = acts.get(name)
        if t is None or t.consumers is None or node.name not in t.consumers:
            return value
        return fq(t, value)

    return on_tensor, on_input


def reference_runner(graph: QuantGraph, recipe: Recipe, outputs: Sequence[str] | None = None):
    """``batch -> {tensor: value}``: the graph run by the numpy interpreter with the recipe applied
    (the reference every backend's artifact is compared against)."""
    from .interpreter import run_graph

    weights = simulated_weights(graph, recipe)
    on_tensor, on_input = activation_hooks(recipe)

    def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_graph(
            graph, batch, outputs=outputs, weights=weights, on_tensor=on_tensor, on_input=on_input
        )

    return run
