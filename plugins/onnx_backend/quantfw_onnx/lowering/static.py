"""Static activations: one QuantizeLinear -> DequantizeLinear pair per quantized tensor.

The pair sits right after the tensor's producer (or at the top for a graph input) and every
quantized reader reads the DQ output -- the reference's semantics, where the simulation hook
replaces the tensor for all its readers.  One pair per tensor loses nothing: ONNX Runtime gives
each consumer its own copy of the DQ before fusing.

``QuantizeLinear`` always saturates to its type's range, so by default an activation format must
be the full grid of its ONNX type (int8, uint8, int4, uint4, fp8): a narrow-range or 3-bit
activation could not reproduce the reference's codes.  A target with
``allowed.narrow_activations = "clip_8bit"`` (x86) carries every integer grid of at most 8 bits
in uint8/int8 codes instead and restricts them with a ``Clip`` *on the codes*:
``QuantizeLinear(uint8) -> Clip(qmin, qmax) -> DequantizeLinear``, which is
``clip(clip(rint(x / s) + zp, 0, 255), qmin, qmax) == clip(rint(x / s) + zp, qmin, qmax)``, the
reference's codes.  ONNX Runtime 1.32 still fuses the ``DQ -> Conv/Gemm -> Q`` groups on either
side into ``QLinearConv``/``QGemm`` and runs the Clip on the uint8 tensor between them; a float
``Clip`` before the ``QuantizeLinear`` (to ``[(qmin - zp) s, (qmax - zp) s]``) is just as exact but
stops that fusion (the producing Conv ran in float: 4x slower on the digits CNN), as does
narrowing the model's own Relu into such a Clip.  Around max-pools, reshapes, concats...
(:data:`RANGE_KEEPING`) the Clip is placed once, after them (:func:`clipped_activations`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantfw.graph import OpKind, QuantGraph
from quantfw.numerics import equalization_multiplier
from quantfw.recipe import Equalization, Recipe, TensorRecipe

from .builder import Builder
from .errors import LoweringError
from .storage import qdq_attrs, storage_of, zero_point_tensor

__all__ = [
    "RANGE_KEEPING",
    "static_qdq",
    "equalize_node",
    "clip_codes",
    "clipped_activations",
    "carried_in_8bit",
    "NARROW_MODES",
]

#: Ways :func:`~quantfw_onnx.lowering.write_qdq` carries activation grids narrower than their
#: ONNX type (``narrow_activations``).
NARROW_MODES = ("own_type", "clip_8bit", "any")

#: Op kinds whose output values are some of their data inputs' values (rearranged, selected or
#: maxed): quantized with the inputs' own grid and params, their codes cannot leave the grid.
RANGE_KEEPING = frozenset(
    {
        OpKind.MAX_POOL,
        OpKind.RESHAPE,
        OpKind.TRANSPOSE,
        OpKind.FLATTEN,
        OpKind.SQUEEZE,
        OpKind.SLICE,
        OpKind.CONCAT,
        OpKind.IDENTITY,
    }
)


def equalize_node(b: Builder, name: str, src: str, eq: Equalization) -> onnx.NodeProto:
    """``src * (1 / eq.scale)``, one elementwise ``Mul`` writing a new tensor: the recipe's
    equalisation of ``name`` on its consumers' edges, with the reference's own float32
    multiplier (:func:`quantfw.numerics.equalization_multiplier`).  Folding it into a per-axis
    QuantizeLinear instead measured 5x slower in ONNX Runtime 1.32."""
    factor = b.add_init(
        numpy_helper.from_array(
            equalization_multiplier(eq.scale), b.fresh(f"{name}_equalize_scale")
        )
    )
    return helper.make_node(
        "Mul", [src, factor], [b.fresh(f"{name}_equalized")], name=b.fresh(f"{name}_Equalize")
    )


def static_qdq(
    b: Builder,
    name: str,
    src: str,
    out: str,
    t: TensorRecipe,
    eq: Equalization | None = None,
    *,
    clip_8bit: bool = False,
    in_range: bool = False,
) -> list[onnx.NodeProto]:
    """The nodes quantizing activation ``name`` (read from ``src``) and writing its
    dequantized value to ``out``: ``QuantizeLinear -> DequantizeLinear``, after the recipe's
    equalisation ``eq`` of the tensor's quantized edges when it has one (``Recipe.check`` makes
    the equalised consumers exactly the quantized ones).

    :param clip_8bit: carry integer grids of at most 8 bits in 8-bit codes, with a ``Clip`` on
        the codes between Q and DQ where the grid is narrower (module docstring).
    :param in_range: the codes provably stay in the grid already (no Clip needed).
    :raises LoweringError: for a format that is not the full grid of its ONNX type (without
        ``clip_8bit``).
    """
    spec = t.spec
    storage = storage_of(spec, clip_8bit=clip_8bit)
    if not storage.full_grid and not clip_8bit:
        raise LoweringError(
            f"activation {name!r}: {spec.dtype} in [{spec.qmin}, {spec.qmax}] is not the "
            f"full range of its ONNX storage type, and QuantizeLinear saturates to the full "
            "range, so the artifact's codes would differ from the reference's; use a "
            "full-range activation format (int8, uint8, int4, uint4, fp8) without narrow_range, "
            "or a target whose allowed.narrow_activations is 'clip_8bit' (x86)"
        )
    if t.params is None:  # pragma: no cover - TensorRecipe enforces params for static specs
        raise LoweringError(f"activation {name!r} has no params")
    attrs = qdq_attrs(spec, f"activation {name!r}")
    scale = b.add_init(
        numpy_helper.from_array(np.asarray(t.params.scale, np.float32), b.fresh(f"{name}_scale"))
    )
    zp = b.add_init(zero_point_tensor(b.fresh(f"{name}_zero_point"), t, storage))
    pre: list[onnx.NodeProto] = []
    if eq is not None:
        pre.append(equalize_node(b, name, src, eq))
        src = pre[-1].output[0]
    q_out = b.fresh(f"{name}_quantized")
    pre.append(
        helper.make_node(
            "QuantizeLinear",
            [src, scale, zp],
            [q_out],
            name=b.fresh(f"{name}_QuantizeLinear"),
            **attrs,
        )
    )
    if not storage.full_grid and not in_range:
        pre.append(clip_codes(b, name, q_out, spec.qmin, spec.qmax, storage.numpy_type))
        q_out = pre[-1].output[0]
    return pre + [
        helper.make_node(
            "DequantizeLinear",
            [q_out, scale, zp],
            [out],
            name=b.fresh(f"{name}_DequantizeLinear"),
            **attrs,
        ),
    ]


def clip_codes(
    b: Builder, name: str, codes: str, qmin: int, qmax: int, np_type: object
) -> onnx.NodeProto:
    """``Clip(codes, qmin, qmax)`` on 8-bit codes (opset >= 12 clips integer tensors): the
    restriction of activation ``name``'s uint8/int8 codes to its narrower grid."""
    lo = b.add_init(numpy_helper.from_array(np.asarray(qmin, np_type), b.fresh(f"{name}_qmin")))
    hi = b.add_init(numpy_helper.from_array(np.asarray(qmax, np_type), b.fresh(f"{name}_qmax")))
    return helper.make_node(
        "Clip",
        [codes, lo, hi],
        [b.fresh(f"{name}_quantized_narrow")],
        name=b.fresh(f"{name}_ClipCodes"),
    )


