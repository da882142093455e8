"""Constant folding: nodes whose inputs are all constants become initializers.

Which nodes fold: default-domain nodes of the ops in ``_FOLDABLE`` with one output that is not a
graph output and no subgraph, whose inputs are all initializers that are not graph inputs (an
initializer that is also a graph input is only a default) or outputs folded before them; ``Shape``
and ``Size`` of tensors whose shape is statically known fold too.  A result above
``_FOLD_FREE_ELEMENTS`` elements that is larger than its inputs together is not kept, nor is one
ONNX Runtime cannot compute.

Values come from ONNX Runtime, the runtime the model is meant for, with every graph optimization
off.  One *joint* session computes most of a pass's values at once, every node output being a
graph output of it, so that each value is the one a session of that node alone gives (ORT's
Cast clean-up, which runs even with optimizations off, keeps Casts that produce graph outputs).
Run one node per session, as they are reached, are: nodes reading an fp16 or bf16 value (ORT runs
such nodes in fp32 between Casts it inserts, and drops the Casts between two of them, which would
skip a rounding to fp16), nodes reading an initializer above
:data:`~quantfw_onnx.loader.shell.SHELL_BYTES` (a weight: no weight is converted while the others
are held), nodes reading a value of unknown type, and the nodes downstream of all of these.  If
the joint session fails, every node runs on its own, so a node ORT cannot run stays a node
without stopping the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphutil import attribute
from ..opset import DEFAULT_DOMAINS, default_opset
from .index import GraphIndex, drop_unused_initializers
from .shell import SHELL_BYTES, data_bytes

__all__ = ["fold_constants"]

# Ops cheap and safe to evaluate at prepare time when all their inputs are constants.
_FOLDABLE = frozenset(
    """
    Identity Cast Reshape Unsqueeze Squeeze Flatten Concat Gather Slice Transpose Shape Size
    Add Sub Mul Div Neg Sqrt Pow Reciprocal Range Equal Less Greater Not And Or Where Min Max
    Floor Ceil Abs ConstantOfShape Expand ReduceProd Tile GatherElements GatherND
    GreaterOrEqual LessOrEqual Xor Mod Sign Exp Log ReduceSum ReduceMax ReduceMin ReduceMean
    IsNaN IsInf Trilu CumSum NonZero OneHot
    """.split()
)
# Above this many elements a folded result must not be larger than its inputs together.
_FOLD_FREE_ELEMENTS = 1 << 16
# Element types the joint session never reads: ORT runs many fp16 nodes in fp32 between Casts it
# inserts, and drops the Casts between two such nodes, so a value would skip fp16 rounding.
_NOT_JOINT = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, for the tensors of ``model``'s value_info, inputs and outputs whose
    every dimension is a known number."""
    out: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            else:
                break
        else:
            out[vi.name] = tuple(dims)
    return out


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, for the tensors of ``model``'s value_info, inputs and
    outputs whose type is known."""
    g = model.graph
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }


def fold_constants(model: onnx.ModelProto) -> int:
    """Fold constant nodes into initializers, in place (see the module docstring).  Returns how
    many nodes were folded."""
    graph = model.graph
    opset = default_opset(model)
    if opset is None:
        return 0  # no default-domain op to fold
    idx = GraphIndex(graph)
    plan = _plan(model, idx)
    values = _run_joint(plan, idx, opset, model.ir_version)
    keep: list[onnx.NodeProto] = []
    folded = 0
    for i, node in enumerate(graph.node):
        value = plan.static.get(i)
        if i in plan.computed:
            ins = [t for t in node.input if t]
            if all(t in idx.inits and t not in idx.graph_inputs for t in ins):
                # (an initializer that is also a graph input is only a default: not constant)
                out = node.output[0]
                if out in values:
                    value = values.pop(out)
                else:
                    alone = _run([node], _feeds(ins, idx, {}), opset, model.ir_version)
                    value = None if alone is None else alone[out]
                value = _kept(value, ins, idx)
        if value is None:
            keep.append(node)
            continue
        t = numpy_helper.from_array(np.asarray(value), node.output[0])
        graph.initializer.append(t)
        idx.inits[t.name] = graph.initializer[-1]
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(graph)
    return folded


@dataclass
class _Plan:
    """What one folding pass computes, before it runs anything."""

    #: node position -> value, for ``Shape`` and ``Size`` of statically shaped tensors
    static: dict[int, np.ndarray] = field(default_factory=dict)
    #: positions of the other foldable nodes: computed when their inputs turn out constant
    computed: set[int] = field(default_factory=set)
    #: the computed nodes, in graph order, whose inputs are small constants, static values or
    #: outputs of earlier joint nodes, none of them fp16 or bf16: the joint session's graph
    joint: list[onnx.NodeProto] = field(default_factory=list)
    #: static values by output name (what joint nodes may read)
    named: dict[str, np.ndarray] = field(default_factory=dict)


def _plan(model: onnx.ModelProto, idx: GraphIndex) -> _Plan:
    """Sort the foldable nodes of ``model`` into a :class:`_Plan` (nothing is run yet)."""
    plan = _Plan()
    shapes = _static_shapes(model)
    types = _element_types(model)
    joinable = {  # what joint nodes may read
        t
        for t, proto in idx.inits.items()
        if t not in idx.graph_inputs
        and data_bytes(proto) <= SHELL_BYTES
        and proto.data_type not in _NOT_JOINT
    }
    for i, node in enumerate(model.graph.node):
        if not (
            node.domain in DEFAULT_DOMAINS
            and node.op_type in _FOLDABLE
            and len(node.output) == 1
            and node.output[0] not in idx.graph_outputs
            and not any(a.HasField("g") or len(a.graphs) for a in node.attribute)
        ):
            continue
        ins = [t for t in node.input if t]
        out = node.output[0]
        value = None
        if node.op_type == "Shape" and ins:
            shape = shapes.get(ins[0])
            if shape is not None:
                start = int(attribute(node, "start", 0))
                end = attribute(node, "end", None)
                value = np.array(shape[start : None if end is None else int(end)], np.int64)
        elif node.op_type == "Size" and ins and ins[0] in shapes:
            value = np.array(math.prod(shapes[ins[0]]), np.int64)
        elif ins:
            plan.computed.add(i)
            if all(t in joinable for t in ins):
                plan.joint.append(node)
                if types.get(out, TensorProto.UNDEFINED) not in _NOT_JOINT | {
                    TensorProto.UNDEFINED
                }:
                    joinable.add(out)
        if value is not None:
            plan.static[i] = plan.named[out] = value
            joinable.add(out)
    return plan


def _kept(value: np.ndarray | None, ins: list[str], idx: GraphIndex) -> np.ndarray | None:
    """``value``, unless it holds strings or is too big (see ``_FOLD_FREE_ELEMENTS``)."""
    if value is None:
        return None
    value = np.asarray(value)
    in_size = sum(math.prod(idx.inits[t].dims) for t in dict.fromkeys(ins))
    if value.dtype == object or (value.size > _FOLD_FREE_ELEMENTS and value.size > in_size):
        return None
    return value


def _feeds(
    names: Iterable[str], idx: GraphIndex, named: dict[str, np.ndarray]
) -> dict[str, tuple[int, np.ndarray]]:
    """Name -> (ONNX type, value) of constant inputs: values in ``named``, else initializers."""
    out: dict[str, tuple[int, np.ndarray]] = {}
    for t in dict.fromkeys(names):
        if t in named:
            out[t] = (TensorProto.INT64, named[t])
        else:
            out[t] = (idx.inits[t].data_type, numpy_helper.to_array(idx.inits[t]))
    return out


def _run_joint(plan: _Plan, idx: GraphIndex, opset: int, ir: int) -> dict[str, np.ndarray]:
    """The outputs of the joint nodes from one session, by name; empty when it fails (then every
    node is run on its own, as it is reached)."""
    if not plan.joint:
        return {}
    made = {n.output[0] for n in plan.joint}
    try:
        feeds = _feeds(
            (t for n in plan.joint for t in n.input if t and t not in made), idx, plan.named
        )
    except ValueError:  # a malformed initializer: it raises when its node is reached alone
        return {}
    return _run(plan.joint, feeds, opset, ir) or {}


def _run(
    nodes: list[onnx.NodeProto],
    feeds: dict[str, tuple[int, np.ndarray]],
    opset: int,
    ir: int,
) -> dict[str, np.ndarray] | None:
    """Run ``nodes`` on ONNX Runtime with every graph optimization off: ``feeds`` (name ->
    (ONNX type, value)) are the graph inputs, every node's output is a graph output.  ``None``
    when the runtime cannot build or run it."""
    import onnxruntime as ort

    outputs = [n.output[0] for n in nodes]
    g = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info(t, ty, list(a.shape)) for t, (ty, a) in feeds.items()],
        [onnx.ValueInfoProto(name=t) for t in outputs],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        values = sess.run(outputs, {t: a for t, (_, a) in feeds.items()})
    except Exception:  # anything the runtime cannot do here stays a node
        return None
    return dict(zip(outputs, values, strict=True))
