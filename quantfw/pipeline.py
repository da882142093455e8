"""One quantization, end to end: frontend → plan → stages → backend (DESIGN.md's flow)."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .api.components import STAGE_ORDER, AlgorithmInfo, BackendInfo, Stage
from .api.context import Algorithm, StageContext
from .api.data import Artifact
from .api.formats import install_hint_for
from .api.protocols import AdaptsCalibration, Backend, BindsInputs, EstimatesActivations
from .api.result import QuantizationResult
from .calibration import CalibrationData
from .errors import UnavailableError
from .graph import QuantGraph
from .planner import Overrides, plan
from .plugins.errors import options_error
from .recipe import Recipe
from .summary import Summary
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .plugins.registry import Registry
    from .progress import Reporter
    from .target import TargetSpec

log = logging.getLogger(__name__)

__all__ = [
    "quantize",
    "QuantizationResult",
    "AlgorithmChoice",
    "AlgorithmChoices",
    "DEFAULT_ALGORITHMS",
    "Lowering",
    "choose_lowering",
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

#: One algorithm: its name, or ``(name, options)``.
AlgorithmChoice = str | tuple[str, Mapping[str, Any]]
#: What ``quantize(algorithms=...)`` takes: one choice, a list of them, or ``{name: options}``.
AlgorithmChoices = AlgorithmChoice | Iterable[AlgorithmChoice] | Mapping[str, Mapping[str, Any]]


def _normalise_algorithms(algorithms: AlgorithmChoices | None) -> list[tuple[str, dict[str, Any]]]:
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
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and (item[1] is None or isinstance(item[1], Mapping))
        ):  # a list pair is what JSON and YAML give for a tuple
            out.append((item[0], dict(item[1] or {})))
        else:
            raise TypeError(
                f"algorithm {item!r}: give a name or a (name, options) pair, e.g. ('percentile', "
                "{'percentile': 99.9})"
            )
    return out


def _choose_algorithms(
    registry: Registry, requested: list[tuple[str, dict[str, Any]]], frontend_name: str
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


def _build(info: AlgorithmInfo, options: dict[str, Any]) -> Algorithm:
    try:
        return info.factory(**options)
    except TypeError as exc:
        raise options_error("algorithm", info.name, info.factory, options, exc) from None


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
    algorithms: AlgorithmChoices | None = None,
    overrides: Overrides | Mapping[str, Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    frontend: str | None = None,
    frontend_options: Mapping[str, Any] | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    registry: Registry | None = None,
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
    :param frontend_options: passed to the frontend's factory (e.g. ``{"threads": 2}`` for the
        ONNX frontend's ONNX Runtime sessions); a new frontend object serves this call only.
    :param backend: force a backend by name (one of the target's backends).
    :param backend_options: passed to the backend's factory (e.g. ``{"fmt": "qoperator"}`` for
        the ONNX Runtime backend).
    :param batch_size: samples per batch when calibration data is given as whole arrays;
        batches whose activations exceed ``QUANTFW_CALIB_MEMORY`` (default 2 GiB) run in chunks
        (see :mod:`quantfw.calibration`).
    :param registry: a plugin registry (default: the process-wide one).
    :param progress: show progress bars on stderr.
    :param options: free-form options the algorithms read (``StageContext.options``; ``engine``
        and ``device`` choose the compute engine of layer-wise algorithms).
    :param example_inputs: for frontends that trace (torch): the inputs to capture the model
        with — a tensor, a tuple of positional inputs or a dict of keyword inputs.  Without
        them such a frontend traces with the first calibration batch.
    :returns: the recipe, the artifact (or ``None``) and a summary.
    """
    from .plugins import get_registry, using_registry
    from .progress import Reporter

    registry = registry if registry is not None else get_registry()
    # plugins that need other components ask this registry; the progress bars are cleared
    # however the run ends, so an error message is not glued to a half-drawn bar
    with using_registry(registry), Reporter(registry, enabled=progress) as reporter:
        t_start = time.perf_counter()

        target_spec = registry.target(target)
        fe_info = (
            registry.frontend(frontend) if frontend is not None else registry.frontend_for(model)
        )
        fe = registry.make_frontend(fe_info.name, dict(frontend_options or {}))
        if isinstance(model, (str, Path)):
            model_obj = fe.load(Path(model))
        else:
            model_obj = model
        if isinstance(fe, BindsInputs):
            model_obj = fe.bind(
                model_obj, example_inputs=example_inputs, calibration_data=calibration_data
            )
        elif example_inputs is not None:
            raise ValueError(f"the {fe_info.name!r} frontend does not take example_inputs")
        graph = fe.capture(model_obj)
        if isinstance(fe, AdaptsCalibration) and calibration_data is not None:
            calibration_data = fe.calibration_source(model_obj, graph, calibration_data)

        ov = (
            overrides
            if isinstance(overrides, Overrides) or overrides is None
            else Overrides.from_dict(dict(overrides))
        )
        qplan = plan(graph, target_spec, ov)
        chosen = _choose_algorithms(registry, _normalise_algorithms(algorithms), fe_info.name)
        # every option is checked before any work: the algorithms, then the backend
        steps = [(s, info, _build(info, opts)) for s in STAGE_ORDER for info, opts in chosen[s]]
        lowering = choose_lowering(
            registry, target_spec, output, backend=backend, backend_options=backend_options,
            inputs=[model] if isinstance(model, (str, Path)) else [],
        )  # fmt: skip

        calib = None
        if calibration_data is not None:
            sample_bytes = (
                fe.activation_bytes(model_obj, graph)
                if isinstance(fe, EstimatesActivations)
                else None
            )
            calib = CalibrationData(calibration_data, graph, batch_size, sample_bytes=sample_bytes)
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
            engines=lambda name, device, autograd: registry.engine(name, device, autograd=autograd),
        )

        for _, _, algo in steps:  # e.g. a calibrator asking an earlier pass for its ranges
            prepare = getattr(algo, "prepare", None)
            if callable(prepare):
                prepare(ctx)
        timings: dict[str, float] = {}
        for stage, info, algo in steps:
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
        recipe.check()

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

        artifact, backend_note, lower_s = lowering.run(graph, recipe, reporter=reporter, ctx=ctx)
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


