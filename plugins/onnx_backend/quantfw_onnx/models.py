"""Real models and real data for examples, tests and benchmarks -- without torch.

Two things live here, both built from data that ships with installed packages (nothing is
downloaded):

* :func:`digits_cnn` -- a small convolutional classifier for scikit-learn's bundled 8x8 digits,
  trained in plain numpy (forward and backward written out, im2col convolutions, Adam) and returned
  as an ONNX model built with :mod:`onnx.helper`, together with its data split.
* :func:`docstring_sentences` -- real English sentences taken from the docstrings of Python's own
  standard library, in a deterministic order, so calibration and evaluation sets can be drawn
  disjoint from each other.

Only numpy, onnx and (for the digits) scikit-learn are needed; torch is never imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "DIGITS_SPLIT",
    "DigitsData",
    "digits_cnn",
    "digits_data",
    "digits_forward",
    "docstring_sentences",
    "sentence_pool",
]

# --------------------------------------------------------------------------------------------
# digits: data
# --------------------------------------------------------------------------------------------

#: Fractions of the 1797 digits images in the train / calibration / test parts.  The split is a
#: permutation drawn with ``numpy.random.default_rng(DIGITS_SPLIT_SEED)``: the first 60 % of the
#: permuted indices train the network, the next 10 % are the calibration set, the last 30 % the
#: test set.  The split does not depend on the training seed, so every model sees the same test set.
DIGITS_SPLIT = (0.6, 0.1, 0.3)
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsData:
    """The digits images as NCHW float32 ``[N, 1, 8, 8]`` (pixel / 16, so in [0, 1]) and labels.

    The three parts are disjoint (``*_index`` are row numbers into ``load_digits()``).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray = field(repr=False)
    calib_index: np.ndarray = field(repr=False)
    test_index: np.ndarray = field(repr=False)
    #: the trained float weights (ONNX initializer name -> array); empty for :func:`digits_data`.
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def accuracy(self, logits: np.ndarray) -> float:
        """Top-1 accuracy of ``logits`` (``[len(x_test), 10]``) on the test labels."""
        logits = np.asarray(logits)
        if logits.shape != (len(self.y_test), 10):
            raise ValueError(
                f"expected logits of shape {(len(self.y_test), 10)}, got {logits.shape}"
            )
        return float(np.mean(np.argmax(logits, axis=1) == self.y_test))


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data ships with scikit-learn, which is not installed: "
            'pip install scikit-learn  (or pip install "quantfw[demo]")'
        ) from exc
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def digits_data() -> DigitsData:
    """The digits split into train / calibration / test parts (see :data:`DIGITS_SPLIT`)."""
    x, y = _load_digits()
    n = len(x)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    n_train = int(round(DIGITS_SPLIT[0] * n))
    n_calib = int(round(DIGITS_SPLIT[1] * n))
    tr, ca, te = order[:n_train], order[n_train : n_train + n_calib], order[n_train + n_calib :]
    return DigitsData(
        x_train=x[tr],
        y_train=y[tr],
        x_calib=x[ca],
        y_calib=y[ca],
        x_test=x[te],
        y_test=y[te],
        train_index=tr,
        calib_index=ca,
        test_index=te,
    )


# --------------------------------------------------------------------------------------------
# digits: a numpy CNN
#
#   image [N,1,8,8] -> Conv 1->32 3x3 pad 1   -> Relu -> [N,32,8,8]
#                   -> Conv 32->64 3x3 pad 1  -> Relu -> MaxPool 2 -> [N,64,4,4]
#                   -> Conv 64->128 3x3 pad 1 -> Relu -> MaxPool 2 -> [N,128,2,2]
#                   -> Flatten -> [N,512] -> Gemm 512->128 -> Relu -> [N,128]
#                   -> Gemm 128->10 -> logits
#
#   159,626 parameters (conv1 320, conv2 18,496, conv3 73,856, fc1 65,664, fc2 1,290), about
#   640 KB as float32.  It is this wide on purpose: the weights, not the graph, make up the ONNX
#   file (an int8 copy is ~0.27x its size), and at batch 32 the two 8x8 / 4x4 convolutions
#   (~2.4 M multiply-adds per image) are enough work for ONNX Runtime's int8 kernels to beat
#   float ones.  Narrower variants (e.g. 1->32 pool 32->64 pool, 256->128->10: 53 K parameters)
#   quantize to ~0.30x and run no faster in int8 than in float.
# --------------------------------------------------------------------------------------------

