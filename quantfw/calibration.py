"""Calibration data: what users may pass, how it is checked, and how the CLI reads it.

Accepted sources for ``quantfw.quantize(..., calibration_data=...)``:

* a numpy array (single-input models), first axis = samples;
* a dict ``{input name: array}`` (first axis = samples; all inputs the same count);
* a list / tuple of batches, each an array (single-input) or such a dict;
* a zero-argument callable returning an iterable of batches (called once per pass);
* any other iterable of batches.  A one-shot iterator (a generator) is cached in memory on its
  first pass, since algorithms may need several passes; pass a callable to avoid that.

Every batch is validated: input names, float values finite, dtypes numeric and of the kind the
model declares (float data for a float input, integers for an integer input; float64 is read as
float32, integers are widened or narrowed only where every value fits), ranks and fixed
dimensions matching the model's inputs where known.  Errors name the input, the batch and what
would fix it.

Memory: when the frontend can estimate a sample's activations
(:class:`~quantfw.api.protocols.EstimatesActivations`), batches whose activations would exceed
the budget -- ``QUANTFW_CALIB_MEMORY`` (bytes, or e.g. ``512MiB``, ``4GiB``), default 2 GiB --
are run in chunks that fit, with a warning giving the figures.  Calibrators are streaming, so
the ranges are the same (``moving_average``, which averages per-batch extremes, is the
exception); a model exported with a fixed batch cannot be cut, and only gets the warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

import numpy as np

from .calibration_errors import CalibrationError, CalibrationRequiredError, CalibrationSourceError
from .calibration_sources import CalibrationFile, load_calibration_source
from .errors import QuantfwError
from .graph import QuantGraph

__all__ = [
    "CalibrationData",
    "CalibrationError",
    "CalibrationFile",
    "CalibrationRequiredError",
    "CalibrationSourceError",
    "MEMORY_ENV",
    "load_calibration_source",
    "memory_budget",
]

log = logging.getLogger(__name__)

#: Environment variable: the activation memory one calibration batch may use (see the module
#: docstring); bytes, or a number with a unit (``KiB``/``MiB``/``GiB``, ``KB``/``MB``/``GB``).
MEMORY_ENV = "QUANTFW_CALIB_MEMORY"
DEFAULT_MEMORY = 2 * 2**30


def parse_size(text: str, where: str = MEMORY_ENV) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1e9"`` as a number of bytes.

    :raises CalibrationError: naming ``where`` and the accepted forms.
    """
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    try:
        if m is None:
            raise ValueError
        base = 1024 if m.group(3) else 1000
        scale = base ** ("kmgt".index(m.group(2).lower()) + 1) if m.group(2) else 1
        value = int(float(m.group(1)) * scale)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise CalibrationError(
            f"{where}={text!r}: give a positive size in bytes, e.g. 2GiB, 512MiB or 1000000000"
        ) from None
    return value


