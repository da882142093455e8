"""The layer-wise seam on torch models: the torch frontend's inputs with earlier layers quantized
equal the core reference's, and the template's least-squares nudge gives the same weights on a
torch model as on its ONNX translation."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin's tests need torch")

import quantfw_onnx.plugin as onnx_plugin  # noqa: E402
import quantfw_torch.plugin as torch_plugin  # noqa: E402
from torch_test_models import mlp_rows, small_mlp  # noqa: E402

import quantfw  # noqa: E402
from quantfw.graph_frontend import GraphFrontend  # noqa: E402


def test_quantized_collect_equals_the_core_reference():
    res = quantfw.quantize(small_mlp(), mlp_rows(), target="generic", batch_size=32)
    fe = res.frontend
    names = [n.inputs[0] for n in res.graph.nodes if n.op.value == "linear"]
    names.append(res.graph.outputs[0])
    batches = [{res.graph.inputs[0]: mlp_rows(seed=7, n=20)}]
    (got,) = fe.collect(res.model, res.graph, names, batches, recipe=res.recipe)
    (want,) = GraphFrontend().collect(None, res.graph, names, batches, recipe=res.recipe)
    for name in names:
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(got[name], want[name], atol=1e-5 * scale, err_msg=name)


def test_float_collect_takes_rewritten_weights():
    res = quantfw.quantize(small_mlp(), mlp_rows(), target="generic", batch_size=32)
    first = next(n for n in res.graph.nodes if n.op.value == "linear")
    w, b = first.weights["weight"], first.weights["bias"]
    zero = {w: np.zeros_like(res.graph.initializers[w])}
    batches = [{res.graph.inputs[0]: mlp_rows(seed=7, n=5)}]
    (out,) = res.frontend.collect(res.model, res.graph, first.outputs, batches, weights=zero)
    want = np.broadcast_to(res.graph.initializers[b], (5, 32))
    np.testing.assert_allclose(out[first.outputs[0]], want, rtol=1e-6)


def test_ls_nudge_on_torch_and_on_its_onnx_translation_agree(example_plugin, quantfw_registry_with):
    quantfw_registry_with(example_plugin, onnx_plugin, torch_plugin)
    a = quantfw.quantize(small_mlp(), mlp_rows(), target="x86-vnni", algorithms=["ls-nudge"])
    assert len(a.recipe.provenance["ls-nudge"]["layers"]) == 3
    onnx_model = a.graph.forms["onnx"]  # the prepared translation: the same tensor names
    b = quantfw.quantize(onnx_model, mlp_rows(), target="x86-vnni", algorithms=["ls-nudge"])
    assert b.recipe.provenance["ls-nudge"]["layers"] == a.recipe.provenance["ls-nudge"]["layers"]
    nudged = [w for w in a.recipe.weights if w in a.recipe.tensors]
    assert len(nudged) == 3
    for w in nudged:
        np.testing.assert_allclose(a.recipe.weights[w], b.recipe.weights[w], rtol=1e-4, atol=1e-5)


def test_torch_engine_runs_layer_outputs_like_the_interpreter():
    from quantfw_torch.engine import TorchEngine

    from quantfw.interpreter import layer_output

    res = quantfw.quantize(small_mlp(), mlp_rows(), target="generic", batch_size=32)
    eng = TorchEngine()
    rng = np.random.default_rng(3)
    for node in (n for n in res.graph.nodes if n.op.value == "linear"):
        w = res.graph.initializers[node.weights["weight"]]
        b = res.graph.initializers[node.weights["bias"]]
        n_in = w.shape[1] if int(node.attrs.get("channel_axis", 0)) == 0 else w.shape[0]
        x = rng.normal(size=(10, n_in)).astype(np.float32)
        got = eng.to_numpy(eng.layer_output(node, eng.asarray(x), eng.asarray(w), eng.asarray(b)))
        np.testing.assert_allclose(got, layer_output(node, x, w, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a torch device"):
        TorchEngine("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            TorchEngine("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU visible to torch")
def test_ls_nudge_on_the_gpu_gives_the_cpu_weights(example_plugin, quantfw_registry_with):
    quantfw_registry_with(example_plugin, onnx_plugin, torch_plugin)
    runs = [
        quantfw.quantize(
            small_mlp(),
            mlp_rows(),
            target="x86-vnni",
            algorithms=["ls-nudge"],
            options={"engine": "torch", "device": device},
        )  # fmt: skip
        for device in ("cpu", "cuda")
    ]
    assert runs[1].recipe.provenance["ls-nudge"]["engine"].startswith("torch (cuda")
    for w in runs[0].recipe.weights:
        np.testing.assert_allclose(runs[0].recipe.weights[w], runs[1].recipe.weights[w], atol=1e-5)
