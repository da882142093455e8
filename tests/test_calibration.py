"""Calibration data: accepted forms, validation errors, and the CLI's file formats."""

import numpy as np
import pytest

from quantfw.calibration import (
    CalibrationData,
    CalibrationError,
    CalibrationFile,
    load_calibration_source,
)
from quantfw.graph import Node, QuantGraph


@pytest.fixture
def one_input():
    return QuantGraph(
        [Node("r", "relu", ["x"], ["y"])], ["x"], ["y"], input_shapes={"x": (None, 3)}
    )


@pytest.fixture
def two_inputs():
    return QuantGraph([Node("a", "add", ["x", "z"], ["y"])], ["x", "z"], ["y"])


def _count(data):
    return sum(len(b["x"]) for b in data)


def test_forms_accepted(one_input):
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    assert _count(CalibrationData(x, one_input, batch_size=4)) == 10
    assert [len(b["x"]) for b in CalibrationData(x, one_input, batch_size=4)] == [4, 4, 2]
    assert _count(CalibrationData({"x": x}, one_input)) == 10
    assert _count(CalibrationData([x[:5], {"x": x[5:]}], one_input)) == 10
    assert _count(CalibrationData(lambda: iter([x]), one_input)) == 10
    batch = next(iter(CalibrationData(x, one_input)))
    assert batch["x"].dtype == np.float32


def test_one_shot_generator_is_replayable(one_input):
    gen = (np.ones((2, 3)) * i for i in range(3))
    data = CalibrationData(gen, one_input)
    first = [b["x"][0, 0] for b in data]
    second = [b["x"][0, 0] for b in data]
    assert first == second == [0.0, 1.0, 2.0]
    assert data.num_samples == 6


def test_bad_data_named(one_input, two_inputs):
    bad = np.ones((4, 3))
    bad[1, 2] = np.nan
    with pytest.raises(CalibrationError, match=r"batch 0, input 'x': 1 NaN/Inf"):
        list(CalibrationData(bad, one_input))
    with pytest.raises(
        CalibrationError, match=r"input 'x': got shape \(4, 5\).*rank 2|dimension 1 is 5"
    ):
        list(CalibrationData(np.ones((4, 5)), one_input))
    with pytest.raises(CalibrationError, match="rank 2"):
        list(CalibrationData(np.ones((4, 3, 1)), one_input))
    with pytest.raises(
        CalibrationError, match=r"missing input\(s\) \['z'\].*inputs are \['x', 'z'\]"
    ):
        list(CalibrationData({"x": np.ones((2, 1))}, two_inputs))
    with pytest.raises(CalibrationError, match="unknown input"):
        list(CalibrationData([{"x": np.ones(2), "zz": np.ones(2), "z": np.ones(2)}], two_inputs))
    with pytest.raises(CalibrationError, match="not numeric"):
        list(CalibrationData(np.array([["a", "b", "c"]]), one_input))
    with pytest.raises(CalibrationError, match="empty"):
        list(CalibrationData([], one_input))
    with pytest.raises(CalibrationError, match="empty"):
        list(CalibrationData(np.ones((0, 3)), one_input))
    with pytest.raises(CalibrationError, match="single-input"):
        CalibrationData(np.ones((2, 3)), two_inputs)


def test_cli_sources(tmp_path, one_input, two_inputs, monkeypatch):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    np.savez(tmp_path / "any_key.npz", whatever=x)
    src = load_calibration_source(str(tmp_path / "any_key.npz"), ["x"])
    np.testing.assert_array_equal(src["x"], x)

    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"{i:03d}.npy", x[i])  # one sample per file
    data = CalibrationData(CalibrationFile(folder), one_input)
    got = np.concatenate([b["x"] for b in data])
    np.testing.assert_array_equal(got, x)

    per_input = tmp_path / "per_input"
    per_input.mkdir()
    np.save(per_input / "x.npy", x)
    np.save(per_input / "z.npy", x * 2)
    src = load_calibration_source(str(per_input), ["x", "z"])
    np.testing.assert_array_equal(src["z"], 2 * x)

    (tmp_path / "calibmod.py").write_text(
        "import numpy as np\ndef batches():\n    return [np.ones((2, 3), np.float32)]\n"
    )
    monkeypatch.chdir(tmp_path)
    fn = load_calibration_source("calibmod:batches", ["x"])
    assert _count(CalibrationData(fn, one_input)) == 2

    with pytest.raises(CalibrationError, match="not an existing .npz file"):
        load_calibration_source(str(tmp_path / "missing.npz"), ["x"])
    with pytest.raises(CalibrationError, match="no function 'nope'"):
        load_calibration_source("calibmod:nope", ["x"])


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration_source(str(tmp_path / "obj.npz"), ["x"])


def test_fixed_batch_models():
    """A model exported with a fixed batch of 1: whole arrays are cut to it, wrong batches are
    refused with the fix named."""
    g = QuantGraph([Node("r", "relu", ["x"], ["y"])], ["x"], ["y"], input_shapes={"x": (1, 3)})
    data = CalibrationData(np.ones((5, 3)), g, batch_size=32)
    assert [len(b["x"]) for b in data] == [1] * 5
    with pytest.raises(CalibrationError, match="fixed batch of 1.*batches of 1 sample"):
        list(CalibrationData([np.ones((4, 3))], g))
