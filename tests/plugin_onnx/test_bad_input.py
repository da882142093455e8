"""Bad input through the ONNX path: each gets a clear error naming what is wrong, or a stated
fallback, and nothing the user gave is overwritten."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import quantfw  # noqa: E402
from quantfw.calibration import CalibrationError  # noqa: E402


def _calib(kit, n=8):
    return kit.cnn_batch(n)["input"]


def test_truncated_and_foreign_files(tmp_path, kit):
    good = tmp_path / "cnn.onnx"
    onnx.save(kit.build_cnn(), str(good))
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    for bad in (cut, text):
        with pytest.raises(ValueError, match=bad.name):
            quantfw.quantize(bad, _calib(kit), target="x86")


def test_unquantizable_op_stays_float_and_summary_says_so(tmp_path, kit):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Sin", ["h"], ["s"], name="weird_sin"),  # no integer kernel anywhere
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2"),
    ]
    w2 = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    res = quantfw.quantize(model, rng.normal(size=(16, 6)).astype(np.float32), target="x86")
    assert not res.plan.decision("weird_sin").quantized
    assert any("weird_sin" in nodes for nodes in res.summary.float_reasons.values())
    assert "weird_sin" in res.summary.to_text()
    assert res.plan.decision("fc").quantized and res.plan.decision("fc2").quantized


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), "NaN/Inf"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), "NaN/Inf"),
        (lambda x: x[:, :, :8, :], r"dimension 2 is 8, the model expects 16"),
        (lambda x: x[:, 0], r"rank 4"),
        (lambda x: x.astype(str), "not numeric"),
        (lambda x: {"image": x}, r"unknown input\(s\) \['image'\].*\['input'\]"),
        (lambda x: x[:0], "empty"),
        (lambda x: [], "empty"),
    ],
)
def test_bad_calibration_data(kit, make, match):
    with pytest.raises(CalibrationError, match=match):
        quantfw.quantize(kit.build_cnn(), make(_calib(kit)), target="x86")


def test_missing_calibration_for_static_says_how_to_go_dynamic(kit):
    with pytest.raises(ValueError, match="needs calibration data.*dynamic"):
        quantfw.quantize(kit.build_cnn(), None, target="x86")


def test_output_never_overwrites_the_input(tmp_path, kit):
    src = tmp_path / "cnn.onnx"
    onnx.save(kit.build_cnn(), str(src))
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing to write the output"):
        quantfw.quantize(src, _calib(kit), target="x86", output=src)
    assert src.read_bytes() == before
    out = tmp_path / "cnn.x86.onnx"
    quantfw.quantize(src, _calib(kit), target="x86", output=out)
    assert src.read_bytes() == before and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_avx2_target_refuses_a_weight_format_it_cannot_run(kit):
    from quantfw.planner import PlanError

    with pytest.raises(PlanError, match=r"dtype 'fp8_e4m3fn'.*x86-avx2.*allowed: .*int8"):
        quantfw.quantize(
            kit.build_cnn(),
            _calib(kit),
            target="x86-avx2",
            overrides={"weight": {"dtype": "fp8_e4m3fn"}},
        )


def test_int32_token_ids_are_widened(kit):
    """Tokenizers often return int32 ids; a model taking int64 gets them widened, not an ORT error."""
    batch = kit.transformer_batch(4)
    batch32 = {**batch, "ids": batch["ids"].astype(np.int32)}
    a = quantfw.quantize(kit.build_transformer(), [batch], target="x86")
    b = quantfw.quantize(kit.build_transformer(), [batch32], target="x86")
    for name, t in a.recipe.of_role("activation").items():
        assert b.recipe.tensors[name].params == t.params
