"""Shared test configuration."""

# Fixtures for plugin tests (quantfw_plugin_manager, quantfw_registry_with): the same kit
# third-party plugin authors use.
pytest_plugins = ["quantfw.testing"]
