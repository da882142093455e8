"""Calibration mistakes on a real ONNX model: quantfw's own checks speak before ONNX Runtime runs,
and batches over the activation memory budget run in chunks with the same result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from quantfw_onnx.frontend import OnnxFrontend  # noqa: E402
from quantfw_onnx.memory import activation_bytes  # noqa: E402

from quantfw.calibration import MEMORY_ENV  # noqa: E402
from quantfw.cli import cli  # noqa: E402
from quantfw.recipe import Recipe  # noqa: E402


@pytest.fixture
def cnn(tmp_path, kit, monkeypatch):
    """``cnn.onnx`` (input ``input``: float32 [batch, 3, 16, 16]) in the current folder."""
    onnx.save(kit.build_cnn(), str(tmp_path / "cnn.onnx"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    return tmp_path


def test_integer_data_for_the_float_input_is_refused_before_ort_runs(cnn, kit):
    np.savez(cnn / "ints.npz", input=kit.cnn_batch(4)["input"].astype(np.int64))
    res = CliRunner().invoke(cli, ["quantize", "cnn.onnx", "--calib", "ints.npz"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "Error: ints.npz: calibration batch 0, input 'input': got int64 data, but the model's "
        "input is float32 (float); give float values (e.g. array.astype(numpy.float32))"
    )
    assert "ONNX Runtime" not in res.output and "ONNXRuntimeError" not in res.output


def test_the_frontend_declares_input_dtypes_and_estimates_activations(cnn):
    fe = OnnxFrontend()
    model = fe.load(cnn / "cnn.onnx")
    graph = fe.capture(model)
    assert graph.input_dtypes == {"input": "float32"}
    per_sample = fe.activation_bytes(model, graph)
    assert per_sample == activation_bytes(model)
    # at least the input and the first convolution's output, per sample
    assert per_sample > 3 * 16 * 16 * 4 * 2
    # the batch axis is symbolic: the estimate is per sample, whatever the batch
    assert per_sample < 1_000_000


def _run(args: list[str], memory: str | None, monkeypatch):
    if memory is None:
        monkeypatch.delenv(MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(MEMORY_ENV, memory)
    return CliRunner().invoke(cli, ["quantize", "cnn.onnx", *args])


@pytest.mark.parametrize("algorithm", ["minmax", "percentile"])
def test_a_huge_batch_runs_in_chunks_with_the_same_recipe(cnn, kit, monkeypatch, caplog, algorithm):
    np.savez(cnn / "calib.npz", input=kit.cnn_batch(48)["input"])
    common = ["-t", "x86", "--calib", "calib.npz", "-a", algorithm, "--batch-size", "200000"]
    whole = _run([*common, "--recipe-out", "whole"], None, monkeypatch)
    assert whole.exit_code == 0, whole.output
    assert not caplog.records  # 48 samples fit the default 2 GiB
    per_sample = activation_bytes(OnnxFrontend().load(cnn / "cnn.onnx"))
    budget = 10 * per_sample + 1  # 10 samples a chunk
    cut = _run([*common, "--recipe-out", "cut", "--json"], str(budget), monkeypatch)
    assert cut.exit_code == 0, cut.output
    # (the real command prints it on stderr: see the next test; here pytest's handler has it)
    assert "a calibration batch of 48 samples would take about" in caplog.text
    assert "running it in chunks of 10 samples" in caplog.text and MEMORY_ENV in caplog.text
    assert json.loads(cut.stdout)["calibration_samples"] == 48
    a, b = Recipe.load(cnn / "whole"), Recipe.load(cnn / "cut")
    assert a.tensors.keys() == b.tensors.keys() and a.tensors
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert np.array_equal(t.params.scale, u.params.scale), name
        assert np.array_equal(t.params.zero_point, u.params.zero_point), name


def test_the_real_command_warns_on_stderr(cnn, kit):
    np.savez(cnn / "calib.npz", input=kit.cnn_batch(8)["input"])
    env = {**os.environ, MEMORY_ENV: "100KiB", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", "-q", "quantize", "cnn.onnx", "--calib",
         "calib.npz", "--batch-size", "8"],
        capture_output=True, text=True, env=env, cwd=cnn, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: errors only
    proc = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", "quantize", "cnn.onnx", "--calib", "calib.npz",
         "--batch-size", "8"],
        capture_output=True, text=True, env=env, cwd=cnn, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # 31,880 B a sample (the CNN's float activations): 3 samples fit in 100 KiB
    assert re.search(
        r"^WARNING quantfw\.calibration: a calibration batch of 8 samples would take about "
        r"249\.1 KiB of activations \(31\.1 KiB per sample\), over the 100\.0 KiB budget: "
        rf"running it in chunks of 3 samples \(set {MEMORY_ENV} to change the budget\)$",
        proc.stderr,
        re.MULTILINE,
    ), proc.stderr


def test_a_bad_memory_budget_is_one_line(cnn, kit, monkeypatch):
    np.savez(cnn / "calib.npz", input=kit.cnn_batch(4)["input"])
    res = _run(["--calib", "calib.npz"], "lots", monkeypatch)
    assert res.exit_code == 1
    assert f"Error: {MEMORY_ENV}='lots': give a positive size in bytes" in res.stderr
