"""Running ONNX models on ONNX Runtime's CPU provider: sessions, feeds, and activation capture.

Sessions are built from a *shell* of the model (see :func:`quantfw_onnx.loader.model_shell`):
initializers above :data:`~quantfw_onnx.loader.SHELL_BYTES` are handed to ONNX Runtime as numpy
arrays through ``SessionOptions.add_external_initializers`` (the shell marks them as external
data) instead of being serialized with the graph.  So
the model is never turned into one big ``bytes`` (which would copy every weight, and fails past
protobuf's 2 GiB), ONNX Runtime reads the weights from the arrays without copying them, and
the float-model rewrites a frontend is given replace the model's own without touching it.  A
session that only collects tensors runs only the nodes those tensors need (ONNX Runtime itself
runs every node, whatever outputs are asked for): the input of a model's first layer costs one
layer, not the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graphutil import outer_names, subgraphs
from .loader.shell import SHELL_BYTES, copy_fields, data_bytes, data_free

__all__ = [
    "session_options",
    "OrtSession",
    "collect",
    "collect_session",
    "check_tensors",
    "model_tensors",
    "model_inputs",
]

# numpy dtypes ONNX Runtime's Python API takes as OrtValues without surprises
_INJECTABLE = frozenset(
    np.dtype(t)
    for t in (
        np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32,
        np.uint32, np.int64, np.uint64, np.bool_,
    )
)  # fmt: skip


def session_options(*, threads: int | None = None, optimize: bool = True) -> Any:
    """``onnxruntime.SessionOptions`` for quantfw.

    :param threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
    :param optimize: ``False`` disables every graph optimization (``ORT_DISABLE_ALL``): QDQ
        models then compute exact fake quantization instead of being fused into integer kernels.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: unused-initializer chatter is not the user's problem
    if threads is not None:
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0 (0 = ONNX Runtime's default), got {threads}")
        so.intra_op_num_threads = int(threads)
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return so


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a user feeds (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def model_tensors(model: onnx.ModelProto) -> set[str]:
    """Every tensor name the model has: inputs, initializers and node outputs."""
    g = model.graph
    names = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        names.update(t for t in n.output if t)
    return names


def _np_dtype(elem_type: int) -> np.dtype | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


_LENT_LOCATION = "quantfw-lent-to-onnxruntime"


def _lent(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The data-free stand-in of an initializer whose value ONNX Runtime gets as an OrtValue
    (``add_external_initializers`` replaces tensors marked as external data; the location is
    never opened)."""
    out = data_free(tensor, placeholder=False)
    out.data_location = onnx.TensorProto.EXTERNAL
    out.external_data.add(key="location", value=_LENT_LOCATION)
    return out


class OrtSession:
    """An ONNX Runtime session over a model, built once, with the arrays it borrows kept alive.

    :param model: the ModelProto (not modified).
    :param initializers: values to use instead of some of the model's initializers (the
        float-model rewrites a frontend's ``collect`` is given), by name.
    :param outputs: extra tensors to expose as outputs (intermediate activations).
    :param threads: intra-op threads.
    :param optimize: ``False`` for ``ORT_DISABLE_ALL``.
    :param only_outputs: expose ``outputs`` alone (not the model's own outputs), and keep only
        the nodes and initializers they need.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        initializers: Mapping[str, np.ndarray] | None = None,
        outputs: Sequence[str] = (),
        threads: int | None = None,
        optimize: bool = True,
        only_outputs: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.model = model
        so = session_options(threads=threads, optimize=optimize)
        changed: Mapping[str, np.ndarray] = initializers or {}
        shell = onnx.ModelProto()
        copy_fields(model, shell, skip=("graph",))
        copy_fields(model.graph, shell.graph, skip=("initializer", "output", "node"))
        nodes = _needed_nodes(model.graph, outputs) if only_outputs else list(model.graph.node)
        shell.graph.node.extend(nodes)
        read = outer_names(shell.graph)
        graph_inputs = {i.name for i in model.graph.input}
        self._borrowed: list[Any] = []  # arrays and OrtValues the session reads: keep alive
        lent_names: list[str] = []
        lent_values: list[Any] = []
        for t in model.graph.initializer:
            if only_outputs and t.name not in read:
                continue
            value = None
            if t.name in graph_inputs:  # overridable initializer: leave it to the graph
                pass
            elif t.name in changed:
                value = np.asarray(changed[t.name])
            elif data_bytes(t) > SHELL_BYTES:
                value = numpy_helper.to_array(t)
            want = _np_dtype(t.data_type)
            if value is None or want is None or want not in _INJECTABLE:
                if t.name in changed and t.name not in graph_inputs:
                    raise ValueError(
                        f"initializer {t.name!r}: cannot substitute a value of ONNX type "
                        f"{helper.tensor_dtype_to_string(t.data_type)}"
                    )
                shell.graph.initializer.append(t)
                continue
            if tuple(value.shape) != tuple(t.dims):
                raise ValueError(
                    f"initializer {t.name!r}: the replacement has shape {tuple(value.shape)}, the "
                    f"model's has {tuple(t.dims)}"
                )
            arr = np.ascontiguousarray(value, dtype=want)
            lent_names.append(t.name)
            lent_values.append(ort.OrtValue.ortvalue_from_numpy(arr))
            self._borrowed.append(arr)
            shell.graph.initializer.append(_lent(t))
        if lent_names:
            so.add_external_initializers(lent_names, lent_values)
            self._borrowed.extend(lent_values)
        #: names of the initializers ONNX Runtime reads from numpy arrays (not from the graph)
        self.lent = lent_names
        if not only_outputs:
            shell.graph.output.extend(model.graph.output)
        declared = {o.name for o in shell.graph.output}
        known = {vi.name: vi for vi in model.graph.value_info}
        for name in outputs:
            if name in declared:
                continue
            declared.add(name)
            vi = known.get(name)
            if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                shell.graph.output.append(vi)
            else:  # type unknown after shape inference: ONNX Runtime infers it
                shell.graph.output.append(onnx.ValueInfoProto(name=name))
        self.session = ort.InferenceSession(
            shell.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        del shell
        self.inputs = [i.name for i in model_inputs(model)]
        self._dtypes = {
            i.name: _np_dtype(i.type.tensor_type.elem_type)
            for i in model_inputs(model)
            if i.type.HasField("tensor_type")
        }
        self.outputs = [o.name for o in model.graph.output]

    def feeds(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model's inputs from ``batch``: float values cast to each input's declared type,
        integers widened where that keeps every value (int32 token ids for an int64 input),
        other integer and boolean values passed unchanged.

        :raises ValueError: on missing or unknown input names, or non-integral values for an
            integer input.
        """
        missing = [n for n in self.inputs if n not in batch]
        unknown = [n for n in batch if n not in self.inputs]
        if missing or unknown:
            raise ValueError(
                (f"missing input(s) {missing}; " if missing else "")
                + (f"unknown input(s) {unknown}; " if unknown else "")
                + f"the model's inputs are {self.inputs}"
            )
        out: dict[str, np.ndarray] = {}
        for name in self.inputs:
            v = np.asarray(batch[name])
            want = self._dtypes.get(name)
            if v.dtype.kind == "f" and want is not None and v.dtype != want:
                if want.kind in "iub" and not np.all(np.isfinite(v) & (v == np.round(v))):
                    raise ValueError(
                        f"input {name!r} is {want} in the model but got non-integral floats"
                    )
                v = v.astype(want)
            elif (
                v.dtype.kind in "iu" and want is not None and want.kind in "iu" and v.dtype != want
            ):
                if np.can_cast(v.dtype, want, casting="safe"):
                    v = v.astype(want)
            out[name] = v
        return out

    def run(
        self, batch: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on one batch; returns ``{name: array}`` for ``outputs`` (default: the model's)."""
        names = list(self.outputs if outputs is None else outputs)
        values = self.session.run(names, self.feeds(batch))
        return dict(zip(names, values, strict=True))


def collect(
    model: onnx.ModelProto,
    tensor_names: Sequence[str],
    batches: Iterable[Mapping[str, Any]],
    *,
    initializers: Mapping[str, np.ndarray] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    session: OrtSession | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` batch by batch and yield ``{name: value}`` for ``tensor_names``.

    Intermediate tensors become extra graph outputs of a session built once (the model itself is
    not modified); graph inputs are returned as fed (after the dtype cast), initializers as their
    (possibly rewritten) values.  One batch of activations is alive at a time.

    :param initializers: rewritten weights (see :class:`OrtSession`).
    :param session: a session built earlier with :func:`collect_session` for the same request.
    :raises KeyError: naming every requested tensor the model does not have (raised here, before
        anything runs).
    """
    names = list(dict.fromkeys(tensor_names))
    check_tensors(model, names)
    if session is None:
        session = collect_session(
            model, names, initializers=initializers, threads=threads, optimize=optimize
        )
    return _collect(model, names, batches, session, initializers)


def check_tensors(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """:raises KeyError: naming every tensor in ``names`` that ``model`` does not have."""
    known = model_tensors(model)
    missing = [n for n in dict.fromkeys(names) if n not in known]
    if missing:
        raise KeyError(f"ONNX model {model.graph.name!r} has no tensor(s) named {missing}")


def collect_session(
    model: onnx.ModelProto,
    tensor_names: Sequence[str],
    *,
    initializers: Mapping[str, np.ndarray] | None = None,
    threads: int | None = None,
    optimize: bool = True,
) -> OrtSession:
    """The session :func:`collect` runs: the model with ``tensor_names`` as extra outputs."""
    computed = _computed(model, tensor_names)
    return OrtSession(
        model,
        initializers=initializers,
        outputs=computed,
        threads=threads,
        optimize=optimize,
        only_outputs=bool(computed),  # a graph needs some output: nothing computed, keep its own
    )


def _needed_nodes(graph: onnx.GraphProto, outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` that ``outputs`` depend on, in graph order (a node's subgraphs
    count as inputs it reads)."""
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output if t}
    keep: set[int] = set()
    todo = [producer[t] for t in outputs if t in producer]
    while todo:
        i = todo.pop()
        if i in keep:
            continue
        keep.add(i)
        n = graph.node[i]
        reads = {t for t in n.input if t}
        for sub in subgraphs(n):
            reads |= outer_names(sub)
        todo.extend(producer[t] for t in reads if t in producer)
    return [n for i, n in enumerate(graph.node) if i in keep]


def _computed(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    inputs = {i.name for i in model.graph.input}
    consts = {t.name for t in model.graph.initializer}
    return [n for n in dict.fromkeys(names) if n not in inputs and n not in consts]


def _collect(
    model: onnx.ModelProto,
    names: list[str],
    batches: Iterable[Mapping[str, Any]],
    session: OrtSession,
    initializers: Mapping[str, np.ndarray] | None,
) -> Iterator[dict[str, np.ndarray]]:
    computed = _computed(model, names)
    protos = {t.name: t for t in model.graph.initializer}
    for i, batch in enumerate(batches):
        feeds = session.feeds(batch)
        values = {}
        if computed:
            try:
                outs = session.session.run(computed, feeds)
            except Exception as exc:  # ONNX Runtime's own errors: bad shapes, bad dtypes
                got = {k: f"{v.dtype}{list(v.shape)}" for k, v in feeds.items()}
                raise ValueError(
                    f"ONNX Runtime cannot run model {model.graph.name!r} on batch {i} "
                    f"(inputs {got}): {exc}"
                ) from exc
            values = dict(zip(computed, outs, strict=True))
        out: dict[str, np.ndarray] = {}
        for n in names:
            if n in values:
                out[n] = values[n]
            elif n in feeds:
                out[n] = feeds[n]
            elif initializers is not None and n in initializers:
                out[n] = np.asarray(initializers[n])
            else:
                out[n] = numpy_helper.to_array(protos[n])
        del values, feeds
        yield out
        del out  # before the next batch runs: one batch of activations alive, not two
