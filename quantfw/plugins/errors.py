"""Exceptions raised by plugin loading and registry lookups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import QuantfwError, UnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry
    from .reports import Conflict

__all__ = [
    "PluginError",
    "DuplicateComponentError",
    "UnknownComponentError",
    "UnavailableComponentError",
]


class PluginError(QuantfwError):
    """Base class of plugin problems."""


class DuplicateComponentError(PluginError):
    """Two plugins (or one plugin twice) registered the same component name.

    ``registry`` is the registry built anyway (the first registration of each name kept), so a
    listing such as ``quantfw plugins`` can still show everything; ``conflicts`` lists each clash.
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


class UnknownComponentError(PluginError, LookupError):
    """A lookup by name found nothing; the message lists what is known."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class UnavailableComponentError(PluginError, UnavailableError):
    """The component is registered but cannot be used here (missing module, hardware, …)."""
