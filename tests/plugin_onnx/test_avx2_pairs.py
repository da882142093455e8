"""The x86-avx2 target's pair-limited int8 weights, end to end on real models.

The kernel itself is checked two ways: here with the numpy model of ONNX Runtime's AVX2
``VPMADDUBSW`` kernel (``quantfw_onnx.avx2.u8s8_matmul_avx2``) on the artifact's own codes, which
runs on any CPU; and in ``test_avx2_emulation.py`` by ONNX Runtime's real AVX2 kernels where the
CPU can be masked to AVX2-only.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from quantfw_onnx.avx2 import PAIR_LIMIT, max_kernel_pair_sum, u8s8_matmul_avx2  # noqa: E402
from quantfw_onnx.samples import digits_cnn  # noqa: E402

import quantfw  # noqa: E402


@pytest.fixture(scope="module")
def cnn_avx2(tmp_path_factory):
    model, data = digits_cnn(0)
    out = tmp_path_factory.mktemp("avx2") / "cnn.onnx"
    res = quantfw.quantize(model, data.x_calib, target="x86-avx2", output=out)
    return res, data, onnx.load(str(out))


def test_weights_use_the_full_int8_grid_and_no_pair_passes_the_limit(cnn_avx2):
    res, _, qm = cnn_avx2
    weights = res.recipe.of_role("weight")
    assert weights and all(
        t.spec.dtype == "int8" and t.spec.pair_limit == 128 for t in weights.values()
    )
    assert res.artifact.metadata["max_weight_code"] == 127  # int7 would stop at 63
    assert max_kernel_pair_sum(qm) <= PAIR_LIMIT and not res.artifact.metadata["needs_vnni"]


def test_the_avx2_kernel_model_equals_the_exact_product_on_the_artifact_codes(cnn_avx2):
    """Worst-case activations (every code 255) through the saturating pair sums, per weight."""
    _, _, qm = cnn_avx2
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    readers = {x: n for n in qm.graph.node for x in n.input}
    checked = 0
    for n in qm.graph.node:
        codes = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if codes is None or codes.dtype != np.int8 or codes.ndim < 2:
            continue
        reader = readers[n.output[0]]
        # the GEMM's B as [K, N]: a conv's channels-last im2col rows, a Gemm's (transB) rows
        if reader.op_type == "Conv":
            b = codes.transpose(0, *range(2, codes.ndim), 1).reshape(codes.shape[0], -1).T
        else:
            trans_b = any(a.name == "transB" and a.i for a in reader.attribute)
            b = codes.T if trans_b else codes
        a = np.full((2, b.shape[0]), 255, np.uint8)
        np.testing.assert_array_equal(u8s8_matmul_avx2(a, b), a.astype(np.int64) @ b)
        checked += 1
    assert checked >= 3


def test_the_artifact_equals_the_simulation(cnn_avx2, kit):
    res, data, qm = cnn_avx2
    x = data.x_test
    sim = res.simulate()({"image": x})["logits"]
    art = kit.ort_run(qm, {"image": x}, optimize=False)["logits"]
    np.testing.assert_allclose(art, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))
    assert (
        data.accuracy(art)
        >= data.accuracy(kit.ort_run(digits_cnn(0)[0], {"image": x})["logits"]) - 0.02
    )


def test_the_summary_states_the_limit_and_its_cost(cnn_avx2):
    res, _, _ = cnn_avx2
    lines = [line for line in str(res.summary).splitlines() if line.startswith("weights:")]
    assert len(lines) == 1
    assert "int8 per-channel, pair limit 128" in lines[0] and "AVX2 without VNNI" in lines[0]
    ratio = float(lines[0].split("scales ")[1].split("x")[0])
    assert 1.0 <= ratio < 2.0  # finer than 7-bit weights


def test_int7_and_uint8_remain_as_overrides(kit):
    model, data = digits_cnn(0)
    for dtype, top in (("int7", 63), ("uint8", 255)):
        res = quantfw.quantize(
            model, data.x_calib, target="x86-avx2", overrides={"weight": {"dtype": dtype}}
        )
        w = next(iter(res.recipe.of_role("weight").values()))
        assert w.spec.dtype == dtype and w.spec.qmax == top
        assert not any(
            line.startswith("weights:") and "pair limit" in line
            for line in str(res.summary).splitlines()
        )
