"""Calibration data named the way the command line names it: an ``.npz`` file, a folder of
``.npy`` files, or ``module:function`` (the user's code, whose every failure is reported as a
:class:`~quantfw.calibration_errors.CalibrationSourceError` naming the source)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .arrayio import load_npy, load_npz
from .calibration_errors import CalibrationError, CalibrationSourceError
from .graph import QuantGraph

__all__ = ["CalibrationFile", "load_calibration_source"]


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
    * ``package.module:function``: the function is called with no argument (once per pass)
      and must return an iterable of batches (an array or dict it returns is one batch); the
      module is looked up in the current folder first.  Any failure -- the module missing or
      raising on import, the function missing, raising or returning no iterable, the iteration
      raising -- is a :class:`CalibrationSourceError` naming the source.

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
        return _user_function(spec)
    raise CalibrationError(
        f"calibration source {spec!r}: not an existing .npz file, a folder of .npy files, "
        "or module:function"
    )


def _user_function(spec: str) -> Callable[[], Iterator[Any]]:
    """``module:function`` as a batch factory whose every failure -- importing, calling,
    iterating -- is a :class:`CalibrationSourceError` naming ``spec`` (the user's exception is
    its ``__cause__``)."""
    mod_name, _, func_name = spec.partition(":")
    if not mod_name or not func_name.isidentifier():
        raise CalibrationSourceError(
            spec, "give module:function, e.g. mydata:batches (a module in the current folder or "
            "on sys.path, and a function of it taking no argument)"
        )  # fmt: skip
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (mod_name + ".").startswith(exc.name + "."):
            raise CalibrationSourceError(
                spec, f"no module named {exc.name!r} in the current folder or on sys.path"
            ) from exc
        raise CalibrationSourceError(spec, f"importing module {mod_name!r}", exc) from exc
    except (Exception, SystemExit) as exc:
        raise CalibrationSourceError(spec, f"importing module {mod_name!r}", exc) from exc
    finally:
        sys.path.pop(0)
    fn = getattr(module, func_name, None)
    if fn is None:
        names = [
            n
            for n, v in sorted(vars(module).items())
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == mod_name
        ][:10]
        raise CalibrationSourceError(
            spec, f"module {mod_name!r} has no function {func_name!r}"
            + (f"; its functions: {', '.join(names)}" if names else "")
        )  # fmt: skip
    if not callable(fn):
        raise CalibrationSourceError(
            spec, f"{mod_name}.{func_name} is an object of type {type(fn).__name__}, not a function"
        )

    def batches() -> Iterator[Any]:
        try:
            made = fn()
        except Exception as exc:
            raise CalibrationSourceError(spec, f"calling {spec}()", exc) from exc
        if isinstance(made, (str, bytes)) or not isinstance(made, Iterable):
            raise CalibrationSourceError(
                spec, f"{spec}() returned an object of type {type(made).__name__}; it must return "
                "an iterable of batches (a list, or a generator yielding a dict of arrays per "
                "batch)"
            )  # fmt: skip
        if isinstance(made, (np.ndarray, Mapping)):
            yield made
            return
        try:
            it = iter(made)
        except Exception as exc:
            raise CalibrationSourceError(spec, f"iter() on what {spec}() returned", exc) from exc
        read = 0
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as exc:
                raise CalibrationSourceError(
                    spec, f"iterating over what {spec}() returned (after {read} batch(es))", exc
                ) from exc
            read += 1
            yield batch

    return batches
