"""Plain data describing what the plugin system found: per plugin, per clash, per component."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "KINDS",
    "PluginStatus",
    "PluginReport",
    "Conflict",
    "ComponentStatus",
    "canonical_name",
    "describe_plugin",
    "disable_hint",
    "exception_reason",
    "left_out_reason",
]

#: Component kinds, in the order they are registered and listed.
KINDS: tuple[str, ...] = ("frontend", "algorithm", "target", "backend", "converter", "engine")

PluginStatus = Literal["loaded", "failed", "blocked"]


def canonical_name(name: str) -> str:
    """Normalise a plugin or distribution name for comparison (PEP 503 style)."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def describe_plugin(name: str, distribution: str = "", version: str = "") -> str:
    """``plugin 'x' (distribution quantfw-x 1.0)`` for messages."""
    if not distribution:
        return f"plugin {name!r}"
    dist = f"{distribution} {version}".strip()
    return f"plugin {name!r} (distribution {dist})"


def exception_reason(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line, for reports and listings."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class PluginReport:
    """What happened to one plugin.

    :param name: the plugin's name: its entry-point name, or the module name of a built-in.
    :param distribution: the installed distribution that provides it (``""`` when registered
        in-process without one).
    :param version: that distribution's version.
    :param status: ``"loaded"``, ``"failed"`` (see ``reason``) or ``"blocked"`` (disabled by the
        user; its module was never imported).
    :param reason: why it failed or was blocked; ``""`` when loaded.
    :param registers: component kind → names it registered.
    :param hooks: the quantfw hooks it implements.
    """

    name: str
    distribution: str = ""
    version: str = ""
    status: PluginStatus = "loaded"
    reason: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return describe_plugin(self.name, self.distribution, self.version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``quantfw plugins --json``)."""
        data = asdict(self)
        data["registers"] = {kind: list(names) for kind, names in self.registers.items()}
        return data


def disable_hint(name: str) -> str:
    """How to stop loading plugin ``name``, on the command line and in the environment."""
    return f"--disable-plugin {name} (or QUANTFW_DISABLE_PLUGINS={name})"


@dataclass(frozen=True)
class Conflict:
    """One component name registered twice.  The first registration (``first``) is kept and the
    plugin that registered it again (``second``) is left out with all of its components."""

    kind: str
    name: str
    first: PluginReport
    second: PluginReport

    def clash(self) -> str:
        """``"algorithm 'minmax' is already registered by plugin 'x' (…)"``."""
        if self.first.name == self.second.name:
            return f"{self.kind} {self.name!r} is registered twice by {self.first.describe()}"
        return f"{self.kind} {self.name!r} is already registered by {self.first.describe()}"

    def message(self) -> str:
        """The clash, that ``second`` is left out, and how to silence it."""
        return left_out_reason(self.second, [self])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugins": [self.first.name, self.second.name],
            "distributions": [self.first.distribution, self.second.distribution],
            "kept": self.first.name,
            "left_out": self.second.name,
            "message": self.message(),
        }


def left_out_reason(report: PluginReport, conflicts: list[Conflict]) -> str:
    """Why ``report``'s plugin is left out for ``conflicts`` (its clashes), with the fix."""
    clashes = "; ".join(c.clash() for c in conflicts)
    uninstall = f", or uninstall {report.distribution}" if report.distribution else ""
    return (
        f"{report.describe()} is left out with all its components: {clashes}; "
        f"to silence this, disable it with {disable_hint(report.name)}{uninstall}"
    )


@dataclass(frozen=True)
class ComponentStatus:
    """One registered component, for listings: where it comes from and whether it works here."""

    kind: str
    name: str
    plugin: str
    distribution: str
    available: bool
    reason: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
