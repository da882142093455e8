"""The registry: every registered component by kind and name, with lookups that explain failures.

Besides lookups by name it answers the questions that connect components: which frontend reads a
model (:meth:`Registry.frontend_for`), which backends lower a target (the target's choice,
:meth:`Registry.backends_for`), how to get a model in a format (:meth:`Registry.model_in`,
:meth:`Registry.convert`) and which compute engine to use (:meth:`Registry.engine`).

Build one with :func:`quantfw.plugins.build_registry` or get the process-wide one with
:func:`quantfw.plugins.get_registry`.  Components appear in pluggy's call order (``tryfirst``
plugins first, then the most recently registered plugin first, built-ins last), which is also the
order :meth:`Registry.frontend_for` tries frontends in.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api.components import (
    AlgorithmInfo,
    BackendInfo,
    ConverterInfo,
    EngineInfo,
    FrontendInfo,
)
from ..api.formats import QGRAPH, install_hint_for
from .conversions import ConversionError, describe_missing, find_path, run_path
from .errors import (
    PluginError,
    UnavailableComponentError,
    UnknownComponentError,
    options_error,
)
from .hints import TARGET_EXTRAS, model_hint, plugin_hint
from .reports import KINDS, ComponentStatus, Conflict, PluginReport

if TYPE_CHECKING:  # pragma: no cover
    from ..api.engines import Engine
    from ..api.protocols import Frontend
    from ..graph import QuantGraph
    from ..target import TargetSpec
    from .manager import QuantfwPluginManager

__all__ = ["Registry", "DuplicateComponentError"]

logger = logging.getLogger("quantfw.plugins")


def _kind(kind: str) -> str:
    singular = kind[:-1] if kind.endswith("s") else kind
    if singular not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; use one of {', '.join(KINDS)}")
    return singular


def _known(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


class DuplicateComponentError(PluginError):
    """Two plugins (or one plugin twice) registered the same component name: raised only when
    asked for (``build_registry(pm, strict=True)``, ``get_registry(strict=True)``); otherwise the
    later plugin is left out and reported.

    ``registry`` is the registry built anyway (the later plugin left out), so a listing such as
    ``quantfw plugins`` can still show everything; ``conflicts`` lists each clash.
    """

    def __init__(self, conflicts: list[Conflict], registry: Registry) -> None:
        self.conflicts = list(conflicts)
        self.registry = registry
        lines = [c.message() for c in self.conflicts]
        super().__init__(
            "conflicting plugin registrations:\n  " + "\n  ".join(lines)
            if len(lines) > 1
            else lines[0]
        )


class Registry:
    """Components registered by the loaded plugins.

    :ivar frontends: frontend name → :class:`~quantfw.api.FrontendInfo`.
    :ivar algorithms: algorithm name → :class:`~quantfw.api.AlgorithmInfo`.
    :ivar targets: target name → :class:`~quantfw.target.TargetSpec`.
    :ivar backends: backend name → :class:`~quantfw.api.BackendInfo`.
    :ivar converters: converter name → :class:`~quantfw.api.ConverterInfo`.
    :ivar engines: engine name → :class:`~quantfw.api.EngineInfo`.
    :ivar plugins: one :class:`PluginReport` per plugin: loaded, failed or blocked.
    :ivar conflicts: component names registered twice; the plugin that registered one again
        (``conflict.second``) is left out with all its components, and reported as failed.
    :ivar plugin_manager: the manager it was built from, if any.
    """

    def __init__(
        self,
        *,
        frontends: dict[str, FrontendInfo] | None = None,
        algorithms: dict[str, AlgorithmInfo] | None = None,
        targets: dict[str, TargetSpec] | None = None,
        backends: dict[str, BackendInfo] | None = None,
        converters: dict[str, ConverterInfo] | None = None,
        engines: dict[str, EngineInfo] | None = None,
        origins: dict[tuple[str, str], str] | None = None,
        plugins: list[PluginReport] | None = None,
        conflicts: list[Conflict] | None = None,
        plugin_manager: QuantfwPluginManager | None = None,
    ) -> None:
        self.frontends: dict[str, FrontendInfo] = dict(frontends or {})
        self.algorithms: dict[str, AlgorithmInfo] = dict(algorithms or {})
        self.targets: dict[str, TargetSpec] = dict(targets or {})
        self.backends: dict[str, BackendInfo] = dict(backends or {})
        self.converters: dict[str, ConverterInfo] = dict(converters or {})
        self.engines: dict[str, EngineInfo] = dict(engines or {})
        self.plugins: list[PluginReport] = list(plugins or [])
        self.conflicts: list[Conflict] = list(conflicts or [])
        self.plugin_manager = plugin_manager
        self._origins = dict(origins or {})
        # default-option frontends that answer accepts(): they hold no user data
        self._probes: dict[str, Frontend] = {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(self.components(k))} {k}s" for k in KINDS)
        return f"<Registry {counts}, {len(self.plugins)} plugins>"

    # -- introspection -------------------------------------------------------------------------

    def components(self, kind: str) -> dict[str, Any]:
        """The name → registration table of ``kind`` (``"frontend"``, ``"targets"``, …)."""
        return {
            "frontend": self.frontends,
            "algorithm": self.algorithms,
            "target": self.targets,
            "backend": self.backends,
            "converter": self.converters,
            "engine": self.engines,
        }[_kind(kind)]

    def origin(self, kind: str, name: str) -> str:
        """Name of the plugin that registered component ``name`` of ``kind``."""
        kind = _kind(kind)
        try:
            return self._origins[(kind, name)]
        except KeyError:
            raise UnknownComponentError(
                f"no {kind} named {name!r}; known {kind}s: {_known(self.components(kind))}"
            ) from None

    def report(self, plugin: str) -> PluginReport:
        """The :class:`PluginReport` of the plugin named ``plugin``."""
        for report in self.plugins:
            if report.name == plugin:
                return report
        known = _known(r.name for r in self.plugins)
        raise UnknownComponentError(f"no plugin named {plugin!r}; plugins: {known}")

    def availability(self, kind: str, name: str) -> tuple[bool, str]:
        """``(True, "")`` when the component can be used here, else ``(False, reason)``."""
        item = self._get(_kind(kind), name)
        check = getattr(item, "availability", None)
        if check is None:
            return True, ""
        try:
            ok, reason = check()
        except Exception as exc:
            return False, f"availability check failed: {type(exc).__name__}: {exc}"
        return bool(ok), str(reason or "")

    def statuses(self, kind: str | None = None) -> list[ComponentStatus]:
        """Every component (of ``kind``, or of all kinds), available or not, with its reason."""
        rows = []
        for k in KINDS if kind is None else (_kind(kind),):
            for name, item in self.components(k).items():
                plugin = self._origins.get((k, name), "")
                try:
                    dist = self.report(plugin).distribution
                except UnknownComponentError:
                    dist = ""
                ok, reason = self.availability(k, name)
                description = str(getattr(item, "description", "") or "")
                rows.append(ComponentStatus(k, name, plugin, dist, ok, reason, description))
        return rows

    def check(self) -> None:
        """Raise :class:`DuplicateComponentError` if two registrations share a name."""
        if self.conflicts:
            raise DuplicateComponentError(self.conflicts, self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: plugins, components (with availability) and conflicts."""
        return {
            "plugins": [r.to_dict() for r in self.plugins],
            "components": [s.to_dict() for s in self.statuses()],
            "conflicts": [c.to_dict() for c in self.conflicts],
        }

    # -- lookups -------------------------------------------------------------------------------

    def _get(self, kind: str, name: str) -> Any:
        table = self.components(kind)
        try:
            return table[name]
        except (KeyError, TypeError):
            pass
        close = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        note = ""
        if kind == "target" and name in TARGET_EXTRAS:
            note = plugin_hint(
                TARGET_EXTRAS[name],
                f"target {name!r} and its backends",
                self.plugins,
                self.plugin_manager,
            )
        note = note or self._not_loaded()
        note = f"; {note}" if note else ""
        raise UnknownComponentError(
            f"unknown {kind} {name!r}{hint}; known {kind}s: {_known(table)}{note}"
        )

    def _not_loaded(self) -> str:
        """``"plugins not loaded: x (blocked: …)"`` for the plugins that failed or were blocked."""
        failed = [r for r in self.plugins if r.status != "loaded"]
        if not failed:
            return ""
        return "plugins not loaded: " + ", ".join(
            f"{r.name} ({r.status}: {r.reason})" for r in failed
        )

    def _usable(self, kind: str, name: str, check_available: bool) -> Any:
        item = self._get(kind, name)
        if check_available:
            ok, reason = self.availability(kind, name)
            if not ok:
                where = self.report(self._origins[(kind, name)]).describe()
                raise UnavailableComponentError(
                    f"{kind} {name!r} from {where} is not available here: {reason}"
                )
        return item

    def target(self, name: str) -> TargetSpec:
        """The target spec named ``name``.  Targets are data, so no availability check is made
        (planning for hardware this machine lacks is allowed)."""
        return self._get("target", name)

    def algorithm(self, name: str, *, check_available: bool = True) -> AlgorithmInfo:
        """The algorithm named ``name``; by default it must be usable here."""
        return self._usable("algorithm", name, check_available)

    def frontend(self, name: str, *, check_available: bool = True) -> FrontendInfo:
        """The frontend named ``name``; by default it must be usable here."""
        return self._usable("frontend", name, check_available)

    def backend(self, name: str, *, check_available: bool = True) -> BackendInfo:
        """The backend named ``name``; by default it must be usable here."""
        return self._usable("backend", name, check_available)

    def converter(self, name: str, *, check_available: bool = True) -> ConverterInfo:
        """The converter named ``name``; by default it must be usable here."""
        return self._usable("converter", name, check_available)

    def make_frontend(self, name: str, options: dict[str, Any] | None = None) -> Frontend:
        """A new working frontend ``name`` built with ``options`` (``frontend_options``).

        :raises ValueError: options the frontend does not take.
        """
        info = self.frontend(name)
        try:
            return info.factory(**dict(options or {}))
        except TypeError as exc:
            raise options_error("frontend", name, info.factory, dict(options or {}), exc) from None

    def frontend_object(self, name: str) -> Frontend:
        """A frontend ``name`` with default options, shared for questions such as ``accepts``
        and ``load`` (it holds no user data; quantizations build their own)."""
        if name not in self._probes:
            self._probes[name] = self.make_frontend(name)
        return self._probes[name]

    def frontend_for(self, model: object) -> FrontendInfo:
        """The first available frontend whose ``accepts(model)`` is true.

        :raises UnknownComponentError: none accepts it; the message lists every installed
            frontend, with the file suffixes it reads or the reason it is unavailable.
        """
        notes = []
        for name, info in self.frontends.items():
            ok, reason = self.availability("frontend", name)
            if not ok:
                notes.append(f"{name} (unavailable: {reason})")
                continue
            try:
                if self.frontend_object(name).accepts(model):
                    return info
            except Exception as exc:
                logger.warning("frontend %r failed while checking a model: %r", name, exc)
                notes.append(f"{name} (error: {type(exc).__name__}: {exc})")
                continue
            suffixes = f" reads {', '.join(info.suffixes)}" if info.suffixes else ""
            notes.append(f"{name}{suffixes}")
        if isinstance(model, (str, Path)):
            what = f"model file {str(model)!r}"
        else:
            kind = type(model)
            what = f"a model of type {kind.__module__}.{kind.__qualname__}"
        installed = "; ".join(notes) if notes else "none installed"
        hint = model_hint(model, self.plugins, self.plugin_manager) or self._not_loaded()
        hint = f"; {hint}" if hint else ""
        raise UnknownComponentError(f"no frontend accepts {what}{hint}; frontends: {installed}")

    def backends_for(
        self, target: str | TargetSpec, *, available_only: bool = False
    ) -> list[BackendInfo]:
        """The backends that lower ``target`` (a name or spec), in the target's order of
        preference, usable here or not unless ``available_only``.

        A target that names ``backends`` gets those that are installed; one that names none is
        served by every backend writing its ``artifact`` format.

        :raises UnknownComponentError: ``target`` is a name no target has.
        """
        spec = self.target(target) if isinstance(target, str) else target
        named = tuple(spec.backends)
        if named:
            found = [self.backends[n] for n in named if n in self.backends]
        else:
            found = [b for b in self.backends.values() if b.artifact_format == spec.artifact]
        if available_only:
            found = [b for b in found if self.availability("backend", b.name)[0]]
        return found

    def missing_backends(self, target: str | TargetSpec) -> list[str]:
        """Backends ``target`` names that no installed plugin registers."""
        spec = self.target(target) if isinstance(target, str) else target
        return [n for n in spec.backends if n not in self.backends]

    # -- conversions ---------------------------------------------------------------------------

    def formats(self) -> set[str]:
        """Every model format an installed component reads or writes."""
        found = {f.format for f in self.frontends.values()}
        for c in self.converters.values():
            found |= {c.source, c.target}
        for b in self.backends.values():
            found |= {b.artifact_format, *b.accepts}
        return found

    def _converters(self) -> tuple[list[ConverterInfo], dict[str, str]]:
        usable, unusable = [], {}
        for name, info in self.converters.items():
            ok, why = self.availability("converter", name)
            if ok:
                usable.append(info)
            else:
                unusable[name] = why
        return usable, unusable

    def conversion_path(
        self, source: str, target: str, *, keeps_names: bool = False
    ) -> list[ConverterInfo]:
        """The shortest chain of usable converters from format ``source`` to ``target``.

        :raises ConversionError: naming the installed conversions and the plugin to install.
        """
        usable, unusable = self._converters()
        path = find_path(usable, source, target, keeps_names=keeps_names)
        if path is None:
            raise ConversionError(
                describe_missing([source], [target], usable, unusable, self.formats())
            )
        return path

    def convert(self, model: object, source: str, target: str, **options: Any) -> object:
        """``model`` (in format ``source``) converted to format ``target`` through the shortest
        chain of registered conversions; ``options`` go to the first converter.

        :raises ConversionError: when no chain exists here.
        """
        return run_path(model, self.conversion_path(source, target), options)

    def model_in(self, formats: Sequence[str], graph: QuantGraph) -> tuple[str, object]:
        """``(format, model)``: the model ``graph`` was captured from, in the first of
        ``formats`` that can be had -- the graph itself for ``"qgraph"``, a form the frontend
        recorded (``graph.forms``), or one reached from such a form through name-keeping
        conversions only (the graph's tensor names must stay valid).

        :raises ConversionError: naming the graph's forms, the formats wanted, the conversions
            installed and the plugin to install.
        """
        for fmt in formats:
            if fmt == QGRAPH:
                return fmt, graph
            if fmt in graph.forms:
                return fmt, graph.forms[fmt]
        usable, unusable = self._converters()
        for src, model in graph.forms.items():
            for fmt in formats:
                path = find_path(usable, src, fmt, keeps_names=True)
                if path is not None:
                    return fmt, run_path(model, path, {})
        have = sorted(graph.forms)
        raise ConversionError(
            f"graph {graph.name!r} needs to be in {' or '.join(formats)} form, and its frontend "
            f"recorded {', '.join(have) if have else 'no model form'}; "
            + describe_missing(have, list(formats), usable, unusable, self.formats())
        )

    # -- engines -------------------------------------------------------------------------------

    def engine(
        self, name: str | None = None, device: str | None = None, *, autograd: bool = False
    ) -> Engine:
        """A compute engine: ``name``; else ``numpy``, or with ``autograd`` the first usable
        engine that has it (registration order: third-party plugins first).

        :raises UnknownComponentError: no such engine.
        :raises UnavailableComponentError: it (or any engine with autograd) is not usable here.
        """
        if name is None and not autograd:
            name = "numpy"
        if name is None:
            for cand, info in self.engines.items():
                if (info.autograd or not autograd) and self.availability("engine", cand)[0]:
                    name = cand
                    break
            else:
                raise UnavailableComponentError(
                    "no compute engine with autograd is usable here (the torch plugin has one: "
                    f"{install_hint_for('torch')})"
                )
        info = self._usable("engine", name, True)
        if autograd and not info.autograd:
            raise UnavailableComponentError(f"engine {name!r} has no autograd")
        try:
            return info.factory(device=device)
        except TypeError as exc:
            raise ValueError(f"engine {name!r} could not be built: {exc}") from None
