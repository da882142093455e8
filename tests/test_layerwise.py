"""The layer-wise seam on the core alone (the numpy ``graph`` frontend): layer problems, their
float and quantized inputs checked against hand computations, sequential rewrites, engines, and
the plugin template's least-squares nudge written once against the seam."""

import numpy as np
import pytest

import quantfw
from quantfw import AlgorithmInfo, Node, QuantGraph, Stage
from quantfw.api import LayerProblem, NumpyEngine
from quantfw.interpreter import run_graph
from quantfw.numerics import fake_quantize


def mlp(seed: int = 0) -> QuantGraph:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return QuantGraph(
        nodes=[
            Node("fc1", "linear", ["x"], ["h"], weights={"weight": "w1", "bias": "b1"}),
            Node("act", "relu", ["h"], ["a"]),
            Node("fc2", "linear", ["a"], ["z"], weights={"weight": "w2", "bias": "b2"}),
            Node("fc3", "linear", ["z"], ["y"], weights={"weight": "w3"}),
        ],
        inputs=["x"],
        outputs=["y"],
        initializers={
            "w1": rng.normal(size=(24, 16)).astype(f32),
            "b1": rng.normal(size=24).astype(f32),
            "w2": rng.normal(size=(12, 24)).astype(f32) / 4,
            "b2": rng.normal(size=12).astype(f32),
            "w3": rng.normal(size=(6, 12)).astype(f32) / 3,
        },
        name="mlp",
    )


def calib(seed: int = 1, n: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


class Probe:
    """A round algorithm that hands each layer problem to ``fn(ctx, problem)``."""

    def __init__(self, fn, quantized_inputs=True):
        self.fn, self.quantized_inputs = fn, quantized_inputs

    def run(self, ctx):
        for p in ctx.layer_problems(quantized_inputs=self.quantized_inputs):
            self.fn(ctx, p)


def run_probe(quantfw_registry_with, fn, graph=None, x=None, **kw):
    """Quantize for ``generic`` with ``fn`` as the round stage (after min-max calibration)."""

    class Plugin:
        @quantfw.hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("probe", Stage.ROUND, lambda: Probe(fn, **kw)))

    quantfw_registry_with(Plugin())
    return quantfw.quantize(
        graph or mlp(), calib() if x is None else x, target="generic", batch_size=32,
        algorithms=["none", "probe"],
    )  # fmt: skip


def fq_if(recipe, name, value):
    t = recipe.tensors.get(name)
    return value if t is None else fake_quantize(value, t.params, t.spec)


def test_problems_come_in_graph_order_with_weights_and_specs(quantfw_registry_with):
    seen = []

    def look(ctx, p: LayerProblem):
        seen.append(p)
        assert p.weight_name == p.node.weights["weight"]
        np.testing.assert_array_equal(p.weight, ctx.graph.initializers[p.weight_name])
        assert p.weight_recipe is ctx.recipe.tensors[p.weight_name]
        assert p.weight_spec == ctx.plan.tensors[p.weight_name].spec
        assert p.input_name == p.node.inputs[0]
        assert p.input_recipe is ctx.recipe.tensors.get(p.input_name)
        assert p.equalization is None

    run_probe(quantfw_registry_with, look)
    assert [p.node.name for p in seen] == ["fc1", "fc2", "fc3"]
    assert seen[0].bias_name == "b1" and seen[2].bias is None


def test_float_inputs_are_the_float_models(quantfw_registry_with):
    graph, x = mlp(), calib()

    def look(ctx, p):
        got = np.concatenate(list(p.inputs(quantized=False)))
        want = run_graph(graph, {"x": x}, outputs=[p.input_name])[p.input_name]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    run_probe(quantfw_registry_with, look, graph, x)


def test_quantized_inputs_apply_every_quantizer_upstream(quantfw_registry_with):
    """The input of fc3 with fc1 and fc2 quantized, computed by hand with the core numerics:
    every quantized tensor upstream is fake-quantized, fc3's own input is not."""
    graph, x = mlp(), calib()
    got = {}

    def look(ctx, p):
        got[p.node.name] = np.concatenate(list(p.inputs()))

    res = run_probe(quantfw_registry_with, look, graph, x)
    r, w = res.recipe, graph.initializers

    def lin(inp, wn, bn=None):
        y = fq_if(r, inp[0], inp[1]) @ fq_if(r, wn, w[wn]).T
        return y + fq_if(r, bn, w[bn]) if bn else y

    h = lin(("x", x), "w1", "b1")
    a = np.maximum(fq_if(r, "h", h), 0)
    z = lin(("a", a), "w2", "b2")
    np.testing.assert_array_equal(got["fc1"], x)
    np.testing.assert_allclose(got["fc2"], a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["fc3"], z, rtol=1e-5, atol=1e-5)
    assert not np.allclose(z, fq_if(r, "z", z))  # fc3's own quantizer is left to the algorithm


