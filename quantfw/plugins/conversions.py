"""Chains of registered conversions: finding the shortest one, running it, explaining a missing one.

A conversion path is a list of :class:`~quantfw.api.components.ConverterInfo` whose formats link
up (``torch → onnx → tflite``).  The search is breadth-first over the converters usable here,
in registration order, so the path is the shortest and, among those, the first registered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from ..api.components import ConverterInfo
from ..api.formats import install_hint_for
from ..errors import UnavailableError

__all__ = ["ConversionError", "find_path", "run_path", "describe_missing"]


class ConversionError(UnavailableError, LookupError):
    """No installed plugin converts the model into the format that is needed."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


def find_path(
    converters: Iterable[ConverterInfo], source: str, target: str, *, keeps_names: bool = False
) -> list[ConverterInfo] | None:
    """The shortest chain of ``converters`` from ``source`` to ``target`` (``[]`` when they are
    the same format), or ``None``.  With ``keeps_names`` only name-keeping converters count."""
    if source == target:
        return []
    usable = [c for c in converters if c.keeps_names or not keeps_names]
    came_from: dict[str, ConverterInfo | None] = {source: None}
    queue = deque([source])
    while queue:
        fmt = queue.popleft()
        for conv in usable:
            if conv.source != fmt or conv.target in came_from:
                continue
            came_from[conv.target] = conv
            if conv.target == target:
                path = [conv]
                while (prev := came_from[path[0].source]) is not None:
                    path.insert(0, prev)
                return path
            queue.append(conv.target)
    return None


def run_path(model: object, path: Sequence[ConverterInfo], options: dict[str, Any]) -> object:
    """Run each converter of ``path`` on the previous one's result.  ``options`` go to the first
    converter (the one reading the user's model, e.g. ``example_inputs``)."""
    for i, info in enumerate(path):
        try:
            converter = info.factory()
        except TypeError as exc:
            raise ValueError(f"converter {info.name!r} could not be built: {exc}") from None
        model = converter.convert(model, **(options if i == 0 else {}))
    return model


def describe_missing(
    sources: Sequence[str],
    targets: Sequence[str],
    converters: Iterable[ConverterInfo],
    unavailable: dict[str, str],
    installed: Iterable[str] = (),
) -> str:
    """Why no conversion leads from any of ``sources`` to any of ``targets``, and what to
    install; ``unavailable`` maps registered-but-unusable converter names to their reason,
    ``installed`` lists the formats some installed plugin already handles (no hint for those)."""
    known = [f"{c.source}→{c.target} ({c.name})" for c in converters]
    parts = [
        f"no installed conversion leads from {' or '.join(sources) or 'the model'} to "
        f"{' or '.join(targets)}",
        f"installed conversions: {', '.join(known) if known else 'none'}",
    ]
    if unavailable:
        parts.append(
            "registered but unusable here: "
            + "; ".join(f"{name}: {why}" for name, why in unavailable.items())
        )
    handled = set(installed)
    hints = sorted(
        {h for f in (*targets, *sources) if f not in handled and (h := install_hint_for(f))}
    )
    if hints:
        parts.append(f"plugins for these formats: {', '.join(hints)}")
    return "; ".join(parts)
