"""The core's demonstration on real data: a digits classifier quantized to every format.

A small MLP (64 → 64 → 10) is trained in numpy on the training part of the sample digits split
(:func:`quantfw.samples.digits_data`; fixed seed, about a second), captured as a QuantGraph, and
quantized through the full pipeline for the simulation-only ``generic`` target with each weight
format, calibrated on the split's calibration part.  The table shows weight SQNR, accuracy of the
simulated model on the split's test part (30 % of the images), and weight storage relative to
float32.

Run it with ``quantfw demo`` (needs ``pip install "quantfw[demo]"`` for scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnavailableError
from .interpreter import run_graph
from .samples import digits_data, train_digits_mlp

__all__ = ["DemoRow", "format_rows", "run_demo"]

WEIGHT_FORMATS = ("int8", "fp8_e4m3fn", "fp8_e5m2", "int4", "int3", "int2", "ternary")


@dataclass
class DemoRow:
    name: str
    accuracy: float
    weight_sqnr_db: float | None
    size_ratio: float


def _pixels(x: np.ndarray) -> np.ndarray:
    """Digits images ``[N, 1, 8, 8]`` as the MLP's rows of 64 pixels."""
    return x.reshape(len(x), -1)


def _accuracy(fn, x: np.ndarray, y: np.ndarray) -> float:
    logits = fn({"pixels": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def run_demo(
    seed: int = 0, calibration_samples: int = 128, calibrator: str = "minmax"
) -> list[DemoRow]:
    """Train, quantize for every weight format (activations as the target says), evaluate.

    ``seed`` seeds the MLP's training (the data split is fixed); calibration uses the first
    ``calibration_samples`` images of the split's calibration part.

    :raises UnavailableError: when scikit-learn (the digits data) is not installed.
    """
    from .numerics import fake_quantize
    from .pipeline import quantize

    try:
        data = digits_data()
    except ImportError as exc:  # a missing extra is the user's to install: a one-line error
        raise UnavailableError(str(exc)) from None
    x_tr, x_te, y_te = _pixels(data.x_train), _pixels(data.x_test), data.y_test
    graph = train_digits_mlp(x_tr, data.y_train, seed=seed)
    calib = _pixels(data.x_calib)[:calibration_samples]
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
    """The demo's table: one line per row under a header."""
    out = [f"{'model':<22}{'test acc':>10}{'weight SQNR':>14}{'weight size':>13}"]
    for r in rows:
        sq = "-" if r.weight_sqnr_db is None else f"{r.weight_sqnr_db:.1f} dB"
        out.append(f"{r.name:<22}{100 * r.accuracy:>9.2f}%{sq:>14}{r.size_ratio:>12.3f}x")
    return "\n".join(out)
