"""Embedding tables: a ``Gather`` of a quantized table gathers codes and dequantizes only the
gathered rows.

``DequantizeLinear(whole table) -> Gather`` would dequantize the table (47 MB for
all-MiniLM-L6-v2's word embeddings) on every inference.  The DequantizeLinear of the whole table
stays only for other readers (a tied output projection); without any it is pruned.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantfw.spec import Granularity

from ..opset import DEFAULT_DOMAINS
from .builder import Builder
from .weights import Weight

__all__ = ["lower_gathers"]

_F32 = np.float32


def lower_gathers(b: Builder, g: onnx.GraphProto, name: str, w: Weight) -> int:
    """Rewrite every ``Gather(name, ids, axis=0)`` of the main graph to gather the integer
    codes and dequantize only the gathered rows; returns how many were rewritten.

    * one scale per row (per-channel on the gathered axis): ``Gather(codes, ids)``,
      ``Gather(scale, ids)`` (the scales stored as ``(rows, 1, …)`` so that they broadcast
      over the row), ``Cast`` to float, ``Sub`` of the gathered zero points (only when some
      are not 0, stored as float: small integers, exact) and ``Mul`` -- float32 ``(q - zp) *
      s``, bit for bit :func:`quantfw.numerics.dequantize` of the gathered codes;
    * per-tensor, or per-channel on another axis: ``Gather(codes, ids)`` then a
      ``DequantizeLinear`` (per-channel ``axis`` counted from the end, as the gathered
      tensor's rank depends on ``ids``).

    Only int8/uint8 storage (int7 and narrower included); other formats and per-group
    weights keep the DequantizeLinear of the table.  The rewritten Gather keeps its name and
    the last new node writes its output, so readers are untouched.
    """
    t, spec, storage = w.recipe, w.recipe.spec, w.storage
    rank = w.codes.ndim
    if (
        t.role != "weight"
        or rank == 0
        or storage.onnx_type not in (TensorProto.INT8, TensorProto.UINT8)
        or spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
    ):
        return 0
    axis = None
    if spec.granularity is Granularity.PER_CHANNEL:
        axis = int(spec.axis) % rank  # type: ignore[arg-type]
    found = []
    for i, n in enumerate(g.node):
        if n.op_type != "Gather" or n.domain not in DEFAULT_DOMAINS or len(n.input) < 2:
            continue
        if n.input[0] != name or name in n.input[1:]:
            continue
        gather_axis = next((int(a.i) for a in n.attribute if a.name == "axis"), 0)
        if gather_axis % rank == 0:
            found.append(i)
    if not found:
        return 0
    assert t.params is not None
    rows: dict[str, str] = {}  # per-row scale / zero point initializers, made once
    if axis == 0:
        row_shape = (w.codes.shape[0],) + (1,) * (rank - 1)
        scale = np.asarray(t.params.scale, _F32).reshape(row_shape)
        rows["scale"] = b.add_init(numpy_helper.from_array(scale, b.fresh(f"{name}_row_scale")))
        zp = np.asarray(t.params.zero_point).reshape(row_shape)
        if np.any(zp != 0):
            rows["zero_point"] = b.add_init(
                numpy_helper.from_array(zp.astype(_F32), b.fresh(f"{name}_row_zero_point_float"))
            )
    for i in reversed(found):  # back to front: inserting keeps the earlier indices valid
        n = g.node[i]
        ids, out = n.input[1], n.output[0]
        base = n.name or out
        gathered = b.fresh(f"{out}_quantized")
        n.input[0] = w.codes_name
        n.output[0] = gathered
        if axis == 0:
            new = _dequantize_rows(b, gathered, ids, out, base, rows)
        else:
            attrs = {} if axis is None else {"axis": axis - rank}
            new = [
                helper.make_node(
                    "DequantizeLinear",
                    [gathered, w.scale_name, w.zp_name],
                    [out],
                    name=b.fresh(f"{base}_DequantizeLinear"),
                    **attrs,
                )
            ]
        for k, node in enumerate(new):
            g.node.insert(i + 1 + k, node)
    return len(found)


def _dequantize_rows(
    b: Builder, gathered: str, ids: str, out: str, base: str, rows: dict[str, str]
) -> list[onnx.NodeProto]:
    """``out = (float(gathered) - zp[ids]) * scale[ids]`` with per-row scales (and zero
    points): the nodes :func:`lower_gathers` puts after a Gather of codes."""
    scale = b.fresh(f"{out}_scale")
    codes = b.fresh(f"{out}_codes_float")
    nodes = [
        helper.make_node(
            "Gather", [rows["scale"], ids], [scale], name=b.fresh(f"{base}_GatherScale")
        ),
        helper.make_node(
            "Cast", [gathered], [codes], to=TensorProto.FLOAT, name=b.fresh(f"{base}_Cast")
        ),
    ]
    if "zero_point" in rows:
        zp, centred = b.fresh(f"{out}_zero_point"), b.fresh(f"{out}_centred")
        nodes += [
            helper.make_node(
                "Gather", [rows["zero_point"], ids], [zp], name=b.fresh(f"{base}_GatherZeroPoint")
            ),
            helper.make_node("Sub", [codes, zp], [centred], name=b.fresh(f"{base}_SubZeroPoint")),
        ]
        codes = centred
    nodes.append(helper.make_node("Mul", [codes, scale], [out], name=b.fresh(f"{base}_Dequantize")))
    return nodes
