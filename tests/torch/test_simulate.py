"""The torch simulation against the ONNX lowering and ONNX Runtime (simulation = deployment).

Tolerances (also stated in the README):

* torch simulation vs the same recipe as ONNX QDQ run by ONNX Runtime without graph
  optimizations (pure fake quantization in another runtime): within float32 rounding,
  ``1e-5`` of the output range;
* vs the artifact with every optimization on (fused integer kernels, which also re-associate
  sums): within 2 % of the output range, same top-1 class on at least 95 % of the samples.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from quantfw_onnx.qdq import write_qdq  # noqa: E402
from quantfw_torch import simulated_module  # noqa: E402
from torch import nn  # noqa: E402

import quantfw  # noqa: E402


def _rng_range(a):
    return float(np.abs(a).max())


@pytest.fixture(scope="module")
def resnet_x86(tmp_path_factory, images):
    import conftest

    m = conftest.build_resnet()
    out = tmp_path_factory.mktemp("art") / "resnet.onnx"
    res = quantfw.quantize(m, images[:32], target="x86", output=out)
    return m, res, out


def test_plan_quantizes_convs_and_linear(resnet_x86):
    _, res, _ = resnet_x86
    quantized = {res.graph.node(n).op.value for n in res.plan.quantized_nodes()}
    assert {"conv", "linear"} <= quantized
    assert len(res.recipe.of_role("weight")) == 4


def test_torch_simulation_equals_onnx_qdq_without_optimizations(kit, resnet_x86, images):
    _, res, _ = resnet_x86
    x = images[32:]
    sim = res.simulate()({"x": x})[res.graph.outputs[0]]
    qdq = write_qdq(res.graph.source.onnx_model, res.graph, res.recipe)
    ref = kit.ort_run(qdq, {"x": x}, optimize=False)[0]
    np.testing.assert_allclose(sim, ref, rtol=0, atol=1e-5 * _rng_range(ref))


def test_torch_simulation_agrees_with_the_optimized_artifact(kit, resnet_x86, images):
    _, res, path = resnet_x86
    x = images[32:]
    sim = res.simulate()({"x": x})[res.graph.outputs[0]]
    art = kit.ort_run(path, {"x": x}, optimize=True)[0]
    assert np.abs(sim - art).max() <= 0.02 * _rng_range(art)
    assert (sim.argmax(1) == art.argmax(1)).mean() >= 0.95
    plain = kit.ort_run(path, {"x": x}, optimize=False)[0]
    np.testing.assert_allclose(sim, plain, rtol=0, atol=1e-5 * _rng_range(plain))


def test_quantized_model_stays_close_to_float(resnet_x86, images):
    m, res, _ = resnet_x86
    x = images[32:]
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    sim = res.simulate()({"x": x})[res.graph.outputs[0]]
    assert np.abs(sim - ref).max() <= 0.1 * _rng_range(ref)
    assert not np.array_equal(sim, ref)  # quantization did change the numbers


def test_simulated_module_is_a_drop_in_nn_module(resnet_x86, images):
    m, res, _ = resnet_x86
    sim_module = simulated_module(res.graph, res.recipe)
    assert isinstance(sim_module, nn.Module)
    x = torch.from_numpy(images[32:40])
    with torch.no_grad():
        y = sim_module(x)  # called like the original model
    assert isinstance(y, torch.Tensor) and y.shape == m(x).shape
    want = res.simulate()({"x": images[32:40]})[res.graph.outputs[0]]
    np.testing.assert_array_equal(y.numpy(), want)
    names = [type(mod).__name__ for mod in sim_module.modules()]
    assert names.count("FakeQuantize") == len(res.recipe.of_role("activation"))


def test_simulated_weights_are_the_recipes_codes(resnet_x86):
    """The torch module's weights are exactly dequantized recipe codes."""
    from quantfw.numerics import dequantize, quantize

    _, res, _ = resnet_x86
    sim_module = simulated_module(res.graph, res.recipe)
    buffers = [b.numpy() for n, b in sim_module.named_buffers() if n.startswith("quantfw_w_")]
    for name, t in res.recipe.of_role("weight").items():
        w = res.recipe.weights.get(name, res.graph.initializers[name])
        want = dequantize(quantize(w, t.params, t.spec), t.params, t.spec)
        assert any(b.shape == want.shape and np.array_equal(b, want) for b in buffers), name


def test_dynamic_linear_layers(kit, tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    x = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    res = quantfw.quantize(
        m, example_inputs=torch.from_numpy(x), target="x86", overrides={"dynamic": True},
        output=tmp_path / "dyn.onnx",
    )  # fmt: skip
    acts = res.recipe.of_role("activation")
    assert acts and all(t.spec.dynamic for t in acts.values())
    assert {t.spec.dtype for t in res.recipe.of_role("weight").values()} == {"int8"}
    sim = res.simulate()({"input": x})[res.graph.outputs[0]]
    plain = kit.ort_run(res.artifact.path, {"input": x}, optimize=False)[0]
    np.testing.assert_allclose(sim, plain, rtol=0, atol=1e-5 * _rng_range(plain))
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert np.abs(sim - ref).max() <= 0.05 * _rng_range(ref)
