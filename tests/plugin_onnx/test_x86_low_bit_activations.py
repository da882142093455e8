"""Activations below 8 bits deployed to ONNX Runtime on x86 (``allowed.narrow_activations =
"clip_8bit"``): uint4/uint3/uint2 activations travel as uint8 codes that a ``Clip`` on the codes
restricts to the narrow grid, ONNX Runtime still runs its integer kernels, and the artifact
computes what quantfw simulates, on x86-vnni and on x86-avx2.

Runs on any CPU; in the masked AVX2 lane (``LD_PRELOAD`` of ``quantfw_onnx.cpu_mask``'s library)
ONNX Runtime runs its saturating AVX2 kernels and every comparison still holds.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn", reason="the digits CNN's data ships with scikit-learn")

import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from quantfw_onnx.avx2 import (  # noqa: E402
    PAIR_LIMIT,
    max_kernel_pair_sum,
    u8s8_matmul_avx2,
    u8s8_matmul_exact,
)
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.samples import digits_cnn_onnx  # noqa: E402

import quantfw  # noqa: E402
from quantfw.numerics import dequantize, quantize  # noqa: E402
from quantfw.planner import PlanError  # noqa: E402
from quantfw.samples import digits_cnn_weights, digits_data  # noqa: E402

TARGETS = ("x86-vnni", "x86-avx2")
#: (weight bits, activation bits)
FORMATS = ((4, 4), (8, 4), (4, 3), (4, 2))
#: ops that only move, select or max codes: a tensor read only by them may defer its Clip
RANGE_KEEPING_OPS = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Concat"}


@pytest.fixture(scope="module")
def digits():
    return digits_cnn_onnx(digits_cnn_weights()), digits_data()


@pytest.fixture(scope="module")
def artifacts(digits, tmp_path_factory):
    """``(target, w, a) -> (result, path)`` for the digits CNN, made on first use."""
    model, data = digits
    cache: dict[tuple[str, int, int], tuple[object, str]] = {}

    def get(target: str, w: int, a: int):
        key = (target, w, a)
        if key not in cache:
            path = str(tmp_path_factory.mktemp(f"{target}-w{w}a{a}") / "cnn.onnx")
            over = {"weight": {"bits": w}, "activation": {"bits": a}}
            res = quantfw.quantize(model, data.x_calib, target=target, output=path, overrides=over)
            cache[key] = (res, path)
        return cache[key]

    return get


def _last_input_step(res) -> float:
    """One quantization step of the logits, from the recipe: a code of the last linear's
    input (``relu4``) moving by one moves a logit by at most its scale times the largest
    dequantized weight of ``fc2``."""
    act = res.recipe.tensors["relu4"]
    w = res.recipe.tensors["fc2.weight"]
    wq = dequantize(quantize(_weight(res, "fc2.weight"), w.params, w.spec), w.params, w.spec)
    return float(act.params.scale) * float(np.abs(wq).max())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("w", "a"), FORMATS)
def test_the_artifact_equals_the_simulation(artifacts, digits, target, w, a):
    res, path = artifacts(target, w, a)
    _, data = digits
    acts = res.recipe.of_role("activation")
    assert {t.spec.dtype for t in acts.values()} == {f"uint{a}"}
    assert {t.spec.dtype for t in res.recipe.of_role("weight").values()} == {f"int{w}"}
    x = data.x_test
    sim = res.simulate()({"image": x})["logits"]
    backend = OnnxRuntimeBackend()
    exact = backend.session(path, optimized=False).run(None, {"image": x})[0]
    np.testing.assert_allclose(exact, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    fused = backend.session(path).run(None, {"image": x})[0]  # QLinearConv, QGemm...
    assert np.mean(fused.argmax(-1) == sim.argmax(-1)) == 1.0
    assert np.abs(fused - sim).max() <= _last_input_step(res)
    if target == "x86-avx2":
        assert max_kernel_pair_sum(onnx.load(path)) <= PAIR_LIMIT
    # uint4 and narrower codes cannot saturate AVX2's int16 pair sums, whatever the weights:
    # the backend's own run (which refuses artifacts that would) runs it on any x86 CPU
    assert not res.artifact.metadata["needs_vnni"]
    ran = backend.run(res.artifact, {"image": x})["logits"]
    np.testing.assert_array_equal(ran, fused)


def test_narrow_activations_make_full_int8_weights_exact_on_avx2(artifacts):
    """x86-vnni's W8A4 artifact has int8 weight pairs over the AVX2 limit (W8A8: needs VNNI),
    yet with activation codes of at most 15 the AVX2 kernel's model
    (:func:`~quantfw_onnx.avx2.u8s8_matmul_avx2`) equals the exact product: not ``needs_vnni``."""
    res8, path8 = artifacts("x86-vnni", 8, 8)
    res4, path4 = artifacts("x86-vnni", 8, 4)
    assert res8.artifact.metadata["needs_vnni"]
    md = res4.artifact.metadata
    assert md["max_pair_sum"] > PAIR_LIMIT and not md["needs_vnni"]
    qm = onnx.load(path4)
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    w = inits[next(n.input[0] for n in qm.graph.node if n.name.startswith("conv2.weight"))]
    b = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])  # im2col: kernel position, then channel
    rng = np.random.default_rng(0)
    a4 = rng.integers(0, 16, (64, b.shape[0])).astype(np.uint8)
    np.testing.assert_array_equal(u8s8_matmul_avx2(a4, b), u8s8_matmul_exact(a4, b))
    a8 = np.full_like(a4, 255)  # the same weights with 8-bit codes do saturate
    assert not np.array_equal(u8s8_matmul_avx2(a8, b), u8s8_matmul_exact(a8, b))


def _dq_codes(qm: onnx.ModelProto):
    """For each activation DequantizeLinear: (tensor name, codes tensor, float tensor quantized,
    op types reading the dequantized value)."""
    inits = {t.name for t in qm.graph.initializer}
    producer = {o: n for n in qm.graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for n in qm.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    for n in qm.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] in inits:
            continue
        q = producer[n.input[0]]
        if q.op_type == "Clip":
            q = producer[q.input[0]]
        assert q.op_type == "QuantizeLinear", q.op_type
        yield q.name.removesuffix("_QuantizeLinear"), n.input[0], q.input[0], readers[n.output[0]]


def _check_codes(kit, qm: onnx.ModelProto, res, feeds) -> int:
    """Run ``qm`` as written and check every activation's codes that a compute op reads: in the
    spec's grid and equal to the reference quantization (:func:`quantfw.numerics.quantize`) of
    the float tensor its QuantizeLinear reads.  Returns how many tensors were checked."""
    found = list(_dq_codes(qm))
    names = [f for _, c, f, _ in found] + [c for _, c, _, _ in found]
    outs = kit.ort_run(kit.with_outputs(qm, names), feeds, names, optimize=False)
    acts = res.recipe.of_role("activation")
    checked = 0
    for name, codes, before, read_by in found:
        t = acts[name]
        got = outs[codes]
        assert got.dtype == t.spec.format.storage, name
        if set(read_by) <= RANGE_KEEPING_OPS:
            continue  # its Clip is deferred past the max-pool (see quantfw_onnx.lowering.static)
        assert got.max() <= t.spec.qmax and got.min() >= t.spec.qmin, name
        np.testing.assert_array_equal(got, quantize(outs[before], t.params, t.spec), err_msg=name)
        checked += 1
    return checked


@pytest.mark.parametrize("target", TARGETS)
def test_codes_stay_in_the_narrow_grid_and_the_integer_kernels_run(
    artifacts, digits, kit, target, tmp_path
):
    import onnxruntime as ort

    res, path = artifacts(target, 4, 4)
    _, data = digits
    qm = onnx.load(path)
    assert qm.opset_import[0].version < 21  # no INT4/UINT4 tensors: 8-bit codes
    inits = {t.name: t for t in qm.graph.initializer}
    clips = [n for n in qm.graph.node if n.op_type == "Clip"]
    assert clips
    for n in clips:  # on uint8 codes, to the uint4 grid
        lo, hi = (inits[i] for i in n.input[1:])
        assert lo.data_type == hi.data_type == TensorProto.UINT8
        assert (int(numpy_helper.to_array(lo)), int(numpy_helper.to_array(hi))) == (0, 15)
    checked = _check_codes(kit, qm, res, {"image": data.x_test[:64]})
    assert checked >= 4  # relu1, pool1 (conv3's input), flat (fc1's), relu4 (fc2's)
    # ONNX Runtime keeps the integer kernels around the Clips
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 2, ops
    assert "FusedConv" not in ops and "DequantizeLinear" not in ops, ops


def test_the_x86_target_this_cpu_resolves_to(digits, tmp_path):
    """``x86`` resolves to x86-vnni or x86-avx2 here (x86-avx2 in the masked lane) and the
    backend runs its W4A4 artifact (no saturation check fires) as simulated."""
    model, data = digits
    res = quantfw.quantize(
        model,
        data.x_calib,
        target="x86",
        output=tmp_path / "cnn.onnx",
        overrides={"weight": {"bits": 4}, "activation": {"bits": 4}},
    )
    x = data.x_test
    ran = OnnxRuntimeBackend().run(res.artifact, {"image": x})["logits"]
    sim = res.simulate()({"image": x})["logits"]
    assert np.mean(ran.argmax(-1) == sim.argmax(-1)) == 1.0
    assert np.abs(ran - sim).max() <= _last_input_step(res)


def test_a_residual_cnn_with_concat_and_pooling(kit, tmp_path):
    """Graph input, max-pool, residual add, concat, global pooling, flatten: uint4 everywhere,
    the graph input clipped too; codes in the grid and the artifact equal to the simulation."""
    model = kit.build_cnn()
    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)}
    path = tmp_path / "cnn.onnx"
    over = {"activation": {"bits": 4}}
    res = quantfw.quantize(model, calib, target="x86-vnni", output=path, overrides=over)
    qm = onnx.load(str(path))
    clipped = {n.input[0].removesuffix("_quantized") for n in qm.graph.node if n.op_type == "Clip"}
    assert "input" in clipped
    x = {"input": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)}
    assert _check_codes(kit, qm, res, x) >= 4
    sim = next(iter(res.simulate()(x).values()))
    backend = OnnxRuntimeBackend()
    exact = backend.session(path, optimized=False).run(None, x)[0]
    np.testing.assert_allclose(exact, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    fused = backend.session(path).run(None, x)[0]
    assert np.abs(fused - sim).max() <= 1e-2 * float(np.ptp(sim))


def test_qoperator_format_keeps_the_clips(artifacts, digits, tmp_path):
    res, _ = artifacts("x86-vnni", 4, 4)
    _, data = digits
    path = tmp_path / "qop.onnx"
    art = OnnxRuntimeBackend(fmt="qoperator").lower(res.model, res.graph, res.recipe, path)
    assert art.metadata["qlinear_conv"] == 2
    qm = onnx.load(str(path))
    assert sum(n.op_type == "Clip" for n in qm.graph.node) >= 4
    x = data.x_test
    sim = res.simulate()({"image": x})["logits"]
    got = OnnxRuntimeBackend().session(path).run(None, {"image": x})[0]
    assert np.mean(got.argmax(-1) == sim.argmax(-1)) == 1.0
    assert np.abs(got - sim).max() <= _last_input_step(res)


@pytest.mark.parametrize(
    ("activation", "bounds"),
    [({"dtype": "int4"}, (-8, 7)), ({"dtype": "int8", "narrow_range": True}, (-127, 127))],
)
def test_signed_and_narrow_range_activations_clip_to_their_grid(
    digits, tmp_path, activation, bounds
):
    """int4 (signed) and narrow-range int8 activations: int8 codes clipped to the grid, the
    artifact equal to the simulation (which runs the grid's own INT4 type for int4)."""
    model, data = digits
    path = tmp_path / "cnn.onnx"
    over = {"weight": {"bits": 4}, "activation": activation}
    res = quantfw.quantize(model, data.x_calib, target="x86-vnni", output=path, overrides=over)
    qm = onnx.load(str(path))
    clips = [n for n in qm.graph.node if n.op_type == "Clip"]
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    assert clips
    assert {(int(inits[n.input[1]]), int(inits[n.input[2]])) for n in clips} == {bounds}
    assert {inits[n.input[1]].dtype for n in clips} == {np.dtype(np.int8)}
    x = data.x_test
    sim = res.simulate()({"image": x})["logits"]
    backend = OnnxRuntimeBackend()
    exact = backend.session(path, optimized=False).run(None, {"image": x})[0]
    np.testing.assert_allclose(exact, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    fused = backend.session(path).run(None, {"image": x})[0]
    assert np.mean(fused.argmax(-1) == sim.argmax(-1)) == 1.0
    assert np.abs(fused - sim).max() <= _last_input_step(res)


@pytest.mark.parametrize(
    ("activation", "message"),
    [
        (
            {"bits": 5},
            r"activation bits 5 .*no unsigned integer format with 5 bits; choose bits "
            r"from \[2, 3, 4, 8\]",
        ),
        (
            {"dtype": "int7"},
            r"activation dtype 'int7' .* is not allowed on target 'x86-vnni'; "
            r"allowed: uint8, int8, uint4, int4, uint3, int3, uint2, int2",
        ),
        ({"dtype": "ternary"}, r"activation dtype 'ternary' .* is not allowed"),
    ],
)
def test_an_activation_width_the_target_cannot_express_is_refused(digits, activation, message):
    model, data = digits
    with pytest.raises(PlanError, match=message):
        quantfw.quantize(
            model, data.x_calib, target="x86-vnni", overrides={"activation": activation}
        )


def _weight(res, name: str) -> np.ndarray:
    """The float weight the recipe quantizes: rewritten by an algorithm, or the model's own."""
    w = res.recipe.weights.get(name)
    return res.graph.initializers[name] if w is None else w
