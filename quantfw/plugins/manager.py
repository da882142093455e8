"""The plugin manager: built-ins, then entry points, with blocking and per-plugin failure reports.

:func:`make_plugin_manager` builds a fresh, loaded manager; the process-wide cached one lives in
:mod:`quantfw.plugins.state`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from ..api import hookspecs
from ..api.hookspecs import PROJECT_NAME
from .reports import PluginReport, canonical_name, describe_plugin, exception_reason

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV_VAR",
    "DEFAULT_PLUGINS",
    "QuantfwPluginManager",
    "make_plugin_manager",
    "hook_names",
]

logger = logging.getLogger("quantfw.plugins")

#: Entry-point group third-party plugins publish under.
ENTRY_POINT_GROUP = "quantfw"
#: Comma-separated plugin names (entry-point, module or distribution names) not to load;
#: ``*`` blocks every entry-point plugin (built-ins still load unless named).
DISABLE_ENV_VAR = "QUANTFW_DISABLE_PLUGINS"
#: Built-in plugin modules, registered through the same hooks as third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = ("quantfw.builtins",)

_ALL = "*"


def hook_names() -> tuple[str, ...]:
    """Names of every hook a quantfw plugin may implement."""
    return tuple(sorted(n for n in vars(hookspecs) if n.startswith(f"{PROJECT_NAME}_")))


def _quantfw_version() -> str:
    from ..version import __version__

    return __version__


def parse_names(value: str | Iterable[str] | None) -> list[str]:
    """Plugin names from ``"a,b"`` or an iterable of such strings, blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    names: list[str] = []
    for item in value:
        names.extend(part.strip() for part in item.replace(";", ",").split(","))
    return [n for n in names if n]


class QuantfwPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` for the ``quantfw`` hooks that remembers where each plugin
    came from (distribution, version) and which plugins failed or were blocked.

    ``generation`` changes whenever a plugin is registered or unregistered, so a cached
    :class:`~quantfw.plugins.Registry` knows when it is stale.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.generation = 0
        #: plugin name → report of how loading went (no ``registers`` yet: see the registry).
        self.load_reports: dict[str, PluginReport] = {}
        #: canonical disabled name → where the request came from, for messages.
        self.disabled: dict[str, str] = {}
        self.observer_failures: set[tuple[str, str]] = set()

    # -- bookkeeping over pluggy's public API ---------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self.generation += 1

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        try:
            return super().unregister(plugin, name)
        finally:
            self.generation += 1

    def origin(self, name: str) -> tuple[str, str]:
        """``(distribution, version)`` of the plugin registered as ``name`` (``("", "")`` if the
        plugin was registered in-process without one)."""
        report = self.load_reports.get(name)
        return (report.distribution, report.version) if report else ("", "")

    def disabled_reason(self, *names: str, entry_point: bool = False) -> str:
        """Why a plugin known by any of ``names`` is disabled, or ``""`` if it is not."""
        for candidate in names:
            source = self.disabled.get(canonical_name(candidate)) if candidate else None
            if source:
                return f"disabled by {source}"
        if entry_point and _ALL in self.disabled:
            return f"disabled by {self.disabled[_ALL]} ('*': all entry-point plugins)"
        return ""

    def hook_problems(self, plugin: Any) -> list[str]:
        """Hook implementations of ``plugin`` that match no quantfw hook (a misspelt name)."""
        known = hook_names()
        problems = []
        for caller in self.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
            if any(not i.optionalhook for i in impls):
                close = difflib.get_close_matches(caller.name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown hook {caller.name!r}{hint}")
        return problems

    def check_pending(self) -> None:
        """Like pluggy's, but the error names the plugin, its distribution and the likely hook."""
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            problems = self.hook_problems(plugin)
            if problems:
                where = describe_plugin(name, *self.origin(name))
                raise pluggy.PluginValidationError(plugin, f"{where}: {'; '.join(problems)}")
        super().check_pending()

    # -- loading -------------------------------------------------------------------------------

    def _record(self, report: PluginReport) -> None:
        self.load_reports[report.name] = report
        if report.status == "failed":
            logger.warning("quantfw %s failed to load: %s", report.describe(), report.reason)
        elif report.status == "blocked":
            logger.info("quantfw %s not loaded: %s", report.describe(), report.reason)

    def block(self, name: str, *, distribution: str = "", version: str = "", reason: str) -> None:
        """Block ``name`` (unregistering it if needed) and record it as blocked."""
        self.set_blocked(name)
        self._record(PluginReport(name, distribution, version, "blocked", reason))

    def fail(
        self, name: str, *, distribution: str = "", version: str = "", reason: str | Exception
    ) -> None:
        """Record ``name`` as failed (logged as a warning); ``reason`` may be the exception."""
        if isinstance(reason, BaseException):
            reason = exception_reason(reason)
        self._record(PluginReport(name, distribution, version, "failed", reason))

    def add_plugin(
        self, plugin: Any, name: str, *, distribution: str = "", version: str = ""
    ) -> bool:
        """Register ``plugin`` under ``name``, remembering its origin.

        A plugin that pluggy rejects, or that implements a hook quantfw does not define, is
        unregistered again and recorded as failed (with a warning); a disabled or blocked name is
        recorded as blocked.  Returns whether the plugin is now registered.
        """
        origin = {"distribution": distribution, "version": version}
        blocked = self.disabled_reason(name, distribution)
        if blocked or self.is_blocked(name):
            self.block(name, **origin, reason=blocked or "blocked")
            return False
        taken = self.get_name(plugin) if self.is_registered(plugin) else None
        if taken is not None or self.has_plugin(name):
            why = f"already registered as {taken!r}" if taken else f"name {name!r} is taken"
            self.fail(name, **origin, reason=why)
            return False
        try:
            self.register(plugin, name)
        except Exception as exc:  # pluggy.PluginValidationError
            if self.get_name(plugin) == name:
                self.unregister(plugin)
            self.fail(name, **origin, reason=exc)
            return False
        problems = self.hook_problems(plugin)
        if problems:
            self.unregister(plugin)
            self.fail(name, **origin, reason="; ".join(problems))
            return False
        self._record(PluginReport(name, **origin))
        return True

    def load_builtins(self, modules: Iterable[str] = DEFAULT_PLUGINS) -> None:
        """Import and register the built-in plugin modules (unless disabled)."""
        version = _quantfw_version()
        for module_name in modules:
            blocked = self.disabled_reason(module_name, module_name.rpartition(".")[2])
            if blocked:
                self.block(module_name, distribution="quantfw", version=version, reason=blocked)
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                self.fail(module_name, distribution="quantfw", version=version, reason=exc)
                continue
            self.add_plugin(module, module_name, distribution="quantfw", version=version)

    def load_entrypoints(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load and register every installed entry point of ``group``, sorted by distribution.

        Blocked plugins are never imported.  A plugin that fails to import or register is
        recorded as failed and logged; the others still load.
        """
        for ep, dist_name, version in _entry_points(group):
            if self.get_plugin(ep.name) is not None or ep.name in self.load_reports:
                logger.warning(
                    "quantfw entry point %r of distribution %s is ignored: the name is taken by %s",
                    ep.name,
                    dist_name,
                    describe_plugin(ep.name, *self.origin(ep.name)),
                )
                continue
            blocked = self.disabled_reason(ep.name, dist_name, entry_point=True)
            if blocked:
                self.block(ep.name, distribution=dist_name, version=version, reason=blocked)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self.fail(ep.name, distribution=dist_name, version=version, reason=exc)
                continue
            self.add_plugin(plugin, ep.name, distribution=dist_name, version=version)


def _entry_points(group: str) -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    """Entry points of ``group`` as ``(entry point, distribution, version)``.

    The first distribution on ``sys.path`` wins when one is installed twice; the result is
    sorted by distribution then entry-point name so the order does not depend on the machine.
    """
    found: dict[str, tuple[importlib.metadata.EntryPoint, str, str]] = {}
    for dist in importlib.metadata.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == group]
        if not eps:
            continue
        dist_name = dist.metadata["Name"] or "?"
        for ep in eps:
            if ep.name in found:
                if canonical_name(found[ep.name][1]) != canonical_name(dist_name):
                    logger.warning(
                        "quantfw entry point %r is provided by both %s and %s; using %s",
                        ep.name,
                        found[ep.name][1],
                        dist_name,
                        found[ep.name][1],
                    )
                continue
            found[ep.name] = (ep, dist_name, dist.version)
    return sorted(found.values(), key=lambda t: (canonical_name(t[1]), t[0].name))


def make_plugin_manager(
    *,
    disabled: Iterable[str] | None = None,
    load_entrypoints: bool = True,
    builtins: bool = True,
) -> QuantfwPluginManager:
    """A fresh plugin manager with the quantfw hooks and plugins loaded.

    :param disabled: plugin names (entry-point, module or distribution names) not to load, on
        top of those in ``$QUANTFW_DISABLE_PLUGINS``.  Blocked plugins are never imported.
    :param load_entrypoints: load third-party plugins from the ``quantfw`` entry-point group.
    :param builtins: register the built-in plugins (:data:`DEFAULT_PLUGINS`).
    :raises pluggy.PluginValidationError: never for a bad third-party plugin (that is recorded as
        failed); the final :meth:`~QuantfwPluginManager.check_pending` is a safety net.
    """
    pm = QuantfwPluginManager()
    for name in parse_names(os.environ.get(DISABLE_ENV_VAR)):
        pm.disabled[canonical_name(name) if name != _ALL else _ALL] = DISABLE_ENV_VAR
    for name in parse_names(disabled):
        pm.disabled.setdefault(
            canonical_name(name) if name != _ALL else _ALL, "request (--disable-plugin)"
        )
    if builtins:
        pm.load_builtins()
    if load_entrypoints:
        pm.load_entrypoints()
    if builtins and load_entrypoints:  # only then is every plugin name known
        seen = {canonical_name(n) for n in pm.load_reports}
        seen |= {canonical_name(n.rpartition(".")[2]) for n in pm.load_reports}
        seen |= {canonical_name(r.distribution) for r in pm.load_reports.values()}
        for name in sorted(set(pm.disabled) - seen - {_ALL}):
            logger.warning("cannot disable quantfw plugin %r: no plugin has that name", name)
    pm.check_pending()
    return pm
