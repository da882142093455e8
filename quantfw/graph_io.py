"""Saving and loading QuantGraphs as ``.qgraph`` files (an ``.npz`` archive, never pickled).

The archive holds one array per initializer under ``init/<name>`` and the graph structure as a
UTF-8 JSON document in the ``__graph__`` entry.  Loading uses ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

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

    :raises ValueError: naming the file when it is missing, truncated or not a quantfw graph.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file {str(p)!r} does not exist")
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            doc = json.loads(bytes(data["__graph__"]).decode("utf-8"))
            inits = {k[5:]: data[k] for k in data.files if k.startswith("init/")}
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as exc:
        raise ValueError(
            f"{p}: not a readable quantfw graph file ({type(exc).__name__}: {exc}); "
            "was it truncated or written by another program?"
        ) from None
    if doc.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a quantfw graph file")
    if int(doc.get("version", 0)) > _VERSION:
        raise ValueError(
            f"{p}: graph format version {doc['version']} is newer than this quantfw reads"
        )
    try:
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