def test_a_weight_set_on_an_earlier_layer_reaches_the_later_inputs(quantfw_registry_with):
    graph, x = mlp(), calib()
    got = {}

    def look(ctx, p):
        if p.node.name == "fc1":
            p.set_weight(np.zeros_like(p.weight))  # fc1 now outputs its bias alone
            assert np.array_equal(ctx.recipe.weights["w1"], np.zeros_like(p.weight))
        got[p.node.name] = (
            np.concatenate(list(p.inputs(quantized=True))),
            np.concatenate(list(p.inputs(quantized=False))),
        )

    res = run_probe(quantfw_registry_with, look, graph, x)
    quantized, floating = got["fc2"]
    b1 = fake_quantize(graph.initializers["b1"], *_pq(res.recipe, "b1"))
    a = np.maximum(fq_if(res.recipe, "h", np.broadcast_to(b1, (len(x), 24))), 0)
    np.testing.assert_allclose(quantized, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(  # the float model never sees the quantized model's weights
        floating, run_graph(graph, {"x": x}, outputs=["a"])["a"], rtol=1e-6, atol=1e-6
    )
    assert np.array_equal(graph.initializers["w1"], mlp().initializers["w1"])  # graph untouched


def _pq(recipe, name):
    t = recipe.tensors[name]
    return t.params, t.spec


def test_layer_problems_reject_unknown_nodes_and_report_progress(quantfw_registry_with):
    def look(ctx, p):
        with pytest.raises(KeyError, match="no node\\(s\\) named \\['nope'\\]"):
            ctx.layer_problems(["nope"])

    run_probe(quantfw_registry_with, look)


def test_set_weight_checks_the_shape(quantfw_registry_with):
    def look(ctx, p):
        with pytest.raises(ValueError, match=f"layer '{p.node.name}': new weight has shape"):
            p.set_weight(np.zeros((2, 2), np.float32))
        if p.bias is None:
            with pytest.raises(ValueError, match="has no bias"):
                p.set_bias(np.zeros(3, np.float32))

    run_probe(quantfw_registry_with, look)


def test_numpy_engine_computes_layer_outputs_as_the_interpreter():
    graph, x = mlp(), calib()
    eng = NumpyEngine()
    node = graph.node("fc1")
    y = eng.layer_output(node, eng.asarray(x), eng.asarray(graph.initializers["w1"]))
    np.testing.assert_allclose(y, x @ graph.initializers["w1"].T, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no autograd"):
        eng.asarray(x, requires_grad=True)
    with pytest.raises(ValueError, match="'cpu' only"):
        NumpyEngine("cuda")


def test_ls_nudge_lowers_each_layers_objective(example_plugin, quantfw_registry_with):
    """The template's layer-wise algorithm, on the numpy interpreter: for the first layer (whose
    inputs no earlier layer changes) and the last (whose inputs are final once the others are
    set), the new weight's least-squares objective is below the float weight's."""
    from quantfw_example.nudge import layer_objective

    quantfw_registry_with(example_plugin)
    graph, x = mlp(), calib()
    res = quantfw.quantize(graph, x, target="generic", algorithms=["none", "ls-nudge"])
    assert res.recipe.provenance["ls-nudge"]["layers"] == ["fc1", "fc2", "fc3"]
    assert res.recipe.provenance["ls-nudge"]["engine"] == "numpy (cpu)"
    checked = []

    def look(ctx, p):
        if p.node.name in ("fc1", "fc3"):
            new = res.recipe.weights[p.weight_name]
            ctx.set_quantized_weight("w1", res.recipe.weights["w1"])
            ctx.set_quantized_weight("w2", res.recipe.weights["w2"])
            before, after = layer_objective(p, p.weight), layer_objective(p, new)
            assert after < before, (p.node.name, before, after)
            checked.append(p.node.name)

    run_probe(quantfw_registry_with, look, graph, x)
    assert checked == ["fc1", "fc3"]


def test_ls_nudge_gives_the_same_weights_on_the_torch_engine(example_plugin, quantfw_registry_with):
    pytest.importorskip("torch", reason="the torch engine comes with the torch plugin")
    pytest.importorskip("quantfw_torch", reason="the torch engine comes with the torch plugin")
    import quantfw_torch.plugin as torch_plugin

    quantfw_registry_with(example_plugin, torch_plugin)
    graph, x = mlp(), calib()
    a = quantfw.quantize(graph, x, target="generic", algorithms=["none", "ls-nudge"])
    b = quantfw.quantize(
        graph, x, target="generic", algorithms=["none", "ls-nudge"], options={"engine": "torch"}
    )
    assert b.recipe.provenance["ls-nudge"]["engine"] == "torch (cpu)"
    for name in ("w1", "w2", "w3"):
        np.testing.assert_allclose(a.recipe.weights[name], b.recipe.weights[name], atol=1e-5)


def test_block_boundary_and_frontends_without_block_modules(quantfw_registry_with):
    from quantfw.api.blocks import block_boundary

    graph = mlp()
    assert block_boundary(graph, ["fc1", "act", "fc2"]) == (["x"], ["z"])
    assert block_boundary(graph, ["act", "fc2", "fc3"]) == (["h"], ["y"])
    assert block_boundary(graph, ["fc2"]) == (["a"], ["z"])
    with pytest.raises(KeyError, match="no node\\(s\\) named \\['nope'\\]"):
        block_boundary(graph, ["fc1", "nope"])

    def look(ctx, p):
        with pytest.raises(
            ValueError, match="'graph' frontend cannot build trainable block modules.*adaround"
        ):
            ctx.block_problem(["fc1", "act"])

    run_probe(quantfw_registry_with, look)


def test_algorithm_warnings_reach_the_summary_and_the_recipe(quantfw_registry_with, caplog):
    def fn(ctx, p):
        if p.node.name == "fc2":
            ctx.warn("layer 'fc2' kept at nearest rounding: test")

    with caplog.at_level("WARNING", logger="quantfw"):
        res = run_probe(quantfw_registry_with, fn)
    assert res.summary.warnings.count("layer 'fc2' kept at nearest rounding: test") == 1
    assert res.recipe.provenance["warnings"] == ["layer 'fc2' kept at nearest rounding: test"]
    assert "kept at nearest rounding" in caplog.text
    assert "warning: layer 'fc2' kept" in res.summary.to_text()
