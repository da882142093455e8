"""The fuzzing harness for every loader a user's file reaches (test code, not shipped).

A fuzz case writes one mutated input (a file, or a file set: a recipe's ``.json`` +
``.safetensors``, a folder of ``.npy`` files, an ``.onnx`` file with side files) into a fresh
folder and calls the loader on it in a **forked worker** under two bounds:

* time: :data:`TIME_LIMIT_S` per call (``signal.alarm`` in the worker; the parent kills a worker
  that outlives it by :data:`KILL_GRACE_S`);
* memory: ``RLIMIT_AS`` = the worker's address space at the fork + :data:`MEMORY_BOUND`
  (256 MiB), which counts native allocations (numpy, protobuf, onnx's C++) as well as Python's.

The rule every loader obeys (:func:`Outcome.problem`): it returns, or raises one of the exception
classes its docstring documents (all of them ``quantfw.errors.QuantfwError`` / ``ValueError``
subclasses the CLI prints as one line) with a message naming the file; never another exception,
a ``MemoryError``, a timeout or a dead worker.

Inputs come from real files the project writes (shipped target TOMLs, a recipe of the digits
MLP, its ``.qgraph``, calibration arrays, the ONNX test models) and are mutated both
structure-aware (:func:`mutate_tree` on the parsed JSON / TOML / ONNX fields, :func:`odd_array`
for array values, declared sizes in ``.npy`` / safetensors headers) and byte-wise
(:func:`mutate_bytes`: flip, overwrite, truncate, splice, duplicate, insert).

Two lanes: the default lane runs a fixed, derandomized number of examples per loader
(:func:`short_settings`); the ``slow`` lane runs each loader for a share of
``QUANTFW_FUZZ_SECONDS`` (default 600) in chunks with fixed seeds (``QUANTFW_FUZZ_SEED``), so a
long run is reproducible, and records every distinct failure instead of stopping at the first
(:class:`FuzzRun`).
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import pickle
import resource
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

#: Per-call wall-clock limit in the worker.
TIME_LIMIT_S = 20
#: Extra seconds the parent waits before killing a worker that ignored its alarm.
KILL_GRACE_S = 10
#: Allocation bound per call, on top of the worker's address space when it was forked.
MEMORY_BOUND = 256 * 1024 * 1024
#: Loaders fuzzed in all (four core ones in tests/test_fuzz_loaders.py, ONNX in
#: tests/plugin_onnx/test_fuzz_onnx.py): each gets this share of the slow lane's seconds.
TOTAL_LOADERS = 5
#: Default total seconds of the slow lane, spread over the loaders.
DEFAULT_LONG_SECONDS = 600
#: Hypothesis health checks that do not apply: inputs are big on purpose, and each example
#: forks a worker.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


# -- the isolated call ----------------------------------------------------------------------------
class _Alarm(BaseException):
    """Raised in the worker when its time limit is up (a BaseException: loaders must not
    swallow it)."""


@dataclass(frozen=True)
class Outcome:
    """What one loader call did in its worker.

    :param kind: ``ok``, ``raised`` (an exception), ``timeout``, ``memory`` (``MemoryError``
        under the bound) or ``crash`` (the worker died: a signal or a native abort).
    :param allowed: for ``raised``: the exception is one the loader documents.
    """

    kind: str
    exc_type: str = ""
    message: str = ""
    where: str = ""
    allowed: bool = False
    detail: str = ""

    def problem(self, names: Iterable[str]) -> str | None:
        """Why this outcome breaks the rule, or ``None`` when it keeps it; ``names`` are the
        ways the message may name the file (any one suffices)."""
        if self.kind == "ok":
            return None
        if self.kind == "raised" and self.allowed:
            if any(n and n in self.message for n in names):
                return None
            return f"message does not name the file: {self.exc_type}: {self.message[:300]}"
        if self.kind == "raised":
            return f"undocumented exception {self.exc_type}: {self.message[:300]} (at {self.where})"
        return f"{self.kind}: {self.exc_type} {self.message[:300]} {self.detail[:300]}".strip()

    def signature(self) -> tuple[str, str, str]:
        """What makes two failures the same: kind, exception type and where it was raised."""
        if self.kind == "raised" and self.allowed:
            return ("unnamed-file", self.exc_type, self.where)
        return (self.kind, self.exc_type, self.where)


def _address_space() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _last_frame(tb: Any) -> str:
    frames = traceback.extract_tb(tb)
    if not frames:
        return ""
    # the deepest frame in quantfw code says where the fix goes; else the deepest of all
    ours = [f for f in frames if "quantfw" in f.filename and "/tests/" not in f.filename]
    f = (ours or frames)[-1]
    return f"{os.path.relpath(f.filename, os.getcwd())}:{f.lineno} ({f.name})"


def _worker(fn: Callable[[], Any], allowed: tuple[type[BaseException], ...], memory: int) -> dict:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if memory and sys.platform.startswith("linux"):
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory, hard))
    try:
        return _call(fn, allowed)
    finally:  # the result is pickled without the bound
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _call(fn: Callable[[], Any], allowed: tuple[type[BaseException], ...]) -> dict:
    try:
        fn()
        return {"kind": "ok"}
    except _Alarm:
        return {"kind": "timeout", "detail": traceback.format_exc()[-1500:]}
    except MemoryError as exc:
        return {
            "kind": "memory",
            "exc_type": "MemoryError",
            "message": str(exc),
            "where": _last_frame(exc.__traceback__),
            "detail": traceback.format_exc()[-1500:],
        }
    except BaseException as exc:  # noqa: BLE001 - the point is to see everything
        t = type(exc)
        return {
            "kind": "raised",
            "exc_type": f"{t.__module__}.{t.__qualname__}",
            "message": str(exc),
            "where": _last_frame(exc.__traceback__),
            "allowed": isinstance(exc, allowed),
            "detail": traceback.format_exc()[-3000:],
        }


def run_isolated(
    fn: Callable[[], Any],
    allowed: tuple[type[BaseException], ...],
    *,
    timeout: int = TIME_LIMIT_S,
    memory: int = MEMORY_BOUND,
) -> Outcome:
    """Call ``fn()`` in a forked worker under the time and memory bounds; see the module
    docstring."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into the test runner
        code = 0
        try:
            os.close(r)
            faulthandler.disable()  # a crash is reported by the parent, without a dump

            def on_alarm(signum: int, frame: Any) -> None:
                raise _Alarm()

            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(timeout)
            result = _worker(fn, allowed, memory)
            signal.alarm(0)
            payload = pickle.dumps(result)
            with os.fdopen(w, "wb") as fh:
                fh.write(payload)
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout + KILL_GRACE_S
    killed = False
    with os.fdopen(r, "rb", buffering=0) as fh:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([fh], [], [], left)
            if ready:
                chunk = fh.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if killed:
        return Outcome("timeout", detail=f"worker killed after {timeout + KILL_GRACE_S} s")
    data = b"".join(chunks)
    if not data:
        how = (
            f"signal {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else f"exit status {os.WEXITSTATUS(status)}"
        )
        return Outcome("crash", detail=f"worker died without a result ({how})")
    return Outcome(**pickle.loads(data))


