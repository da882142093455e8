"""What plugins register: frontends, algorithms, backends, converters and compute engines.

Each registration is a small frozen dataclass carrying a validated ``name``, a ``factory`` that
builds the working object on demand (so listing plugins imports no framework), and ``requires``:
the importable modules it needs, with an ``install_hint`` saying how to get them.  Targets are
registered as :class:`~quantfw.target.TargetSpec` data.  The working objects the factories return
follow the protocols of :mod:`quantfw.api.protocols`.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .context import Algorithm
    from .engines import Engine
    from .protocols import Backend, Converter, Frontend

__all__ = [
    "Stage",
    "STAGE_ORDER",
    "FrontendInfo",
    "AlgorithmInfo",
    "BackendInfo",
    "ConverterInfo",
    "EngineInfo",
    "ComponentError",
    "missing_modules",
]

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


def _names(kind: str, owner: str, field_name: str, values: Iterable[str]) -> tuple[str, ...]:
    out = tuple(values)
    for v in out:
        if not isinstance(v, str) or not _NAME_RE.match(v):
            raise ComponentError(
                f"{kind} {owner!r}: {field_name} entry {v!r} is not a lower-case name"
            )
    return out


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


@dataclass(frozen=True)
class FrontendInfo(_Requires):
    """A frontend registration.

    :param name: unique frontend name (``"onnx"``, ``"torch"``).
    :param factory: ``factory(**options)`` returns a :class:`~quantfw.api.protocols.Frontend`;
        the options come from ``quantize(..., frontend_options=...)`` (CLI ``-F key=value``) and
        unknown ones must raise ``TypeError``.  Called with no options to ask whether a model is
        accepted, so it must be cheap and hold no user data.
    :param format: the model format its models are in (``"onnx"``, ``"torch"``), the name
        converters use; defaults to the frontend's name.
    :param suffixes: model file suffixes it loads (``(".onnx",)``), for the CLI.
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    factory: Callable[..., Frontend]
    suffixes: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        _check_name("frontend", self.name)
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))
        object.__setattr__(self, "requires", tuple(self.requires))
        object.__setattr__(self, "format", self.format or self.name)
        _names("frontend", self.name, "format", (self.format,))


@dataclass(frozen=True)
class AlgorithmInfo(_Requires):
    """An algorithm registration.

    :param name: unique algorithm name (``"minmax"``, ``"adaround"``).
    :param stage: the pipeline stage it runs in.
    :param factory: ``factory(**options)`` returns an :class:`~quantfw.api.protocols.Algorithm`;
        unknown options must raise ``TypeError`` (or ``ValueError`` for bad values).
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

    Which targets a backend serves is the targets' choice: a target spec names its backends
    (``backends = [...]``) or, naming none, is served by every backend whose ``artifact_format``
    is the target's ``artifact``.

    :param name: unique backend name (``"onnxruntime"``, ``"tensorrt"``).
    :param factory: ``factory(**options)`` returns a :class:`~quantfw.api.protocols.Backend`;
        the options come from ``quantize(..., backend_options=...)`` (e.g. an artifact format)
        and unknown ones must raise ``TypeError``.
    :param artifact_format: the file format it writes (``"onnx"``, ``"tflite"``, ``"engine"``).
    :param accepts: the model formats it lowers (``("onnx",)``): the pipeline hands ``lower`` the
        captured model in the first of these it can get (see
        :meth:`quantfw.plugins.Registry.model_in`).  Defaults to ``(artifact_format,)``.
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    factory: Callable[..., Backend]
    artifact_format: str
    accepts: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("backend", self.name)
        _names("backend", self.name, "artifact_format", (self.artifact_format,))
        accepts = _names("backend", self.name, "accepts", self.accepts or (self.artifact_format,))
        object.__setattr__(self, "accepts", accepts)
        object.__setattr__(self, "requires", tuple(self.requires))


@dataclass(frozen=True)
class ConverterInfo(_Requires):
    """A conversion of models from one format to another (``torch`` → ``onnx``, ``keras`` →
    ``onnx``, ``onnx`` → ``tflite``, ``tflite`` → ``edgetpu``).

    :param name: unique converter name (``"torch-to-onnx"``).
    :param source: the format it reads (a frontend ``format`` or another converter's target).
    :param target: the format it writes.
    :param factory: ``factory()`` returns a :class:`~quantfw.api.protocols.Converter`.
    :param keeps_names: every tensor name of the source survives in the result, so a graph
        captured from the source describes the result too; only such conversions are used to hand
        a backend the model a graph was captured from.
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    source: str
    target: str
    factory: Callable[..., Converter]
    keeps_names: bool = False
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("converter", self.name)
        _names("converter", self.name, "source/target", (self.source, self.target))
        if self.source == self.target:
            raise ComponentError(
                f"converter {self.name!r}: source and target are both {self.source!r}"
            )
        object.__setattr__(self, "requires", tuple(self.requires))


@dataclass(frozen=True)
class EngineInfo(_Requires):
    """A compute engine for layer-wise algorithms (numpy, torch on CPU or GPU, …).

    :param name: unique engine name (``"numpy"``, ``"torch"``).
    :param factory: ``factory(device=None)`` returns an :class:`~quantfw.api.engines.Engine`;
        ``device`` is the engine's own device string (``"cpu"``, ``"cuda:0"``), ``None`` for its
        default.  An unknown or absent device raises ``ValueError`` naming what is available.
    :param autograd: the engine can differentiate (needed by AdaRound-style methods).
    :param requires: importable modules it needs.
    :param description: one line for listings.
    :param install_hint: how to get what it requires.
    """

    name: str
    factory: Callable[..., Engine]
    autograd: bool = False
    requires: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""

    def __post_init__(self) -> None:
        _check_name("engine", self.name)
        object.__setattr__(self, "requires", tuple(self.requires))
