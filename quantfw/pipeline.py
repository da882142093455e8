"""One quantization, end to end: frontend → plan → stages → backend (DESIGN.md's flow)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .calibration import CalibrationData
from .components import STAGE_ORDER, AlgorithmInfo, Artifact, Batch, Frontend, Stage
from .graph import QuantGraph
from .planner import Overrides, QuantPlan, plan
from .recipe import Recipe
from .summary import Summary

__all__ = [
    "quantize",
    "StageContext",
    "QuantizationResult",
    "AlgorithmChoice",
    "DEFAULT_ALGORITHMS",
    "lower",
]

#: Used for a stage when the user names no algorithm of it.  SmoothQuant only acts on
#: activations quantized on their consumers' edges that feed linear layers (transformer
#: projections on ONNX Runtime / TensorRT targets), and keeps a layer unsmoothed when that is
#: better; name the transform ``none`` to skip it.
DEFAULT_ALGORITHMS: dict[Stage, str] = {
    Stage.TRANSFORM: "smoothquant",
    Stage.CALIBRATE: "minmax",
    Stage.ROUND: "nearest",
}

AlgorithmChoice = str | tuple[str, Mapping[str, Any]]


@dataclass
class StageContext:
    """What an algorithm sees and changes while it runs.

    :ivar model: the user's model object.
    :ivar frontend: the frontend working object; ``frontend_name`` its registered name.
    :ivar graph: the captured graph; transforms replace initializers through :meth:`set_weight`.
    :ivar plan: which tensors get which spec.
    :ivar target: the TargetSpec.
    :ivar recipe: filled in by the stages.
    :ivar calibration: validated batches, or ``None`` when none were given.
    :ivar options: free-form options from ``quantize(..., options=...)``.
    :ivar smoothing: activation name → per-channel divisors chosen by a transform (SmoothQuant);
        the calibrate stage observes ``x / smoothing[x]`` and records it in the recipe.
    """

    model: object
    frontend: Frontend
    frontend_name: str
    graph: QuantGraph
    plan: QuantPlan
    target: Any
    recipe: Recipe
    calibration: CalibrationData | None
    progress: Callable[[str, int, int | None], None] = lambda task, done, total: None
    options: dict[str, Any] = field(default_factory=dict)
    smoothing: dict[str, np.ndarray] = field(default_factory=dict)

    def weight(self, name: str) -> np.ndarray:
        """Current value of an initializer (a rewritten one if a transform changed it)."""
        if name in self.recipe.weights:
            return self.recipe.weights[name]
        return self.graph.initializers[name]

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Replace an initializer of the float model (bn folding, equalisation): calibration runs
        see it, and the recipe records it so backends use it too.  A rewrite that is only valid
        together with quantization (SmoothQuant's ``s * W``) goes to ``recipe.weights`` alone."""
        self.recipe.weights[name] = np.asarray(value)
        self.graph.initializers[name] = self.recipe.weights[name]

    def collect(self, tensors: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Run the float model over the calibration data, yielding the requested tensors per batch.

        :raises ValueError: when no calibration data was given.
        """
        if self.calibration is None:
            raise ValueError(
                f"target {self.plan.target!r} needs calibration data for {len(tensors)} static "
                "activation tensor(s): pass calibration_data (or --calib), or quantize "
                "activations dynamically (overrides={'dynamic': True}) where the target allows it"
            )
        done = 0
        for outs in self.frontend.collect(self.model, self.graph, tensors, self.calibration):
            done += 1
            self.progress("calibration batches", done, None)
            yield outs


@dataclass
class QuantizationResult:
    """What :func:`quantize` returns."""

    recipe: Recipe
    artifact: Artifact | None
    summary: Summary
    graph: QuantGraph
    plan: QuantPlan
    model: object = field(repr=False, default=None)
    frontend: Frontend | None = field(repr=False, default=None)

    def simulate(self) -> Callable[[Batch], dict[str, np.ndarray]]:
        """A callable running the model with the recipe applied as fake quantization."""
        assert self.frontend is not None
        return self.frontend.simulate(self.model, self.graph, self.recipe)


def _normalise_algorithms(algorithms: Any) -> list[tuple[str, dict[str, Any]]]:
    if algorithms is None:
        return []
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if isinstance(algorithms, Mapping):
        algorithms = list(algorithms.items())
    out = []
    for item in algorithms:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], dict(item[1] or {})))
        else:
            raise TypeError(
                f"algorithm {item!r}: give a name or a (name, options) pair, e.g. ('percentile', "
                "{'percentile': 99.9})"
            )
    return out


def _choose_algorithms(
    registry: Any, requested: list[tuple[str, dict[str, Any]]], frontend_name: str
) -> dict[Stage, list[tuple[AlgorithmInfo, dict[str, Any]]]]:
    chosen: dict[Stage, list[tuple[AlgorithmInfo, dict[str, Any]]]] = {s: [] for s in STAGE_ORDER}
    for name, options in requested:
        info = registry.algorithm(name)
        ok, why = info.availability()
        if not ok:
            raise ValueError(f"algorithm {name!r} is not available here: {why}")
        if not info.supports(frontend_name):
            raise ValueError(
                f"algorithm {name!r} does not support the {frontend_name!r} frontend; it supports "
                f"{', '.join(info.frontends)}"
            )
        chosen[info.stage].append((info, options))
    if len(chosen[Stage.CALIBRATE]) > 1:
        names = [i.name for i, _ in chosen[Stage.CALIBRATE]]
        raise ValueError(f"choose one calibrate algorithm, not {names}")
    for stage, default in DEFAULT_ALGORITHMS.items():
        if not chosen[stage]:
            chosen[stage].append((registry.algorithm(default), {}))
    return chosen


def _versions() -> dict[str, str]:
    import ml_dtypes
    import pluggy

    return {
        "quantfw": __version__,
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "pluggy": pluggy.__version__,
        "python": platform.python_version(),
    }


def quantize(
    model: object,
    calibration_data: Any = None,
    *,
    target: str = "generic",
    algorithms: Any = None,
    overrides: Overrides | Mapping[str, Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    frontend: str | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    registry: Any = None,
    progress: bool = False,
    options: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
) -> QuantizationResult:
    """Quantize ``model`` for ``target``.

    :param model: anything an installed frontend accepts (a QuantGraph, an ``.onnx`` path, a
        ``torch.nn.Module`` …).
    :param calibration_data: see :mod:`quantfw.calibration`; needed for static activations.
    :param target: a registered target name (``quantfw targets`` lists them).
    :param algorithms: names, ``(name, options)`` pairs, or ``{name: options}``; stages left
        empty use :data:`DEFAULT_ALGORITHMS`.
    :param overrides: :class:`~quantfw.planner.Overrides` or its dict form (ignore lists,
        per-layer bits, dynamic activations).
    :param output: where the backend writes the artifact; without it no artifact is written.
    :param frontend: force a frontend by name instead of asking each whether it accepts ``model``.
    :param backend: force a backend by name.
    :param backend_options: passed to the backend's factory (e.g. ``{"fmt": "qoperator"}`` for
        the ONNX Runtime backend).
    :param batch_size: samples per batch when calibration data is given as whole arrays.
    :param registry: a plugin registry (default: the process-wide one).
    :param progress: show progress bars on stderr.
    :param options: free-form options the algorithms read (``StageContext.options``).
    :param example_inputs: for frontends that trace (torch): the inputs to capture the model
        with — a tensor, a tuple of positional inputs or a dict of keyword inputs.  Without
        them such a frontend traces with the first calibration batch.
    :returns: the recipe, the artifact (or ``None``) and a summary.
    """
    from .plugins import get_registry
    from .progress import Reporter

    registry = registry if registry is not None else get_registry()
    reporter = Reporter(registry, enabled=progress)
    t_start = time.perf_counter()

    target_spec = registry.target(target)
    fe_info = registry.frontend(frontend) if frontend is not None else registry.frontend_for(model)
    fe = registry.frontend_object(fe_info.name)
    if isinstance(model, (str, Path)):
        model_obj = fe.load(Path(model))
    else:
        model_obj = model
    bind = getattr(fe, "bind", None)
    if bind is not None:
        model_obj = bind(
            model_obj, example_inputs=example_inputs, calibration_data=calibration_data
        )
    elif example_inputs is not None:
        raise ValueError(f"the {fe_info.name!r} frontend does not take example_inputs")
    graph = fe.capture(model_obj)
    adapt = getattr(fe, "calibration_source", None)
    if adapt is not None and calibration_data is not None:
        calibration_data = adapt(model_obj, graph, calibration_data)

    ov = (
        overrides
        if isinstance(overrides, Overrides) or overrides is None
        else Overrides.from_dict(dict(overrides))
    )
    qplan = plan(graph, target_spec, ov)
    chosen = _choose_algorithms(registry, _normalise_algorithms(algorithms), fe_info.name)

    calib = (
        None if calibration_data is None else CalibrationData(calibration_data, graph, batch_size)
    )
    recipe = Recipe(target=target_spec.name, decisions=[d.to_dict() for d in qplan.decisions])
    ctx = StageContext(
        model=model_obj,
        frontend=fe,
        frontend_name=fe_info.name,
        graph=graph,
        plan=qplan,
        target=target_spec,
        recipe=recipe,
        calibration=calib,
        progress=reporter.progress,
        options=dict(options or {}),
    )

    timings: dict[str, float] = {}
    for stage in STAGE_ORDER:
        for info, opts in chosen[stage]:
            algo = info.factory(**opts)
            with reporter.stage(stage.value, info.name, ctx) as timer:
                algo.run(ctx)
            timings[f"{stage.value}:{info.name}"] = timer.elapsed
    reporter.close()

    missing = [
        tp.name
        for tp in qplan.tensors.values()
        if tp.role != "bias" and not tp.spec.dynamic and tp.name not in recipe.tensors
    ]
    if missing:
        raise RuntimeError(f"the pipeline left tensors without parameters: {missing[:10]}")

    recipe.provenance.update(
        {
            "target": target_spec.name,
            "frontend": fe_info.name,
            "model": graph.name,
            "algorithms": {
                s.value: [i.name for i, _ in chosen[s]] for s in STAGE_ORDER if chosen[s]
            },
            "algorithm_options": {i.name: o for s in STAGE_ORDER for i, o in chosen[s] if o},
            "calibration_samples": None if calib is None else calib.num_samples,
            "overrides": ov.to_dict() if ov is not None else None,
            "versions": _versions(),
        }
    )

    artifact, backend_note, lower_s = lower(
        registry, target_spec, model_obj, graph, recipe, output,
        backend=backend, backend_options=backend_options, reporter=reporter, ctx=ctx,
        inputs=[model] if isinstance(model, (str, Path)) else [],
    )  # fmt: skip
    timings.update(lower_s)

    summary = Summary.build(
        graph=graph,
        plan=qplan,
        recipe=recipe,
        target=target_spec,
        frontend=fe_info.name,
        timings=timings,
        backend_note=backend_note,
        artifact=artifact,
        total_seconds=time.perf_counter() - t_start,
    )
    return QuantizationResult(recipe, artifact, summary, graph, qplan, model_obj, fe)


def lower(
    registry: Any,
    target_spec: Any,
    model_obj: object,
    graph: QuantGraph,
    recipe: Recipe,
    output: str | os.PathLike[str] | None,
    *,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    reporter: Any = None,
    ctx: Any = None,
    inputs: Sequence[Any] = (),
) -> tuple[Artifact | None, str, dict[str, float]]:
    """Pick the target's backend and, when ``output`` is given, write the artifact.

    :returns: ``(artifact or None, a note for the summary, {"lower:<backend>": seconds})``.
    :raises ValueError: an unknown backend or options it rejects.
    :raises RuntimeError: ``output`` given but no backend usable here.
    """
    artifact, backend_note, timings = None, "", {}
    backends = registry.backends_for(target_spec.name)
    if backend is not None:
        backends = [b for b in backends if b.name == backend]
        if not backends:
            raise ValueError(f"backend {backend!r} does not lower to target {target_spec.name!r}")
    usable = [b for b in backends if b.availability()[0]]
    if not backends:
        backend_note = f"target {target_spec.name!r} has no backend: simulation only"
    elif not usable:
        reasons = "; ".join(f"{b.name}: {b.availability()[1]}" for b in backends)
        backend_note = f"no usable backend for {target_spec.name!r} ({reasons})"
    if output is not None:
        if not usable:
            raise RuntimeError(f"cannot write {output}: {backend_note}")
        from .fileio import check_not_input

        if inputs:
            check_not_input(output, list(inputs))
        be = usable[0]
        try:
            lowering = be.factory(**dict(backend_options or {}))
        except TypeError as exc:
            raise ValueError(f"backend {be.name!r} rejected backend_options: {exc}") from None
        t0 = time.perf_counter()
        with reporter.stage("lower", be.name, ctx) if reporter is not None else nullcontext():
            artifact = lowering.lower(model_obj, graph, recipe, Path(output))
        timings[f"lower:{be.name}"] = time.perf_counter() - t0
        backend_note = f"{be.name} wrote {artifact.path}"
    elif usable:
        backend_note = f"backend {usable[0].name} available; pass output= to write the artifact"
    return artifact, backend_note, timings