_F32 = np.float32

#: The layers, in order: ``("conv", out_channels)`` is a 3x3 convolution (zero padding 1)
#: followed by Relu, ``("pool", 0)`` a 2x2 / stride 2 max pooling, ``("fc", units)`` a fully
#: connected layer (Gemm) followed by Relu except for the last, which gives the 10 logits.  The
#: first ``fc`` flattens its input.
_DIGITS_LAYERS: tuple[tuple[str, int], ...] = (
    ("conv", 32),
    ("conv", 64),
    ("pool", 0),
    ("conv", 128),
    ("pool", 0),
    ("fc", 128),
    ("fc", 10),
)


def _plan(layers: tuple[tuple[str, int], ...]) -> list[tuple[str, str, int]]:
    """``(kind, name, width)`` per layer: conv1, conv2, ..., pool1, ..., flatten, fc1, fc2, ..."""
    count: dict[str, int] = {}
    plan: list[tuple[str, str, int]] = []
    for kind, width in layers:
        if kind == "fc" and "fc" not in count:
            plan.append(("flatten", "flatten", 0))
        count[kind] = count.get(kind, 0) + 1
        plan.append((kind, f"{kind}{count[kind]}", width))
    return plan


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3 patches of ``x`` ([N,C,H,W], zero padding 1) as rows ``[N*H*W, C*9]`` (order c, ky, kx)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # [N,C,H,W,3,3]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * h * w, c * 9)


def _col2im(dcols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of :func:`_im2col`: scatter-add patch gradients back onto the image."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + h, j : j + w] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, wd = x.shape
    cols = _im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, w.shape[0]).transpose(0, 3, 1, 2), cols


def _conv_backward(dout: np.ndarray, cols: np.ndarray, w: np.ndarray, x_shape) -> tuple:
    """Gradients ``(dx, dw, db)``; ``dx`` is None when ``x_shape`` is None (the input image)."""
    k = w.shape[0]
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, k)
    dw = (d2.T @ cols).reshape(w.shape)
    db = d2.sum(axis=0)
    dx = None if x_shape is None else _col2im(d2 @ w.reshape(k, -1), x_shape)
    return dx, dw, db


def _maxpool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 / stride 2 max pooling; also returns the argmax (first maximum, like the runtimes)."""
    n, c, h, w = x.shape
    r = (
        x.reshape(n, c, h // 2, 2, w // 2, 2)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h // 2, w // 2, 4)
    )
    idx = np.argmax(r, axis=-1)
    return np.take_along_axis(r, idx[..., None], axis=-1)[..., 0], idx


def _maxpool_backward(dout: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n, c, h2, w2 = dout.shape
    d = np.zeros((n, c, h2, w2, 4), dtype=dout.dtype)
    np.put_along_axis(d, idx[..., None], dout[..., None], axis=-1)
    return d.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2 * 2, w2 * 2)


def _forward(p: dict[str, np.ndarray], x: np.ndarray, keep: bool = False):
    plan = _plan(_DIGITS_LAYERS)
    last = plan[-1][1]
    cache: list[tuple] = []
    h = x
    for kind, name, _ in plan:
        if kind == "conv":
            z, cols = _conv(h, p[f"{name}.weight"], p[f"{name}.bias"])
            cache.append((cols, h.shape, z))
            h = np.maximum(z, 0)
        elif kind == "pool":
            h, idx = _maxpool(h)
            cache.append((idx,))
        elif kind == "flatten":
            cache.append((h.shape,))
            h = h.reshape(len(h), -1)
        else:  # fc
            z = h @ p[f"{name}.weight"].T + p[f"{name}.bias"]
            cache.append((h, z))
            h = z if name == last else np.maximum(z, 0)
    return (h, cache) if keep else h


def _backward(p: dict[str, np.ndarray], cache, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    plan = _plan(_DIGITS_LAYERS)
    last = plan[-1][1]
    g: dict[str, np.ndarray] = {}
    d = dlogits
    for i in range(len(plan) - 1, -1, -1):
        kind, name, _ = plan[i]
        c = cache[i]
        if kind == "fc":
            h, z = c
            if name != last:
                d = d * (z > 0)
            g[f"{name}.weight"] = d.T @ h
            g[f"{name}.bias"] = d.sum(axis=0)
            d = d @ p[f"{name}.weight"]
        elif kind == "flatten":
            d = d.reshape(c[0])
        elif kind == "pool":
            d = _maxpool_backward(d, c[0])
        else:  # conv (+ Relu); the image needs no gradient
            cols, x_shape, z = c
            d, g[f"{name}.weight"], g[f"{name}.bias"] = _conv_backward(
                d * (z > 0), cols, p[f"{name}.weight"], x_shape if i else None
            )
    return g


def digits_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The numpy reference forward pass of the digits CNN: ``x`` [N,1,8,8] -> logits [N,10]."""
    return _forward(weights, np.asarray(x, dtype=_F32))