def clipped_activations(graph: QuantGraph, recipe: Recipe, carried: set[str]) -> set[str]:
    """Which of the static activations ``carried`` in 8-bit codes get a ``Clip`` on their codes
    (only grids narrower than their storage need one; the others stay in the grid without).

    A tensor computed by a :data:`RANGE_KEEPING` op from tensors on the same grid and params
    (:func:`_keeps_range`) is in the grid when its inputs are.  And a tensor whose every reader
    is such an op passes its Clip on to their outputs (*defers* it): ``Clip`` commutes with a
    max-pool or a reshape, so ``Q -> Clip -> DQ -> MaxPool -> Q -> DQ`` and ``Q -> DQ -> MaxPool
    -> Q -> Clip -> DQ`` give the same codes to every later reader.  Deferring lets ONNX
    Runtime's layout pass keep the max-pool in NHWC next to the integer kernels (with the Clip
    before it, the digits CNN's second max-pool stayed a uint8 NCHW MaxPool: W4A4 ran 1.41x the
    W8A8 artifact's time, 1.01-1.04x deferred), and it clips the pooled, smaller tensor.  The
    codes of a deferring tensor then exceed its grid, but only a range-keeping op reads them.
    """
    narrow = {
        x for x in carried if not storage_of(recipe.tensors[x].spec, clip_8bit=True).full_grid
    }
    consumers = graph.consumers()
    keeps = {x: _keeps_range(graph, recipe, x) for x in narrow}

    def deferred(x: str) -> bool:
        only = recipe.tensors[x].consumers  # None: every reader reads the quantized value
        readers = [n for n in consumers.get(x, []) if only is None or n.name in only]
        if not readers or x in graph.outputs:
            return False
        return all(
            n.op in RANGE_KEEPING and n.outputs and all(keeps.get(y, False) for y in n.outputs)
            for n in readers
        )

    produced = {x for node in graph for x in node.outputs}
    # graph inputs first: clipped where they are read, unless every reader takes the Clip over
    clipped = {x for x in narrow - produced if not deferred(x)}
    restricted = {x: x in clipped for x in narrow - produced}
    for node in graph:  # topological: inputs are decided before their readers
        for x in node.outputs:
            if x not in narrow:
                continue
            if keeps[x] and all(
                restricted.get(i, False) for i in node.inputs if i not in graph.initializers
            ):
                restricted[x] = True  # in the grid already
            elif deferred(x):
                restricted[x] = False  # its readers' outputs take the Clip
            else:
                restricted[x] = True
                clipped.add(x)
    return clipped