class Case(dict):
    """A fuzz input: relative file name -> bytes, shown compactly (sizes and first bytes) in
    failure reports."""

    def __repr__(self) -> str:
        return (
            "Case({" + ", ".join(f"{k!r}: {len(v)} B {v[:160]!r}" for k, v in self.items()) + "})"
        )


# -- recording runs --------------------------------------------------------------------------------
@dataclass
class FuzzRun:
    """Counts inputs per loader and keeps the first example of every distinct failure."""

    strict: bool = True
    tried: dict[str, int] = field(default_factory=dict)
    #: per loader: how many calls returned, raised a documented error, or failed
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: dict[tuple[str, tuple[str, str, str]], tuple[str, str]] = field(default_factory=dict)

    def check(self, loader: str, outcome: Outcome, names: Iterable[str], example: str) -> None:
        self.tried[loader] = self.tried.get(loader, 0) + 1
        problem = outcome.problem(names)
        kind = "failed" if problem else "loaded" if outcome.kind == "ok" else "refused"
        counts = self.outcomes.setdefault(loader, {})
        counts[kind] = counts.get(kind, 0) + 1
        if problem is None:
            return
        key = (loader, outcome.signature())
        if key not in self.failures:
            self.failures[key] = (problem, example + "\n" + outcome.detail)
        if self.strict:
            raise AssertionError(f"{loader}: {problem}\ninput: {example}\n{outcome.detail}")

    def report(self) -> str:
        lines = [f"inputs tried: {dict(sorted(self.tried.items()))}"]
        lines.append(f"outcomes: {dict(sorted(self.outcomes.items()))}")
        lines.append(f"distinct failures: {len(self.failures)}")
        for (loader, sig), (problem, example) in self.failures.items():
            lines.append(f"- {loader} {sig}: {problem}\n    {example[:600]}")
        return "\n".join(lines)


