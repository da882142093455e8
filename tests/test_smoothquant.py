"""SmoothQuant: closed-form factors, where it applies, and that it helps where theory says."""

import numpy as np
import pytest

import quantfw
from quantfw import Node, QuantGraph
from quantfw.algorithms.smoothquant import smoothing_factors
from quantfw.numerics import fake_quantize
from quantfw.plugins import make_plugin_manager, use_plugin_manager
from quantfw.target import TargetSpec


def test_factors_closed_form():
    a = np.array([4.0, 1.0, 0.0, 9.0])
    w = np.array([1.0, 4.0, 2.0, 0.0])
    s = smoothing_factors(a, w, 0.5)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0, 1.0])  # sqrt(a/w); 1 where a side is zero
    np.testing.assert_allclose(smoothing_factors(a[:2], w[:2], 1.0), [4.0, 1.0])


def _edges_target():
    return TargetSpec.from_dict(
        {
            "name": "edges-sq",
            "artifact": "none",
            "weight": {"dtype": "int8", "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "symmetric": False},
            "ops": {
                "quantize": ["linear"],
                "float_only": ["layernorm"],
                "quantize_outputs": "when_consumed",
            },
        },
        source="edges-sq",
    )


class _Target:
    @quantfw.hookimpl
    def quantfw_register_targets(self, register):
        register(_edges_target())


def _outlier_model(rng):
    """LayerNorm output with a few outlier channels (gamma 40) feeding two projections and a
    residual read in float — the transformer pattern SmoothQuant was made for."""
    d = 32
    gamma = np.ones(d, np.float32)
    gamma[[3, 17]] = 40.0
    g = QuantGraph(
        [
            Node("ln", "layernorm", ["x"], ["h"], weights={"weight": "gamma"}),
            Node("q", "linear", ["h"], ["yq"], weights={"weight": "wq"}),
            Node("k", "linear", ["h"], ["yk"], weights={"weight": "wk"}),
            Node("sum", "add", ["yq", "yk"], ["s"]),
            Node("res", "add", ["s", "h"], ["y"]),
        ],
        ["x"],
        ["y"],
        {
            "gamma": gamma,
            "wq": (rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32),
            "wk": (rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32),
        },
    )
    return g, rng.normal(size=(256, d)).astype(np.float32)


def test_smoothing_applies_to_shared_linear_input_and_helps():
    rng = np.random.default_rng(0)
    g, x = _outlier_model(rng)
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(_Target(), name="edges-sq")
    with use_plugin_manager(pm):
        plain = quantfw.quantize(g, x, target="edges-sq", algorithms=["none"])
        smooth = quantfw.quantize(
            g, x, target="edges-sq", algorithms=[("smoothquant", {"alpha": 0.5})]
        )
        auto = quantfw.quantize(g, x, target="edges-sq")  # default: smoothquant alpha=auto
    h = smooth.recipe.tensors["h"]
    eq = smooth.recipe.equalizations["h"]
    assert eq.source == "smoothquant" and eq.consumers == ("q", "k") == h.consumers
    # the weights the quantized model uses are W * s along the input axis ((out, in) layout: the
    # columns); the float model's stay as they were
    for w in ("wq", "wk"):
        np.testing.assert_allclose(
            smooth.recipe.weights[w], g.initializers[w] * eq.scale[None, :], rtol=1e-6
        )
        assert not np.array_equal(smooth.graph.initializers[w], smooth.recipe.weights[w])
    # simulation, by hand: both projections read fq(h / s) and use fq(s W); the residual reads h
    hf = quantfw.interpreter.run_graph(g, {"x": x}, outputs=["h"])["h"]
    hq = fake_quantize(hf * (np.float32(1) / eq.scale), h.params, h.spec)
    r = smooth.recipe.tensors
    yq = hq @ fake_quantize(smooth.recipe.weights["wq"], r["wq"].params, r["wq"].spec).T
    yk = hq @ fake_quantize(smooth.recipe.weights["wk"], r["wk"].params, r["wk"].spec).T
    np.testing.assert_allclose(smooth.simulate()({"x": x})["y"], yq + yk + hf, rtol=1e-4, atol=1e-4)

    ref = quantfw.interpreter.run_graph(g, {"x": x})["y"]

    def err(res):
        return float(((res.simulate()({"x": x})["y"] - ref) ** 2).mean())

    assert err(smooth) < 0.5 * err(plain)  # outlier channels no longer set the activation scale
    assert err(auto) <= err(smooth) * 1.05  # the per-layer search is at least as good
    assert auto.recipe.provenance["smoothquant"]["chosen"]["h"] is not None


def test_no_effect_where_every_reader_sees_the_quantized_value():
    rng = np.random.default_rng(1)
    g, x = _outlier_model(rng)
    res = quantfw.quantize(g, x, target="generic")  # quantize_outputs = always
    assert not res.recipe.equalizations
    assert not res.recipe.weights


def test_bad_alpha():
    from quantfw.algorithms.smoothquant import SmoothQuant

    with pytest.raises(ValueError, match="alpha must be 'auto' or in \\[0, 1\\]"):
        SmoothQuant(alpha=1.5)
