"""The layer-wise seam on ONNX models: the ONNX frontend's inputs with earlier layers quantized
equal the core reference's, and the template's least-squares nudge, written once against the
seam, writes an ONNX Runtime artifact that computes what its simulation computes."""

import copy

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX plugin's tests need ONNX Runtime")

from onnx_test_models import mlp_model  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.frontend import OnnxFrontend  # noqa: E402

import quantfw  # noqa: E402
from quantfw.graph_frontend import GraphFrontend  # noqa: E402


def batches(seed: int = 3, n: int = 3):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(4, 6, 32)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("target", ["generic", "x86-vnni"])
def test_quantized_collect_equals_the_core_reference(target):
    """Every tensor, the graph output included, as its producer computes it with every quantizer
    upstream applied: the QDQ model in ONNX Runtime against the numpy reference interpreter."""
    fe = OnnxFrontend(threads=1)
    res = quantfw.quantize(mlp_model(), batches(), target=target, frontend_options={"threads": 1})
    names = ["x", "fc1.out", "act", "y"]
    data = batches(seed=9)
    got = list(fe.collect(None, res.graph, names, data, recipe=res.recipe))
    want = list(GraphFrontend().collect(None, res.graph, names, data, recipe=res.recipe))
    assert len(got) == len(want) == len(data)
    for g, w in zip(got, want, strict=True):
        for name in names:
            scale = np.abs(w[name]).max()
            np.testing.assert_allclose(g[name], w[name], atol=1e-5 * scale, err_msg=name)
    # the graph output is read before its own quantizer (generic stores it quantized)
    y = res.recipe.tensors.get("y")
    if y is not None and y.consumers is None:
        assert not np.allclose(
            got[0]["y"], quantfw.numerics.fake_quantize(got[0]["y"], y.params, y.spec)
        )


def test_float_collect_with_rewritten_weights_leaves_the_model_alone():
    fe = OnnxFrontend(threads=1)
    graph = fe.capture(mlp_model())
    zero = {"fc1.weight": np.zeros((32, 64), np.float32)}
    (out,) = fe.collect(None, graph, ["fc1.out"], batches(n=1), weights=zero)
    np.testing.assert_allclose(
        out["fc1.out"], np.broadcast_to(graph.initializers["fc1.bias"], (4, 6, 64))
    )
    (again,) = fe.collect(None, graph, ["fc1.out"], batches(n=1))
    assert np.abs(again["fc1.out"] - graph.initializers["fc1.bias"]).max() > 0.1


def test_ls_nudge_artifact_computes_its_simulation(example_plugin, quantfw_registry_with, tmp_path):
    """The nudged weights are what the artifact stores, and ONNX Runtime (no graph optimizations)
    computes the simulation."""
    import quantfw_onnx.plugin as onnx_plugin

    quantfw_registry_with(example_plugin, onnx_plugin)
    res = quantfw.quantize(
        mlp_model(), batches(), target="x86-vnni", algorithms=["ls-nudge"],
        output=tmp_path / "nudged.onnx", frontend_options={"threads": 1},
    )  # fmt: skip
    assert res.recipe.provenance["ls-nudge"]["layers"] == ["fc1/MatMul", "fc2/MatMul"]
    for w in ("fc1.weight", "fc2.weight"):
        assert not np.allclose(res.recipe.weights[w], res.graph.initializers[w])
    data = batches(seed=5, n=1)[0]
    sim = res.simulate()(data)["y"]
    sess = OnnxRuntimeBackend().session(res.artifact.path, optimized=False, threads=1)
    np.testing.assert_allclose(sess.run(None, data)[0], sim, atol=1e-5 * np.abs(sim).max())


def test_ls_nudge_on_onnx_and_on_the_same_graph_in_numpy_agree(
    example_plugin, quantfw_registry_with
):
    """One implementation, two frontends: the ONNX model and its captured QuantGraph run by the
    numpy interpreter give the same nudged weights."""
    import quantfw_onnx.plugin as onnx_plugin

    quantfw_registry_with(example_plugin, onnx_plugin)
    a = quantfw.quantize(mlp_model(), batches(), target="generic", algorithms=["none", "ls-nudge"])
    b = quantfw.quantize(
        a.graph, batches(), target="generic", algorithms=["none", "ls-nudge"], frontend="graph"
    )
    for w in ("fc1.weight", "fc2.weight"):
        np.testing.assert_allclose(a.recipe.weights[w], b.recipe.weights[w], rtol=1e-4, atol=1e-5)


def test_an_equalised_float_activation_is_one_mul_on_its_edge(tmp_path):
    """An Equalization on an activation that is not quantized (AWQ-style): the artifact
    multiplies the edge by 1/s, the consumer's weight carries s, the product is unchanged, and
    ONNX Runtime computes what the numpy reference computes."""
    from quantfw_onnx.lowering import count_ops, write_qdq

    from quantfw.numerics import params_from_tensor
    from quantfw.recipe import Equalization
    from quantfw.simulate import reference_runner

    res = quantfw.quantize(mlp_model(), batches(), target="x86-vnni", algorithms=["none"])
    recipe = res.recipe
    # fc2 reads `act` in float: drop its quantization there (and the int32 bias tied to it)
    del recipe.tensors["act"], recipe.tensors["fc2.bias"]
    s = np.random.default_rng(4).uniform(0.5, 2.0, 64).astype(np.float32)
    w2 = res.graph.initializers["fc2.weight"]  # (in, out): scale its input rows
    recipe.weights["fc2.weight"] = w2 * s[:, None]
    t = recipe.tensors["fc2.weight"]  # a rescaled weight needs its own range
    t.params = params_from_tensor(recipe.weights["fc2.weight"], t.spec)
    recipe.equalizations["act"] = Equalization("act", s, ("fc2/MatMul",), "test")
    recipe.check()
    qm = write_qdq(res.graph.forms["onnx"], res.graph, recipe)
    muls = [n for n in qm.graph.node if n.op_type == "Mul" and n.input[0] == "act"]
    assert len(muls) == 1 and count_ops(qm)["Mul"] >= 1
    data = batches(seed=6, n=1)[0]
    want = reference_runner(res.graph, recipe)(data)["y"]
    got = OnnxRuntimeBackend().session(qm.SerializeToString(), optimized=False, threads=1)
    np.testing.assert_allclose(got.run(None, data)[0], want, atol=1e-5 * np.abs(want).max())
    # in float the rescaling cancels: only the weight codes differ from the unequalised recipe
    plain = copy.deepcopy(recipe)
    del plain.equalizations["act"], plain.weights["fc2.weight"]
    plain.tensors["fc2.weight"].params = params_from_tensor(w2, t.spec)
    np.testing.assert_allclose(
        want, reference_runner(res.graph, plain)(data)["y"], atol=0.05 * np.abs(want).max()
    )


def test_option_mistakes_fail_before_any_work(tmp_path):
    """A bad algorithm or backend option is refused before the model runs once."""
    runs = []

    def data():
        runs.append(1)
        return batches(n=1)

    for kwargs, words in [
        ({"algorithms": [("minmax", {"percentil": 99})]}, "algorithm 'minmax' rejected"),
        ({"backend_options": {"fmt": "qop"}}, "fmt='qop': choose one of qdq, qoperator"),
    ]:
        with pytest.raises(ValueError, match=words):
            quantfw.quantize(
                mlp_model(), data, target="x86-vnni", output=tmp_path / "m.onnx", **kwargs
            )
    assert runs == [] and not (tmp_path / "m.onnx").exists()