def memory_budget() -> int:
    """The bytes of activations one calibration batch may take: ``QUANTFW_CALIB_MEMORY`` or
    2 GiB."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    return parse_size(text) if text else DEFAULT_MEMORY


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


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
    :param sample_bytes: the activations one sample makes when the model runs, where the
        frontend can tell: batches over :func:`memory_budget` are cut into chunks that fit.
    """

    def __init__(
        self,
        source: Any,
        graph: QuantGraph,
        batch_size: int = 32,
        *,
        sample_bytes: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise CalibrationError(f"batch_size must be positive, got {batch_size}")
        self.graph = graph
        self.input_names = list(graph.inputs)
        self.batch_size = batch_size
        self.num_samples: int | None = None
        self.sample_bytes = sample_bytes if sample_bytes and sample_bytes > 0 else None
        self.budget = memory_budget()  # read (and checked) whether or not it is needed
        self._warned = False
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._one_shot: Iterator[Any] | None = None
        self._read = 0  # batches read from the one-shot iterator
        self._factory: Callable[[], Iterable[Any]]
        if source is None:
            raise CalibrationError("no calibration data given")
        self._origin: str | None = None  # the file or module:function the data came from
        if isinstance(source, CalibrationFile):
            self._origin = source.spec
        try:
            self._init_source(source, graph, batch_size)
        except CalibrationError as exc:
            self._reraise(exc)

    def _reraise(self, exc: CalibrationError) -> NoReturn:
        """Raise ``exc`` named by :meth:`_named` (``exc`` itself, cause kept, when it already is)."""
        named = self._named(exc)
        if named is exc:
            raise exc
        raise named from None

    def _named(self, exc: CalibrationError) -> CalibrationError:
        """``exc`` with the calibration file it concerns in front, when the data came from one."""
        if self._origin is None or self._origin in str(exc) or isinstance(exc, QuantfwError):
            return exc  # already names it (a CalibrationSourceError keeps its cause, too)
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

    def _checked(self, batch: Any, index: int) -> dict[str, np.ndarray]:
        """:meth:`_check`, its errors naming the calibration file where there is one."""
        try:
            return self._check(batch, index)
        except CalibrationError as exc:
            self._reraise(exc)

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
            v = self._check_dtype(name, v, index)
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

    def _check_dtype(self, name: str, v: np.ndarray, index: int) -> np.ndarray:
        """``v`` as the model's declared type allows: the same kind (float / integer / bool)
        is required; integers are converted where every value fits."""
        declared = self.graph.input_dtypes.get(name)
        if declared is None:
            return v
        want = np.dtype(declared)
        kind = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}
        got_kind, want_kind = kind.get(v.dtype.kind), kind.get(want.kind)
        where = f"calibration batch {index}, input {name!r}"
        if want_kind is not None and got_kind != want_kind:
            raise CalibrationError(
                f"{where}: got {v.dtype} data, but the model's input is {want} ({want_kind}); "
                f"give {want_kind} values (e.g. array.astype(numpy.{want.name}))"
            )
        if want_kind == "integer" and v.dtype != want:
            info = np.iinfo(want)
            if (
                not np.can_cast(v.dtype, want)
                and v.size
                and (v.min() < info.min or v.max() > info.max)
            ):
                raise CalibrationError(
                    f"{where}: {v.dtype} values from {v.min()} to {v.max()} do not fit the "
                    f"model's {want} input (range {info.min}..{info.max})"
                )
            v = v.astype(want)
        return v

    def _fit(self, samples: int) -> int:
        """The samples a batch may hold within the memory budget (``samples`` when it fits),
        warning once when it must be cut."""
        if self.sample_bytes is None or self.budget is None:
            return samples
        fit = max(1, self.budget // self.sample_bytes)
        if samples <= fit:
            return samples
        if not self._warned:
            self._warned = True
            log.warning(
                "a calibration batch of %d samples would take about %s of activations (%s per "
                "sample), over the %s budget: running it in chunks of %d samples (set %s to "
                "change the budget)",
                samples,
                _size(samples * self.sample_bytes),
                _size(self.sample_bytes),
                _size(self.budget),
                fit,
                MEMORY_ENV,
            )
        return fit

    def _chunks(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """``batch`` cut to the memory budget (a model with a fixed batch only gets a warning)."""
        n = len(next(iter(batch.values())))
        if self._fixed_batch() is not None:
            if self.sample_bytes and self.budget and n * self.sample_bytes > self.budget:
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "a calibration batch of %d samples takes about %s of activations, over "
                        "the %s budget (%s), and the model fixes its batch size, so it cannot be "
                        "cut",
                        n,
                        _size(n * self.sample_bytes),
                        _size(self.budget),
                        MEMORY_ENV,
                    )
            yield batch
            return
        step = self._fit(n)
        if step >= n:
            yield batch
            return
        for i in range(0, n, step):
            yield {k: v[i : i + step] for k, v in batch.items()}

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
            self._reraise(exc)

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        if self._cache is not None:
            yield from self._iter_one_shot()
            return
        count = samples = 0
        for i, raw in enumerate(self._factory()):
            for batch in self._chunks(self._checked(raw, i)):
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
                self._read += 1
                for batch in self._chunks(self._checked(raw, self._read - 1)):
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
