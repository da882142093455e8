"""A small CNN for the digits, trained in plain numpy: forward, backward, Adam, cached weights.

Forward and backward passes are written out (im2col convolutions, max pooling, Relu, fully
connected layers), so the trained float model exists without any deep-learning framework.  The
plugins rebuild the same network in their own format from :func:`digits_cnn_weights` (an ONNX
graph in ``quantfw_onnx.samples``, a ``torch.nn`` module in ``quantfw_torch.models``).

The network (parameter names are ``<layer>.weight`` / ``<layer>.bias``)::

    image [N,1,8,8] -> Conv 1->32 3x3 pad 1   -> Relu -> [N,32,8,8]
                    -> Conv 32->64 3x3 pad 1  -> Relu -> MaxPool 2 -> [N,64,4,4]
                    -> Conv 64->128 3x3 pad 1 -> Relu -> MaxPool 2 -> [N,128,2,2]
                    -> Flatten -> [N,512] -> Gemm 512->128 -> Relu -> [N,128]
                    -> Gemm 128->10 -> logits

159,626 parameters (conv1 320, conv2 18,496, conv3 73,856, fc1 65,664, fc2 1,290), about 640 KB
as float32.  It is this wide on purpose: the weights, not the graph, make up an exported file (an
int8 copy is ~0.27x its size), and at batch 32 the two 8x8 / 4x4 convolutions (~2.4 M
multiply-adds per image) are enough work for int8 kernels to beat float ones.  Narrower variants
(e.g. 1->32 pool 32->64 pool, 256->128->10: 53 K parameters) quantize to ~0.30x and run no faster
in int8 than in float.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np

from .digits import digits_data

__all__ = ["DIGITS_CNN_LAYERS", "digits_cnn_forward", "digits_cnn_weights"]

_F32 = np.float32

#: The layers in order, as ``(kind, name, width)``: ``"conv"`` is a 3x3 convolution (zero padding
#: 1, ``width`` output channels) followed by Relu, ``"pool"`` a 2x2 / stride 2 max pooling,
#: ``"flatten"`` flattens ``[N, C, H, W]`` to ``[N, C*H*W]`` (channel-major), ``"fc"`` a fully
#: connected layer of ``width`` units followed by Relu, except the last, which gives the logits.
DIGITS_CNN_LAYERS: tuple[tuple[str, str, int], ...] = (
    ("conv", "conv1", 32),
    ("conv", "conv2", 64),
    ("pool", "pool1", 0),
    ("conv", "conv3", 128),
    ("pool", "pool2", 0),
    ("flatten", "flatten", 0),
    ("fc", "fc1", 128),
    ("fc", "fc2", 10),
)
_LAST = DIGITS_CNN_LAYERS[-1][1]


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
    """Logits of ``x``; with ``keep``, also what :func:`_backward` needs, one entry per layer."""
    cache: list[tuple] = []
    h = x
    for kind, name, _ in DIGITS_CNN_LAYERS:
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
            h = z if name == _LAST else np.maximum(z, 0)
    return (h, cache) if keep else h


def _backward(p: dict[str, np.ndarray], cache, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of every parameter, given the gradient of the loss on the logits."""
    g: dict[str, np.ndarray] = {}
    d = dlogits
    for i in range(len(DIGITS_CNN_LAYERS) - 1, -1, -1):
        kind, name, _ = DIGITS_CNN_LAYERS[i]
        c = cache[i]
        if kind == "fc":
            h, z = c
            if name != _LAST:
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


def digits_cnn_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The numpy reference forward pass of the digits CNN: ``x`` [N,1,8,8] -> logits [N,10]."""
    return _forward(weights, np.asarray(x, dtype=_F32))


def _init(seed: int) -> dict[str, np.ndarray]:
    """He-normal weights and zero biases for :data:`DIGITS_CNN_LAYERS`, in layer order."""
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}
    channels, side, features = 1, 8, 0
    for kind, name, width in DIGITS_CNN_LAYERS:
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


def digits_cnn_weights(
    seed: int = 0, *, epochs: int = 8, batch: int = 32, lr: float = 3e-3
) -> dict[str, np.ndarray]:
    """The digits CNN trained in numpy: float32 weights by name, in layer order.

    Training: He-normal initialisation and mini-batch order from ``seed``, softmax cross-entropy,
    Adam (betas 0.9/0.999, step size annealed from ``lr`` to 0 on a half cosine), ``epochs`` passes
    over the training part of :func:`~quantfw.samples.digits_data` in mini-batches of ``batch``,
    BLAS on one thread (a few seconds).  The same arguments give identical weights, bit for bit;
    with the defaults the test accuracy is 99.1-99.4 % (seeds 0-7).  Training runs once per
    argument set and process (the result is cached); every call returns fresh arrays.

    :raises ImportError: when scikit-learn (the digits data) is not installed.
    """
    trained = _train(int(seed), int(epochs), int(batch), float(lr))
    return {k: np.frombuffer(b, dtype=_F32).reshape(shape).copy() for k, b, shape in trained}
