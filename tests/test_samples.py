"""quantfw.samples: the one digits split, the numpy-trained CNN and MLP, the docstring sentences."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
from click.testing import CliRunner

from quantfw.cli import cli
from quantfw.samples import cnn, digits_data, docstring_sentences, sentence_pool

needs_sklearn = pytest.mark.skipif(
    find_spec("sklearn") is None, reason="the digits ship with scikit-learn (the demo extra)"
)


@pytest.fixture(scope="module")
def weights():
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn (the demo extra)")
    return cnn.digits_cnn_weights(0)


@needs_sklearn
def test_split_is_disjoint_and_complete():
    d = digits_data()
    parts = [d.train_index, d.calib_index, d.test_index]
    assert [len(p) for p in parts] == [1078, 180, 539]
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == 1797 == len(allidx)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.dtype == np.float32
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    np.testing.assert_array_equal(digits_data().test_index, d.test_index)


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=re.escape('pip install "quantfw[demo]"')):
        digits_data()
    res = CliRunner().invoke(cli, ["demo"])
    assert res.exit_code == 1 and 'pip install "quantfw[demo]"' in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # an error, no traceback


@needs_sklearn
def test_training_is_deterministic():
    cnn._train.cache_clear()
    a = cnn.digits_cnn_weights(3, epochs=2)
    cnn._train.cache_clear()
    b = cnn.digits_cnn_weights(3, epochs=2)
    c = cnn.digits_cnn_weights(4, epochs=2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # bit for bit
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_architecture_is_wide_enough_for_int8(weights):
    shapes = {k: v.shape for k, v in weights.items()}
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
    assert all(v.dtype == np.float32 for v in weights.values())
    assert sum(v.size for v in weights.values()) == 159_626


def test_backward_matches_finite_differences():
    """The hand-written backward pass against central differences (float64, random input)."""
    rng = np.random.default_rng(0)
    p = {k: v.astype(np.float64) for k, v in cnn._init(0).items()}
    for k in p:
        if k.endswith(".bias"):  # non-zero biases: no exact Relu / MaxPool ties
            p[k] = rng.standard_normal(p[k].shape) * 0.1
    x = rng.standard_normal((3, 1, 8, 8))
    r = rng.standard_normal((3, 10))
    _, cache = cnn._forward(p, x, keep=True)
    grads = cnn._backward(p, cache, r)
    assert grads.keys() == p.keys()
    eps = 1e-6
    for k, w in p.items():
        for flat in rng.choice(w.size, size=min(5, w.size), replace=False):
            i = np.unravel_index(flat, w.shape)
            old = w[i]
            w[i] = old + eps
            up = float(np.sum(cnn._forward(p, x) * r))
            w[i] = old - eps
            down = float(np.sum(cnn._forward(p, x) * r))
            w[i] = old
            np.testing.assert_allclose(grads[k][i], (up - down) / (2 * eps), rtol=1e-4, atol=1e-6)


def test_cnn_accuracy(weights):
    d = digits_data()
    assert d.accuracy(cnn.digits_cnn_forward(weights, d.x_test)) >= 0.98


@needs_sklearn
def test_returns_fresh_weights():
    cnn.digits_cnn_weights(0)["fc2.bias"][:] = 1e6  # vandalise the caller's copy
    assert np.abs(cnn.digits_cnn_weights(0)["fc2.bias"]).max() < 1e3


def test_import_light():
    """``import quantfw`` leaves the samples alone; the samples import no deep-learning framework."""
    code = (
        "import sys\n"
        "import quantfw\n"
        "assert 'quantfw.samples' not in sys.modules, 'import quantfw imported quantfw.samples'\n"
        "from quantfw import samples\n"
        "samples.docstring_sentences(5)\n"
        "if __import__('importlib.util').util.find_spec('sklearn'):\n"
        "    samples.digits_cnn_weights(0, epochs=1)\n"
        "heavy = {'torch', 'tensorflow', 'onnx', 'onnxruntime'} & set(sys.modules)\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sentences_deterministic_and_disjoint():
    a = docstring_sentences(128, seed=0, offset=0)
    b = docstring_sentences(512, seed=0, offset=128)
    sentence_pool.cache_clear()
    assert docstring_sentences(128, seed=0, offset=0) == a
    assert len(set(a)) == 128 and len(set(b)) == 512
    assert not set(a) & set(b)
    assert docstring_sentences(128, seed=1, offset=0) != a
    with pytest.raises(ValueError, match="pool has only"):
        docstring_sentences(10, offset=len(sentence_pool()))


def test_sentences_are_real_english():
    sents = docstring_sentences(300, seed=0)
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
