"""The plugin template in docs/plugin_template conforms, registers, and works end to end."""

import numpy as np
import pytest

import quantfw
from quantfw import Node, QuantGraph
from quantfw.testing import check_plugin


@pytest.fixture
def hooks(example_plugin):
    return example_plugin


def test_template_conforms(hooks):
    assert check_plugin(hooks) == []
    assert check_plugin(hooks, deep=True) == []  # its algorithms built and checked too


def test_template_target_and_algorithm(hooks, quantfw_registry_with):
    registry = quantfw_registry_with(hooks)
    assert registry.origin("target", "example-npu") == "quantfw_example.hooks"
    rng = np.random.default_rng(0)
    g = QuantGraph(
        [
            Node("fc", "linear", ["x"], ["h"], weights={"weight": "w"}),
            Node("act", "relu", ["h"], ["y"]),
        ],
        ["x"],
        ["y"],
        {"w": rng.normal(size=(4, 8)).astype(np.float32)},
    )
    x = rng.normal(size=(64, 8)).astype(np.float32)
    res = quantfw.quantize(
        g,
        x,
        target="example-npu",
        algorithms=[("percentile", {"percentile": 99.0}), "saturation-report"],
    )
    # symmetric int8 activations: zero points are 0
    assert all(int(t.params.zero_point) == 0 for t in res.recipe.of_role("activation").values())
    report = res.recipe.provenance["saturation"]
    assert 0.0 < report["x"] <= 0.05  # the 99th percentile clips about 1 % of a Gaussian
    res_mm = quantfw.quantize(g, x, target="example-npu", algorithms=["saturation-report"])
    assert res_mm.recipe.provenance["saturation"]["x"] == 0.0  # min-max clips nothing
