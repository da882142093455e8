"""A small numpy interpreter for QuantGraphs: the float reference and the simulator of recipes.

It runs the op kinds a framework-neutral model is made of, in float32, with the layouts below,
so that the core can quantize, simulate and evaluate a model with no framework installed.  It is
a reference, not a fast runtime.

Layouts: activations NCHW for conv and pooling; conv weights ``(out, in/groups, kh, kw)``;
linear weights ``(out, in)`` when ``attrs["channel_axis"] == 0`` (the default) or ``(in, out)``
when it is 1.  Attributes: ``stride``, ``padding`` (int, pair, or ``(top, left, bottom, right)``),
``dilation``, ``groups``, ``kernel_shape``, ``axis``, ``axes``, ``keepdims``, ``perm``,
``shape`` (reshape; ``0`` copies the input dimension, ``-1`` is inferred), ``alpha``, ``clip``
(``(min, max)``), ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .graph import GraphError, Node, OpKind, QuantGraph

__all__ = ["run_graph", "supported_ops", "layer_output", "erf"]

TensorHook = Callable[[str, np.ndarray], np.ndarray]
InputHook = Callable[[Node, str, np.ndarray], np.ndarray]


def erf(x: np.ndarray) -> np.ndarray:
    """Error function to ~1e-7 (Abramowitz & Stegun 7.1.26), vectorised in numpy."""
    x = np.asarray(x, dtype=np.float64)
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return s * (1.0 - poly * np.exp(-a * a))


def _pair(v: object, default: int) -> tuple[int, int]:
    if v is None:
        return default, default
    if isinstance(v, int):
        return v, v
    t = tuple(int(i) for i in v)  # type: ignore[union-attr]
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _pads(v: object) -> tuple[int, int, int, int]:
    if v is None:
        return 0, 0, 0, 0
    if isinstance(v, int):
        return v, v, v, v
    t = tuple(int(i) for i in v)  # type: ignore[union-attr]
    if len(t) == 2:
        return t[0], t[1], t[0], t[1]
    if len(t) == 4:
        return t  # type: ignore[return-value]
    raise ValueError(f"padding {v!r}: give an int, a pair or (top, left, bottom, right)")


def _windows(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dil: tuple[int, int]):
    """Sliding windows of an NCHW array: shape (N, C, OH, OW, kh, kw)."""
    n, c, h, w = x.shape
    oh = (h - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dil[1] * (kw - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {h}x{w} is too small for a {kh}x{kw} window")
    sn, sc, sh, sw = x.strides
    return np.lib.stride_tricks.as_strided(
        x,
        shape=(n, c, oh, ow, kh, kw),
        strides=(sn, sc, sh * stride[0], sw * stride[1], sh * dil[0], sw * dil[1]),
        writeable=False,
    )


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Mapping) -> np.ndarray:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv needs NCHW input and OIHW weight, got {x.shape} and {w.shape}")
    groups = int(attrs.get("groups", 1))
    top, left, bottom, right = _pads(attrs.get("padding"))
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    stride, dil = _pair(attrs.get("stride"), 1), _pair(attrs.get("dilation"), 1)
    cout, cin_g, kh, kw = w.shape
    win = _windows(np.ascontiguousarray(x), kh, kw, stride, dil)  # N C OH OW kh kw
    n, c, oh, ow = win.shape[:4]
    if c != cin_g * groups:
        raise ValueError(f"conv input has {c} channels, weight expects {cin_g}*{groups} groups")
    outs = []
    cout_g = cout // groups
    for g in range(groups):
        xs = win[:, g * cin_g : (g + 1) * cin_g]  # N cin OH OW kh kw
        ws = w[g * cout_g : (g + 1) * cout_g]  # cout cin kh kw
        outs.append(np.einsum("ncijkl,ockl->noij", xs, ws, optimize=True))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y.astype(np.float32)


def _pool(x: np.ndarray, attrs: Mapping, kind: str) -> np.ndarray:
    kh, kw = _pair(attrs.get("kernel_shape"), 1)
    stride = _pair(attrs.get("stride"), kh)
    top, left, bottom, right = _pads(attrs.get("padding"))
    fill = -np.inf if kind == "max" else 0.0
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    win = _windows(np.ascontiguousarray(x), kh, kw, stride, (1, 1))
    return (win.max(axis=(4, 5)) if kind == "max" else win.mean(axis=(4, 5))).astype(np.float32)


def _reshape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    target = [x.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(shape)]
    return x.reshape(target)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Mapping) -> np.ndarray:
    y = x @ (w.T if int(attrs.get("channel_axis", 0)) == 0 else w)
    return y + b if b is not None else y


def layer_output(
    node: Node, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """The float output of a weighted ``linear`` or ``conv`` node on input ``x`` with the given
    weight and bias (the node's own attributes give the layout, stride, padding, groups)."""
    if node.op is OpKind.LINEAR:
        return _linear(x, weight, bias, node.attrs)
    if node.op is OpKind.CONV:
        return _conv2d(x, weight, bias, node.attrs)
    raise GraphError(
        f"node {node.name!r}: layer_output computes linear and conv, not {node.op.value}"
    )


def _eval(node: Node, args: list[np.ndarray], wt: Mapping[str, np.ndarray]) -> np.ndarray:
    a = node.attrs
    op = node.op
    x = args[0] if args else None
    if op is OpKind.LINEAR:
        return _linear(x, wt["weight"], wt.get("bias"), a)
    if op is OpKind.CONV:
        return _conv2d(x, wt["weight"], wt.get("bias"), a)
    if op is OpKind.MATMUL:
        return args[0] @ (args[1] if len(args) > 1 else wt["weight"])
    if op in (OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV):
        rhs = args[1] if len(args) > 1 else wt["weight"]
        fn = {
            OpKind.ADD: np.add,
            OpKind.SUB: np.subtract,
            OpKind.MUL: np.multiply,
            OpKind.DIV: np.divide,
        }
        return fn[op](x, rhs)
    if op is OpKind.CONCAT:
        return np.concatenate(args, axis=int(a.get("axis", 1)))
    if op is OpKind.MAX_POOL:
        return _pool(x, a, "max")
    if op is OpKind.AVG_POOL:
        return _pool(x, a, "avg")
    if op is OpKind.GLOBAL_AVG_POOL:
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    if op is OpKind.REDUCE_MEAN:
        axes = a.get("axes")
        return x.mean(
            axis=None if axes is None else tuple(axes), keepdims=bool(a.get("keepdims", True))
        )
    if op is OpKind.RELU:
        return np.maximum(x, 0)
    if op is OpKind.CLIP:
        lo, hi = a.get("clip", (0.0, 6.0))
        return np.clip(x, lo, hi)
    if op is OpKind.LEAKY_RELU:
        return np.where(x >= 0, x, x * float(a.get("alpha", 0.01)))
    if op is OpKind.GELU:
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    if op is OpKind.SIGMOID:
        return 1.0 / (1.0 + np.exp(-x))
    if op is OpKind.SILU:
        return x / (1.0 + np.exp(-x))
    if op is OpKind.TANH:
        return np.tanh(x)
    if op is OpKind.SOFTMAX:
        return _softmax(x, int(a.get("axis", -1)))
    if op is OpKind.BATCHNORM:
        shape = [1, -1] + [1] * (x.ndim - 2)
        inv = wt["scale"] / np.sqrt(wt["var"] + float(a.get("eps", 1e-5)))
        return (x - wt["mean"].reshape(shape)) * inv.reshape(shape) + wt["bias"].reshape(shape)
    if op is OpKind.LAYERNORM:
        axis = int(a.get("axis", -1))
        mu = x.mean(axis=axis, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axis, keepdims=True)
        y = (x - mu) / np.sqrt(var + float(a.get("eps", 1e-5)))
        if "weight" in wt:
            y = y * wt["weight"]
        return y + wt["bias"] if "bias" in wt else y
    if op is OpKind.EMBEDDING:
        return wt["weight"][np.asarray(x, dtype=np.int64)]
    if op is OpKind.RESHAPE:
        return _reshape(x, a["shape"])
    if op is OpKind.TRANSPOSE:
        return np.transpose(x, a.get("perm"))
    if op is OpKind.FLATTEN:
        axis = int(a.get("axis", 1))
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op is OpKind.SQUEEZE:
        axes = a.get("axes")
        return np.squeeze(x, axis=None if axes is None else tuple(axes))
    if op is OpKind.IDENTITY:
        return x
    raise GraphError(
        f"node {node.name!r}: the reference interpreter cannot run op kind {op.value!r}"
        f"{f' ({node.source_op})' if node.source_op else ''}; supported: "
        f"{', '.join(k.value for k in supported_ops())}"
    )


def supported_ops() -> tuple[OpKind, ...]:
    """Op kinds :func:`run_graph` executes."""
    unsupported = {
        OpKind.CONV_TRANSPOSE,
        OpKind.SLICE,
        OpKind.GATHER,
        OpKind.PAD,
        OpKind.RESIZE,
        OpKind.OTHER,
    }
    return tuple(k for k in OpKind if k not in unsupported)


def run_graph(
    graph: QuantGraph,
    feeds: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    on_tensor: TensorHook | None = None,
    on_input: InputHook | None = None,
) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` and return the tensors named in ``outputs``.

    :param feeds: graph input name → array.
    :param outputs: tensors to return (any graph input or node output); default graph outputs.
    :param weights: initializer values replacing the graph's own (e.g. fake-quantized weights).
    :param on_tensor: called on every graph input and node output as it is produced; its return
        value replaces the tensor for every reader (fake quantization of stored activations).
    :param on_input: called as ``on_input(node, tensor name, value)`` when a node reads an
        activation input; its return value is what that node alone sees (quantization on one
        edge, as a QDQ pair in front of one consumer).
    :raises ValueError: on a missing feed or a tensor name the graph does not compute.
    """
    missing = [i for i in graph.inputs if i not in feeds]
    if missing:
        raise ValueError(
            f"missing input(s) {missing} for graph {graph.name!r}; it takes {graph.inputs}"
        )
    want = list(graph.outputs if outputs is None else outputs)
    known = set(graph.activation_tensors())
    unknown = [t for t in want if t not in known]
    if unknown:
        raise KeyError(f"graph {graph.name!r} computes no tensor named {unknown}")
    consts = dict(graph.initializers)
    if weights:
        consts.update(weights)
    # reference counts so intermediate tensors are freed after their last use
    remaining: dict[str, int] = {}
    for n in graph.nodes:
        for t in n.inputs:
            remaining[t] = remaining.get(t, 0) + 1
    keep = set(want)
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        v = np.asarray(feeds[name])
        if v.dtype.kind == "f":
            v = v.astype(np.float32, copy=False)
        env[name] = on_tensor(name, v) if on_tensor else v
    for node in graph.nodes:
        args = [env[t] if t in env else consts[t] for t in node.inputs]
        if on_input is not None:
            args = [
                on_input(node, t, a) if t in env else a
                for t, a in zip(node.inputs, args, strict=True)
            ]
        wt = {role: consts[w] for role, w in node.weights.items()}
        try:
            y = _eval(node, args, wt)
        except GraphError:
            raise
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"node {node.name!r} ({node.op.value}) failed: {exc}") from exc
        y = np.asarray(y)
        if y.dtype.kind == "f":
            y = y.astype(np.float32, copy=False)
        out = node.outputs[0]
        env[out] = on_tensor(out, y) if on_tensor else y
        for t in node.inputs:
            if t in remaining:
                remaining[t] -= 1
                if remaining[t] == 0 and t not in keep:
                    env.pop(t, None)
    return {t: env[t] for t in want}
