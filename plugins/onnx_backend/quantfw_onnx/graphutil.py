"""Small helpers over ONNX graphs shared by the loader, the capture and the writers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import onnx
from onnx import helper

__all__ = ["unique_name", "edges", "attribute", "subgraphs", "outer_names"]


def unique_name(taken: set[str], base: str, first_suffix: int = 2) -> str:
    """``base``, else ``base_<k>`` for the first ``k >= first_suffix`` not in ``taken``; the
    chosen name joins ``taken``."""
    name, k = base, first_suffix - 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def edges(nodes: Iterable[onnx.NodeProto]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """``(producer, readers)``: tensor name -> index of the node writing it, and -> indices of
    the nodes reading it, in node order (empty names, ONNX's "absent input", are skipped)."""
    producer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.output:
            if t:
                producer[t] = i
        for t in n.input:
            if t:
                readers.setdefault(t, []).append(i)
    return producer, readers


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (an If's branches, a Loop's body, ...)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the nodes of ``graph`` (and of the graphs nested in it) read: a subgraph
    body reads tensors of the enclosing graph without listing them as inputs."""
    names: set[str] = set()
    for n in graph.node:
        names.update(t for t in n.input if t)
        for sub in subgraphs(n):
            names |= outer_names(sub)
    return names
