"""The small CNN the cross-layer equalisation tests share (core and ONNX): conv -> depthwise
conv -> pointwise conv -> max-pool -> linear, with deliberately imbalanced channels."""

from __future__ import annotations

import numpy as np

from quantfw import Node, QuantGraph


def cnn(seed: int = 0, *, imbalance: bool = True, dw_pad: int = 1, bias: float = 1.0):
    """conv 3x3 -> relu -> depthwise 3x3 -> relu -> pointwise -> relu -> max-pool -> flatten ->
    linear, on 3x6x6 inputs.  ``imbalance``: conv1's output channels scaled by factors from
    0.02 to 50 and the depthwise filters inversely, and the depthwise outputs by 0.05 to 20 and
    the pointwise inputs inversely (the float function is unchanged): the classic DFQ case."""
    rng = np.random.default_rng(seed)
    f = np.float32
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(f) / 3
    b1 = (rng.normal(size=8) + bias).astype(f)
    wd = rng.normal(size=(8, 1, 3, 3)).astype(f) / 2
    bd = (rng.normal(size=8) + bias).astype(f)
    w3 = rng.normal(size=(6, 8, 1, 1)).astype(f) / 2
    b3 = rng.normal(size=6).astype(f)
    w4 = rng.normal(size=(4, 6 * 2 * 2)).astype(f) / 4
    b4 = rng.normal(size=4).astype(f)
    if imbalance:
        k = np.geomspace(0.02, 50, 8).astype(f)[rng.permutation(8)]
        w1 *= k[:, None, None, None]
        b1 *= k
        wd /= k[:, None, None, None]
        m = np.geomspace(0.05, 20, 8).astype(f)[rng.permutation(8)]
        wd *= m[:, None, None, None]
        bd *= m
        w3 /= m[None, :, None, None]
    nodes = [
        Node("conv1", "conv", ["x"], ["c1"], weights={"weight": "w1", "bias": "b1"},
             attrs={"padding": (1, 1, 1, 1), "kernel_shape": (3, 3)}),
        Node("relu1", "relu", ["c1"], ["a1"]),
        Node("dw", "conv", ["a1"], ["c2"], weights={"weight": "wd", "bias": "bd"},
             attrs={"padding": (dw_pad,) * 4, "groups": 8, "kernel_shape": (3, 3)}),
        Node("relu2", "relu", ["c2"], ["a2"]),
        Node("pw", "conv", ["a2"], ["c3"], weights={"weight": "w3", "bias": "b3"}),
        Node("relu3", "relu", ["c3"], ["a3"]),
        Node("pool", "max_pool", ["a3"], ["p"], attrs={"kernel_shape": (2, 2), "stride": (2, 2)}),
        Node("flat", "flatten", ["p"], ["f"], attrs={"axis": 1}),
        Node("fc", "linear", ["f"], ["y"], weights={"weight": "w4", "bias": "b4"}),
    ]  # fmt: skip
    side = 4 if dw_pad else 6  # 4x4 into the max-pool either way
    inits = dict(w1=w1, b1=b1, wd=wd, bd=bd, w3=w3, b3=b3, w4=w4, b4=b4)
    g = QuantGraph(
        nodes, ["x"], ["y"], inits, name="cnn", input_shapes={"x": (None, 3, side, side)}
    )
    return g


def images(seed: int, n: int = 64, side: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, side, side)).astype(np.float32)
