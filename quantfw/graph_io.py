"""Saving and loading QuantGraphs as ``.qgraph`` files (an ``.npz`` archive, never pickled).

The archive holds one array per initializer under ``init/<name>`` and the graph structure as a
UTF-8 JSON document in the ``__graph__`` entry.  Loading uses ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .arrayio import load_npz
from .fileio import atomic_write_bytes
from .graph import GraphError, Node, QuantGraph

__all__ = ["save_graph", "load_graph", "GRAPH_SUFFIX"]

GRAPH_SUFFIX = ".qgraph"
_FORMAT = "quantfw-graph"
_VERSION = 1


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(i) for i in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def save_graph(graph: QuantGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` to ``path`` atomically."""
    doc = {
        "format": _FORMAT,
        "version": _VERSION,
        "name": graph.name,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "input_shapes": {k: list(v) for k, v in graph.input_shapes.items()},
        "input_dtypes": dict(graph.input_dtypes),
        "nodes": [
            {
                "name": n.name,
                "op": n.op.value,
                "inputs": n.inputs,
                "outputs": n.outputs,
                "weights": n.weights,
                "attrs": {k: _jsonable(v) for k, v in n.attrs.items()},
                "source_op": n.source_op,
            }
            for n in graph.nodes
        ],
    }
    buf = io.BytesIO()
    arrays = {f"init/{k}": np.asarray(v) for k, v in graph.initializers.items()}
    arrays["__graph__"] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_graph(path: str | os.PathLike[str]) -> QuantGraph:
    """Read a ``.qgraph`` file.

    :raises ValueError: naming the file when it is missing, truncated, damaged or not a quantfw
        graph (see :func:`quantfw.arrayio.load_npz` for how the archive is read).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file {str(p)!r} does not exist")
    arrays = load_npz(p, what="quantfw graph file")
    raw = arrays.pop("__graph__", None)
    if raw is None:
        raise ValueError(f"{p}: not a quantfw graph file (no '__graph__' entry)")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{p}: the graph structure is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a quantfw graph file")
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{p}: graph format version {version!r} is not an integer")
    if version > _VERSION:
        raise ValueError(f"{p}: graph format version {version} is newer than this quantfw reads")
    inits = {k[5:]: v for k, v in arrays.items() if k.startswith("init/")}
    try:
        _check_doc(doc)
        nodes = [
            Node(
                name=n["name"],
                op=n["op"],
                inputs=n["inputs"],
                outputs=n["outputs"],
                weights=n.get("weights", {}),
                attrs=n.get("attrs", {}),
                source_op=n.get("source_op", ""),
            )
            for n in doc["nodes"]
        ]
        return QuantGraph(
            nodes=nodes,
            inputs=doc["inputs"],
            outputs=doc["outputs"],
            initializers=inits,
            name=doc.get("name", p.stem),
            input_shapes={k: tuple(v) for k, v in doc.get("input_shapes", {}).items()},
            input_dtypes=dict(doc.get("input_dtypes", {})),
        )
    except (KeyError, GraphError, ValueError) as exc:
        raise ValueError(f"{p}: invalid graph ({exc})") from None


def _names(value: Any, what: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of tensor names, not {value!r:.80}")


def _check_doc(doc: dict[str, Any]) -> None:
    """The JSON types :class:`QuantGraph` needs (values are checked by the graph itself)."""
    _names(doc.get("inputs"), "'inputs'")
    _names(doc.get("outputs"), "'outputs'")
    if not isinstance(doc.get("name", ""), str):
        raise ValueError("'name' must be a string")
    shapes = doc.get("input_shapes", {})
    if not isinstance(shapes, dict) or not all(
        isinstance(v, list)
        and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in v)
        for v in shapes.values()
    ):
        raise ValueError("'input_shapes' must map input names to lists of integers or null")
    dtypes = doc.get("input_dtypes", {})
    if not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values()):
        raise ValueError("'input_dtypes' must map input names to dtype names")
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise ValueError("'nodes' must be a list of objects")
    for i, n in enumerate(nodes):
        where = f"node {i} ({n.get('name')!r:.40})"
        if not isinstance(n.get("name"), str) or not isinstance(n.get("op"), str):
            raise ValueError(f"{where}: 'name' and 'op' must be strings")
        _names(n.get("inputs"), f"{where}: 'inputs'")
        _names(n.get("outputs"), f"{where}: 'outputs'")
        weights = n.get("weights", {})
        if not isinstance(weights, dict) or not all(isinstance(w, str) for w in weights.values()):
            raise ValueError(f"{where}: 'weights' must map roles to initializer names")
        if not isinstance(n.get("attrs", {}), dict) or not isinstance(n.get("source_op", ""), str):
            raise ValueError(f"{where}: 'attrs' must be an object and 'source_op' a string")
