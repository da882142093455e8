"""Weights below 8 bits deployed to ONNX Runtime on x86: int4/int3/int2 per-channel codes stored
as int8 (so the integer kernels run them), per layer or for the whole model, on the target this
CPU resolves ``x86`` to (x86-vnni or x86-avx2), the artifact equal to the simulation.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from quantfw_onnx.avx2 import PAIR_LIMIT, max_kernel_pair_sum  # noqa: E402
from quantfw_onnx.samples import digits_cnn  # noqa: E402

import quantfw  # noqa: E402
from quantfw.numerics import quantize  # noqa: E402

BITS = (4, 3, 2)


@pytest.fixture(scope="module")
def digits():
    return digits_cnn(0)


@pytest.fixture(scope="module")
def low_bit(digits, tmp_path_factory):
    """``bits -> (result, loaded artifact)`` for the digits CNN quantized for ``x86``."""
    model, data = digits
    out = {}
    for bits in BITS:
        path = tmp_path_factory.mktemp(f"w{bits}") / "cnn.onnx"
        res = quantfw.quantize(
            model, data.x_calib, target="x86", output=path, overrides={"weight": {"bits": bits}}
        )
        out[bits] = (res, onnx.load(str(path)))
    return out


def _stored_weights(qm: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Constant name (the output of its DequantizeLinear) -> its stored codes."""
    inits = {t.name: t for t in qm.graph.initializer}
    return {
        n.output[0]: inits[n.input[0]]
        for n in qm.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type != TensorProto.INT32
    }


@pytest.mark.parametrize("bits", BITS)
def test_codes_are_int8_in_the_narrow_grid(low_bit, digits, bits):
    res, qm = low_bit[bits]
    weights = res.recipe.of_role("weight")
    assert weights and {t.spec.dtype for t in weights.values()} == {f"int{bits}"}
    stored = _stored_weights(qm)
    qmax = 2 ** (bits - 1) - 1  # symmetric, narrow range
    for name, t in weights.items():
        codes = numpy_helper.to_array(stored[name])
        assert stored[name].data_type == TensorProto.INT8, name
        w = res.recipe.weights.get(name)
        if w is None:  # not rewritten by an algorithm: the model's own
            w = res.graph.initializers[name]
        np.testing.assert_array_equal(codes, quantize(w, t.params, t.spec), err_msg=name)
        assert np.abs(codes).max() <= qmax
    assert res.artifact.metadata["max_weight_code"] == qmax
    # no pair of codes nears a 16-bit lane's limit: one artifact for every x86 CPU
    assert max_kernel_pair_sum(qm) <= 2 * qmax <= PAIR_LIMIT
    assert not res.artifact.metadata["needs_vnni"]
    assert f"weights: {len(weights)} x int{bits} per-channel" in str(res.summary)


