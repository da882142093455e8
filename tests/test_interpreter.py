"""The numpy interpreter against independent, loop-based or closed-form references."""

import math

import numpy as np
import pytest

from quantfw.graph import GraphError, Node, QuantGraph
from quantfw.interpreter import erf, run_graph


def _naive_conv(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, co, oh, ow))
    per = co // groups
    for o in range(co):
        g = o // per
        for i in range(oh):
            for j in range(ow):
                patch = x[
                    :,
                    g * cig : (g + 1) * cig,
                    i * stride : i * stride + kh,
                    j * stride : j * stride + kw,
                ]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def _graph(nodes, inputs, outputs, inits, shapes=None):
    return QuantGraph(nodes, inputs, outputs, inits, input_shapes=shapes or {})


@pytest.mark.parametrize("stride,pad,groups", [(1, 0, 1), (2, 1, 1), (1, 1, 2), (1, 1, 4)])
def test_conv_matches_loops(stride, pad, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    w = rng.normal(size=(8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    g = _graph(
        [
            Node(
                "c",
                "conv",
                ["x"],
                ["y"],
                weights={"weight": "w", "bias": "b"},
                attrs={"stride": stride, "padding": pad, "groups": groups},
            )
        ],
        ["x"],
        ["y"],
        {"w": w, "b": b},
    )
    got = run_graph(g, {"x": x})["y"]
    np.testing.assert_allclose(got, _naive_conv(x, w, b, stride, pad, groups), rtol=1e-4, atol=1e-4)


def test_linear_layouts_and_pools():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    g0 = _graph(
        [Node("l", "linear", ["x"], ["y"], weights={"weight": "w"})], ["x"], ["y"], {"w": w}
    )
    g1 = _graph(
        [Node("l", "linear", ["x"], ["y"], weights={"weight": "w"}, attrs={"channel_axis": 1})],
        ["x"],
        ["y"],
        {"w": np.ascontiguousarray(w.T)},
    )
    np.testing.assert_allclose(run_graph(g0, {"x": x})["y"], x @ w.T, rtol=1e-5)
    np.testing.assert_allclose(run_graph(g1, {"x": x})["y"], x @ w.T, rtol=1e-5)

    img = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    gp = _graph(
        [
            Node("p", "max_pool", ["x"], ["m"], attrs={"kernel_shape": 2}),
            Node("a", "avg_pool", ["x"], ["a"], attrs={"kernel_shape": 2}),
        ],
        ["x"],
        ["m", "a"],
        {},
    )
    out = run_graph(gp, {"x": img})
    np.testing.assert_array_equal(out["m"][0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(out["a"][0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_activations_norms_closed_form():
    x = np.array([[-2.0, -0.5, 0.0, 1.0, 3.0]], np.float32)
    nodes = [
        Node("r", "relu", ["x"], ["r"]),
        Node("g", "gelu", ["x"], ["g"]),
        Node("s", "softmax", ["x"], ["s"]),
        Node("ln", "layernorm", ["x"], ["ln"]),
        Node("c", "clip", ["x"], ["c"], attrs={"clip": (0.0, 1.0)}),
    ]
    out = run_graph(_graph(nodes, ["x"], ["r", "g", "s", "ln", "c"], {}), {"x": x})
    np.testing.assert_array_equal(out["r"], np.maximum(x, 0))
    exact_gelu = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x[0]]
    np.testing.assert_allclose(out["g"][0], exact_gelu, atol=1e-6)
    np.testing.assert_allclose(out["s"].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["ln"].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out["c"][0], [0, 0, 0, 1, 1])


def test_erf_accuracy():
    xs = np.linspace(-5, 5, 2001)
    np.testing.assert_allclose(erf(xs), [math.erf(v) for v in xs], atol=2e-7)


def test_residual_concat_and_intermediates():
    x = np.ones((1, 2, 2, 2), np.float32)
    nodes = [
        Node("r", "relu", ["x"], ["a"]),
        Node("add", "add", ["a", "x"], ["b"]),
        Node("cat", "concat", ["a", "b"], ["c"], attrs={"axis": 1}),
        Node("fl", "flatten", ["c"], ["d"]),
    ]
    g = _graph(nodes, ["x"], ["d"], {})
    out = run_graph(g, {"x": x}, outputs=["a", "d"])
    assert out["d"].shape == (1, 16)
    np.testing.assert_array_equal(out["d"][0, 8:], 2.0)
    seen = []
    run_graph(g, {"x": x}, on_tensor=lambda n, v: seen.append(n) or v)
    assert seen == ["x", "a", "b", "c", "d"]


def test_errors_name_the_problem():
    g = _graph([Node("weird", "resize", ["x"], ["y"])], ["x"], ["y"], {})
    with pytest.raises(GraphError, match="weird.*resize"):
        run_graph(g, {"x": np.ones((1, 1, 2, 2), np.float32)})
    with pytest.raises(ValueError, match="missing input"):
        run_graph(g, {})
    with pytest.raises(KeyError, match="nope"):
        run_graph(g, {"x": np.ones(1)}, outputs=["nope"])


def test_graph_validation_errors():
    with pytest.raises(GraphError, match="reads tensor 'q'"):
        QuantGraph([Node("a", "relu", ["q"], ["y"])], ["x"], ["y"])
    with pytest.raises(GraphError, match="duplicate node name"):
        QuantGraph([Node("a", "relu", ["x"], ["y"]), Node("a", "relu", ["y"], ["z"])], ["x"], ["z"])
    with pytest.raises(ValueError, match="not an op kind"):
        Node("a", "convolution", ["x"], ["y"])
