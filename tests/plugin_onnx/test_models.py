"""The real models and data of quantfw_onnx.models: the numpy-trained digits CNN and the sentences."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from quantfw_onnx import models  # noqa: E402


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cnn():
    return models.digits_cnn(0)


def test_split_is_disjoint_and_complete():
    d = models.digits_data()
    parts = [d.train_index, d.calib_index, d.test_index]
    assert [len(p) for p in parts] == [1078, 180, 539]
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == 1797 == len(allidx)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.dtype == np.float32
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    np.testing.assert_array_equal(models.digits_data().test_index, d.test_index)


def test_training_is_deterministic():
    models._train.cache_clear()
    _, a = models.digits_cnn(3, epochs=2)
    models._train.cache_clear()
    _, b = models.digits_cnn(3, epochs=2)
    _, c = models.digits_cnn(4, epochs=2)
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])  # bit for bit
    assert not np.array_equal(a.weights["conv1.weight"], c.weights["conv1.weight"])


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


def test_architecture_is_wide_enough_for_int8(cnn):
    """The weights dominate the file: int8 weights can make it well under 0.3x the float one."""
    model, d = cnn
    shapes = {k: v.shape for k, v in d.weights.items()}
    assert shapes == {
        "conv1.weight": (32, 1, 3, 3),
        "conv1.bias": (32,),
        "conv2.weight": (64, 32, 3, 3),
        "conv2.bias": (64,),
        "conv3.weight": (128, 64, 3, 3),
        "conv3.bias": (128,),
        "fc1.weight": (128, 512),
        "fc1.bias": (128,),
        "fc2.weight": (10, 128),
        "fc2.bias": (10,),
    }
    assert [i.name for i in model.graph.initializer] == list(shapes)
    n_params = sum(v.size for v in d.weights.values())
    assert n_params == 159_626
    # float32 weights are > 99 % of the serialized model
    assert 4 * n_params > 0.99 * len(model.SerializeToString())


def test_backward_matches_finite_differences():
    """The hand-written backward pass against central differences (float64, random input)."""
    rng = np.random.default_rng(0)
    p = {k: v.astype(np.float64) for k, v in models._init(0).items()}
    for k in p:
        if k.endswith(".bias"):  # non-zero biases: no exact Relu / MaxPool ties
            p[k] = rng.standard_normal(p[k].shape) * 0.1
    x = rng.standard_normal((3, 1, 8, 8))
    r = rng.standard_normal((3, 10))
    _, cache = models._forward(p, x, keep=True)
    grads = models._backward(p, cache, r)
    assert grads.keys() == p.keys()
    eps = 1e-6
    for k, w in p.items():
        for flat in rng.choice(w.size, size=min(5, w.size), replace=False):
            i = np.unravel_index(flat, w.shape)
            old = w[i]
            w[i] = old + eps
            up = float(np.sum(models._forward(p, x) * r))
            w[i] = old - eps
            down = float(np.sum(models._forward(p, x) * r))
            w[i] = old
            np.testing.assert_allclose(grads[k][i], (up - down) / (2 * eps), rtol=1e-4, atol=1e-6)


def test_accuracy_and_ort_matches_numpy(cnn):
    model, d = cnn
    ref = models.digits_forward(d.weights, d.x_test)
    sess = _session(model)
    got = sess.run(["logits"], {"image": d.x_test})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    one = sess.run(["logits"], {"image": d.x_test[:1]})[0]
    np.testing.assert_allclose(one, ref[:1], rtol=1e-4, atol=1e-4)
    assert d.accuracy(got) >= 0.98
    assert d.accuracy(ref) >= 0.98


def test_returns_fresh_objects(cnn):
    model, d = cnn
    model.graph.initializer[0].raw_data = b""  # vandalise the caller's copy
    d.weights["fc2.bias"][:] = 1e6
    model2, d2 = models.digits_cnn(0)
    assert model2.graph.initializer[0].raw_data
    assert np.abs(d2.weights["fc2.bias"]).max() < 1e3


def test_no_torch_needed():
    code = (
        "import sys\n"
        "from quantfw_onnx import models\n"
        "models.digits_cnn(0, epochs=1); models.docstring_sentences(5)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sentences_deterministic_and_disjoint():
    a = models.docstring_sentences(128, seed=0, offset=0)
    b = models.docstring_sentences(512, seed=0, offset=128)
    models.sentence_pool.cache_clear()
    assert models.docstring_sentences(128, seed=0, offset=0) == a
    assert len(set(a)) == 128 and len(set(b)) == 512
    assert not set(a) & set(b)
    assert models.docstring_sentences(128, seed=1, offset=0) != a
    with pytest.raises(ValueError, match="pool has only"):
        models.docstring_sentences(10, offset=len(models.sentence_pool()))


def test_sentences_are_real_english():
    sents = models.docstring_sentences(300, seed=0)
    common = {"the", "a", "an", "is", "of", "to", "and", "in", "if", "for", "be", "or", "this"}
    word = re.compile(r"^[A-Za-z'-]+$")
    with_common = 0
    for s in sents:
        words = s.split()
        assert 6 <= len(words) <= 40, s
        assert s[0].isupper() and s.endswith("."), s
        assert ">>>" not in s and "::" not in s, s
        alpha = sum(1 for w in words if word.match(w.strip(".,;:!?\"'()")))
        assert alpha >= 0.8 * len(words), s
        with_common += bool(common & {w.lower().strip(".,;:") for w in words})
    assert with_common >= 0.9 * len(sents)
