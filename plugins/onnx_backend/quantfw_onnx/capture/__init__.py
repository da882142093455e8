"""ONNX graph → :class:`~quantfw.graph.QuantGraph`.

:func:`capture` reads a *prepared* model (see :func:`quantfw_onnx.loader.prepare`) and maps each
ONNX node to one op kind of quantfw's closed vocabulary.  Conventions backends rely on:

* tensor names are the ONNX tensor names; initializer names are the ONNX initializer names;
* ``node.name`` is an ONNX node name (``prepare`` names every node, uniquely) and
  ``node.source_op`` its ``op_type``;
* ``node.attrs["onnx_nodes"]`` lists, in graph order, the names of *all* ONNX nodes of
  ``graph.forms["onnx"]`` that the QuantGraph node stands for.  It has one entry except for merged
  patterns, whose ``node.name`` is the first of them:

  - ``MatMul`` with a constant 2-D weight followed by ``Add`` of a constant 1-D bias (the MatMul
    output read by that Add only) → one ``linear`` node ``[MatMul, Add]`` whose output is the Add's;
  - the erf GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))`` in either common order → one ``gelu`` node
    (5 ONNX nodes);
  - ``x * sigmoid(x)`` → one ``silu`` node ``[Sigmoid, Mul]``.

  Tensors inside a merged pattern (the MatMul output before the bias, …) are not QuantGraph
  tensors; they still exist in the ONNX model;
* ``attrs["folded"]`` names the BatchNormalization nodes ``prepare`` folded into a Conv;
* ``graph.forms["onnx"]`` is the prepared ``ModelProto``; treat it as
  read-only (copy before rewriting): the QuantGraph's initializers read their values from it.

Constant operands of element-wise ops stay in ``node.inputs`` as initializer names; constant
*parameters* (Reshape's shape, Clip's bounds, Slice's starts, axes, pads, …) become attributes and
are not inputs.  Ops whose output is not floating point (shape arithmetic) are ``other``.
"""

from .graph import capture
from .store import InitializerStore
from .view import FLOAT_TYPES

__all__ = ["capture", "InitializerStore", "FLOAT_TYPES"]
