"""Calibration data the torch way: DataLoaders, tensors, ``(inputs, labels)`` tuples, dicts.

:func:`adapt` turns such a source into what :class:`quantfw.calibration.CalibrationData`
takes — batches of numpy arrays keyed by the model's input names — lazily, one batch at a
time, re-iterable whenever the source is (a DataLoader is; a generator is read once and the
core caches it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["adapt", "first_batch", "to_numpy"]


def to_numpy(value: Any) -> Any:
    """Tensors to numpy arrays (detached, on the CPU); other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _is_tensorish(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def first_batch(data: Any) -> Any:
    """The first batch of a calibration source (without consuming a one-shot iterator's
    remainder: callers only use it to trace), or ``None``."""
    if data is None:
        return None
    if _is_tensorish(data):
        return data[:8] if len(data) else None
    if isinstance(data, Mapping):
        return {k: (v[:8] if _is_tensorish(v) else v) for k, v in data.items()}
    if callable(data) and not isinstance(data, Iterable):
        data = data()
    if isinstance(data, (list, tuple)):
        return data[0] if data else None
    if isinstance(data, Iterable):
        if iter(data) is data:
            return None  # a one-shot iterator: reading it here would lose a batch
        for batch in data:
            return batch
    return None


def _inputs_of(batch: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The model's inputs from a dict batch: extra keys (``labels``) dropped when every input is
    there; otherwise everything kept, so the core's error names both what is missing and what
    is unknown."""
    keep = all(n in batch for n in names)
    return {k: to_numpy(v) for k, v in batch.items() if not keep or k in names}


def _convert(batch: Any, names: Sequence[str]) -> Any:
    if isinstance(batch, Mapping):
        return _inputs_of(batch, names)
    if isinstance(batch, (tuple, list)):
        if len(batch) >= len(names) and all(_is_tensorish(b) for b in batch[: len(names)]):
            return {n: to_numpy(b) for n, b in zip(names, batch, strict=False)}
        return batch
    return to_numpy(batch)


class _Adapted:
    def __init__(self, source: Any, names: Sequence[str]) -> None:
        self.source = source
        self.names = list(names)

    def __call__(self) -> Iterator[Any]:
        src = self.source() if callable(self.source) else self.source
        for batch in src:
            yield _convert(batch, self.names)


def adapt(data: Any, names: Sequence[str]) -> Any:
    """``data`` in a form the core's CalibrationData accepts.

    * a tensor → a numpy array (first axis = samples);
    * a dict of tensors → a dict of arrays (keys that are not model inputs, like ``labels``,
      dropped);
    * a DataLoader / list / callable / iterable of batches → the same batches converted: dicts
      keep the model's inputs; tuples and lists give their leading items to the inputs in order
      (so ``(images, labels)`` feeds ``images``).
    """
    if data is None:
        return None
    if _is_tensorish(data):
        return to_numpy(data)
    if isinstance(data, Mapping):
        return _inputs_of(data, names)
    if isinstance(data, (list, tuple)):
        return [_convert(b, names) for b in data]
    if isinstance(data, Iterable) and iter(data) is data:
        return (_convert(b, names) for b in data)
    if isinstance(data, Iterable) or callable(data):
        return _Adapted(data, names)
    return data
