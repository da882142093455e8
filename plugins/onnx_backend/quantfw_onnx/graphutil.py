"""Small helpers over ONNX graphs shared by the loader, the capture and the writers."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

__all__ = ["unique_name", "edges"]


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
