"""The hooks a quantfw plugin may implement: this module is the contract.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose names are the hook
names below.  It is found through the entry-point group ``quantfw``::

    [project.entry-points.quantfw]
    myplugin = "myplugin.hooks"

Registration hooks receive a ``register`` callback and call it once per component; the
components are the frozen dataclasses of :mod:`quantfw.api.components` (and
:class:`quantfw.target.TargetSpec` for targets), which validate their own names.  The objects
their factories build follow :mod:`quantfw.api.protocols` and :mod:`quantfw.api.engines`.  Registration
hooks must not import heavy frameworks: each registration carries a ``factory`` that is called
only when the component is used.

Event hooks are for observers (progress bars, logging, reports).  They return nothing; an observer
that raises is reported as a warning and does not stop the quantization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from .components import Stage

if TYPE_CHECKING:  # pragma: no cover
    import os

    from ..target import TargetSpec
    from .components import AlgorithmInfo, BackendInfo, ConverterInfo, EngineInfo, FrontendInfo

__all__ = [
    "PROJECT_NAME",
    "hookspec",
    "hookimpl",
    "StageEvent",
    "StagePhase",
    "quantfw_register_frontends",
    "quantfw_register_algorithms",
    "quantfw_register_targets",
    "quantfw_register_backends",
    "quantfw_register_converters",
    "quantfw_register_engines",
    "quantfw_on_stage",
    "quantfw_on_progress",
]

#: pluggy project name, also the entry-point group plugins are published under.
PROJECT_NAME = "quantfw"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

StagePhase = Literal["started", "finished"]


@dataclass(frozen=True)
class StageEvent:
    """One pipeline stage starting or finishing, as seen by ``quantfw_on_stage`` observers.

    :param stage: the pipeline stage (a :class:`~quantfw.api.components.Stage`).
    :param phase: ``"started"`` or ``"finished"``.  A stage that raises gets no ``"finished"``.
    :param algorithm: name of the algorithm running in this stage.
    :param elapsed: seconds the stage took, set on ``"finished"`` only (``None`` otherwise).
    :param context: the running :class:`~quantfw.api.context.StageContext`; observers may read
        it but must not change it.
    """

    stage: Stage
    phase: StagePhase
    algorithm: str
    elapsed: float | None = None
    context: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "stage", Stage(self.stage))
        except ValueError:
            allowed = ", ".join(s.value for s in Stage)
            raise ValueError(f"stage {self.stage!r} is not one of {allowed}") from None
        if self.phase not in ("started", "finished"):
            raise ValueError(f"phase must be 'started' or 'finished', not {self.phase!r}")
        if self.phase == "started" and self.elapsed is not None:
            raise ValueError("elapsed is only set when phase is 'finished'")


# ------------------------------------------------------------------------------------------------
# Registration hooks
# ------------------------------------------------------------------------------------------------


@hookspec
def quantfw_register_frontends(register: Callable[[FrontendInfo], None]) -> None:
    """Register model frontends (model capture, calibration runs, simulation).

    :param register: call ``register(FrontendInfo(...))`` once per frontend.  Frontend names are
        unique across all installed plugins.
    :return: nothing; returning a value is an error.
    """


@hookspec
def quantfw_register_algorithms(register: Callable[[AlgorithmInfo], None]) -> None:
    """Register quantization algorithms, each bound to one pipeline stage.

    :param register: call ``register(AlgorithmInfo(...))`` once per algorithm.  Algorithm names
        are unique across all installed plugins.
    :return: nothing; returning a value is an error.
    """


@hookspec
def quantfw_register_targets(
    register: Callable[[TargetSpec | str | os.PathLike[str]], None],
) -> None:
    """Register deployment targets (declarative hardware descriptions).

    :param register: call ``register(spec)`` with a :class:`~quantfw.target.TargetSpec`, or
        ``register(path)`` with the absolute path of a target TOML file (for instance
        ``Path(__file__).with_name("mytarget.toml")``), which is loaded with
        :func:`~quantfw.target.load_target`.  Target names are unique across all plugins.
    :return: nothing; returning a value is an error.
    """


@hookspec
def quantfw_register_backends(register: Callable[[BackendInfo], None]) -> None:
    """Register backends that lower a model plus recipe to a target's artifact and run it.

    :param register: call ``register(BackendInfo(...))`` once per backend.  Backend names are
        unique across all installed plugins.  Targets choose their backends (a target's
        ``backends`` list, or its ``artifact`` format).
    :return: nothing; returning a value is an error.
    """


@hookspec
def quantfw_register_converters(register: Callable[[ConverterInfo], None]) -> None:
    """Register model conversions from one format to another (``torch`` → ``onnx``, …).

    :param register: call ``register(ConverterInfo(...))`` once per conversion.  Converter names
        are unique across all installed plugins; the registry chains conversions to reach a
        format no single converter writes.
    :return: nothing; returning a value is an error.
    """


@hookspec
def quantfw_register_engines(register: Callable[[EngineInfo], None]) -> None:
    """Register compute engines for layer-wise algorithms (arrays, autograd, devices).

    :param register: call ``register(EngineInfo(...))`` once per engine.  Engine names are unique
        across all installed plugins; the core registers ``numpy``.
    :return: nothing; returning a value is an error.
    """


# ------------------------------------------------------------------------------------------------
# Event hooks (observers)
# ------------------------------------------------------------------------------------------------


@hookspec
def quantfw_on_stage(event: StageEvent) -> None:
    """Called when a pipeline stage starts and when it finishes.

    :param event: what happened; see :class:`StageEvent`.
    :return: nothing.  An exception raised here is logged as a warning and otherwise ignored.
    """


@hookspec
def quantfw_on_progress(task: str, done: int, total: int | None) -> None:
    """Called as a long task advances (calibration batches, layers reconstructed, …).

    :param task: short human-readable name of the task, stable while it runs
        (``"calibrate: minmax"``).
    :param done: units finished so far, from 0 up to ``total``.
    :param total: units in all, or ``None`` when unknown.
    :return: nothing.  An exception raised here is logged as a warning and otherwise ignored.
    """
