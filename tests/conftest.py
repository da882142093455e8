"""Shared test configuration."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Fixtures for plugin tests (quantfw_plugin_manager, quantfw_registry_with): the same kit
# third-party plugin authors use.
pytest_plugins = ["quantfw.testing", "plugin_site"]

TEMPLATE = Path(__file__).resolve().parents[1] / "docs" / "plugin_template"


@pytest.fixture
def example_plugin(monkeypatch):
    """The hooks module of the plugin template in docs/plugin_template (not installed: imported
    from its folder, and forgotten again after the test)."""
    monkeypatch.syspath_prepend(str(TEMPLATE))
    import quantfw_example.hooks as module

    yield module
    for name in [m for m in sys.modules if m.startswith("quantfw_example")]:
        del sys.modules[name]


@pytest.fixture
def model_files(tmp_path):
    """A small MLP as ``mlp.qgraph`` and 40 calibration rows as ``calib.npz``."""
    from quantfw.graph import Node, QuantGraph
    from quantfw.graph_io import save_graph

    rng = np.random.default_rng(0)
    g = QuantGraph(
        [
            Node("fc1", "linear", ["x"], ["h"], weights={"weight": "w1", "bias": "b1"}),
            Node("relu", "relu", ["h"], ["a"]),
            Node("head", "linear", ["a"], ["y"], weights={"weight": "w2"}),
        ],
        ["x"],
        ["y"],
        {
            "w1": rng.normal(size=(8, 4)).astype(np.float32),
            "b1": np.zeros(8, np.float32),
            "w2": rng.normal(size=(3, 8)).astype(np.float32),
        },
        name="mlp",
        input_shapes={"x": (None, 4)},
    )
    model = save_graph(g, tmp_path / "mlp.qgraph")
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(40, 4)).astype(np.float32))
    return model, tmp_path / "calib.npz"


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for one test (restored after it)."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)