@pytest.mark.parametrize("bits", BITS)
def test_the_artifact_equals_the_simulation(low_bit, digits, kit, bits):
    res, qm = low_bit[bits]
    _, data = digits
    x = data.x_test
    sim = res.simulate()({"image": x})["logits"]
    exact = kit.ort_run(qm, {"image": x}, optimize=False)["logits"]  # every Q/DQ as written
    np.testing.assert_allclose(exact, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    # the fused integer kernels (QLinearConv, MatMulIntegerToFloat...) round once more per
    # requantized output: within a small fraction of the range, and the same decisions
    fused = kit.ort_run(qm, {"image": x})["logits"]
    assert np.abs(fused - sim).max() <= 1e-2 * float(np.ptp(sim))
    agree = np.mean(fused.argmax(-1) == sim.argmax(-1))
    assert agree >= 0.995, agree
    ops = {n.op_type for n in onnx.shape_inference.infer_shapes(qm).graph.node}
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops


def test_4_bit_weights_keep_the_accuracy_and_2_bit_lose_it(low_bit, digits, kit):
    """The grid really is narrower: 4 bits hold within 1 point of float on this easy model,
    2 bits (codes -1, 0, 1) visibly do not."""
    model, data = digits
    x = data.x_test
    floating = data.accuracy(kit.ort_run(model, {"image": x})["logits"])
    acc = {b: data.accuracy(kit.ort_run(low_bit[b][1], {"image": x})["logits"]) for b in BITS}
    assert acc[4] >= floating - 0.01, (acc, floating)
    assert acc[2] < acc[4] - 0.05, acc


def test_mixed_bits_per_layer(digits, kit, tmp_path):
    model, data = digits
    res = quantfw.quantize(
        model,
        data.x_calib,
        target="x86",
        output=tmp_path / "mixed.onnx",
        overrides={"layers": {"conv2": {"bits": 4}, "fc*": {"weight": {"dtype": "int3"}}}},
    )
    qm = onnx.load(str(tmp_path / "mixed.onnx"))
    by_layer = {t.node: t.spec.dtype for t in res.recipe.of_role("weight").values()}
    assert by_layer["conv2"] == "int4"
    fcs = {k: v for k, v in by_layer.items() if k.startswith("fc")}
    assert fcs and set(fcs.values()) == {"int3"}
    others = {v for k, v in by_layer.items() if k != "conv2" and not k.startswith("fc")}
    assert others <= {"int8"}
    stored = _stored_weights(qm)
    for name, t in res.recipe.of_role("weight").items():
        codes = numpy_helper.to_array(stored[name])
        assert codes.dtype == np.int8 and np.abs(codes).max() <= t.spec.qmax, name
    sim = res.simulate()({"image": data.x_test})["logits"]
    art = kit.ort_run(qm, {"image": data.x_test}, optimize=False)["logits"]
    np.testing.assert_allclose(art, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    assert "weights: " in str(res.summary) and "int3 per-channel" in str(res.summary)


# ------------------------------------------------------------------------------------------------
# per-group weights: weight-only, packed, on MatMulNBits
# ------------------------------------------------------------------------------------------------


def _matmul_mlp(kit) -> onnx.ModelProto:
    """x [batch, tokens, 64] -> MatMul 64x48 + bias -> Relu -> MatMul 48x10: a transformer's
    linears (on 2-D inputs ONNX Runtime turns MatMul + Add into a Gemm before it fuses
    MatMulNBits: that Gemm dequantizes its weight at run time instead)."""
    rng = np.random.default_rng(5)
    inits = {
        "w1": rng.standard_normal((64, 48)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(48).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((48, 10)).astype(np.float32) * 0.2,
    }
    mk = onnx.helper.make_node
    nodes = [
        mk("MatMul", ["x", "w1"], ["h_mm"], name="fc1/MatMul"),
        mk("Add", ["h_mm", "b1"], ["h"], name="fc1/Add"),
        mk("Relu", ["h"], ["r"], name="relu"),
        mk("MatMul", ["r", "w2"], ["y"], name="fc2/MatMul"),
    ]
    vi = onnx.helper.make_tensor_value_info
    return kit.make_model(
        nodes,
        [vi("x", TensorProto.FLOAT, ["batch", "tokens", 64])],
        [vi("y", TensorProto.FLOAT, ["batch", "tokens", 10])],
        inits,
    )


@pytest.mark.parametrize("dtype", ["int4", "int3"])
def test_per_group_weights_run_weight_only_as_packed_matmulnbits(kit, tmp_path, dtype):
    import onnxruntime as ort
    from quantfw_onnx.backend import MATMULNBITS_ACCURACY_LEVEL

    model = _matmul_mlp(kit)
    rng = np.random.default_rng(6)
    calib = {"x": rng.standard_normal((8, 4, 64)).astype(np.float32)}
    res = quantfw.quantize(
        model,
        calib,
        target="x86",
        output=tmp_path / "g.onnx",
        overrides={"weight": {"dtype": dtype, "granularity": "per_group", "group_size": 16}},
    )
    tensors = res.recipe.tensors
    assert set(res.recipe.of_role("weight")) == {"w1", "w2"}
    assert set(tensors) == {"w1", "w2"}  # weight-only: no activation, no int32 bias
    assert all(t.spec.pair_limit is None for t in tensors.values())
    assert f"weights: 2 x {dtype} per-group (16), weight-only (activations float)" in str(
        res.summary
    )
    qm = onnx.load(str(tmp_path / "g.onnx"))
    stored = _stored_weights(qm)
    for name, (k, n) in {"w1": (64, 48), "w2": (48, 10)}.items():
        assert stored[name].data_type == TensorProto.INT4  # two codes per byte
        assert len(stored[name].raw_data) == k * n // 2
        codes = numpy_helper.to_array(stored[name]).astype(np.int8)
        t = tensors[name]
        np.testing.assert_array_equal(codes, quantize(model_weight(model, name), t.params, t.spec))
    so = ort.SessionOptions()
    so.add_session_config_entry(
        "session.qdq_matmulnbits_accuracy_level", str(MATMULNBITS_ACCURACY_LEVEL)
    )
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2, ops
    x = rng.standard_normal((4, 3, 64)).astype(np.float32)
    sim = res.simulate()({"x": x})["y"]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], sim, rtol=0, atol=1e-5 * np.ptp(sim))


def model_weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_a_group_size_matmulnbits_cannot_run_is_refused(kit):
    model = _matmul_mlp(kit)
    calib = {"x": np.zeros((4, 2, 64), np.float32)}
    over = {"weight": {"dtype": "int4", "granularity": "per_group", "group_size": 8}}
    with pytest.raises(ValueError, match=r"group_size 8 .*allowed: 16, 32, 64, 128, 256"):
        quantfw.quantize(model, calib, target="x86", overrides=over)


def test_softmax_outputs_stay_float_on_x86_and_not_on_generic(kit):
    """ops.float_outputs: the x86 targets keep P x V float (and QK quantized); a target
    without the rule (generic) quantizes both attention MatMuls."""
    model = kit.build_transformer()
    calib = kit.transformer_batch(4)
    x86 = quantfw.quantize(model, calib, target="x86")
    pv, qk = x86.plan.decision("pv"), x86.plan.decision("qk")
    assert qk.quantized and not pv.quantized
    assert "ops.float_outputs" in pv.reason
    assert "probs" not in x86.recipe.tensors
    generic = quantfw.quantize(model, calib, target="generic")
    assert generic.plan.decision("pv").quantized and "probs" in generic.recipe.tensors