def _backend_note(registry: Registry, spec: TargetSpec, backends: list, usable: list) -> str:
    if usable:
        return ""
    missing = registry.missing_backends(spec)
    if not backends and not missing:
        return f"target {spec.name!r} has no backend: simulation only"
    reasons = [f"{b.name}: {b.availability()[1]}" for b in backends]
    hint = install_hint_for(spec.artifact)
    reasons += [
        f"{name}: no installed plugin provides it{f' ({hint})' if hint else ''}" for name in missing
    ]
    return f"no usable backend for {spec.name!r} ({'; '.join(reasons)})"


@dataclass
class Lowering:
    """The backend chosen for a target (and built with its options), or why there is none.

    :ivar note: for the summary: what the backend did or can do, or why there is no artifact.
    """

    target: TargetSpec
    output: Path | None
    info: BackendInfo | None
    backend: Backend | None
    note: str
    registry: Registry

    def run(
        self,
        graph: QuantGraph,
        recipe: Recipe,
        *,
        reporter: Reporter | None = None,
        ctx: StageContext | None = None,
    ) -> tuple[Artifact | None, str, dict[str, float]]:
        """Write the artifact when there is an output: ``(artifact or None, note, timings)``.

        :raises UnavailableError: the model cannot be had in a format the backend lowers.
        """
        if self.output is None or self.info is None or self.backend is None:
            return None, self.note, {}
        _, source = self.registry.model_in(self.info.accepts, graph)
        t0 = time.perf_counter()
        name = self.info.name
        with reporter.stage("lower", name, ctx) if reporter is not None else nullcontext():
            artifact = self.backend.lower(source, graph, recipe, self.output, target=self.target)
        warnings = host_warnings(self.target, artifact, name)
        artifact.metadata["host_warnings"] = warnings
        for w in warnings:
            log.warning("%s", w)
        return (
            artifact,
            f"{name} wrote {artifact.path}",
            {f"lower:{name}": time.perf_counter() - t0},
        )


