"""Reading ONNX models, and preparing them once for quantization.

:func:`load_onnx` reads a ``.onnx`` file (with its external-data side files) or checks a
``ModelProto``; every problem becomes a ``ValueError`` naming the file.  :func:`prepare` rewrites
the model the way quantization wants it -- shape inference, constant folding, Conv+BatchNorm
folding, unique node names -- in ONNX itself, so that calibration, simulation and every backend see
one and the same prepared model (it is what ``QuantGraph.source`` holds).

Memory
------
Weights are kept once.  ``load_onnx`` parses the file through a read-only memory map into one
``ModelProto`` (so the file's bytes are not a second in-process copy while parsing) and reads
external data straight into it; nothing is serialized back to bytes.  ``onnx.checker`` and
``onnx.shape_inference`` need a serialized model, so they run on a *shell*: a copy of the model in
which every initializer bigger than :data:`SHELL_BYTES` carries its type and dims but no data (the
checker gets a zero-size placeholder instead; shape inference only needs types and dims for
those).  Small initializers -- shapes, axes, scalars -- keep their values, so shape inference can
still read a Reshape's target shape.  The shell is also how models above protobuf's 2 GiB limit get
checked at all.  (Python's protobuf returns a fresh ``bytes`` for ``raw_data`` on every access, so
``onnx.numpy_helper.to_array`` cannot give a view into the model; see
:class:`quantfw_onnx.capture.InitializerStore` for how the QuantGraph avoids a second copy.)
"""

from __future__ import annotations

import json
import math
import mmap
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from .graphutil import unique_name
from .opset import default_opset

__all__ = [
    "load_onnx",
    "check_model",
    "prepare",
    "is_prepared",
    "folded_batchnorms",
    "model_shell",
    "PREPARED_KEY",
    "FOLDED_KEY",
    "SHELL_BYTES",
    "data_bytes",
]

#: ``metadata_props`` key marking a model :func:`prepare` produced (value: quantfw-onnx version).
PREPARED_KEY = "quantfw.prepared"
#: ``metadata_props`` key listing folded BatchNormalization nodes: JSON ``{conv node: bn node}``.
FOLDED_KEY = "quantfw.folded_batchnorm"
#: Initializers with more data bytes than this travel without data in shells.
SHELL_BYTES = 16 * 1024

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


def _where(model: onnx.ModelProto, source: str | os.PathLike[str] | None) -> str:
    if source is not None:
        return f"ONNX model {str(source)!r}"
    name = model.graph.name if model.HasField("graph") else ""
    return f"ONNX model {name!r}" if name else "ONNX model"


# ------------------------------------------------------------------------------------------------
# shells: the model without the bulk of its weights
# ------------------------------------------------------------------------------------------------


def _copy_fields(src: Any, dst: Any, skip: Iterable[str] = ()) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those in ``skip``."""
    skip = set(skip)
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        repeated = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; `label` before
        if repeated is None:
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _data_free(tensor: TensorProto, placeholder: bool) -> TensorProto:
    """A copy of ``tensor`` without its data: same name, type and dims (or, for the checker, a
    zero-size placeholder of the same type, which needs no data at all)."""
    out = TensorProto(name=tensor.name, data_type=tensor.data_type)
    if placeholder:
        out.dims.append(0)
    else:
        out.dims.extend(tensor.dims)
    return out


def data_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, from its type and dims (no copy: with upb, reading ``raw_data``
    or ``ByteSize()`` materializes the whole tensor once more)."""
    want = _expected_bytes(tensor)
    return tensor.ByteSize() if want is None else want


