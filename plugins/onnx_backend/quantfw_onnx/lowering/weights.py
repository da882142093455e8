"""Quantized constants: weights become integer codes + DequantizeLinear, biases int32 codes.

* A quantized constant's float initializer (or Constant node) is replaced by its codes from
  :func:`quantfw.numerics.quantize` (of ``recipe.weights[name]`` where a transform rewrote it),
  a scale, a zero point and a DequantizeLinear whose output *takes the constant's old name*: every
  reader, subgraphs included, sees the dequantized weight without rewiring.
* Biases are int32 codes + DQ (scale ``s_x * s_w`` from the recipe) rather than baked float: ONNX
  Runtime turns a MatMul + float-bias Add into a float Gemm, while an int32 DQ bias gives QGemm.
  DQ(int32) in float32 is bit for bit :func:`quantfw.numerics.dequantize`.
* ONNX Runtime's QGemm fusion adds int32 bias codes without checking their scale, so a bias
  whose scale is not ``s_x * s_w`` of its quantized op is stored instead as the float values
  ``dequantize(quantize(b))`` -- still the reference's numbers -- with a warning.

(``tests/plugin_onnx/test_ort_rules.py`` checks the ONNX Runtime behaviour these rely on.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantfw.graph import QuantGraph
from quantfw.numerics import dequantize, quantize
from quantfw.recipe import Recipe, TensorRecipe
from quantfw.spec import Granularity

from .builder import Builder
from .errors import LoweringError
from .storage import Storage, codes_tensor, qdq_attrs, storage_of, zero_point_tensor

__all__ = ["ModelConstants", "Weight", "bias_scale_ok", "bake_float", "lower_constant"]

_F32 = np.float32


@dataclass
class ModelConstants:
    """The main graph's constants by name: its initializers and its Constant nodes' outputs."""

    graph: onnx.GraphProto
    inits: dict[str, TensorProto]
    nodes: dict[str, onnx.NodeProto]

    @classmethod
    def of(cls, g: onnx.GraphProto) -> ModelConstants:
        constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        return cls(g, {i.name: i for i in g.initializer}, constants)

    def value(self, name: str) -> np.ndarray:
        """The constant's value.

        :raises LoweringError: when ``name`` is not a constant of the model.
        """
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.nodes:
            for a in self.nodes[name].attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        raise LoweringError(
            f"{name!r} is not an initializer (or Constant) of the model; quantized weights must "
            "be constants (fold the ops that compute them first)"
        )

    def drop(self, name: str) -> None:
        """Remove the constant (its initializer, or its Constant node) from the graph."""
        g = self.graph
        if name in self.inits:
            g.initializer.remove(self.inits.pop(name))
            for v in list(g.input):  # IR < 4 models list initializers among the inputs
                if v.name == name:
                    g.input.remove(v)
        elif name in self.nodes:
            g.node.remove(self.nodes.pop(name))

    def replace(self, name: str, value: np.ndarray) -> None:
        """Give the constant ``value`` (in its own dtype).

        :raises LoweringError: when the shapes differ.
        """
        old = self.value(name)
        if tuple(old.shape) != tuple(value.shape):
            raise LoweringError(
                f"the recipe rewrites weight {name!r} with shape {tuple(value.shape)}, but the "
                f"model's has shape {tuple(old.shape)}"
            )
        new = numpy_helper.from_array(value.astype(old.dtype), name)
        if name in self.inits:
            self.inits[name].CopyFrom(new)
        else:
            for a in self.nodes[name].attribute:
                if a.name == "value":
                    a.t.CopyFrom(new)


@dataclass
class Weight:
    """A quantized constant: its codes and the names of its codes, scale and zero point
    initializers (what the integer rewrites read)."""

    codes: np.ndarray
    recipe: TensorRecipe
    storage: Storage
    codes_name: str
    scale_name: str
    zp_name: str
    dq_node: onnx.NodeProto | None = None

    def fits_matmul_integer(self, trans_b: bool) -> bool:
        """Whether the codes can be ``MatMulInteger``'s B: 8-bit integers, 2-D, one scale per
        tensor or per output column (scales along the summed axis cannot be factored out of the
        sum); ``trans_b`` for a Gemm reading them transposed."""
        spec = self.recipe.spec
        if spec.is_float or self.storage.onnx_type not in (TensorProto.INT8, TensorProto.UINT8):
            return False
        if self.codes.ndim != 2:
            return False
        if spec.granularity is Granularity.PER_CHANNEL:
            return int(spec.axis) % 2 == (0 if trans_b else 1)  # type: ignore[arg-type]
        return spec.granularity is Granularity.PER_TENSOR


def bias_scale_ok(graph: QuantGraph, recipe: Recipe, name: str, t: TensorRecipe) -> bool:
    """Whether an int32 bias's scale is ``s_x * s_w`` of the op reading it (or no such op is
    quantized).  ONNX Runtime's QGemm fusion adds the int32 codes to the accumulator *without*
    checking the scale, so any other scale would give silently wrong results."""
    if t.spec.dtype != "int32" or t.params is None:
        return True
    users = [n for n in graph.nodes if n.weights.get("bias") == name]
    for node in users:
        x = recipe.tensors.get(node.inputs[0]) if node.inputs else None
        w = recipe.tensors.get(node.weights.get("weight", ""))
        if x is None or w is None or x.params is None or w.params is None:
            continue
        if x.params.scale.size != 1 or w.spec.granularity not in (
            Granularity.PER_TENSOR,
            Granularity.PER_CHANNEL,
        ):
            return False
        expected = (x.params.scale.reshape(()) * w.params.scale).astype(_F32)
        got = np.broadcast_to(t.params.scale, expected.shape)
        if not np.allclose(got, expected, rtol=1e-6, atol=0):
            return False
    return True


def bake_float(consts: ModelConstants, recipe: Recipe, name: str, t: TensorRecipe) -> None:
    """Store ``dequantize(quantize(b))`` as a float constant: the reference's value, exactly,
    without an int32 DQ that a fused kernel would misread."""
    assert t.params is not None
    warnings.warn(
        f"bias {name!r}: its int32 scale is not input scale x weight scale, which ONNX "
        "Runtime's integer kernels assume; it is stored as float (the same values), so "
        "the op may run in float",
        stacklevel=5,  # the caller of write_qdq (<- Writer.run <- Writer.lower_constants)
    )
    base = recipe.weights.get(name)
    if base is None:
        base = consts.value(name)
    value = dequantize(quantize(np.asarray(base, _F32), t.params, t.spec), t.params, t.spec)
    consts.replace(name, value)


def lower_constant(
    b: Builder,
    consts: ModelConstants,
    recipe: Recipe,
    name: str,
    t: TensorRecipe,
    top: list[onnx.NodeProto],
) -> Weight:
    """Replace the constant ``name`` by its codes and a DequantizeLinear writing ``name``
    (appended to ``top``, the nodes that go first).

    :raises LoweringError: when the constant is missing, not float, of another shape than the
        recipe's rewritten value, or the recipe has no params for it.
    """
    if t.params is None:
        raise LoweringError(f"{t.role} {name!r} has no params in the recipe")
    model_value = consts.value(name)
    base = recipe.weights.get(name)
    if base is None:
        base = model_value
    elif tuple(base.shape) != tuple(model_value.shape):
        raise LoweringError(
            f"the recipe rewrites {name!r} with shape {tuple(base.shape)}, but the model's "
            f"has shape {tuple(model_value.shape)}"
        )
    if np.asarray(base).dtype.kind != "f":
        raise LoweringError(f"{t.role} {name!r} is not a float tensor ({base.dtype})")
    storage = storage_of(t.spec, constant=True)
    try:
        codes = quantize(np.asarray(base, dtype=_F32), t.params, t.spec)
    except ValueError as exc:
        raise LoweringError(f"{t.role} {name!r}: {exc}") from None
    consts.drop(name)
    # the DQ output takes the constant's name: the name is free again, keep it reserved
    codes_name = b.add_init(codes_tensor(b.fresh(f"{name}_quantized"), codes, storage))
    scale_name = b.add_init(
        numpy_helper.from_array(np.asarray(t.params.scale, _F32), b.fresh(f"{name}_scale"))
    )
    zp_name = b.add_init(zero_point_tensor(b.fresh(f"{name}_zero_point"), t, storage))
    dq = helper.make_node(
        "DequantizeLinear",
        [codes_name, scale_name, zp_name],
        [name],
        name=b.fresh(f"{name}_DequantizeLinear"),
        **qdq_attrs(t.spec, f"{t.role} {name!r}"),
    )
    top.append(dq)
    return Weight(codes, t, storage, codes_name, scale_name, zp_name, dq)
