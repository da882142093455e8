"""Reading ``.onnx`` files (with their external data) and checking models.

Weights are kept once.  :func:`load_onnx` parses the file through a read-only memory map into one
``ModelProto`` (so the file's bytes are not a second in-process copy while parsing) and reads
external data straight into it; nothing is serialized back to bytes.  :func:`check_model` runs
``onnx.checker`` on a weightless shell (:mod:`.shell`).  (Python's protobuf returns a fresh
``bytes`` for ``raw_data`` on every access, so ``onnx.numpy_helper.to_array`` cannot give a view
into the model; see :class:`quantfw_onnx.capture.InitializerStore` for how the QuantGraph avoids a
second copy.)
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from .shell import expected_bytes, model_shell

__all__ = ["describe", "check_model", "load_onnx"]


def describe(model: onnx.ModelProto, source: str | os.PathLike[str] | None) -> str:
    """How error messages name a model: its file when known, else its graph's name."""
    if source is not None:
        return f"ONNX model {str(source)!r}"
    name = model.graph.name if model.HasField("graph") else ""
    return f"ONNX model {name!r}" if name else "ONNX model"


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
    except UnicodeDecodeError:  # the checker's message quotes a name that is not UTF-8
        raise ValueError(
            f"{where} failed the ONNX checker: a name or string in it is not valid UTF-8"
        ) from None
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
    :param check: run ``onnx.checker`` (on a weightless shell; see :mod:`.shell`).
    :raises ValueError: naming the file: missing, empty, truncated or not ONNX, external data
        missing or short, or rejected by the checker (quoting it).  Nothing is ever unpickled.
    """
    if isinstance(path_or_proto, onnx.ModelProto):
        if check:
            check_model(path_or_proto, describe(path_or_proto, None))
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
    _check_names(model, where)
    _load_external(model, path, where)
    _check_tensors(model, where)
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
        try:
            info = ExternalDataInfo(tensor)
            offset = int(info.offset or 0)
        except ValueError as exc:  # a negative or non-numeric offset / length
            raise ValueError(
                f"{where}: initializer {tensor.name!r} has malformed external data fields ({exc})"
            ) from None
        if not isinstance(info.location, str):  # protobuf hands back bytes that are not UTF-8
            raise ValueError(
                f"{where}: initializer {tensor.name!r} has an external data location that is not "
                f"UTF-8 text ({info.location!r:.80})"
            )
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
        want = expected_bytes(tensor)
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


def _check_tensors(model: onnx.ModelProto, where: str) -> None:
    """Every initializer and constant has a known data type, non-negative dims and exactly the
    data its type and dims need, so that nothing later reshapes or allocates what the file does
    not hold (a declared shape of 10**12 over 8 bytes, an unknown ``data_type``)."""
    for t in _all_tensors(model.graph):
        what = f"{where}: initializer {t.name!r}"
        try:
            field = helper.tensor_dtype_to_field(t.data_type)
        except (KeyError, ValueError, TypeError):
            raise ValueError(
                f"{what} has data type {t.data_type}, which is not an ONNX tensor type"
            ) from None
        if any(d < 0 for d in t.dims):
            raise ValueError(f"{what} has negative dimensions {list(t.dims)}")
        want = expected_bytes(t)
        if want is None or t.data_location == TensorProto.EXTERNAL:
            continue  # strings and sub-byte types; unloaded external data: checked elsewhere
        count = math.prod(t.dims)
        if t.HasField("raw_data"):
            have, need, unit = len(t.raw_data), want, "bytes"
        else:
            per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
            have, need, unit = len(getattr(t, field)), count * per, f"values in {field}"
        if have != need:
            dtype = helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.")
            raise ValueError(
                f"{what} declares {dtype} of shape "
                f"{list(t.dims)} ({need} {unit}) but holds {have} (damaged, or dims / data "
                "type edited?)"
            )


def _graph_names(graph: onnx.GraphProto) -> Iterable[object]:
    """Every name and op identifier in ``graph`` and its subgraphs."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        yield vi.name
    for t in graph.initializer:
        yield t.name
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        for a in node.attribute:
            yield a.name
            if a.HasField("g"):
                yield from _graph_names(a.g)
            for sub in a.graphs:
                yield from _graph_names(sub)


def _check_names(model: onnx.ModelProto, where: str) -> None:
    """Names and op identifiers must be UTF-8 text: protobuf hands back other bytes as ``bytes``,
    which nothing downstream can compare with names."""
    domains = (o.domain for o in model.opset_import)
    for name in (*domains, *_graph_names(model.graph)):
        if not isinstance(name, str):
            raise ValueError(
                f"{where}: the name or op identifier {name!r:.80} is not UTF-8 text (damaged file?)"
            )
