"""Shared test configuration."""

import sys
from pathlib import Path

import pytest

# Fixtures for plugin tests (quantfw_plugin_manager, quantfw_registry_with): the same kit
# third-party plugin authors use.
pytest_plugins = ["quantfw.testing"]

TEMPLATE = Path(__file__).resolve().parents[1] / "docs" / "plugin_template"


@pytest.fixture
def example_plugin(monkeypatch):
    """The hooks module of the plugin template in docs/plugin_template (not installed: imported
    from its folder, and forgotten again after the test)."""
    monkeypatch.syspath_prepend(str(TEMPLATE))
    import quantfw_example.hooks as module

    yield module
    for name in [m for m in sys.modules if m.startswith("quantfw_example")]:
        del sys.modules[name]
