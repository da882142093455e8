"""The registry: every registered component by kind and name, with lookups that explain failures.

Build one with :func:`quantfw.plugins.build_registry` or get the process-wide one with
:func:`quantfw.plugins.get_registry`.  Components appear in pluggy's call order (``tryfirst``
plugins first, then the most recently registered plugin first, built-ins last), which is also the
order :meth:`Registry.frontend_for` tries frontends in.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..components import AlgorithmInfo, BackendInfo, Frontend, FrontendInfo
from .errors import DuplicateComponentError, UnavailableComponentError, UnknownComponentError
from .reports import KINDS, ComponentStatus, Conflict, PluginReport

if TYPE_CHECKING:  # pragma: no cover
    from ..target import TargetSpec
    from .manager import QuantfwPluginManager

__all__ = ["Registry"]

logger = logging.getLogger("quantfw.plugins")


def _kind(kind: str) -> str:
    singular = kind[:-1] if kind.endswith("s") else kind
    if singular not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; use one of {', '.join(KINDS)}")
    return singular


def _known(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


class Registry:
    """Components registered by the loaded plugins.

    :ivar frontends: frontend name → :class:`~quantfw.components.FrontendInfo`.
    :ivar algorithms: algorithm name → :class:`~quantfw.components.AlgorithmInfo`.
    :ivar targets: target name → :class:`~quantfw.target.TargetSpec`.
    :ivar backends: backend name → :class:`~quantfw.components.BackendInfo`.
    :ivar plugins: one :class:`PluginReport` per plugin: loaded, failed or blocked.
    :ivar conflicts: component names registered twice (the first registration is kept).
    :ivar plugin_manager: the manager it was built from, if any.
    """

    def __init__(
        self,
        *,
        frontends: dict[str, FrontendInfo] | None = None,
        algorithms: dict[str, AlgorithmInfo] | None = None,
        targets: dict[str, TargetSpec] | None = None,
        backends: dict[str, BackendInfo] | None = None,
        origins: dict[tuple[str, str], str] | None = None,
        plugins: list[PluginReport] | None = None,
        conflicts: list[Conflict] | None = None,
        plugin_manager: QuantfwPluginManager | None = None,
    ) -> None:
        self.frontends: dict[str, FrontendInfo] = dict(frontends or {})
        self.algorithms: dict[str, AlgorithmInfo] = dict(algorithms or {})
        self.targets: dict[str, TargetSpec] = dict(targets or {})
        self.backends: dict[str, BackendInfo] = dict(backends or {})
        self.plugins: list[PluginReport] = list(plugins or [])
        self.conflicts: list[Conflict] = list(conflicts or [])
        self.plugin_manager = plugin_manager
        self._origins = dict(origins or {})
        self._frontend_objects: dict[str, Frontend] = {}

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
        failed = [r for r in self.plugins if r.status != "loaded"]
        note = ""
        if failed:
            note = "; plugins not loaded: " + ", ".join(
                f"{r.name} ({r.status}: {r.reason})" for r in failed
            )
        raise UnknownComponentError(
            f"unknown {kind} {name!r}{hint}; known {kind}s: {_known(table)}{note}"
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

    def frontend_object(self, name: str) -> Frontend:
        """The working :class:`~quantfw.components.Frontend` of ``name``, created once."""
        if name not in self._frontend_objects:
            self._frontend_objects[name] = self.frontend(name).factory()
        return self._frontend_objects[name]

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
        raise UnknownComponentError(f"no frontend accepts {what}; frontends: {installed}")

    def backends_for(
        self, target: str | TargetSpec, *, available_only: bool = False
    ) -> list[BackendInfo]:
        """Backends that lower to ``target`` (a name or spec), usable here or not unless
        ``available_only``.

        :raises UnknownComponentError: ``target`` is a name no target or backend knows.
        """
        name = target if isinstance(target, str) else target.name
        found = [b for b in self.backends.values() if name in b.targets]
        if not found and name not in self.targets:
            self.target(name)  # raises, listing the known targets
        if available_only:
            found = [b for b in found if self.availability("backend", b.name)[0]]
        return found
