"""Build a :class:`~quantfw.plugins.Registry` by calling each plugin's registration hooks.

Each plugin's hook implementation is called on its own, so every component is attributed to the
plugin that registered it, and a plugin whose hook raises (or registers something malformed) is
reported as failed with none of its components kept, while the other plugins still count.  So is
a plugin registering a component name that a plugin before it (:func:`plugin_precedence`: the
built-ins first) already registered.  Building never changes the plugin manager.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pluggy

from ..api.components import AlgorithmInfo, BackendInfo, ConverterInfo, EngineInfo, FrontendInfo
from .errors import PluginError
from .manager import DEFAULT_PLUGINS, QuantfwPluginManager
from .registry import Registry
from .reports import (
    KINDS,
    Conflict,
    PluginReport,
    canonical_name,
    exception_reason,
    left_out_reason,
)

__all__ = [
    "FIRST_PARTY",
    "REGISTRATION_HOOKS",
    "build_registry",
    "coerce_registration",
    "plugin_precedence",
]

logger = logging.getLogger("quantfw.plugins")

#: Component kind → the hook that registers it.
REGISTRATION_HOOKS: dict[str, str] = {
    "frontend": "quantfw_register_frontends",
    "algorithm": "quantfw_register_algorithms",
    "target": "quantfw_register_targets",
    "backend": "quantfw_register_backends",
    "converter": "quantfw_register_converters",
    "engine": "quantfw_register_engines",
}

_INFO_TYPES: dict[str, type] = {
    "frontend": FrontendInfo,
    "algorithm": AlgorithmInfo,
    "backend": BackendInfo,
    "converter": ConverterInfo,
    "engine": EngineInfo,
}


def coerce_registration(kind: str, obj: Any) -> Any:
    """Check one object passed to a ``register`` callback and return the registration.

    Frontends, algorithms and backends must be their ``*Info`` dataclasses; a target is a
    :class:`~quantfw.target.TargetSpec` or the absolute path of a target TOML file (loaded here).

    :raises TypeError: wrong type.
    :raises ValueError: a relative target path, or an invalid target file
        (:class:`~quantfw.target.TargetSpecError`).
    """
    if kind != "target":
        expected = _INFO_TYPES[kind]
        if not isinstance(obj, expected):
            raise TypeError(
                f"register() for {kind}s takes a quantfw.api.{expected.__name__}, "
                f"not {type(obj).__name__} ({obj!r:.80})"
            )
        return obj
    from ..target import TargetSpec, load_target

    if isinstance(obj, TargetSpec):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_absolute():
            raise ValueError(
                f"target file path {os.fspath(obj)!r} is relative; register an absolute path, "
                "e.g. Path(__file__).with_name('my_target.toml')"
            )
        return load_target(path)
    raise TypeError(
        "register() for targets takes a quantfw.target.TargetSpec or the path of a target TOML "
        f"file, not {type(obj).__name__} ({obj!r:.80})"
    )


def _call_registration(kind: str, impl: pluggy.HookImpl) -> list[Any]:
    hook = REGISTRATION_HOOKS[kind]
    if impl.wrapper or impl.hookwrapper:
        raise PluginError(f"{hook} is a wrapper; registration hooks must be plain functions")
    items: list[Any] = []
    errors: list[Exception] = []

    def register(obj: Any) -> None:
        try:
            items.append(coerce_registration(kind, obj))
        except Exception as exc:
            errors.append(exc)
            raise

    args = {"register": register}
    result = impl.function(*(args[a] for a in impl.argnames))
    if errors:  # the plugin caught the error itself; it still counts
        raise errors[0]
    if result is not None:
        raise PluginError(
            f"{hook} returned {type(result).__name__}; call register(...) for each {kind} "
            "instead of returning them"
        )
    return items


#: Distributions of quantfw's own plugins (the extras' plugins): after the built-ins, they keep a
#: component name before any other plugin.
FIRST_PARTY: frozenset[str] = frozenset(
    f"quantfw-{extra}" for extra in ("onnx", "torch", "tf", "edge", "tensorrt")
)


def plugin_precedence(reports: dict[str, PluginReport]) -> list[str]:
    """Plugin names, the one that keeps a contested component name first: the built-ins
    (:data:`~quantfw.plugins.DEFAULT_PLUGINS`), then quantfw's own plugin distributions, then
    the others, each group in load order (entry points sorted by distribution, then plugins
    registered in-process) -- never by chance."""

    def rank(name: str) -> int:
        if name in DEFAULT_PLUGINS:
            return 0
        return 1 if canonical_name(reports[name].distribution) in FIRST_PARTY else 2

    return sorted(reports, key=rank)  # stable: load order within a rank


def _resolve_clashes(
    reports: dict[str, PluginReport], collected: dict[str, list[tuple[str, list[Any]]]]
) -> list[Conflict]:
    """Leave out (mark failed) every plugin registering a name a plugin before it in
    :func:`plugin_precedence` kept, or registering one name twice; return the clashes."""
    by_plugin: dict[str, list[tuple[str, str]]] = {}
    for kind in KINDS:
        for plugin_name, items in collected[kind]:
            if reports[plugin_name].status == "loaded":
                names = by_plugin.setdefault(plugin_name, [])
                names.extend((kind, item.name) for item in items)
                reports[plugin_name].registers.setdefault(kind, []).extend(i.name for i in items)
    owner: dict[tuple[str, str], str] = {}
    conflicts: list[Conflict] = []
    for plugin_name in plugin_precedence(reports):
        report = reports[plugin_name]
        seen: set[tuple[str, str]] = set()
        mine: list[Conflict] = []
        for key in by_plugin.get(plugin_name, []):
            first = plugin_name if key in seen else owner.get(key)
            if first is not None:
                mine.append(Conflict(*key, reports[first], report))
            seen.add(key)
        if mine:
            report.status, report.reason = "failed", left_out_reason(report, mine)
            logger.warning("quantfw %s", report.reason)
            conflicts.extend(mine)
        else:
            owner.update(dict.fromkeys(seen, plugin_name))
    return conflicts


def build_registry(pm: QuantfwPluginManager, *, strict: bool = False) -> Registry:
    """Call every plugin's registration hooks and collect the components.

    Components are taken in pluggy's call order.  When two plugins register the same kind and
    name, the one that comes first in :func:`plugin_precedence` keeps it and the other is left
    out with all of its components (reported as failed, logged as a warning, and recorded in
    ``registry.conflicts``), so no plugin half-loads and the built-ins keep working.

    :param pm: the plugin manager to read (see :func:`~quantfw.plugins.make_plugin_manager`).
    :param strict: raise :class:`~quantfw.plugins.DuplicateComponentError` when there were
        clashes (for a plugin's own tests); its ``registry`` attribute still holds the registry.
    """
    reports: dict[str, PluginReport] = {}
    for name, report in pm.load_reports.items():
        if report.status == "loaded" and pm.get_plugin(name) is None:
            continue  # unregistered since it was loaded
        reports[name] = replace(report, registers={}, hooks=[])
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        report = reports.setdefault(name, PluginReport(name, *pm.origin(name)))
        report.hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        problems = pm.hook_problems(plugin)
        if problems:
            report.status, report.reason = "failed", "; ".join(problems)

    collected: dict[str, list[tuple[str, list[Any]]]] = {kind: [] for kind in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, REGISTRATION_HOOKS[kind])
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            report = reports[impl.plugin_name]
            if report.status != "loaded":
                continue
            try:
                items = _call_registration(kind, impl)
            except Exception as exc:
                report.status = "failed"
                report.reason = f"{REGISTRATION_HOOKS[kind]}: {exception_reason(exc)}"
                logger.warning(
                    "quantfw %s failed to register its components: %s",
                    report.describe(),
                    report.reason,
                )
                continue
            collected[kind].append((impl.plugin_name, items))

    conflicts = _resolve_clashes(reports, collected)
    tables: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    origins: dict[tuple[str, str], str] = {}
    for kind in KINDS:
        for plugin_name, items in collected[kind]:
            if reports[plugin_name].status != "loaded":
                continue  # failed, or left out for a clash: keep none of its components
            for item in items:
                tables[kind][item.name] = item
                origins[(kind, item.name)] = plugin_name

    registry = Registry(
        frontends=tables["frontend"],
        algorithms=tables["algorithm"],
        targets=tables["target"],
        backends=tables["backend"],
        converters=tables["converter"],
        engines=tables["engine"],
        origins=origins,
        plugins=list(reports.values()),
        conflicts=conflicts,
        plugin_manager=pm,
    )
    if strict:
        registry.check()
    return registry