def _init(seed: int) -> dict[str, np.ndarray]:
    """He-normal weights and zero biases for :data:`_DIGITS_LAYERS`, in layer order."""
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}
    channels, side, features = 1, 8, 0
    for kind, name, width in _plan(_DIGITS_LAYERS):
        if kind == "conv":
            shape, fan_in, channels = (width, channels, 3, 3), channels * 9, width
        elif kind == "pool":
            side //= 2
            continue
        elif kind == "flatten":
            features = channels * side * side
            continue
        else:
            shape, fan_in, features = (width, features), features, width
        p[f"{name}.weight"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(_F32)
        p[f"{name}.bias"] = np.zeros(width, _F32)
    return p


def _one_blas_thread():
    """A context that runs BLAS on one thread (a no-op when threadpoolctl is missing).

    The training matmuls are small (at most ``[2048, 288] @ [288, 64]`` per mini-batch of 32): a
    second BLAS thread hardly speeds them up, and on a busy machine OpenBLAS's spinning worker
    threads slow training down several-fold.  threadpoolctl is a dependency of scikit-learn, which
    the digits need anyway.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@functools.lru_cache(maxsize=8)
def _train(seed: int, epochs: int, batch: int, lr: float) -> tuple[tuple[str, bytes, tuple], ...]:
    """Train once per argument set; the weights are cached as immutable bytes."""
    data = digits_data()
    x, y = data.x_train, data.y_train
    p = _init(seed)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(seed + 1)
    total = epochs * -(-len(x) // batch)
    step = 0
    with _one_blas_thread():
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for s in range(0, len(x), batch):
                idx = order[s : s + batch]
                logits, cache = _forward(p, x[idx], keep=True)
                # softmax cross-entropy, mean over the batch
                z = logits - logits.max(axis=1, keepdims=True)
                prob = np.exp(z)
                prob /= prob.sum(axis=1, keepdims=True)
                prob[np.arange(len(idx)), y[idx]] -= 1.0
                grads = _backward(p, cache, (prob / len(idx)).astype(_F32))
                # Adam with the step size annealed from lr to 0 on a half cosine
                lr_t = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                step += 1
                c1, c2 = 1.0 - b1**step, 1.0 - b2**step
                for k in p:
                    gk = grads[k]
                    m[k] = b1 * m[k] + (1 - b1) * gk
                    v2[k] = b2 * v2[k] + (1 - b2) * gk * gk
                    p[k] = (p[k] - lr_t * (m[k] / c1) / (np.sqrt(v2[k] / c2) + eps)).astype(_F32)
    return tuple((k, a.tobytes(), a.shape) for k, a in p.items())


def _digits_onnx(p: dict[str, np.ndarray]) -> onnx.ModelProto:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    plan = _plan(_DIGITS_LAYERS)
    nodes = []
    cur, relus = "image", 0
    for kind, name, _ in plan:
        if kind == "conv":
            nodes.append(
                helper.make_node(
                    "Conv",
                    [cur, f"{name}.weight", f"{name}.bias"],
                    [name],
                    name=name,
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                )
            )
        elif kind == "pool":
            nodes.append(
                helper.make_node(
                    "MaxPool", [cur], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]
                )
            )
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], ["flat"], name=name, axis=1))
            name = "flat"
        else:
            out = "logits" if name == plan[-1][1] else name
            nodes.append(
                helper.make_node(
                    "Gemm", [cur, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1
                )
            )
        cur = name
        if kind == "conv" or (kind == "fc" and name != plan[-1][1]):
            relus += 1
            nodes.append(helper.make_node("Relu", [cur], [f"relu{relus}"], name=f"relu{relus}"))
            cur = f"relu{relus}"
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, k) for k, a in p.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="quantfw.models"
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    onnx.checker.check_model(model, full_check=True)
    return model


def digits_cnn(
    seed: int = 0, *, epochs: int = 8, batch: int = 32, lr: float = 3e-3
) -> tuple[onnx.ModelProto, DigitsData]:
    """A small CNN for the 8x8 digits, trained in numpy, as an ONNX model and its data.

    The network (opset 17, input ``"image"`` float32 ``[batch, 1, 8, 8]``, output ``"logits"``
    ``[batch, 10]``, batch dimension dynamic; 159,626 parameters, about 640 KB as float32)::

        Conv(1->32, 3x3, pad 1) Relu
        Conv(32->64, 3x3, pad 1) Relu MaxPool(2)
        Conv(64->128, 3x3, pad 1) Relu MaxPool(2)
        Flatten(512) Gemm(512->128) Relu Gemm(128->10)

    It is wide enough that its weights, not the graph, make up most of the ONNX file, and that
    int8 kernels have real work to do at batch 32 (see the comment above ``_DIGITS_LAYERS``).

    Training: He-normal initialisation and mini-batch order from ``seed``, softmax cross-entropy,
    Adam (betas 0.9/0.999, step size annealed from ``lr`` to 0 on a half cosine), ``epochs`` passes
    over the training part of :func:`digits_data` in mini-batches of ``batch``, BLAS on one thread
    (about three seconds).  The same seed gives identical weights; with the defaults the test
    accuracy is 99.1-99.4 % (seeds 0-7).  Trained weights are cached per argument set, so repeated
    calls are cheap; every call returns a fresh ModelProto and fresh arrays.

    :returns: ``(model, data)`` where ``data.weights`` holds the float weights for
        :func:`digits_forward`.
    """
    trained = _train(int(seed), int(epochs), int(batch), float(lr))
    weights = {k: np.frombuffer(b, dtype=_F32).reshape(shape).copy() for k, b, shape in trained}
    data = digits_data()
    data = DigitsData(
        **{**{f: getattr(data, f) for f in data.__dataclass_fields__}, "weights": weights}
    )
    return _digits_onnx(weights), data


# --------------------------------------------------------------------------------------------
# sentences from the standard library's docstrings
# --------------------------------------------------------------------------------------------

#: Standard-library modules whose docstrings (module, public classes, functions and methods) feed
#: :func:`docstring_sentences`, in this order.  A module missing from a Python build is skipped.
DOCSTRING_MODULES = (
    "json",
    "collections",
    "pathlib",
    "argparse",
    "functools",
    "itertools",
    "os",
    "re",
    "subprocess",
    "threading",
    "logging",
    "asyncio",
    "email.message",
    "http.client",
    "http.server",
    "urllib.request",
    "urllib.parse",
    "unittest",
    "typing",
    "dataclasses",
    "inspect",
    "textwrap",
    "string",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "heapq",
    "bisect",
    "shutil",
    "tempfile",
    "zipfile",
    "tarfile",
    "csv",
    "configparser",
    "socket",
    "selectors",
    "concurrent.futures",
    "multiprocessing",
    "pickle",
    "copy",
    "enum",
    "abc",
    "contextlib",
    "io",
    "codecs",
    "difflib",
    "pprint",
    "calendar",
    "locale",
    "gettext",
    "optparse",
    "queue",
    "sched",
    "xml.etree.ElementTree",
    "html.parser",
    "smtplib",
    "ftplib",
    "imaplib",
    "pydoc",
    "doctest",
    "trace",
    "timeit",
    "ast",
    "dis",
    "tokenize",
    "weakref",
    "warnings",
    "traceback",
    "numbers",
    "operator",
    "glob",
    "fnmatch",
    "gzip",
    "bz2",
    "lzma",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "base64",
    "struct",
    "array",
    "mailbox",
    "mimetypes",
    "platform",
    "getopt",
    "shlex",
    "cmd",
    "sqlite3",
    "wave",
    "zoneinfo",
    "ipaddress",
    "netrc",
    "plistlib",
    "filecmp",
    "fileinput",
)

_MIN_WORDS, _MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]?[.,;:!?)]*$")
# markup or code that makes a "sentence" not plain English
_REJECT = re.compile(
    r">>>|::|[{}\[\]<>=|\\@#$%^*~_/]|\.\.\.|`|\b[a-z]+\.[a-z]+\(|\(\)|https?:|e\.g\b|i\.e\b"
)


def _docstrings(module_name: str):
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a missing or broken stdlib module is simply skipped
        return
    yield mod.__doc__
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = vars(mod)[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:
            continue  # re-exported from elsewhere: seen (or not) under its own module
        yield obj.__doc__
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if attr.startswith("_"):
                    continue
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield member.__doc__


def _sentences(doc: str):
    """Plain prose sentences of one docstring: paragraphs of text, no code or field lists."""
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = para.splitlines()
        if not lines or any(
            ln.startswith((" ", "\t", ">>>", "...", ":", "-", "*", "+", "|")) for ln in lines
        ):
            continue  # code examples, indented blocks, field lists, bullet lists, tables
        text = " ".join(ln.strip() for ln in lines)
        for s in _SENTENCE_END.split(text):
            s = s.strip()
            if not s or s[0] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" or not s.endswith("."):
                continue
            words = s.split()
            if not (_MIN_WORDS <= len(words) <= _MAX_WORDS) or _REJECT.search(s):
                continue
            plain = sum(1 for w in words if _WORD.match(w.strip("\"'(")))
            if plain < 0.85 * len(words):  # mostly real words, not identifiers and numbers
                continue
            yield s


@functools.lru_cache(maxsize=1)
def sentence_pool() -> tuple[str, ...]:
    """Every usable sentence, deduplicated, in a fixed order (module list, then sorted names).

    The pool depends only on the Python version (its docstrings); it has a few thousand entries.
    """
    seen: dict[str, None] = {}
    with warnings.catch_warnings():  # some stdlib names warn on access (typing.re, ...)
        warnings.simplefilter("ignore")
        for module_name in DOCSTRING_MODULES:
            for doc in _docstrings(module_name):
                if isinstance(doc, str) and doc.strip():
                    for s in _sentences(doc):
                        seen.setdefault(s, None)
    return tuple(seen)


def docstring_sentences(n: int, seed: int = 0, offset: int = 0) -> list[str]:
    """``n`` real English sentences (6 to 40 words) from the standard library's docstrings.

    The pool (:func:`sentence_pool`) is shuffled with ``seed`` and ``pool[offset:offset + n]``
    returned, so for one seed, calls whose ``[offset, offset + n)`` ranges do not overlap return
    disjoint sentences: e.g. calibration ``(128, seed, 0)`` and evaluation ``(512, seed, 128)``.

    :raises ValueError: when the pool has fewer than ``offset + n`` sentences.
    """
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be >= 0 (got n={n}, offset={offset})")
    pool = sentence_pool()
    if offset + n > len(pool):
        raise ValueError(
            f"asked for sentences {offset}..{offset + n} but the docstring pool has only {len(pool)}"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[offset : offset + n]]
