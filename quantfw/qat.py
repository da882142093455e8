"""Quantization-aware training (QAT), framework-neutral entry points.

QAT here starts where post-training quantization ends and finishes on the same path::

    qat_model = quantfw.qat.prepare(model, calibration_data, target="x86")   # PTQ, then fake quant
    ... train qat_model with the framework's own loop ...
    result = quantfw.qat.convert(qat_model, output="model.int8.onnx")        # Recipe + artifact

:func:`prepare` runs :func:`quantfw.quantize` (the plan, the calibration, every default or chosen
algorithm) to initialise the scales, then asks the model's frontend for a trainable model with
fake quantization on exactly the tensors the plan quantizes.  :func:`convert` asks the frontend
for the trained weights and scales, writes them into a Recipe and lowers it with the target's
backend, like :func:`quantfw.quantize` does.  The core imports no framework: a frontend supports
QAT by implementing the :class:`~quantfw.api.protocols.SupportsQAT` capability (the torch
frontend does; see :mod:`quantfw_torch.qat`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .api.protocols import SupportsQAT
from .api.result import QuantizationResult
from .pipeline import AlgorithmChoices, lower, quantize
from .planner import Overrides
from .summary import Summary

if TYPE_CHECKING:  # pragma: no cover
    from .plugins.registry import Registry

__all__ = ["prepare", "convert"]

#: Attribute of a prepared model holding its QAT state (an object with ``.result``, the
#: :class:`QuantizationResult` that initialised it).
_STATE = "quantfw_state"


def _frontend_of(registry: Registry, result: QuantizationResult) -> SupportsQAT:
    fe = result.frontend
    if not isinstance(fe, SupportsQAT):
        name = result.recipe.provenance.get("frontend", type(fe).__name__)
        qat = [
            n
            for n in registry.frontends
            if registry.availability("frontend", n)[0]
            and isinstance(registry.frontend_object(n), SupportsQAT)
        ]
        raise ValueError(
            f"the {name!r} frontend does not support quantization-aware training; frontends "
            f'that do: {qat or "none installed"} (torch: pip install "quantfw[torch]")'
        )
    return fe


def prepare(
    model: object,
    calibration_data: Any = None,
    *,
    target: str = "generic",
    algorithms: AlgorithmChoices | None = None,
    overrides: Overrides | Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    learn_scales: bool = False,
    registry: Registry | None = None,
    frontend: str | None = None,
    frontend_options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    **options: Any,
) -> Any:
    """A trainable copy of ``model`` with fake quantization where ``target`` quantizes.

    :param model: a model of a frontend that supports QAT (a ``torch.nn.Module``).
    :param calibration_data: initialises the activation scales (as for :func:`quantize`).
    :param target: the target the model is trained for.
    :param algorithms: PTQ algorithms that initialise the recipe (defaults as in
        :func:`quantize`).
    :param overrides: planner overrides (bits, ignore lists, …), e.g. ``{"weight_bits": 4}``.
    :param example_inputs: for tracing frontends, see :func:`quantize`.
    :param learn_scales: train the scales too (LSQ) instead of keeping the calibrated
        activation scales and recomputing weight scales from the weights each step.
    :param options: passed to the frontend's ``qat_prepare``.
    :returns: the frontend's model type (for torch an ``nn.Module``); the original model is
        left untouched.
    """
    from .plugins import get_registry

    registry = registry if registry is not None else get_registry()
    result = quantize(
        model,
        calibration_data,
        target=target,
        algorithms=algorithms,
        overrides=overrides,
        example_inputs=example_inputs,
        registry=registry,
        frontend=frontend,
        frontend_options=frontend_options,
        batch_size=batch_size,
    )
    fe = _frontend_of(registry, result)
    return fe.qat_prepare(result, learn_scales=learn_scales, **options)


def convert(
    qat_model: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> QuantizationResult:
    """The trained model's Recipe (weights, scales, int32 biases) and, with ``output``, the
    target's artifact — the same result :func:`quantize` gives.

    :raises ValueError: when ``qat_model`` was not made by :func:`prepare`.
    """
    from .plugins import get_registry

    registry = registry if registry is not None else get_registry()
    start = getattr(getattr(qat_model, _STATE, None), "result", None)
    if not isinstance(start, QuantizationResult):
        raise ValueError(
            f"{type(qat_model).__name__} was not made by quantfw.qat.prepare (it carries no QAT "
            "state); prepare the model first"
        )
    fe = _frontend_of(registry, start)
    t0 = time.perf_counter()
    recipe = fe.qat_recipe(qat_model)
    target_spec = registry.target(recipe.target)
    artifact, note, timings = lower(
        registry,
        target_spec,
        start.graph,
        recipe,
        output,
        backend=backend,
        backend_options=backend_options,
    )
    summary = Summary.build(
        graph=start.graph,
        plan=start.plan,
        recipe=recipe,
        target=target_spec,
        frontend=start.recipe.provenance.get("frontend", "?"),
        timings=timings,
        backend_note=note,
        artifact=artifact,
        total_seconds=time.perf_counter() - t0,
    )
    return QuantizationResult(
        recipe, artifact, summary, start.graph, start.plan, start.model, start.frontend
    )
