"""Checking that a plugin keeps the contract: :func:`check_plugin`.

The shallow check reads what the plugin registers; the deep check (``deep=True``) also builds
each usable component with its default options and holds the object against its protocol in
:mod:`quantfw.api.protocols` (and :mod:`quantfw.api.engines`): every method present, taking the
parameters the pipeline passes (by position or by keyword, as the protocol declares them) and
requiring no others.  A frontend's optional capabilities are checked the same way whenever it
implements one.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from ..api.context import Algorithm
from ..api.engines import Engine
from ..api.protocols import CAPABILITIES, Backend, Converter, Frontend
from .build import build_registry
from .manager import DEFAULT_PLUGINS, QuantfwPluginManager
from .registry import Registry

__all__ = ["check_plugin", "plugin_name", "protocol_problems"]

_PREFIX = "quantfw_"
#: Component kind → the protocol its factory's object follows.
_PROTOCOLS: dict[str, type] = {
    "frontend": Frontend,
    "algorithm": Algorithm,
    "backend": Backend,
    "converter": Converter,
    "engine": Engine,
}


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


def _members(protocol: type) -> tuple[list[str], list[str]]:
    """``(methods, data attributes)`` a protocol declares."""
    methods = [
        n for n, v in vars(protocol).items() if not n.startswith("_") and inspect.isfunction(v)
    ]
    data = [n for n in getattr(protocol, "__annotations__", {}) if not n.startswith("_")]
    return methods, data


def _signature_problems(what: str, impl: Any, spec: Any) -> list[str]:
    try:
        have = inspect.signature(impl)
    except (TypeError, ValueError):
        return []  # a builtin or C callable: nothing to read
    want = [p for p in inspect.signature(spec).parameters.values() if p.name != "self"]
    params = list(have.parameters.values())
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in params}
    problems = []
    n_pos = 0
    for p in want:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue  # open-ended in the protocol: an implementation names the ones it takes
        if p.kind is p.KEYWORD_ONLY:
            got = by_name.get(p.name)
            if (got is None or got.kind is got.POSITIONAL_ONLY) and not var_kw:
                problems.append(f"{what} must take the keyword argument {p.name!r}")
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY):
            if n_pos >= len(positional) and not var_pos:
                problems.append(f"{what} must take a positional argument {p.name!r}")
            n_pos += 1
    covered = {p.name for p in want}
    for i, p in enumerate(positional):
        if i >= n_pos and p.default is p.empty:
            problems.append(f"{what} requires an argument {p.name!r} the pipeline never passes")
    for p in params:
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in covered:
            problems.append(f"{what} requires a keyword {p.name!r} the pipeline never passes")
    return problems


def protocol_problems(obj: Any, protocol: type, label: str) -> list[str]:
    """How ``obj`` falls short of ``protocol`` (missing members, incompatible signatures)."""
    methods, data = _members(protocol)
    problems = [f"{label}: lacks attribute {n!r}" for n in data if not hasattr(obj, n)]
    for name in methods:
        impl = getattr(obj, name, None)
        if not callable(impl):
            problems.append(f"{label}: lacks method {name}()")
            continue
        problems.extend(_signature_problems(f"{label}: {name}()", impl, getattr(protocol, name)))
    return problems


def _build(kind: str, item: Any) -> Any:
    if kind == "engine":
        return item.factory(device=None)
    return item.factory()


#: Kinds whose factories take the user's options (and must refuse unknown ones).
_OPTION_KINDS = ("frontend", "algorithm", "backend")
_PROBE_OPTION = "quantfw_conformance_probe"


def _deep_problems(kind: str, name: str, item: Any) -> list[str]:
    label = f"{kind} {name!r}"
    try:
        obj = _build(kind, item)
    except Exception as exc:
        return [f"{label}: factory() with default options raised {type(exc).__name__}: {exc}"]
    problems = protocol_problems(obj, _PROTOCOLS[kind], label)
    if kind in _OPTION_KINDS:
        try:
            item.factory(**{_PROBE_OPTION: True})
        except TypeError:
            pass
        except Exception as exc:
            problems.append(
                f"{label}: an unknown option made factory() raise {type(exc).__name__}, not "
                f"TypeError ({exc})"
            )
        else:
            problems.append(
                f"{label}: factory() accepted the unknown option {_PROBE_OPTION!r}; unknown "
                "options must raise TypeError (a user's misspelt option would pass unnoticed)"
            )
    if kind == "frontend":
        for cap, proto in CAPABILITIES.items():
            methods, _ = _members(proto)
            if any(hasattr(obj, m) for m in methods):  # claims the capability: check all of it
                problems.extend(protocol_problems(obj, proto, f"{label} capability {cap!r}"))
    return problems


def check_plugin(plugin: Any, *, deep: bool = False) -> list[str]:
    """Check that ``plugin`` (a module or object) is a well-formed quantfw plugin.

    Checks that functions named ``quantfw_*`` carry ``@hookimpl``; that every hook implemented
    exists and takes only arguments the hook defines; that no hook is a wrapper; that the
    registration hooks run, register the right dataclasses (or target specs or files) with valid
    names, no name twice and none clashing with a built-in component; that factories are callable
    and ``availability()`` does not raise.

    :param deep: also build every component usable here with its default options and check the
        object against its protocol (and a frontend against each capability it implements);
        components that are not usable here (a missing framework) are skipped, since building
        them would fail for that reason alone.
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
    if report.status != "loaded":  # failed, or left out for a clash (the reason names it)
        problems.append(report.reason)
        return problems
    problems.extend(_component_problems(registry, name, report.registers, deep))
    return problems


def _component_problems(
    registry: Registry, plugin: str, registers: dict[str, list[str]], deep: bool
) -> list[str]:
    problems = []
    for kind, names in registers.items():
        table = registry.components(kind)
        for component in names:
            if registry.origin(kind, component) != plugin:
                continue  # a clash, reported already
            item = table[component]
            factory = getattr(item, "factory", None)
            if kind != "target" and not callable(factory):
                problems.append(f"{kind} {component!r}: factory {factory!r} is not callable")
                continue
            try:
                ok, _ = item.availability()
            except Exception as exc:
                problems.append(
                    f"{kind} {component!r}: availability() raised {type(exc).__name__}: {exc}"
                )
                continue
            if deep and ok and kind in _PROTOCOLS:
                problems.extend(_deep_problems(kind, component, item))
    return problems
