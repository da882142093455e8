"""What quantfw records in a model's ``metadata_props``: the prepared mark and folded BatchNorms."""

from __future__ import annotations

import json

import onnx

__all__ = [
    "PREPARED_KEY",
    "FOLDED_KEY",
    "get_meta",
    "set_meta",
    "is_prepared",
    "folded_batchnorms",
]

#: ``metadata_props`` key marking a model :func:`~quantfw_onnx.loader.prepare` produced (value:
#: quantfw-onnx version).
PREPARED_KEY = "quantfw.prepared"
#: ``metadata_props`` key listing folded BatchNormalization nodes: JSON ``{conv node: bn node}``.
FOLDED_KEY = "quantfw.folded_batchnorm"


def get_meta(model: onnx.ModelProto, key: str) -> str | None:
    """The value ``metadata_props`` holds for ``key``, or ``None``."""
    for p in model.metadata_props:
        if p.key == key:
            return p.value
    return None


def set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set ``key`` in ``metadata_props`` (replacing the value it has, if any)."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def is_prepared(model: onnx.ModelProto) -> bool:
    """True when ``model`` came out of :func:`~quantfw_onnx.loader.prepare` (marked in its
    ``metadata_props``)."""
    return any(p.key == PREPARED_KEY for p in model.metadata_props)


def folded_batchnorms(model: onnx.ModelProto) -> dict[str, str]:
    """``{conv node name: folded BatchNormalization node name}`` recorded by
    :func:`~quantfw_onnx.loader.prepare`."""
    raw = get_meta(model, FOLDED_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
