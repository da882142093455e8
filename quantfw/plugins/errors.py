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


def _callee(factory: object, exc: TypeError) -> object:
    """What refused the options: ``factory`` itself, or -- for a lazy factory such as
    ``def make(**options): from .impl import Impl; return Impl(**options)`` -- the ``Impl`` that
    the TypeError names, found in the factory's innermost frame."""
    import re

    named = re.match(r"(\w+)(?:\.__init__)?\(\) got an unexpected keyword", str(exc))
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if named and tb is not None:
        frame = tb.tb_frame
        found = frame.f_locals.get(named.group(1), frame.f_globals.get(named.group(1)))
        if callable(found):
            return found
    return factory


def options_error(
    kind: str, name: str, factory: object, options: dict, exc: TypeError
) -> ValueError:
    """The error for ``options`` that a component's factory refused with ``exc``.

    Names the options it does not take and lists those it does (read from the signature of the
    factory, or of the class a lazy factory builds), e.g. ``frontend 'onnx' takes no option
    'thread' (frontend_options, -F on the command line); its options: threads, providers``.
    Falls back to the factory's own message when no signature can tell (``**kwargs`` all the
    way down) or the options' names are fine (the factory refused a value).
    """
    import inspect

    where = {
        "frontend": "frontend_options, -F on the command line",
        "backend": "backend_options, -B on the command line",
        "algorithm": f"-a {name}:KEY=VALUE on the command line",
    }.get(kind, f"{kind}_options")
    try:
        params = list(inspect.signature(_callee(factory, exc)).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in options if k not in accepted]
        if unknown:
            takes = f"its options: {', '.join(accepted)}" if accepted else "it takes no options"
            names = ", ".join(repr(k) for k in unknown)
            return ValueError(f"{kind} {name!r} takes no option {names} ({where}); {takes}")
    return ValueError(f"{kind} {name!r} rejected its options ({where}): {exc}")