def short_settings(examples: int) -> settings:
    """The default lane: a fixed number of derandomized examples, no database, no deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=_SUPPRESS,
        print_blob=False,
    )


def long_seconds() -> float:
    """Total seconds of the slow lane (``QUANTFW_FUZZ_SECONDS``, default 600)."""
    return float(os.environ.get("QUANTFW_FUZZ_SECONDS", DEFAULT_LONG_SECONDS))


def run_for(strategy: st.SearchStrategy[Any], body: Callable[[Any], None], seconds: float) -> int:
    """Run ``body`` on examples of ``strategy`` for about ``seconds``, in chunks of 50 examples
    seeded ``QUANTFW_FUZZ_SEED + chunk`` (reproducible); returns the number of chunks."""
    base = int(os.environ.get("QUANTFW_FUZZ_SEED", "0"))
    end = time.monotonic() + seconds
    chunk = 0
    while time.monotonic() < end:
        test = settings(
            max_examples=50,
            database=None,
            deadline=None,
            suppress_health_check=_SUPPRESS,
            print_blob=False,
        )(given(strategy)(body))
        seed(base + chunk)(test)()
        chunk += 1
    return chunk


# -- byte-level mutation ---------------------------------------------------------------------------
_INTERESTING_BYTES = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x01\x00\x00\x00\x00\x00\x00\x00",
]


def mutate_bytes(draw: Callable[..., Any], raw: bytes, splice_from: bytes = b"") -> bytes:
    """1 to 4 byte-level edits of ``raw``: flip a bit, overwrite with an interesting value,
    truncate, splice in a slice of ``splice_from``, duplicate or delete a chunk, insert bytes."""
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["flip", "overwrite", "truncate", "splice", "dup", "delete", "insert"]),
        )
        n = len(buf)
        pos = draw(st.integers(0, max(n - 1, 0))) if n else 0
        if op == "flip" and n:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite" and n:
            val = draw(st.sampled_from(_INTERESTING_BYTES))
            buf[pos : pos + len(val)] = val
        elif op == "truncate":
            del buf[pos:]
        elif op == "splice" and splice_from:
            a = draw(st.integers(0, len(splice_from) - 1))
            b = draw(st.integers(a, min(len(splice_from), a + 4096)))
            buf[pos:pos] = splice_from[a:b]
        elif op == "dup" and n:
            end = draw(st.integers(pos, min(n, pos + 4096)))
            buf[pos:pos] = buf[pos:end]
        elif op == "delete" and n:
            end = draw(st.integers(pos, min(n, pos + 256)))
            del buf[pos:end]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    return bytes(buf)


# -- structure-aware mutation of parsed documents --------------------------------------------------
def _deep(depth: int) -> Any:
    doc: Any = 0
    for _ in range(depth):
        doc = [doc]
    return doc


#: Stands for a value nested 50 000 levels deep: the writers below put the nesting into the text
#: (too deep for Python's own json / a recursive copy, so it never lives in a document).
DEEP = "<<nested 50000 levels deep>>"
_DEEP_TEXT = "[" * 50000 + "]" * 50000

#: Values that break loaders: wrong types, boundary numbers, odd strings, deep nesting.
INTERESTING_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    2**31,
    2**63 - 1,
    -(2**63),
    10**30,
    0.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    "x",
    "int8",
    "float32",
    "per_channel",
    "../outside",
    "/etc/passwd",
    "missing.safetensors",
    "\x00",
    "é\u2603",
    "a" * 5000,
    [],
    [0],
    [-1, 2**40],
    ["a", "b"],
    {},
    {"a": 1},
    _deep(200),
    DEEP,
]


def interesting_values(strings: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.sampled_from(INTERESTING_VALUES),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        strings or st.text(max_size=20),
    )
    return st.one_of(
        leaves,
        st.lists(leaves, max_size=4),
        st.dictionaries(st.text(max_size=8), leaves, max_size=3),
    )


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list) and len(prefix) < 12:
        for i, v in enumerate(doc[:50]):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutate_tree(
    draw: Callable[..., Any], doc: Any, values: st.SearchStrategy[Any] | None = None
) -> Any:
    """1 to 3 edits of a parsed JSON / TOML document (a deep copy is edited): replace a value,
    delete a key or item, add an unknown key, duplicate a list item, swap in another subtree, or
    change a number by a little or a lot."""
    doc = json.loads(json.dumps(doc))  # deep copy (documents here are JSON-compatible)
    values = values or interesting_values()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        # depth first, then a path at that depth: top-level keys are hit as often as leaves
        depth = draw(st.sampled_from(sorted({len(p) for p in paths})))
        path = draw(st.sampled_from([p for p in paths if len(p) == depth]))
        op = draw(st.sampled_from(["replace", "delete", "add", "dup", "swap", "nudge"]))
        if not path:
            if op == "replace":
                doc = copy.deepcopy(draw(values))
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        node = parent[key]
        if op == "replace":
            parent[key] = copy.deepcopy(draw(values))  # values are shared objects: copy
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(["zz_unknown", "", "scale", "shape"]))] = copy.deepcopy(
                draw(values)
            )
        elif op == "dup" and isinstance(node, list) and node:
            node.append(json.loads(json.dumps(node[draw(st.integers(0, len(node) - 1))])))
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            parent[key] = json.loads(json.dumps(_get(doc, other)))
        elif op == "nudge" and isinstance(node, (int, float)) and not isinstance(node, bool):
            delta = draw(st.sampled_from([1, -1, 2, 1000, -(10**6), 2**32]))
            parent[key] = node + delta if isinstance(node, int) else node * delta
    return doc


def dump_json(doc: Any) -> bytes:
    """``doc`` as JSON (NaN / Infinity as Python's json writes them; :data:`DEEP` as its deep
    nesting)."""
    text = json.dumps(doc).replace(json.dumps(DEEP), _DEEP_TEXT)
    return text.encode("utf-8", "surrogatepass")


# -- TOML writing (for mutated target specs) ------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if v == DEEP:
        return _DEEP_TEXT
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(i)}" for k, i in v.items()) + "}"
        )
    if v is None:
        return '""'  # TOML has no null; the nearest wrong value
    raise TypeError(type(v))


def dump_toml(doc: Any) -> bytes:
    """A TOML document for ``doc`` (tables as inline tables; ``None`` as an empty string).  A
    non-table root becomes ``value = …``."""
    if not isinstance(doc, dict):
        doc = {"value": doc}
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in doc.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


# -- arrays ---------------------------------------------------------------------------------------
_ODD_DTYPES = [
    "float32",
    "float64",
    "float16",
    "int8",
    "uint8",
    "int32",
    "int64",
    "bool",
    "complex64",
    "U3",
    "S2",
    "V4",
    "datetime64[s]",
    "<f4,<i4",
]


@st.composite
def odd_array(draw: Any, like: np.ndarray | None = None) -> np.ndarray:
    """Arrays a loader may not expect: odd dtypes, 0-d, empty, wrong rank, NaN / Inf / huge
    values, or ``like`` with one of those changes."""
    choice = draw(st.sampled_from(["dtype", "shape", "values", "fresh"]))
    base = np.asarray(like) if like is not None else np.zeros((2, 3), np.float32)
    if choice == "dtype":
        dt = draw(st.sampled_from(_ODD_DTYPES))
        try:
            return base.astype(dt)
        except (TypeError, ValueError):
            return np.zeros(base.shape, dt)
    if choice == "shape":
        shape = draw(
            st.sampled_from([(), (0,), (1,), (0, 3), (1, 1, 1, 1), (3, 0, 2), (7,), (2, 1000)])
        )
        return np.resize(base, shape) if base.size else np.zeros(shape, base.dtype)
    if choice == "values":
        out = base.astype(np.float32 if base.dtype.kind not in "f" else base.dtype, copy=True)
        if out.size:
            out.flat[draw(st.integers(0, out.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e38, 1e-45])
            )
        return out
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    return np.full(shape, draw(st.floats(width=32)), np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as an ``.npy`` file's bytes (no pickle)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_with_header(
    shape: tuple[int, ...], dtype: str, data: bytes, fortran: bool = False
) -> bytes:
    """An ``.npy`` file whose header declares ``shape`` and ``dtype`` over ``data`` (which need
    not fit): the declared-size attack."""
    header = repr({"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@st.composite
def npy_file(draw: Any, like: np.ndarray) -> bytes:
    """One ``.npy`` file's bytes: ``like`` itself, an odd array, a header declaring a huge or
    wrong shape, an object array (pickled, must be refused), or byte mutations."""
    kind = draw(st.sampled_from(["same", "odd", "header", "object", "bytes"]))
    if kind == "same":
        return npy_bytes(like)
    if kind == "odd":
        return npy_bytes(draw(odd_array(like)))
    if kind == "header":
        shape = draw(
            st.sampled_from(
                [(10**12,), (2**31, 2**31), (1 << 40, 64), (-1, 64), (0,), (3, 5), (2**62,)]
            )
        )
        dtype = draw(st.sampled_from(["<f4", "<f8", "|u1", "<c16", "|V8", "|O"]))
        data = draw(st.sampled_from([b"", like.tobytes()[:1024], b"\x00" * 60]))
        return npy_with_header(shape, dtype, data)
    if kind == "object":
        import io

        buf = io.BytesIO()
        np.save(buf, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
        return buf.getvalue()
    return mutate_bytes(draw, npy_bytes(like))


def zip_bytes(members: dict[str, bytes], compress: bool = False) -> bytes:
    """A zip archive (an ``.npz``) of ``members``."""
    import io
    import zipfile

    buf = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", mode) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()
