"""Calibration data: what users may pass, how it is checked, and how the CLI reads it.

Accepted sources for ``quantfw.quantize(..., calibration_data=...)``:

* a numpy array (single-input models), first axis = samples;
* a dict ``{input name: array}`` (first axis = samples; all inputs the same count);
* a list / tuple of batches, each an array (single-input) or such a dict;
* a zero-argument callable returning an iterable of batches (called once per pass);
* any other iterable of batches.  A one-shot iterator (a generator) is cached in memory on its
  first pass, since algorithms may need several passes; pass a callable to avoid that.

Every batch is validated: input names, float values finite, dtypes numeric, ranks and fixed
dimensions matching the model's inputs where known.  Errors name the input, the batch and what
would fix it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .arrayio import load_npy, load_npz
from .graph import QuantGraph

__all__ = ["CalibrationData", "CalibrationError", "CalibrationFile", "load_calibration_source"]


class CalibrationError(ValueError):
    """Calibration data that cannot be used."""


def _split(arrays: Mapping[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    for k, v in arrays.items():
        if np.ndim(v) == 0:
            raise CalibrationError(
                f"calibration input {k!r} is a single value (shape ()); give an array whose "
                "first axis counts the samples"
            )
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(
            f"calibration inputs have different sample counts {counts}; the first axis of every "
            "input must count the same samples"
        )
    n = next(iter(counts.values()), 0)
    return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


class CalibrationData:
    """A re-iterable, validated stream of batches ``{input name: array}``.

    :param source: see the module docstring.
    :param graph: the model's graph (input names and known shapes).
    :param batch_size: samples per batch when the source is whole arrays.
    """

    def __init__(self, source: Any, graph: QuantGraph, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise CalibrationError(f"batch_size must be positive, got {batch_size}")
        self.graph = graph
        self.input_names = list(graph.inputs)
        self.batch_size = batch_size
        self.num_samples: int | None = None
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._one_shot: Iterator[Any] | None = None
        self._factory: Callable[[], Iterable[Any]]
        #: the file or folder the data was read from, named in every error
        self._origin = source.spec if isinstance(source, CalibrationFile) else None
        if source is None:
            raise CalibrationError("no calibration data given")
        try:
            self._init_source(source, graph, batch_size)
        except CalibrationError as exc:
            raise self._named(exc) from None

    def _named(self, exc: CalibrationError) -> CalibrationError:
        """``exc`` with the calibration file it concerns in front, when the data came from one."""
        if self._origin is None or self._origin in str(exc):
            return exc
        return CalibrationError(f"{self._origin}: {exc}")

    def _init_source(self, source: Any, graph: QuantGraph, batch_size: int) -> None:
        if isinstance(source, CalibrationFile):
            source = source.resolve(graph)
        fixed = self._fixed_batch()
        if fixed is not None and isinstance(source, (np.ndarray, Mapping)):
            batch_size = self.batch_size = fixed  # whole arrays: cut them as the model demands
        if isinstance(source, np.ndarray):
            batches = _split({self._single_name("an array"): source}, batch_size)
            self._factory = lambda: batches
        elif isinstance(source, Mapping):
            batches = _split({k: np.asarray(v) for k, v in source.items()}, batch_size)
            self._factory = lambda: batches
        elif isinstance(source, (list, tuple)):
            self._factory = lambda: source
        elif callable(source):
            self._factory = source
        elif isinstance(source, Iterable):
            if iter(source) is source:  # one-shot iterator: remember it on the first pass
                self._cache = []
                self._one_shot = source
            self._factory = lambda: source
        else:
            raise CalibrationError(
                f"calibration data of type {type(source).__name__} is not supported: pass an array, "
                "a dict of arrays, a list of batches, a callable or an iterable of batches"
            )

    def _single_name(self, what: str) -> str:
        if len(self.input_names) != 1:
            raise CalibrationError(
                f"model {self.graph.name!r} has inputs {self.input_names}; {what} can only feed a "
                "single-input model — pass a dict keyed by input name"
            )
        return self.input_names[0]

    def _check(self, batch: Any, index: int) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            if isinstance(batch, (tuple, list)) and len(batch) == len(self.input_names) > 1:
                batch = dict(zip(self.input_names, batch, strict=True))
            else:
                batch = {self._single_name(f"batch {index} (a bare array)"): batch}
        missing = [n for n in self.input_names if n not in batch]
        extra = [n for n in batch if n not in self.input_names]
        if missing or extra:
            raise CalibrationError(
                f"calibration batch {index}: "
                + (f"missing input(s) {missing}; " if missing else "")
                + (f"unknown input(s) {extra}; " if extra else "")
                + f"the model's inputs are {self.input_names}"
            )
        out: dict[str, np.ndarray] = {}
        for name in self.input_names:
            v = np.asarray(batch[name])
            if v.ndim == 0:
                raise CalibrationError(
                    f"calibration batch {index}, input {name!r}: a single value (shape ()); the "
                    "first axis must count samples"
                )
            if v.dtype.kind not in "fiub":
                raise CalibrationError(
                    f"calibration batch {index}, input {name!r}: dtype {v.dtype} is not numeric"
                )
            if v.dtype.kind == "f":
                bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
                if bad:
                    raise CalibrationError(
                        f"calibration batch {index}, input {name!r}: {bad} NaN/Inf value(s); "
                        "clean the data (quantization ranges would be meaningless)"
                    )
                v = v.astype(np.float32, copy=False)
            self._check_shape(name, v, index)
            out[name] = v
        return out

    def _fixed_batch(self) -> int | None:
        """The batch size every model input fixes (an exported static batch), if they agree."""
        sizes = set()
        for name in self.input_names:
            shape = self.graph.input_shapes.get(name)
            first = shape[0] if shape else None
            if not (isinstance(first, int) and first > 0):
                return None
            sizes.add(first)
        return sizes.pop() if len(sizes) == 1 else None

    def _check_shape(self, name: str, v: np.ndarray, index: int) -> None:
        want = self.graph.input_shapes.get(name)
        if not want:
            return
        first = want[0]
        if v.ndim == len(want) and isinstance(first, int) and first > 0 and v.shape[0] != first:
            raise CalibrationError(
                f"calibration batch {index}, input {name!r}: {v.shape[0]} samples, but the model "
                f"was exported with a fixed batch of {first} (shape {tuple(want)}); give batches of "
                f"{first} sample(s), or whole arrays (quantfw cuts them to the model's batch)"
            )
        if v.ndim != len(want):
            raise CalibrationError(
                f"calibration batch {index}, input {name!r}: got shape {tuple(v.shape)}, the model "
                f"expects rank {len(want)} {tuple(want)} (first axis = samples)"
            )
        for i, (got, exp) in enumerate(zip(v.shape, want, strict=True)):
            if isinstance(exp, int) and exp > 0 and i > 0 and got != exp:
                raise CalibrationError(
                    f"calibration batch {index}, input {name!r}: dimension {i} is {got}, the model "
                    f"expects {exp} (shape {tuple(want)})"
                )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        try:
            yield from self._iter()
        except CalibrationError as exc:
            raise self._named(exc) from None

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        if self._cache is not None:
            yield from self._iter_one_shot()
            return
        count = samples = 0
        for i, raw in enumerate(self._factory()):
            batch = self._check(raw, i)
            n = len(next(iter(batch.values())))
            if n == 0:
                continue
            count += 1
            samples += n
            yield batch
        self._finish(count, samples)

    def _iter_one_shot(self) -> Iterator[dict[str, np.ndarray]]:
        assert self._cache is not None
        yield from list(self._cache)
        if self._one_shot is not None:
            for raw in self._one_shot:
                batch = self._check(raw, len(self._cache))
                if len(next(iter(batch.values()))) == 0:
                    continue
                self._cache.append(batch)
                yield batch
            self._one_shot = None
        self._finish(len(self._cache), sum(len(next(iter(b.values()))) for b in self._cache))

    def _finish(self, count: int, samples: int) -> None:
        if count == 0:
            raise CalibrationError(
                "the calibration data set is empty: give at least one sample for each input"
            )
        self.num_samples = samples


class CalibrationFile:
    """Calibration data named by a path or ``module:function`` (as on the command line), read
    once the model's input names and ranks are known; see :func:`load_calibration_source`."""

    def __init__(self, spec: str | Path) -> None:
        self.spec = str(spec)

    def resolve(self, graph: QuantGraph) -> Any:
        ranks = {k: len(v) for k, v in graph.input_shapes.items()}
        return load_calibration_source(self.spec, graph.inputs, ranks)