def model_shell(
    model: onnx.ModelProto, *, placeholder: bool = False, keep: Iterable[str] = ()
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above :data:`SHELL_BYTES` (except those named in
    ``keep``) carry no data; see the module docstring.

    :param placeholder: give data-free initializers the dims ``[0]`` (what ``onnx.checker`` accepts)
        instead of their real dims (what shape inference and ONNX Runtime want).
    """
    keep = set(keep)
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip=("graph",))
    _copy_fields(model.graph, shell.graph, skip=("initializer",))
    for t in model.graph.initializer:
        if t.name not in keep and data_bytes(t) > SHELL_BYTES:
            shell.graph.initializer.append(_data_free(t, placeholder))
        else:
            shell.graph.initializer.append(t)
    return shell


# ------------------------------------------------------------------------------------------------
# loading and checking
# ------------------------------------------------------------------------------------------------


def _expected_bytes(t: TensorProto) -> int | None:
    try:
        np_dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if t.data_type in (
        TensorProto.STRING,
        TensorProto.INT4,
        TensorProto.UINT4,
        TensorProto.FLOAT4E2M1,
    ) or t.data_type in {getattr(TensorProto, n, -1) for n in ("INT2", "UINT2")}:
        return None
    return int(math.prod(t.dims)) * np.dtype(np_dtype).itemsize


def check_model(model: onnx.ModelProto, where: str = "ONNX model") -> None:
    """Run ``onnx.checker`` on a weightless shell of ``model``.

    :raises ValueError: starting with ``where`` and quoting what the checker said.
    """
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ValueError(
            f"{where} is not an ONNX model: it has no IR version or no graph (is it an ONNX file?)"
        )
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ValueError(
                f"{where}: initializer {t.name!r} refers to external data that was not loaded; "
                "pass the .onnx file path (its side files are read from its folder), or load it "
                "with onnx.load(path) (load_external_data=True)"
            )
    try:
        onnx.checker.check_model(model_shell(model, placeholder=True), full_check=False)
    except onnx.checker.ValidationError as exc:
        msg = str(exc).strip().splitlines()
        raise ValueError(
            f"{where} failed the ONNX checker: {msg[0] if msg else exc}"
            + ("" if len(msg) <= 1 else " " + " ".join(m.strip() for m in msg[1:4]))
        ) from None


def load_onnx(
    path_or_proto: str | os.PathLike[str] | onnx.ModelProto, *, check: bool = True
) -> onnx.ModelProto:
    """Read an ONNX model.

    :param path_or_proto: a ``.onnx`` file (its external data, if any, is read from the file's
        folder) or a ``ModelProto`` (returned as is, after checking; its external data must be
        loaded already).
    :param check: run ``onnx.checker`` (on a weightless shell; see the module docstring).
    :raises ValueError: naming the file: missing, empty, truncated or not ONNX, external data
        missing or short, or rejected by the checker (quoting it).  Nothing is ever unpickled.
    """
    if isinstance(path_or_proto, onnx.ModelProto):
        if check:
            check_model(path_or_proto, _where(path_or_proto, None))
        return path_or_proto
    if not isinstance(path_or_proto, (str, os.PathLike)):
        raise TypeError(
            f"load_onnx takes a path or an onnx.ModelProto, not {type(path_or_proto).__name__}"
        )
    path = Path(path_or_proto)
    where = f"ONNX model file {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{where} does not exist")
    if path.is_dir():
        raise ValueError(f"{where} is a directory, not a file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"{where} is empty")
        model = _parse(path)  # external data: read below, with clear errors
    except DecodeError as exc:
        raise ValueError(
            f"{where} is not a readable ONNX model: the protobuf data is corrupt or truncated, "
            f"or this is not an ONNX file ({exc})"
        ) from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be read: {exc}") from None
    except (RuntimeError, TypeError) as exc:  # protobuf backends differ in what they raise
        raise ValueError(f"{where} is not a readable ONNX model ({exc})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ValueError(
            f"{where} is not an ONNX model (no IR version or no graph): truncated, or not an ONNX "
            "file at all"
        )
    _load_external(model, path, where)
    if check:
        check_model(model, where)
    return model


def _parse(path: Path) -> onnx.ModelProto:
    """Parse the file through a read-only memory map: protobuf copies the data into the model,
    and the file's bytes stay in the page cache instead of a second in-process copy."""
    model = onnx.ModelProto()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with memoryview(mm) as view:
            model.ParseFromString(view)
    return model


def _all_tensors(graph: onnx.GraphProto) -> Iterable[TensorProto]:
    """Initializers and attribute tensors of ``graph`` and of every subgraph in it."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for sub in a.graphs:
                yield from _all_tensors(sub)


def _load_external(model: onnx.ModelProto, path: Path, where: str) -> None:
    """Read external data from the model's folder into the tensors.

    Locations must be relative paths inside the folder (no ``..``, not absolute); the files they
    name may be symbolic links (hub caches store blobs that way), which ``onnx`` itself refuses.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    base = path.absolute().parent  # not resolved: side files may be symlinks
    for tensor in _all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = Path(info.location)
        side = base / location
        if not info.location or location.is_absolute() or ".." in location.parts:
            raise ValueError(
                f"{where}: initializer {tensor.name!r} points outside the model's folder "
                f"({info.location!r}); refusing to read it"
            )
        if not side.is_file():
            raise ValueError(
                f"{where}: the external data file {str(side)!r} of initializer "
                f"{tensor.name!r} is missing (keep the side files next to the .onnx file)"
            )
        file_size = side.stat().st_size
        offset = int(info.offset or 0)
        want = _expected_bytes(tensor)
        length = int(info.length) if info.length is not None else file_size - offset
        if want is not None:
            length = want if info.length is None else length
        if (
            offset < 0
            or length < 0
            or offset + length > file_size
            or (want is not None and length != want)
        ):
            raise ValueError(
                f"{where}: external data file {str(side)!r} does not hold initializer "
                f"{tensor.name!r}: it needs {want if want is not None else length} bytes at "
                f"offset {offset}, the file has {file_size} bytes (truncated, or not the "
                "model's weights?)"
            )
        try:
            with open(side, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as exc:
            raise ValueError(f"{where}: cannot read {str(side)!r}: {exc}") from None
        tensor.raw_data = data
        del data
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


# ------------------------------------------------------------------------------------------------
# prepare
# ------------------------------------------------------------------------------------------------


def is_prepared(model: onnx.ModelProto) -> bool:
    """True when ``model`` came out of :func:`prepare` (marked in its ``metadata_props``)."""
    return any(p.key == PREPARED_KEY for p in model.metadata_props)


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _get_meta(model: onnx.ModelProto, key: str) -> str | None:
    for p in model.metadata_props:
        if p.key == key:
            return p.value
    return None


def folded_batchnorms(model: onnx.ModelProto) -> dict[str, str]:
    """``{conv node name: folded BatchNormalization node name}`` recorded by :func:`prepare`."""
    raw = _get_meta(model, FOLDED_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, deterministic name: unnamed nodes get ``<OpType>_<index>``,
    repeated names get ``_<k>`` suffixes (first occurrence keeps its name)."""
    taken = {n.name for n in graph.node if n.name}
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 0
        while name in taken or name in seen:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        seen.add(name)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    keep = []
    new_inits = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            out = node.output[0]
            tensor = _constant_value(node)
            if tensor is not None and out not in outputs:
                tensor.name = out
                new_inits.append(tensor)
                continue
        keep.append(node)
    if new_inits:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            t = TensorProto()
            t.CopyFrom(a.t)
            return t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), np.int64))
    return None  # sparse_value / strings: leave the node alone


class _Index:
    """Producers, consumers and initializers of a graph (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(n)
            for a in n.attribute:  # subgraphs read outer tensors implicitly
                for sub in [a.g] if a.HasField("g") else list(a.graphs):
                    for t in _outer_names(sub):
                        self.consumers.setdefault(t, []).append(n)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs)


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for n in graph.node:
        names.update(t for t in n.input if t)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names |= _outer_names(sub)
    return names


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fold_batchnorm(model: onnx.ModelProto) -> dict[str, str]:
    """Fold inference-mode BatchNormalization into the Conv feeding it (in place).

    The Conv takes over the BatchNormalization's output name; its weight initializer keeps its
    name (new values) unless something else reads it.  Returns ``{conv: bn}`` node names."""
    graph = model.graph
    idx = _Index(graph)
    folded: dict[str, str] = {}
    producer = {t: n for n in graph.node for t in n.output if t}
    drop: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        if _attr(bn, "training_mode", 0) or any(o and idx.uses(o) for o in bn.output[1:]):
            continue
        if len(bn.input) < 5 or not all(
            t in idx.inits and t not in idx.graph_inputs for t in bn.input[1:5]
        ):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        if idx.uses(conv.output[0]) != 1 or conv.output[0] in idx.graph_outputs:
            continue
        if len(conv.input) < 2 or conv.input[1] not in idx.inits:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and conv.input[2] not in idx.inits:
            continue
        if {t for t in conv.input[1:] if t} & idx.graph_inputs:
            continue
        w_t = idx.inits[conv.input[1]]
        w = numpy_helper.to_array(w_t)
        if w.dtype.kind != "f":
            continue
        scale, beta, mean, var = (
            numpy_helper.to_array(idx.inits[t]).astype(np.float64) for t in bn.input[1:5]
        )
        eps = float(_attr(bn, "epsilon", 1e-5))
        factor = scale / np.sqrt(var + eps)
        if factor.shape != (w.shape[0],):
            continue
        b = (
            numpy_helper.to_array(idx.inits[conv.input[2]]).astype(np.float64)
            if has_bias
            else np.zeros(w.shape[0])
        )
        new_w = (w.astype(np.float64) * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = ((b - mean) * factor + beta).astype(w.dtype)
        taken = set(idx.inits) | {t for n in graph.node for t in n.output}
        w_name = _replace_init(graph, idx, conv.input[1], new_w, f"{conv.name}.weight_bn", taken)
        b_base = conv.input[2] if has_bias else f"{conv.name}.bias"
        if has_bias:
            b_name = _replace_init(graph, idx, b_base, new_b, f"{conv.name}.bias_bn", taken)
        else:
            b_name = unique_name(taken, b_base, first_suffix=1)
            graph.initializer.append(numpy_helper.from_array(new_b, b_name))
            idx.inits[b_name] = graph.initializer[-1]
        conv.input[1] = w_name
        if has_bias:
            conv.input[2] = b_name
        else:
            while len(conv.input) < 2:
                conv.input.append("")
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        producer[bn.output[0]] = conv
        drop.add(id(bn))
        folded[conv.name] = bn.name
    if drop:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def _replace_init(
    graph: onnx.GraphProto,
    idx: _Index,
    name: str,
    value: np.ndarray,
    fresh: str,
    taken: set[str],
) -> str:
    """Set initializer ``name`` to ``value`` in place when only one node reads it (and it is not a
    graph input a user could override); otherwise add a new initializer and return its name."""
    if idx.uses(name) == 1 and name not in idx.graph_inputs:
        t = idx.inits[name]
        t.CopyFrom(numpy_helper.from_array(value, name))
        return name
    new = unique_name(taken, fresh, first_suffix=1)
    graph.initializer.append(numpy_helper.from_array(value, new))
    idx.inits[new] = graph.initializer[-1]
    return new


def _fold_gemm_scalars(model: onnx.ModelProto) -> None:
    """Gemm with constant B (and C): fold alpha into B and beta into C, and make a ``(1, N)`` C
    one-dimensional, so that the Gemm is a plain ``x @ B (+ C)``."""
    graph = model.graph
    idx = _Index(graph)
    taken = set(idx.inits) | {t for n in graph.node for t in n.output}
    for node in graph.node:
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        b_name = node.input[1]
        c_name = node.input[2] if len(node.input) > 2 else ""
        if b_name not in idx.inits or (c_name and c_name not in idx.inits):
            continue
        if {b_name, c_name} & idx.graph_inputs:
            continue
        if alpha != 1.0:
            b = numpy_helper.to_array(idx.inits[b_name])
            if b.dtype.kind != "f":
                continue
            new = (b.astype(np.float64) * alpha).astype(b.dtype)
            node.input[1] = _replace_init(graph, idx, b_name, new, f"{node.name}.B", taken)
            _drop_attr(node, "alpha")
        if c_name:
            c = numpy_helper.to_array(idx.inits[c_name])
            if c.dtype.kind != "f":
                continue
            new_c = c
            if beta != 1.0:
                new_c = (c.astype(np.float64) * beta).astype(c.dtype)
            if new_c.ndim == 2 and new_c.shape[0] == 1:
                new_c = new_c.reshape(-1)
            if new_c is not c:
                node.input[2] = _replace_init(graph, idx, c_name, new_c, f"{node.name}.C", taken)
            _drop_attr(node, "beta")


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
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


def _fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all constants (and ``Shape`` of statically shaped tensors)
    into initializers, in place.  Only the ops in ``_FOLDABLE``, never a graph output, never a
    result much bigger than its inputs.  Returns how many nodes were folded."""
    graph = model.graph
    opset = default_opset(model)
    if opset is None:
        return 0  # no default-domain op to fold
    idx = _Index(graph)
    shapes = _static_shapes(model)
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        value = None
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type in _FOLDABLE
            and len(node.output) == 1
            and node.output[0] not in idx.graph_outputs
            and not any(a.HasField("g") or len(a.graphs) for a in node.attribute)
        ):
            ins = [t for t in node.input if t]
            if node.op_type == "Shape" and ins:
                shape = shapes.get(ins[0])
                if shape is not None:
                    start = int(_attr(node, "start", 0))
                    end = _attr(node, "end", None)
                    value = np.array(shape[start : None if end is None else int(end)], np.int64)
            elif node.op_type == "Size" and ins and ins[0] in shapes:
                value = np.array(math.prod(shapes[ins[0]]), np.int64)
            elif ins and all(t in idx.inits and t not in idx.graph_inputs for t in ins):
                # (an initializer that is also a graph input is only a default: not constant)
                value = _evaluate(node, idx, opset, model.ir_version)
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
        _drop_unused_initializers(graph)
    return folded


def _evaluate(node: onnx.NodeProto, idx: _Index, opset: int, ir: int) -> np.ndarray | None:
    """Run one node on ONNX Runtime (the runtime the model is meant for) with its constant
    inputs fed as graph inputs; ``None`` when it cannot or the result is too big."""
    import onnxruntime as ort

    inputs = [t for t in node.input if t]
    arrays = {t: numpy_helper.to_array(idx.inits[t]) for t in dict.fromkeys(inputs)}
    in_size = sum(int(a.size) for a in arrays.values())
    g = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(t, idx.inits[t].data_type, list(a.shape))
            for t, a in arrays.items()
        ],
        [onnx.ValueInfoProto(name=node.output[0])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        (value,) = sess.run(None, arrays)
    except Exception:  # anything the runtime cannot do here stays a node
        return None
    value = np.asarray(value)
    if value.dtype == object or (value.size > _FOLD_FREE_ELEMENTS and value.size > in_size):
        return None
    return value


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    idx = _Index(graph)
    keep = [t for t in graph.initializer if idx.uses(t.name) or t.name in idx.graph_inputs]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _infer_shapes(model: onnx.ModelProto, where: str) -> None:
    """Shape inference on the shell; the inferred value_info is copied into ``model``."""
    graph = model.graph
    live = {t for n in graph.node for t in n.output} | {t.name for t in graph.initializer}
    stale = [vi for vi in graph.value_info if vi.name in live]
    del graph.value_info[:]
    graph.value_info.extend(stale)
    shell = model_shell(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        # a model ONNX Runtime may still run (contrib ops, odd shapes): go on without shapes
        warnings.warn(
            f"{where}: ONNX shape inference failed ({exc}); continuing without inferred shapes",
            stacklevel=3,
        )
        return
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    for out, new in zip(graph.output, inferred.graph.output, strict=False):
        if out.name == new.name and new.type.HasField("tensor_type"):
            out.type.CopyFrom(new.type)


def prepare(
    model: onnx.ModelProto,
    *,
    inplace: bool = False,
    fold_batchnorm: bool = True,
    fold_constants: bool = True,
    where: str | None = None,
) -> onnx.ModelProto:
    """The model quantization works on: the same function, rewritten for quantization.

    In order: unnamed nodes get deterministic unique names (``<OpType>_<index>``, duplicates a
    ``_<k>`` suffix); ``Constant`` nodes become initializers; constant sub-expressions and
    ``Shape`` of statically shaped tensors are folded (``fold_constants``); inference-mode
    ``BatchNormalization`` after a ``Conv`` is folded into the Conv's weight and bias
    (``fold_batchnorm``; recorded under :data:`FOLDED_KEY` in ``metadata_props``); Gemm
    ``alpha``/``beta`` are folded into constant B/C; shape inference fills ``value_info``.  Graph
    input and output names are kept.  The result is marked with :data:`PREPARED_KEY`; preparing a
    prepared model returns it unchanged.

    :param inplace: rewrite ``model`` itself instead of a copy (saves one copy of the weights; the
        frontend does this for models it loaded itself).
    :raises ValueError: when the model cannot be prepared (naming it and why).
    """
    where = where or _where(model, None)
    if is_prepared(model):
        return model
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ValueError(
                f"{where}: initializer {t.name!r} refers to external data that is not loaded; "
                "pass the .onnx path instead (its side files are read from its folder)"
            )
    if not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    graph = model.graph
    _name_nodes(graph)
    # IR < 4 lists every initializer among the graph inputs; rewrites that add initializers
    # would have to change the input list, so such old models are only named and inferred.
    rewrite = model.ir_version >= 4
    if rewrite:
        _constants_to_initializers(graph)
    _infer_shapes(model, where)
    if fold_constants and rewrite:
        for _ in range(4):  # folding Shape can expose more folding after re-inference
            if not _fold_constants(model):
                break
            _infer_shapes(model, where)
    if rewrite:
        folded = _fold_batchnorm(model) if fold_batchnorm else {}
        if folded:
            _set_meta(model, FOLDED_KEY, json.dumps(folded, sort_keys=True))
        _fold_gemm_scalars(model)
        _drop_unused_initializers(graph)
        _infer_shapes(model, where)
    from . import __version__

    _set_meta(model, PREPARED_KEY, __version__)
    return model