def _keeps_range(graph: QuantGraph, recipe: Recipe, name: str) -> bool:
    """Whether activation ``name``'s codes are a :data:`RANGE_KEEPING` function of its
    producer's data inputs' codes: every input is a static activation on the same grid with the
    same params, quantized for that op's read, and neither side is equalised."""
    node = graph.producers().get(name)
    t = recipe.tensors[name]
    if node is None or node.op not in RANGE_KEEPING or t.params is None:
        return False
    if name in recipe.equalizations:
        return False
    data = [x for x in node.inputs if x not in graph.initializers]
    if not data:
        return False
    for x in data:
        src = recipe.tensors.get(x)
        if (
            src is None
            or src.role != "activation"
            or src.spec.dynamic
            or src.params is None
            or x in recipe.equalizations
            or (src.consumers is not None and node.name not in src.consumers)
            or (src.spec.dtype, src.spec.qmin, src.spec.qmax)
            != (t.spec.dtype, t.spec.qmin, t.spec.qmax)
            or not np.array_equal(src.params.scale, t.params.scale)
            or not np.array_equal(src.params.zero_point, t.params.zero_point)
        ):
            return False
    return True


def carried_in_8bit(t: TensorRecipe, mode: str) -> bool:
    """Whether activation ``t`` is carried in 8-bit codes clipped to its grid (``mode``: see
    :func:`~quantfw_onnx.lowering.write_qdq`'s ``narrow_activations``)."""
    if t.role != "activation":
        return False  # constants are stored in 8 bits anyway (storage_of(constant=True))
    if mode != "any":
        return mode == "clip_8bit"
    return not storage_of(t.spec).full_grid
