"""An ONNX model while the ``onnx`` plugin is disabled: the message names the plugin and says how
to re-enable it (instead of "no frontend accepts ... frontends: graph reads .qgraph")."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

import quantfw  # noqa: E402
from quantfw.cli import cli  # noqa: E402
from quantfw.plugins import (  # noqa: E402
    DISABLE_ENV_VAR,
    UnknownComponentError,
    reset_plugin_manager,
)

if not importlib.metadata.entry_points(group="quantfw", name="onnx"):
    pytest.skip("the quantfw-onnx distribution is not installed", allow_module_level=True)


@pytest.fixture(autouse=True)
def _clean_plugin_state(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV_VAR, raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def digits(tmp_path, kit):
    """The test CNN as ``digits.onnx`` and 8 calibration images as ``calib.npz``."""
    model = tmp_path / "digits.onnx"
    onnx.save(kit.build_cnn(), str(model))
    np.savez(tmp_path / "calib.npz", input=kit.cnn_batch(8)["input"])
    return model, tmp_path / "calib.npz"


def test_disable_plugin_flag_is_named_with_the_way_back(digits):
    model, calib = digits
    res = CliRunner().invoke(
        cli, ["--disable-plugin", "onnx", "quantize", str(model), "--calib", str(calib)]
    )
    assert res.exit_code == 1, res.output
    assert f"no frontend accepts model file {str(model)!r}" in res.output
    assert ".onnx files need the 'onnx' plugin (quantfw-onnx), which is disabled" in res.output
    assert "run without --disable-plugin onnx to use it" in res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, UnknownComponentError)


def test_disabled_by_the_environment_is_named_in_the_cli_and_the_api(digits, monkeypatch):
    model, calib = digits
    monkeypatch.setenv(DISABLE_ENV_VAR, "quantfw-onnx")  # the distribution's name works too
    res = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "-t", "x86"])
    assert res.exit_code == 1, res.output
    assert "which is disabled by QUANTFW_DISABLE_PLUGINS" in res.output
    assert "remove 'quantfw-onnx' from QUANTFW_DISABLE_PLUGINS to use it" in res.output
    with pytest.raises(UnknownComponentError, match="'onnx' plugin .* disabled by QUANTFW_DISABLE"):
        quantfw.quantize(model, dict(np.load(calib)))


def test_unknown_target_of_a_disabled_plugin(tmp_path):
    graph_model = tmp_path / "m.qgraph"
    from quantfw.graph import Node, QuantGraph
    from quantfw.graph_io import save_graph

    g = QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"],
        ["y"],
        {"w": np.ones((2, 3), np.float32)},
        input_shapes={"x": (None, 3)},
    )
    save_graph(g, graph_model)
    np.savez(tmp_path / "x.npz", x=np.ones((4, 3), np.float32))
    res = CliRunner().invoke(
        cli,
        ["--disable-plugin", "onnx", "quantize", str(graph_model), "--calib",
         str(tmp_path / "x.npz"), "-t", "x86-vnni"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "unknown target 'x86-vnni'" in res.output
    assert "target 'x86-vnni' and its backends need the 'onnx' plugin" in res.output
    assert "run without --disable-plugin onnx" in res.output
    # and re-enabled (no flag), the same command works
    reset_plugin_manager()
    res = CliRunner().invoke(
        cli, ["--quiet", "quantize", str(graph_model), "--calib", str(tmp_path / "x.npz"),
              "-t", "x86-vnni"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