def host_warnings(
    target: TargetSpec,
    artifact: Artifact,
    backend: str,
    cpu_flags: Iterable[str] | None = None,
    gpu: bool | None = None,
) -> list[str]:
    """What running ``artifact`` here, with ``backend`` (usable here: it wrote it), would get
    wrong because this machine is not a ``target`` machine.

    The backend's own account wins where it gave one (``artifact.metadata["host_warnings"]``,
    e.g. the ONNX Runtime backend's: only an x86-vnni artifact whose weights would saturate
    without VNNI); otherwise one warning when the machine lacks what the target's
    ``[requires]`` names.  ``cpu_flags`` and ``gpu`` stand for this machine's (see
    :meth:`TargetSpec.availability <quantfw.target.TargetSpec.availability>`).
    """
    given = artifact.metadata.get("host_warnings")
    if given is not None:
        return [str(w) for w in given]
    ok, why = target.availability(cpu_flags=cpu_flags, gpu=gpu)
    if ok:
        return []
    return [
        f"{artifact.path} is for another machine: {why}, which this one lacks; {backend} runs "
        "here but not as on the target (wrong numbers, other kernels or a failure), so test "
        "and deploy it on a machine of that target"
    ]


def choose_lowering(
    registry: Registry,
    target_spec: TargetSpec,
    output: str | os.PathLike[str] | None,
    *,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Lowering:
    """The target's backend: the first usable one of :meth:`Registry.backends_for
    <quantfw.plugins.Registry.backends_for>` (or ``backend``), built with ``backend_options``
    when ``output`` is given.  Called before any work, so a bad option fails at once.

    :raises ValueError: an unknown backend, options it rejects, ``output`` naming an input file.
    :raises OSError: :class:`~quantfw.outputs.OutputPathError` when ``output`` cannot be written.
    :raises UnavailableError: ``output`` given but no backend usable here.
    """
    backends = registry.backends_for(target_spec)
    if backend is not None:
        chosen = [b for b in backends if b.name == backend]
        if not chosen:
            names = ", ".join(b.name for b in backends) or "none installed"
            raise ValueError(
                f"backend {backend!r} does not lower target {target_spec.name!r}; its backends: "
                f"{names}"
            )
        backends = chosen
    usable = [b for b in backends if b.availability()[0]]
    note = _backend_note(registry, target_spec, backends, usable)
    if output is None:
        if usable:
            note = (
                f"backend {usable[0].name} available; give an output (output=, or -o on the "
                "command line) to write the artifact"
            )
        return Lowering(target_spec, None, usable[0] if usable else None, None, note, registry)
    if not usable:
        raise UnavailableError(f"cannot write {output}: {note}")
    from .fileio import check_not_input
    from .outputs import check_output_path

    if inputs:
        check_not_input(output, list(inputs))
    check_output_path(output)
    info = usable[0]
    try:
        built = info.factory(**dict(backend_options or {}))
    except TypeError as exc:
        raise options_error(
            "backend", info.name, info.factory, dict(backend_options or {}), exc
        ) from None
    return Lowering(target_spec, Path(output), info, built, note, registry)


def lower(
    registry: Registry,
    target_spec: TargetSpec,
    graph: QuantGraph,
    recipe: Recipe,
    output: str | os.PathLike[str] | None,
    *,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> tuple[Artifact | None, str, dict[str, float]]:
    """:func:`choose_lowering` then :meth:`Lowering.run`, for a recipe made elsewhere
    (:func:`quantfw.qat.convert`).

    :returns: ``(artifact or None, a note for the summary, {"lower:<backend>": seconds})``.
    """
    lowering = choose_lowering(
        registry, target_spec, output, backend=backend, backend_options=backend_options
    )
    return lowering.run(graph, recipe)
