"""The one error the ONNX lowering raises for what it cannot express."""

from __future__ import annotations

__all__ = ["LoweringError"]


class LoweringError(ValueError):
    """A recipe, model or spec that cannot be written as an ONNX artifact, and why."""
