"""The process-wide plugin manager and registry, loaded on first use and cached.

Nothing is loaded when :mod:`quantfw` is imported.  :func:`reset_plugin_manager` and
:func:`use_plugin_manager` are for tests and applications embedding quantfw.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .build import build_registry
from .manager import QuantfwPluginManager, make_plugin_manager, parse_names

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

__all__ = [
    "current_registry",
    "get_plugin_manager",
    "get_registry",
    "reset_plugin_manager",
    "use_plugin_manager",
    "using_registry",
]

_current: contextvars.ContextVar[Registry | None] = contextvars.ContextVar(
    "quantfw_registry", default=None
)

_lock = threading.RLock()
_pm: QuantfwPluginManager | None = None
_pm_disabled: frozenset[str] | None = None
_registry: tuple[QuantfwPluginManager, int, Registry] | None = None


def get_plugin_manager(*, disabled: Iterable[str] | None = None) -> QuantfwPluginManager:
    """The process-wide plugin manager, loaded on first use.

    :param disabled: names to disable (the CLI's ``--disable-plugin``).  Passing a different set
        than the cached manager was built with builds a new one; ``None`` reuses whatever is
        cached.
    """
    global _pm, _pm_disabled
    wanted = None if disabled is None else frozenset(parse_names(disabled))
    with _lock:
        if _pm is None or (wanted is not None and wanted != _pm_disabled):
            _pm = make_plugin_manager(disabled=wanted)
            _pm_disabled = wanted or frozenset()
        return _pm


def get_registry(*, strict: bool = False) -> Registry:
    """The registry of the process-wide plugin manager, rebuilt when its plugins change.

    A plugin that registers a component name already taken (by the built-ins, or by a plugin
    earlier in :func:`~quantfw.plugins.build.plugin_precedence`) is left out, reported as failed
    and logged as a warning; ``registry.conflicts`` lists the clashes.

    :param strict: raise :class:`~quantfw.plugins.DuplicateComponentError` instead if there was
        any such clash (for a plugin's own tests).
    """
    global _registry
    with _lock:
        pm = get_plugin_manager()
        if _registry is None or _registry[0] is not pm or _registry[1] != pm.generation:
            _registry = (pm, pm.generation, build_registry(pm, strict=False))
        registry = _registry[2]
    if strict:
        registry.check()
    return registry


def reset_plugin_manager() -> None:
    """Forget the cached manager and registry; the next call loads plugins again."""
    global _pm, _pm_disabled, _registry
    with _lock:
        _pm, _pm_disabled, _registry = None, None, None


@contextlib.contextmanager
def use_plugin_manager(pm: QuantfwPluginManager) -> Iterator[QuantfwPluginManager]:
    """Make ``pm`` the process-wide manager inside the ``with`` block (tests, embedding)."""
    global _pm, _pm_disabled, _registry
    with _lock:
        saved = (_pm, _pm_disabled, _registry)
        _pm, _pm_disabled, _registry = pm, frozenset(), None
    try:
        yield pm
    finally:
        with _lock:
            _pm, _pm_disabled, _registry = saved


def current_registry() -> Registry:
    """The registry of the quantization in progress (``quantize(registry=...)``), else the
    process-wide one.  A plugin that needs another component while it works -- a frontend
    capturing through another format's frontend -- asks this one."""
    registry = _current.get()
    return registry if registry is not None else get_registry()


@contextlib.contextmanager
def using_registry(registry: Registry) -> Iterator[Registry]:
    """Make ``registry`` the :func:`current_registry` inside the ``with`` block."""
    token = _current.set(registry)
    try:
        yield registry
    finally:
        _current.reset(token)
