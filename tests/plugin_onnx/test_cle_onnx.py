"""Cross-layer equalisation, bias correction and BN re-estimation on an ONNX model: the same
rewrites as on the QuantGraph (the algorithms live in the core), the float model unchanged in
ONNX Runtime, and the ONNX Runtime artifact (x86-vnni) computing its simulation after each."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX plugin's tests need ONNX Runtime")

import onnx  # noqa: E402
from cle_models import cnn, images  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402

import quantfw  # noqa: E402

W4_TENSOR = {"weight": {"bits": 4, "granularity": "per_tensor"}}
W4_CHANNEL = {"weight": {"bits": 4}}


def cnn_onnx(weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """:func:`cle_models.cnn` as ONNX (Conv, Relu, grouped Conv, MaxPool, Flatten, Gemm)."""
    g = cnn()
    inits = dict(g.initializers if weights is None else weights)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["c2"], name="dw", group=8, **conv),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], name="pw", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["a3"], name="relu3"),
        helper.make_node("MaxPool", ["a3"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="fc", transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "cle_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def ort(model_or_path, x: np.ndarray) -> np.ndarray:
    sess = OnnxRuntimeBackend().session(model_or_path, optimized=False, threads=1)
    return sess.run(None, {"x": x})[0]


def run(algorithms, overrides, **kw):
    return quantfw.quantize(
        cnn_onnx(), images(1), target="x86-vnni", algorithms=algorithms, overrides=overrides,
        frontend_options={"threads": 1}, **kw,
    )  # fmt: skip


def test_cle_on_onnx_rewrites_as_on_the_graph_and_keeps_the_float_model():
    res = run([("cle", {"absorb": False})], W4_TENSOR)
    core = quantfw.quantize(
        cnn(), images(1), target="generic", algorithms=[("cle", {"absorb": False})]
    )
    pairs = res.recipe.provenance["cle"]["pairs"]
    assert [(p["first"], p["second"]) for p in pairs] == [("conv1", "dw"), ("dw", "pw")]
    for got, want in zip(pairs, core.recipe.provenance["cle"]["pairs"], strict=True):
        np.testing.assert_allclose(got["scale"], want["scale"], rtol=1e-6)
    # ONNX Runtime runs the float model with the rewritten weights: same outputs
    rewritten = {**cnn().initializers, **res.recipe.weights}
    x = images(5)
    want = ort(cnn_onnx().SerializeToString(), x)
    got = ort(cnn_onnx(rewritten).SerializeToString(), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("overrides", [W4_TENSOR, W4_CHANNEL], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize(
    "algorithms",
    [["cle"], ["cle", "bias_correction"], ["cle", "bn_reestimate"], ["none", "bias_correction"]],
    ids=["cle", "cle+bias_correction", "cle+bn_reestimate", "bias_correction"],
)
def test_the_artifact_computes_its_simulation(algorithms, overrides, tmp_path):
    res = run(algorithms, overrides, output=tmp_path / "q.onnx")
    x = images(6)
    sim = res.simulate()({"x": x})["y"]
    np.testing.assert_allclose(ort(str(res.artifact.path), x), sim, atol=1e-5 * np.abs(sim).max())


def test_the_corrections_help_on_held_out_data():
    """W4 per-tensor weights on the imbalanced CNN: each step lowers the artifact's output error
    against the float model on data it was not calibrated on."""
    x = images(8, n=256)
    ref = ort(cnn_onnx().SerializeToString(), x)
    errs = {}
    for name, algos in {
        "nearest": ["none"],
        "cle": ["cle"],
        "cle+bias_correction": ["cle", "bias_correction"],
    }.items():
        res = run(algos, W4_TENSOR)
        y = res.simulate()({"x": x})["y"]
        errs[name] = float(np.sqrt(((y - ref) ** 2).mean()) / ref.std())
    assert errs["cle"] < 0.7 * errs["nearest"], errs
    assert errs["cle+bias_correction"] < errs["cle"], errs


@pytest.mark.slow  # trains the digits CNN (about 8 s)
def test_digits_cnn_at_three_bits():
    """The numbers of docs/algorithms/cle-bias-correction.md, W3A8 per-tensor on x86-vnni: CLE
    and bias correction lower the logits' error and do not lose accuracy (ONNX Runtime)."""
    from quantfw_onnx.samples import digits_cnn_onnx

    from quantfw.samples import digits_cnn_weights, digits_data

    data, model = digits_data(), digits_cnn_onnx(digits_cnn_weights())
    sess = OnnxRuntimeBackend().session(model.SerializeToString(), threads=1)
    ref = sess.run(None, {"image": data.x_test})[0]
    out = {}
    for name, algos in {"nearest": ["none"], "cle+bc": ["cle", "bias_correction"]}.items():
        res = quantfw.quantize(
            model, data.x_calib, target="x86-vnni", algorithms=algos,
            overrides={"weight": {"bits": 3, "granularity": "per_tensor"}},
            frontend_options={"threads": 1},
        )  # fmt: skip
        y = res.simulate()({"image": data.x_test})["logits"]
        out[name] = (data.accuracy(y), float(np.sqrt(((y - ref) ** 2).mean()) / ref.std()))
    assert out["cle+bc"][1] < 0.75 * out["nearest"][1], out
    assert out["cle+bc"][0] >= out["nearest"][0], out
