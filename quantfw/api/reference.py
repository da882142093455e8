"""Render the plugin contract as Markdown, from the docstrings that define it.

``python -m quantfw.api.reference > docs/contract.md`` regenerates the reference; a test checks
that the file in the repository is what this module renders, so the hook docstrings and the
reference never disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Iterable

from . import blocks, components, context, data, engines, hookspecs, layers, protocols, result

__all__ = ["render"]

_INTRO = """\
# The quantfw plugin contract

Generated from the docstrings of `quantfw.api` by `python -m quantfw.api.reference`; do not edit
by hand (`tests/test_contract_docs.py` fails when this file and the code disagree).

A plugin is a module with functions marked `@quantfw.hookimpl`, published under the entry-point
group `quantfw`. Registration hooks pass small dataclasses whose factories build the working
objects on demand; the working objects follow the protocols below. `quantfw.plugins.check_plugin`
(`deep=True`) checks a plugin against all of it.
"""


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "")


def _signature(fn: object, name: str) -> str:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return f"{name}{sig.replace(parameters=params)}".replace("'", "")  # annotations as written


def _section(title: str, items: Iterable[tuple[str, str]]) -> list[str]:
    out = [f"## {title}", ""]
    for head, body in items:
        out += [f"### `{head}`", "", body, ""]
    return out


def _hooks() -> list[tuple[str, str]]:
    names = [n for n in hookspecs.__all__ if n.startswith(f"{hookspecs.PROJECT_NAME}_")]
    return [(_signature(getattr(hookspecs, n), n), _doc(getattr(hookspecs, n))) for n in names]


def _members(cls: type, names: Iterable[str] | None = None) -> str:
    lines = [_doc(cls), ""]
    for name, member in vars(cls).items():
        if name.startswith("_") or (names is not None and name not in names):
            continue
        fn = member.fget if isinstance(member, property) else member
        if not (inspect.isfunction(fn) or isinstance(member, property)):
            continue
        head = name if isinstance(member, property) else _signature(fn, name)
        text = _doc(fn).replace("\n", "\n  ")
        lines.append(f"- `{head}`: {text}" if text else f"- `{head}`")
    return "\n".join(lines).rstrip()


def _fields(cls: type) -> str:
    return f"Fields: `{', '.join(f.name for f in dataclasses.fields(cls))}`.\n\n"


def _dataclass(cls: type) -> str:
    fields = ", ".join(f.name for f in dataclasses.fields(cls))
    return f"Fields: `{fields}`.\n\n{_doc(cls)}"


def render() -> str:
    """The whole reference, as Markdown."""
    out = [_INTRO]
    out += _section("Hooks", _hooks())
    out += ["### `StageEvent`", "", _dataclass(hookspecs.StageEvent), ""]
    regs = [components.FrontendInfo, components.AlgorithmInfo, components.BackendInfo,
            components.ConverterInfo, components.EngineInfo]  # fmt: skip
    out += _section("Registrations", [(c.__name__, _dataclass(c)) for c in regs])
    out += ["### `Stage`", "", _doc(components.Stage) + ": "
            + ", ".join(f"`{s.value}`" for s in components.STAGE_ORDER) + ".", ""]  # fmt: skip
    working = [protocols.Frontend, protocols.Backend, protocols.Converter, context.Algorithm,
               engines.Engine, engines.Optimizer]  # fmt: skip
    out += _section("Working objects", [(c.__name__, _members(c)) for c in working])
    caps = [
        (f"{name}: {proto.__name__}", _members(proto))
        for name, proto in protocols.CAPABILITIES.items()
    ]
    out += _section("Optional capabilities of a frontend", caps)
    out += _section(
        "What algorithms work with",
        [
            ("StageContext", _members(context.StageContext)),
            ("LayerProblem", _members(layers.LayerProblem)),
            ("BlockProblem", _members(blocks.BlockProblem)),
            ("BlockModule", _fields(blocks.BlockModule) + _members(blocks.BlockModule)),
        ],
    )
    out += _section(
        "Data",
        [
            ("Artifact", _dataclass(data.Artifact)),
            ("QuantizationResult", _members(result.QuantizationResult)),
        ],
    )
    text = "\n".join(out)
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
