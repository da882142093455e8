"""Quantization-aware training: prepare → train → convert gives the PTQ path's Recipe/artifact."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from quantfw_torch.fakequant import FakeQuantize  # noqa: E402
from quantfw_torch.models import digits_cnn_module  # noqa: E402
from torch import nn  # noqa: E402

import quantfw  # noqa: E402
import quantfw.qat  # noqa: E402
from quantfw.samples import digits_data  # noqa: E402

W4A4 = {"weight": {"bits": 4}, "activation": {"bits": 4}}


@pytest.fixture(scope="module")
def digits():
    return digits_data()


def _train(model, x, y, steps, lr=1e-3, seed=0):
    torch.backends.mkldnn.enabled = False
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    X, Y = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(steps):
        idx = torch.randint(0, len(X), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_prepare_puts_fake_quant_where_the_plan_quantizes(digits):
    m = digits_cnn_module()
    qm = quantfw.qat.prepare(m, digits.x_calib, target="generic", overrides=W4A4)
    state = qm.quantfw_state
    plan = state.result.plan
    assert len(state.ops) == len(plan.weights())  # every quantized weight is trainable
    assert set(state.activations) == {t.name for t in plan.activations()}
    in_graph = {id(mod) for mod in qm.modules() if isinstance(mod, FakeQuantize)}
    assert {id(fq) for fq in state.activations.values()} <= in_graph
    assert all(isinstance(op.weight, nn.Parameter) for op in state.ops.values())
    # before training, the QAT model computes the PTQ simulation
    ptq = state.result.simulate()({state.result.graph.inputs[0]: digits.x_test[:64]})
    np.testing.assert_allclose(
        _logits(qm, digits.x_test[:64]), ptq[state.result.graph.outputs[0]], rtol=0, atol=1e-5
    )


def test_training_changes_weights_and_convert_matches_the_trained_model(digits):
    m = digits_cnn_module()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    qm = quantfw.qat.prepare(m, digits.x_calib, target="generic", overrides=W4A4)
    _train(qm, digits.x_train, digits.y_train, steps=30)
    for k, v in m.state_dict().items():  # the user's float model is not trained in place
        assert torch.equal(v, before[k]), k
    result = quantfw.qat.convert(qm)
    start = qm.quantfw_state.result
    changed = [w for w in result.recipe.weights if w in start.graph.initializers]
    assert changed and any(
        not np.array_equal(
            result.recipe.weights[w], start.recipe.weights.get(w, start.graph.initializers[w])
        )
        for w in changed
    )
    x = digits.x_test
    sim = result.simulate()({result.graph.inputs[0]: x})[result.graph.outputs[0]]
    trained = _logits(qm, x)
    # the converted recipe computes what the trained QAT model computes
    np.testing.assert_allclose(sim, trained, rtol=0, atol=1e-5 * np.abs(trained).max())


def test_lsq_learns_scales_and_convert_uses_them(digits):
    m = digits_cnn_module()
    qm = quantfw.qat.prepare(m, digits.x_calib, target="generic", overrides=W4A4, learn_scales=True)
    fqs = list(qm.quantfw_state.activations.values())
    start = [fq.scale.detach().clone() for fq in fqs]
    _train(qm, digits.x_train, digits.y_train, steps=30, lr=1e-2)
    moved = [not torch.equal(fq.scale.detach(), s) for fq, s in zip(fqs, start, strict=True)]
    assert any(moved)
    recipe = quantfw.qat.convert(qm).recipe
    for name, fq in qm.quantfw_state.activations.items():
        np.testing.assert_array_equal(recipe.tensors[name].params.scale, fq.current_params().scale)
    assert recipe.provenance["qat"]["learn_scales"] is True


def test_int8_qat_writes_the_x86_artifact(digits, tmp_path):
    import onnxruntime as ort

    m = digits_cnn_module()
    qm = quantfw.qat.prepare(m, digits.x_calib, target="x86")
    _train(qm, digits.x_train, digits.y_train, steps=10, lr=1e-4)
    result = quantfw.qat.convert(qm, output=tmp_path / "qat.onnx")
    assert result.artifact is not None and result.artifact.path.is_file()
    sess = ort.InferenceSession(str(result.artifact.path))
    x = digits.x_test
    art = sess.run(None, {result.graph.inputs[0]: x})[0]
    sim = result.simulate()({result.graph.inputs[0]: x})[result.graph.outputs[0]]
    assert (art.argmax(1) == sim.argmax(1)).mean() >= 0.99
    assert (art.argmax(1) == digits.y_test).mean() >= 0.97


def test_convert_refuses_a_plain_module():
    with pytest.raises(ValueError, match="prepare"):
        quantfw.qat.convert(nn.Linear(2, 2))


@contextlib.contextmanager
def _deterministic_cpu(seed: int = 0):
    """One thread, oneDNN off, seeded; the previous settings are restored afterwards.

    That makes a run repeatable on one machine, not across machines: torch picks its vectorized
    kernels (ATen's AVX-512 / AVX2 / default) and its BLAS code path from the CPU, and their
    rounding differs in the last bits, which training amplifies."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn


#: the largest share of PTQ's accuracy loss that QAT may leave (see the test's docstring)
QAT_LEFT_AT_MOST = 0.6


@pytest.mark.slow
def test_qat_recovers_what_ptq_loses_at_w3a3(digits):
    """At W3A3 minmax PTQ loses about 4 points on digits; ten epochs of QAT (STE, Adam 1e-3 with
    cosine decay, the benchmarks/torch_qat.py schedule) win most of them back.

    How much depends on the CPU, not only on the seed: torch picks its kernels from the CPU
    (ATen's vectorized code, MKL's GEMM) and training amplifies their last-bit differences.
    Float 0.9944 and PTQ 0.9536 (numpy: 22 of the 539 test images lost) are the same everywhere
    measured; the share of that loss QAT leaves, torch 2.14.1 on one Zen 4 machine, seeds 0-5
    (seed 0 is this test):

    * AVX-512 kernels (native):             0.14-0.32, seed 0: 0.23
    * ``ATEN_CPU_CAPABILITY=avx2``:         0.09-0.36, seed 0: 0.36
    * ``ATEN_CPU_CAPABILITY=default``:      0.09-0.23, seed 0: 0.18
    * AVX2-only CPU (``quantfw_onnx.cpu_mask``, MKL's AVX2 path too): 0.14-0.45, seed 0: 0.36
      (QAT 0.9796: what an AVX2 machine reported against the former limit of 0.3).

    Mean 0.22 over those 24 runs, worst 0.45 (10 images).  The limit, 0.6 (at most 13 of the 22
    images left), is 3 images beyond the worst run and holds for a kernel or torch version that
    shifts the result like another seed; QAT must still win back 9 or more images over PTQ, and
    no QAT, or a broken one, leaves all 22."""
    with _deterministic_cpu():
        float_acc, ptq_acc, qat_acc = _w3a3_qat(digits)
    assert float_acc - ptq_acc >= 0.03  # PTQ really loses several points here
    left = (float_acc - qat_acc) / (float_acc - ptq_acc)
    assert left <= QAT_LEFT_AT_MOST, (float_acc, ptq_acc, qat_acc, left)


def _w3a3_qat(digits) -> tuple[float, float, float]:
    """(float, PTQ, QAT) test accuracy of the digits CNN at W3A3."""
    m = digits_cnn_module()
    low = {"weight": {"bits": 3}, "activation": {"bits": 3}}
    ptq = quantfw.quantize(m, digits.x_calib, target="generic", overrides=low, algorithms=["none"])
    name_in, name_out = ptq.graph.inputs[0], ptq.graph.outputs[0]

    def acc(logits):
        return float((logits.argmax(1) == digits.y_test).mean())

    ptq_acc = acc(ptq.simulate()({name_in: digits.x_test})[name_out])
    float_acc = acc(_logits(m, digits.x_test))
    qm = quantfw.qat.prepare(
        m, digits.x_calib, target="generic", overrides=low, algorithms=["none"]
    )
    opt = torch.optim.Adam(qm.parameters(), lr=1e-3)
    epochs, batch = 10, 32
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, epochs * -(-len(digits.x_train) // batch)
    )
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train).long()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(qm(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    qat = quantfw.qat.convert(qm)
    return float_acc, ptq_acc, acc(qat.simulate()({name_in: digits.x_test})[name_out])
