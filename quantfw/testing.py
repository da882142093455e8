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

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .plugins import (
    DISABLE_ENV_VAR,
    PluginError,
    QuantfwPluginManager,
    Registry,
    build_registry,
    check_plugin,
    make_plugin_manager,
    plugin_name,
    use_plugin_manager,
)

__all__ = ["check_plugin", "quantfw_plugin_manager", "quantfw_registry_with", "plugin_name"]


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
