"""The command line on an ONNX model: quantize for x86, write the artifact and the recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from quantfw.cli import cli  # noqa: E402
from quantfw.recipe import Recipe  # noqa: E402


def _cnn_files(tmp_path, kit, n: int, key: str = "input"):
    """The test CNN as ``cnn.onnx`` and ``n`` calibration images as ``calib.npz[key]``."""
    model = tmp_path / "cnn.onnx"
    onnx.save(kit.build_cnn(), str(model))
    np.savez(tmp_path / "calib.npz", **{key: kit.cnn_batch(n)["input"]})
    return model, tmp_path / "calib.npz"


def test_quantize_onnx_for_x86(tmp_path, kit):
    model, _ = _cnn_files(tmp_path, kit, 16, key="anything")  # an .npz's one array: any name
    out = tmp_path / "cnn.x86.onnx"
    res = CliRunner().invoke(
        cli,
        ["--quiet", "quantize", str(model), "--target", "x86", "--calib", str(tmp_path / "calib.npz"),
         "-o", str(out), "--recipe-out", str(tmp_path / "cnn.recipe"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["artifact"] == str(out) and summary["target"] == "x86"
    assert summary["calibration_samples"] == 16
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    recipe = Recipe.load(tmp_path / "cnn.recipe.json")
    assert recipe.target == "x86" and recipe.provenance["frontend"] == "onnx"
    # the same output path again: replaced atomically, input untouched
    res2 = CliRunner().invoke(
        cli,
        [
            "--quiet",
            "quantize",
            str(model),
            "--target",
            "x86",
            "--calib",
            str(tmp_path / "calib.npz"),
            "-o",
            str(model),
        ],
    )
    assert res2.exit_code == 1 and "refusing to write the output" in res2.output


def test_qoperator_format_from_the_command_line(tmp_path, kit):
    model, _ = _cnn_files(tmp_path, kit, 8)
    out = tmp_path / "cnn.qop.onnx"
    args = [
        "--quiet",
        "quantize",
        str(model),
        "--target",
        "x86",
        "--calib",
        str(tmp_path / "calib.npz"),
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(cli, [*args, "-B", "fmt=qoperator"])
    assert res.exit_code == 0, res.output
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QLinearConv" in ops
    res = CliRunner().invoke(cli, [*args, "-B", "colour=blue"])
    assert res.exit_code == 1 and "takes no option 'colour'" in res.output
    assert "its options: fmt" in res.output


@pytest.mark.parametrize("bits", [4, 3])
def test_weight_bits_below_8_from_the_command_line(tmp_path, kit, bits):
    """``--weight-bits 4`` on x86 (once refused, "allowed: int7"): int8 codes within the grid."""
    model, _ = _cnn_files(tmp_path, kit, 8)
    out = tmp_path / "cnn.w.onnx"
    res = CliRunner().invoke(
        cli,
        ["quantize", str(model), "--target", "x86", "--calib", str(tmp_path / "calib.npz"),
         "-o", str(out), "--weight-bits", str(bits)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"x int{bits} per-channel" in res.output
    qm = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qm.graph.initializer}
    weights = [
        inits[n.input[0]]
        for n in qm.graph.node
        if n.op_type == "DequantizeLinear" and n.output[0].endswith(".weight")
    ]
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) == 2 ** (bits - 1) - 1
