"""The core's demonstration on real data: a digits classifier quantized to every format.

A small MLP (64 → 64 → 10) is trained in numpy on scikit-learn's 8×8 handwritten digits (fixed
seed, about a second), captured as a QuantGraph, and quantized through the full pipeline for the
simulation-only ``generic`` target with each weight format.  The table shows weight SQNR, test
accuracy of the simulated model, and weight storage relative to float32.

Run it with ``quantfw demo`` (needs ``pip install "quantfw[demo]"`` for scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Node, QuantGraph
from .interpreter import run_graph

__all__ = ["train_digits_mlp", "digits_split", "run_demo", "DemoRow"]

WEIGHT_FORMATS = ("int8", "fp8_e4m3fn", "fp8_e5m2", "int4", "int3", "int2", "ternary")


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits, pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the demo needs scikit-learn for its digits data: pip install 'quantfw[demo]'"
        ) from None
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.7 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train_digits_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int = 64, steps: int = 400, seed: int = 0
) -> QuantGraph:
    """Train a 2-layer MLP with full-batch Adam in numpy and return it as a QuantGraph."""
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


@dataclass
class DemoRow:
    name: str
    accuracy: float
    weight_sqnr_db: float | None
    size_ratio: float


def _accuracy(fn, x: np.ndarray, y: np.ndarray) -> float:
    logits = fn({"pixels": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def run_demo(
    seed: int = 0, calibration_samples: int = 128, calibrator: str = "minmax"
) -> list[DemoRow]:
    """Train, quantize for every weight format (activations as the target says), evaluate."""
    from .numerics import fake_quantize
    from .pipeline import quantize

    x_tr, y_tr, x_te, y_te = digits_split(seed)
    graph = train_digits_mlp(x_tr, y_tr, seed=seed)
    calib = x_tr[:calibration_samples]
    rows = [DemoRow("float32", _accuracy(lambda b: run_graph(graph, b), x_te, y_te), None, 1.0)]
    n_weights = sum(graph.initializers[w].size for w in ("fc1.weight", "fc2.weight"))
    for fmt in WEIGHT_FORMATS:
        result = quantize(
            graph,
            calib,
            target="generic",
            algorithms=[calibrator],
            overrides={"weight": {"dtype": fmt}},
        )
        err = sig = 0.0
        bits = 0
        for name, t in result.recipe.of_role("weight").items():
            w = graph.initializers[name]
            err += float(((fake_quantize(w, t.params, t.spec) - w) ** 2).sum())
            sig += float((w**2).sum())
            bits += w.size * t.spec.bits + t.params.scale.size * 32
        act_dtype = next(iter(result.recipe.of_role("activation").values())).spec.dtype
        rows.append(
            DemoRow(
                f"W:{fmt} A:{act_dtype}",
                _accuracy(result.simulate(), x_te, y_te),
                10 * np.log10(sig / max(err, 1e-30)),
                bits / (32 * n_weights),
            )
        )
    return rows


def format_rows(rows: list[DemoRow]) -> str:
    out = [f"{'model':<22}{'test acc':>10}{'weight SQNR':>14}{'weight size':>13}"]
    for r in rows:
        sq = "-" if r.weight_sqnr_db is None else f"{r.weight_sqnr_db:.1f} dB"
        out.append(f"{r.name:<22}{100 * r.accuracy:>9.2f}%{sq:>14}{r.size_ratio:>12.3f}x")
    return "\n".join(out)
