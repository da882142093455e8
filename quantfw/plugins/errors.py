"""Exceptions raised by plugin loading and registry lookups (a duplicate registration's
:class:`~quantfw.plugins.registry.DuplicateComponentError` lives beside the registry it carries)."""

from __future__ import annotations

from ..errors import QuantfwError, UnavailableError

__all__ = [
    "PluginError",
    "UnknownComponentError",
    "UnavailableComponentError",
]


class PluginError(QuantfwError):
    """Base class of plugin problems."""


class UnknownComponentError(PluginError, LookupError):
    """A lookup by name found nothing; the message lists what is known."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class UnavailableComponentError(PluginError, UnavailableError):
    """The component is registered but cannot be used here (missing module, hardware, …)."""
