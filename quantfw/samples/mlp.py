"""A two-layer MLP trained in numpy on digits pixels, returned as a QuantGraph (the core demo's)."""

from __future__ import annotations

import numpy as np

from ..graph import Node, QuantGraph

__all__ = ["train_digits_mlp"]


def train_digits_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int = 64, steps: int = 400, seed: int = 0
) -> QuantGraph:
    """Train ``linear -> relu -> linear`` with full-batch Adam in numpy; return it as a QuantGraph.

    ``x`` is ``[N, D]`` float (for the digits, ``data.x_train.reshape(len(data.x_train), 64)``),
    ``y`` the integer labels.  The graph's input is ``"pixels"`` ``[batch, D]``, its output
    ``"logits"``; its layers are ``fc1`` (``hidden`` units), ``relu1`` and ``fc2``.  Weights start
    from ``seed``; the same arguments give the same weights.
    """
    rng = np.random.default_rng(seed)
    d, k = x.shape[1], int(y.max()) + 1
    params = {
        "w1": rng.normal(0, np.sqrt(2 / d), (hidden, d)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0, np.sqrt(1 / hidden), (k, hidden)),
        "b2": np.zeros(k),
    }
    m = {n: np.zeros_like(p) for n, p in params.items()}
    v = {n: np.zeros_like(p) for n, p in params.items()}
    onehot = np.eye(k)[y]
    x64 = x.astype(np.float64)
    for t in range(1, steps + 1):
        h_pre = x64 @ params["w1"].T + params["b1"]
        h = np.maximum(h_pre, 0)
        logits = h @ params["w2"].T + params["b2"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g_logits = (p - onehot) / len(x)
        g_h = (g_logits @ params["w2"]) * (h_pre > 0)
        grads = {
            "w2": g_logits.T @ h + 1e-4 * params["w2"],
            "b2": g_logits.sum(0),
            "w1": g_h.T @ x64 + 1e-4 * params["w1"],
            "b1": g_h.sum(0),
        }
        for n in params:
            m[n] = 0.9 * m[n] + 0.1 * grads[n]
            v[n] = 0.999 * v[n] + 0.001 * grads[n] ** 2
            params[n] -= 0.01 * (m[n] / (1 - 0.9**t)) / (np.sqrt(v[n] / (1 - 0.999**t)) + 1e-8)
    inits = {
        "fc1.weight": params["w1"],
        "fc1.bias": params["b1"],
        "fc2.weight": params["w2"],
        "fc2.bias": params["b2"],
    }
    nodes = [
        Node(
            "fc1",
            "linear",
            ["pixels"],
            ["fc1_out"],
            weights={"weight": "fc1.weight", "bias": "fc1.bias"},
            attrs={"channel_axis": 0},
        ),
        Node("relu1", "relu", ["fc1_out"], ["relu1_out"]),
        Node(
            "fc2",
            "linear",
            ["relu1_out"],
            ["logits"],
            weights={"weight": "fc2.weight", "bias": "fc2.bias"},
            attrs={"channel_axis": 0},
        ),
    ]
    return QuantGraph(
        nodes,
        inputs=["pixels"],
        outputs=["logits"],
        initializers={k_: np.asarray(a, np.float32) for k_, a in inits.items()},
        name="digits_mlp",
        input_shapes={"pixels": (None, d)},
    )
