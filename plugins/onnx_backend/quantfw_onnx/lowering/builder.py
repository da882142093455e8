"""What one lowering adds to a model: unique names, new initializers, shared constants, and the
nodes that must come first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..graphutil import unique_name

__all__ = ["Builder"]


@dataclass
class Builder:
    """The new parts of one artifact, collected while its lowerings run.

    :ivar names: every name the model uses (tensors and nodes), new ones included.
    :ivar opset: the artifact's default-domain opset, once raised.
    :ivar inits: the initializers the lowering made, appended to the graph at the end.
    :ivar consts: initializers (or node outputs) made once and shared, by a key naming them.
    :ivar head: nodes that go before every other node.
    """

    names: set[str] = field(default_factory=set)
    opset: int = 0
    inits: list[TensorProto] = field(default_factory=list)
    consts: dict[str, str] = field(default_factory=dict)
    head: list[onnx.NodeProto] = field(default_factory=list)

    def fresh(self, base: str) -> str:
        """A name no tensor or node of the model has (``base``, else ``base_<k>``), now taken."""
        return unique_name(self.names, base)

    def add_init(self, tensor: TensorProto) -> str:
        """Add ``tensor`` to the artifact's initializers; its name."""
        self.inits.append(tensor)
        return tensor.name

    def const(self, value: Any, base: str, dtype: Any = np.float32) -> str:
        """A constant initializer, made once per (dtype, value) and shared."""
        arr = np.asarray(value, dtype)
        key = f"{arr.dtype}:{arr.shape}:{arr.tobytes().hex()}"
        if key not in self.consts:
            self.consts[key] = self.add_init(numpy_helper.from_array(arr, self.fresh(base)))
        return self.consts[key]
