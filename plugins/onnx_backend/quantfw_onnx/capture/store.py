"""The QuantGraph's initializers, read from the ONNX model on demand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["InitializerStore"]


class InitializerStore(Mapping[str, np.ndarray]):
    """The QuantGraph's initializers, read from the ONNX model on demand (read-only).

    Python's protobuf hands out a new ``bytes`` object for ``raw_data`` on every access, so no
    numpy view into the model is possible; converting every weight up front would hold the
    weights twice.  Instead each lookup converts the tensor (a read-only array); tensors of at
    most ``cache_bytes`` (biases, norms, shapes) are converted once and cached.  Rewritten
    weights never come here: they live in the stage context and the recipe
    (:meth:`quantfw.api.StageContext.set_weight`).
    """

    def __init__(self, graph: onnx.GraphProto, *, cache_bytes: int = 1 << 16) -> None:
        self._protos: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._cache: dict[str, np.ndarray] = {}
        self._cache_bytes = cache_bytes

    def __getitem__(self, name: str) -> np.ndarray:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        try:
            arr = numpy_helper.to_array(self._protos[name])
        except ValueError as exc:  # data that does not fit the declared shape
            raise ValueError(
                f"initializer {name!r} of the ONNX model is malformed: {exc}"
            ) from None
        if arr.flags.writeable:
            arr.flags.writeable = False
        if arr.nbytes <= self._cache_bytes:
            self._cache[name] = arr
        return arr

    def __contains__(self, name: object) -> bool:
        return name in self._protos

    def __iter__(self) -> Iterator[str]:
        return iter(self._protos)

    def __len__(self) -> int:
        return len(self._protos)

    def __repr__(self) -> str:
        return f"<InitializerStore: {len(self)} tensors>"

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of an initializer without converting it."""
        return tuple(int(d) for d in self._protos[name].dims)

    def proto(self, name: str) -> TensorProto | None:
        """The model's TensorProto for ``name``."""
        return self._protos.get(name)
