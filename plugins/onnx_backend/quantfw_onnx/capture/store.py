"""The QuantGraph's initializers, read from the ONNX model on demand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from types import MappingProxyType

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["InitializerStore"]


class InitializerStore(MutableMapping[str, np.ndarray]):
    """The QuantGraph's initializers, read from the ONNX model on demand.

    Python's protobuf hands out a new ``bytes`` object for ``raw_data`` on every access, so no
    numpy view into the model is possible; converting every weight up front would hold the
    weights twice.  Instead each lookup converts the tensor (a read-only array); tensors of at
    most ``cache_bytes`` (biases, norms, shapes) are converted once and cached.  Assignments
    (``ctx.set_weight``) are kept here, never written into the model, and listed in
    :attr:`changed` so runners can use them.
    """

    def __init__(self, graph: onnx.GraphProto, *, cache_bytes: int = 1 << 16) -> None:
        self._protos: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._cache: dict[str, np.ndarray] = {}
        self._changed: dict[str, np.ndarray] = {}
        self._deleted: set[str] = set()
        self._cache_bytes = cache_bytes

    # -- Mapping -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._changed:
            return self._changed[name]
        if name in self._deleted or name not in self._protos:
            raise KeyError(name)
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

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._changed[name] = value
        self._deleted.discard(name)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._changed.pop(name, None)
        if name in self._protos:
            self._deleted.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._changed or (name in self._protos and name not in self._deleted)

    def __iter__(self) -> Iterator[str]:
        for name in self._protos:
            if name not in self._deleted:
                yield name
        for name in self._changed:
            if name not in self._protos:
                yield name

    def __len__(self) -> int:
        extra = sum(1 for n in self._changed if n not in self._protos)
        return len(self._protos) - len(self._deleted) + extra

    def __repr__(self) -> str:
        return f"<InitializerStore: {len(self)} tensors, {len(self._changed)} changed>"

    # -- extras --------------------------------------------------------------------------------
    @property
    def changed(self) -> Mapping[str, np.ndarray]:
        """Initializers assigned since capture (new values by name), read-only view."""
        return MappingProxyType(self._changed)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of an initializer without converting it."""
        if name in self._changed:
            return tuple(np.shape(self._changed[name]))
        if name in self._deleted or name not in self._protos:
            raise KeyError(name)
        return tuple(int(d) for d in self._protos[name].dims)

    def proto(self, name: str) -> TensorProto | None:
        """The model's TensorProto for ``name`` (``None`` for added ones)."""
        return None if name in self._deleted else self._protos.get(name)
