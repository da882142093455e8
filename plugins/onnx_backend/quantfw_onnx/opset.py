"""The default-domain opset of an ONNX model, read one way everywhere in this plugin."""

from __future__ import annotations

import onnx

__all__ = ["DEFAULT_DOMAINS", "default_opset"]

#: Domain names ONNX uses for its default operator set.
DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (``ai.onnx``) opset ``model`` imports, or ``None`` when it
    imports none (a model of custom-domain ops only)."""
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return None