def load_calibration_source(
    spec: str, input_names: Sequence[str], input_ranks: Mapping[str, int] | None = None
) -> Any:
    """Read calibration data named on the command line.

    * ``file.npz``: one array per model input keyed by input name (first axis = samples); a
      single-input model takes a one-array file whatever its key;
    * a folder of ``.npy`` files: either one file per input named ``<input>.npy``, or (single
      input) any number of files, each one batch (first axis = samples) or one sample (rank one
      less than the input's, when the rank is known), read in sorted name order;
    * ``package.module:function``: the function is called with no argument and must return an
      iterable of batches.

    Arrays are loaded with ``allow_pickle=False``.
    """
    input_ranks = dict(input_ranks or {})
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        arrays = load_npz(path, CalibrationError)
        if len(arrays) == 1 and len(input_names) == 1:
            return {input_names[0]: next(iter(arrays.values()))}
        return arrays
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise CalibrationError(f"{path}: folder holds no .npy files")
        stems = {f.stem: f for f in files}
        if set(input_names) <= set(stems):
            return {n: load_npy(stems[n], CalibrationError) for n in input_names}
        if len(input_names) != 1:
            raise CalibrationError(
                f"{path}: a model with inputs {list(input_names)} needs files named "
                f"{[n + '.npy' for n in input_names]}"
            )
        name = input_names[0]
        rank = input_ranks.get(name)

        def batches() -> Iterator[dict[str, np.ndarray]]:
            for f in files:
                a = load_npy(f, CalibrationError)
                yield {name: a[None] if rank is not None and a.ndim == rank - 1 else a}

        return batches
    if ":" in spec and not path.exists():
        mod_name, _, func_name = spec.partition(":")
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise CalibrationError(
                f"calibration source {spec!r}: cannot import {mod_name!r} ({exc})"
            ) from None
        finally:
            sys.path.pop(0)
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise CalibrationError(
                f"calibration source {spec!r}: {mod_name} has no function {func_name!r}"
            )
        return fn
    raise CalibrationError(
        f"calibration source {spec!r}: not an existing .npz file, a folder of .npy files, "
        "or module:function"
    )
