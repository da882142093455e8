"""What plugins register: frontends, algorithms, backends (targets are :class:`TargetSpec`).

Each registration is a small frozen dataclass carrying a validated ``name``, a ``factory`` that
builds the working object on demand (so listing plugins imports no framework), and ``requires``:
the importable modules it needs.  The working objects follow the :class:`Frontend`,
:class:`Algorithm` and :class:`Backend` protocols below; those docstrings are the contract a
third-party plugin implements.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .graph import QuantGraph

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import StageContext
    from .recipe import Recipe

__all__ = [
    "Stage",
    "STAGE_ORDER",
    "Batch",
    "Frontend",
    "Algorithm",
    "Backend",
    "Artifact",
    "FrontendInfo",
    "AlgorithmInfo",
    "BackendInfo",
    "ComponentError",
    "missing_modules",
]

#: One calibration / inference batch: model input name → array (first axis = samples).
Batch = Mapping[str, np.ndarray]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class ComponentError(ValueError):
    """A registration that is malformed (bad name, wrong stage, …)."""


class Stage(str, Enum):
    """Pipeline stages, run in this order."""

    TRANSFORM = "transform"
    CALIBRATE = "calibrate"
    ROUND = "round"
    FINALIZE = "finalize"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


STAGE_ORDER: tuple[Stage, ...] = (Stage.TRANSFORM, Stage.CALIBRATE, Stage.ROUND, Stage.FINALIZE)


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ComponentError(
            f"{kind} name {name!r} is invalid: use lower-case letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules among ``modules`` that cannot be imported here (checked without importing)."""
    missing = []
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(mod)
    return missing


class _Requires:
    requires: tuple[str, ...]
    install_hint: str

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` when usable here, else ``(False, reason)``."""
        missing = missing_modules(self.requires)
        if not missing:
            return True, ""
        hint = f" ({self.install_hint})" if self.install_hint else ""
        return False, f"needs {', '.join(missing)} installed{hint}"


# ------------------------------------------------------------------------------------------------
# Protocols: the working objects
# ------------------------------------------------------------------------------------------------


@runtime_checkable
class Frontend(Protocol):
    """Turns framework models into QuantGraphs, runs them, and simulates recipes.

    Implementations must not keep per-batch copies of the model; ``collect`` must hold at most
    one batch of activations at a time.
    """

    def accepts(self, model: object) -> bool:
        """True if ``model`` (an object, or a :class:`pathlib.Path`) is one this frontend reads."""

    def load(self, path: Path) -> object:
        """Read a model file (used by the CLI).  Never unpickles untrusted data.

        :raises ValueError: naming the file and what is wrong with it.
        """

    def capture(self, model: object) -> QuantGraph:
        """Capture the model's QuantGraph (weights as numpy arrays, op kinds, attributes)."""

    def collect(
        self, model: object, graph: QuantGraph, tensors: Sequence[str], batches: Iterable[Batch]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run the float model on each batch and yield ``{tensor name: value}`` for ``tensors``.

        One dict per batch, in batch order; tensors the model does not compute raise KeyError.
        """

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        """A callable computing the model's outputs with the recipe applied as fake quantization
        (weights rewritten by the recipe included), keyed by graph output name."""

    # Optional methods, used when a frontend defines them (``quantize`` looks them up):
    #
    # ``bind(model, *, example_inputs, calibration_data) -> object``: pair a model object with
    #     what capturing it needs (tracing frontends: example inputs, given or taken from the
    #     first calibration batch); the result is what capture/collect/simulate then receive.
    # ``calibration_source(model, graph, data) -> object``: convert framework-native
    #     calibration data (e.g. a torch DataLoader) into a source :class:`CalibrationData`
    #     accepts (batches of arrays keyed by ``graph.inputs``).


@runtime_checkable
class Algorithm(Protocol):
    """One step of the pipeline, bound to a :class:`Stage`.

    ``run`` reads and updates the :class:`~quantfw.pipeline.StageContext`: transform algorithms
    rewrite ``ctx.graph`` weights (recording them in ``ctx.recipe.weights``), calibrate algorithms
    fill ``ctx.recipe`` tensor params from activations, round algorithms choose the integer
    weights, finalize algorithms adjust biases and similar.
    """

    def run(self, ctx: StageContext) -> None:
        """Do the work; raise ``ValueError`` with a clear message on bad input."""


@dataclass
class Artifact:
    """What a backend produced: a file on disk plus what it is for."""

    path: Path
    target: str
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Lowers a model plus Recipe to a target's artifact and runs it."""

    def lower(self, model: object, graph: QuantGraph, recipe: Recipe, output: Path) -> Artifact:
        """Write the artifact atomically to ``output`` (never over the model's own file)."""

    def run(self, artifact: Artifact, inputs: Batch) -> dict[str, np.ndarray]:
        """Execute the artifact on ``inputs``; raise RuntimeError naming the missing runtime or
        hardware when it cannot run here."""


# ------------------------------------------------------------------------------------------------
# Registrations
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontendInfo(_Requires):
    """A frontend registration.

    :param name: unique frontend name (``"onnx"``, ``"torch"``).
    :param factory: zero-argument callable returning a :class:`Frontend`.
    :param suffixes: model file suffixes it loads (``(".onnx",)``), for the CLI.
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    factory: Callable[[], Frontend]
    suffixes: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("frontend", self.name)
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))
        object.__setattr__(self, "requires", tuple(self.requires))


@dataclass(frozen=True)
class AlgorithmInfo(_Requires):
    """An algorithm registration.

    :param name: unique algorithm name (``"minmax"``, ``"adaround"``).
    :param stage: the pipeline stage it runs in.
    :param factory: ``factory(**options)`` returns an :class:`Algorithm`.
    :param frontends: frontend names it supports; ``("*",)`` for all.
    :param requires: importable modules it needs (``("torch",)`` for autograd-based methods).
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    stage: Stage
    factory: Callable[..., Algorithm]
    frontends: tuple[str, ...] = ("*",)
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("algorithm", self.name)
        try:
            object.__setattr__(self, "stage", Stage(self.stage))
        except ValueError:
            allowed = ", ".join(s.value for s in Stage)
            raise ComponentError(
                f"algorithm {self.name!r}: stage {self.stage!r} is not one of {allowed}"
            ) from None
        object.__setattr__(self, "frontends", tuple(self.frontends))
        object.__setattr__(self, "requires", tuple(self.requires))

    def supports(self, frontend: str) -> bool:
        return "*" in self.frontends or frontend in self.frontends


@dataclass(frozen=True)
class BackendInfo(_Requires):
    """A backend registration.

    :param name: unique backend name (``"onnxruntime"``, ``"tensorrt"``).
    :param targets: target names it lowers to.
    :param factory: ``factory(**options)`` returns a :class:`Backend`; the options come from
        ``quantize(..., backend_options=...)`` (e.g. an artifact format) and unknown ones must
        raise ``TypeError``.
    :param artifact_format: file format it writes (``"onnx"``, ``"tflite"``), for listings.
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    targets: tuple[str, ...]
    factory: Callable[..., Backend]
    artifact_format: str = ""
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("backend", self.name)
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "requires", tuple(self.requires))
