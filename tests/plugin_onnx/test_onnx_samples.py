"""quantfw_onnx.samples: the numpy-trained digits CNN of quantfw.samples as an ONNX model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from quantfw_onnx.samples import digits_cnn, digits_cnn_onnx  # noqa: E402

from quantfw.samples import digits_cnn_forward, digits_cnn_weights  # noqa: E402


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cnn():
    return digits_cnn(0)


def test_model_contract(cnn):
    model, _ = cnn
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [n.op_type for n in model.graph.node] == [
        "Conv",
        "Relu",
        "Conv",
        "Relu",
        "MaxPool",
        "Conv",
        "Relu",
        "MaxPool",
        "Flatten",
        "Gemm",
        "Relu",
        "Gemm",
    ]


def test_weights_make_up_the_file(cnn):
    """The weights dominate the file: int8 weights can make it well under 0.3x the float one."""
    model, _ = cnn
    weights = digits_cnn_weights(0)
    assert [i.name for i in model.graph.initializer] == list(weights)
    assert model.SerializeToString() == digits_cnn_onnx(weights).SerializeToString()
    n_params = sum(v.size for v in weights.values())
    # float32 weights are > 99 % of the serialized model
    assert 4 * n_params > 0.99 * len(model.SerializeToString())


def test_accuracy_and_ort_matches_numpy(cnn):
    model, d = cnn
    ref = digits_cnn_forward(digits_cnn_weights(0), d.x_test)
    sess = _session(model)
    got = sess.run(["logits"], {"image": d.x_test})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    one = sess.run(["logits"], {"image": d.x_test[:1]})[0]
    np.testing.assert_allclose(one, ref[:1], rtol=1e-4, atol=1e-4)
    assert d.accuracy(got) >= 0.98
    assert d.accuracy(ref) >= 0.98


def test_returns_fresh_objects(cnn):
    model, _ = cnn
    model.graph.initializer[0].raw_data = b""  # vandalise the caller's copy
    model2, _ = digits_cnn(0)
    assert model2.graph.initializer[0].raw_data


def test_no_torch_needed():
    code = (
        "import sys\n"
        "from quantfw_onnx.samples import digits_cnn\n"
        "digits_cnn(0, epochs=1)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
