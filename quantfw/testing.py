"""Helpers for testing quantfw plugins: pytest fixtures and a conformance checker.

Enable the fixtures in a plugin's ``conftest.py``::

    pytest_plugins = ["quantfw.testing"]

and test the plugin without installing it::

    import my_plugin.hooks
    from quantfw.testing import check_plugin

    def test_conforms():
        assert check_plugin(my_plugin.hooks) == []

    def test_registers(quantfw_registry_with):
        registry = quantfw_registry_with(my_plugin.hooks)
        assert registry.origin("backend", "mybackend") == "my_plugin.hooks"

Both fixtures install their manager as the process-wide one for the test (so code calling
:func:`quantfw.plugins.get_registry` sees it) and ignore ``$QUANTFW_DISABLE_PLUGINS`` and every
installed entry point.  This module needs pytest; quantfw itself does not.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .plugins import (
    DEFAULT_PLUGINS,
    DISABLE_ENV_VAR,
    PluginError,
    QuantfwPluginManager,
    Registry,
    build_registry,
    make_plugin_manager,
    use_plugin_manager,
)

__all__ = ["check_plugin", "quantfw_plugin_manager", "quantfw_registry_with", "plugin_name"]

_PREFIX = "quantfw_"


def plugin_name(plugin: Any, pm: QuantfwPluginManager | None = None) -> str:
    """A readable registration name: a module's name, else the class name (made unique in
    ``pm`` by a numeric suffix)."""
    base = getattr(plugin, "__name__", None) or type(plugin).__name__
    if pm is None:
        return base
    name, n = base, 1
    while pm.has_plugin(name) or pm.is_blocked(name):
        n += 1
        name = f"{base}-{n}"
    return name


@pytest.fixture
def quantfw_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[QuantfwPluginManager]:
    """A fresh plugin manager holding only the built-in plugins (no entry points), installed as
    the process-wide manager for the duration of the test."""
    monkeypatch.delenv(DISABLE_ENV_VAR, raising=False)
    pm = make_plugin_manager(load_entrypoints=False)
    with use_plugin_manager(pm):
        yield pm


@pytest.fixture
def quantfw_registry_with(
    quantfw_plugin_manager: QuantfwPluginManager,
) -> Callable[..., Registry]:
    """A function ``(*plugins, strict=True) -> Registry`` registering ``plugins`` (modules or
    objects with ``@hookimpl`` functions) beside the built-ins and building the registry.

    With ``strict`` (the default) any plugin that failed to load or register, or a duplicate
    component name, raises :class:`~quantfw.plugins.PluginError`; with ``strict=False`` inspect
    ``registry.plugins`` and ``registry.conflicts`` instead.
    """
    pm = quantfw_plugin_manager

    def build(*plugins: Any, strict: bool = True) -> Registry:
        for plugin in plugins:
            if not pm.is_registered(plugin):
                pm.add_plugin(plugin, plugin_name(plugin, pm))
        registry = build_registry(pm, strict=strict)
        failed = [r for r in registry.plugins if r.status == "failed"]
        if strict and failed:
            raise PluginError("; ".join(f"{r.describe()} failed: {r.reason}" for r in failed))
        return registry

    return build


def check_plugin(plugin: Any) -> list[str]:
    """Check that ``plugin`` (a module or object) is a well-formed quantfw plugin.

    Checks that functions named ``quantfw_*`` carry ``@hookimpl``; that every hook implemented
    exists and takes only arguments the hook defines; that no hook is a wrapper; that the
    registration hooks run, register the right dataclasses (or target specs or files) with valid
    names, no name twice and none clashing with a built-in component; that factories are callable
    and ``availability()`` does not raise.  Nothing is called beyond the registration hooks and
    ``availability()``.

    :return: one message per problem; an empty list means the plugin conforms.
    """
    problems: list[str] = []
    builtin = any(sys.modules.get(m) is plugin for m in DEFAULT_PLUGINS)
    pm = QuantfwPluginManager()  # ignores $QUANTFW_DISABLE_PLUGINS and entry points
    if not builtin:
        pm.load_builtins()

    for attr in sorted(dir(plugin)):
        if not attr.startswith(_PREFIX) or not callable(getattr(plugin, attr, None)):
            continue
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            problems.append(f"{attr} lacks @quantfw.hookimpl, so it is never called")

    name = plugin_name(plugin, pm)
    if not pm.add_plugin(plugin, name):
        problems.append(pm.load_reports[name].reason)
        return problems

    callers = pm.get_hookcallers(plugin) or []
    if not callers:
        problems.append("implements no quantfw hook")
    for caller in callers:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                problems.append(f"{caller.name} is a wrapper; quantfw hooks must be plain")

    registry = build_registry(pm, strict=False)
    report = registry.report(name)
    if report.status != "loaded":
        problems.append(report.reason)
    problems.extend(
        c.message() for c in registry.conflicts if name in (c.first.name, c.second.name)
    )
    for kind, names in report.registers.items():
        table = registry.components(kind)
        for component in names:
            if registry.origin(kind, component) != name:
                continue  # a clash, reported above
            item = table[component]
            factory = getattr(item, "factory", None)
            if kind != "target" and not callable(factory):
                problems.append(f"{kind} {component!r}: factory {factory!r} is not callable")
            try:
                item.availability()
            except Exception as exc:
                problems.append(
                    f"{kind} {component!r}: availability() raised {type(exc).__name__}: {exc}"
                )
    return problems
