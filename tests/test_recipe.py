"""Recipes and graphs survive a save/load round trip, and bad files get clear errors."""

import json

import numpy as np
import pytest

from quantfw.graph import Node, QuantGraph
from quantfw.graph_io import load_graph, save_graph
from quantfw.recipe import SCHEMA_VERSION, Recipe, RecipeError, TensorRecipe
from quantfw.spec import QuantParams, QuantSpec


def _recipe():
    r = Recipe(
        target="generic",
        provenance={"algorithms": {"calibrate": ["minmax"]}, "calibration_samples": 64},
    )
    r.add(
        TensorRecipe(
            "x",
            "activation",
            QuantSpec("uint8", symmetric=False),
            QuantParams(np.float32(0.02), np.int32(128)),
            shape=(8, 4),
        )
    )
    r.add(
        TensorRecipe(
            "w",
            "weight",
            QuantSpec("int4", granularity="per_channel", axis=0),
            QuantParams(np.array([0.1, 0.2, 0.3], np.float32)),
            node="fc",
            shape=(3, 4),
        )
    )
    r.add(
        TensorRecipe("tok", "activation", QuantSpec("int8", granularity="per_token", dynamic=True))
    )
    r.weights["w"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    r.decisions.append(
        {"node": "fc", "op": "linear", "quantized": True, "reason": "quantized: linear"}
    )
    return r


def test_round_trip_identical(tmp_path):
    r = _recipe()
    json_path, arrays_path = r.save(tmp_path / "model.recipe")
    assert json_path.name == "model.recipe.json" and arrays_path.name == "model.recipe.safetensors"
    back = Recipe.load(json_path)
    assert back == r
    assert back.tensors["w"].spec.bits == 4
    assert back.tensors["tok"].params is None
    # the JSON is plain, readable data (no pickle anywhere)
    doc = json.loads(json_path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["tensors"]["x"]["scale_values"] == [pytest.approx(0.02)]
    assert not arrays_path.read_bytes().startswith(b"\x80")  # not a pickle stream
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.recipe.json",
        "model.recipe.safetensors",
    ]


def test_changed_recipe_is_not_equal(tmp_path):
    r = _recipe()
    r.save(tmp_path / "r")
    back = Recipe.load(tmp_path / "r.json")
    back.tensors["w"].params.scale[0] = 9.0
    assert back != r


def test_newer_schema_refused(tmp_path):
    json_path, _ = _recipe().save(tmp_path / "r")
    doc = json.loads(json_path.read_text())
    doc["schema_version"] = SCHEMA_VERSION + 1
    json_path.write_text(json.dumps(doc))
    with pytest.raises(RecipeError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade quantfw"):
        Recipe.load(json_path)


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "nothing.json")
    json_path, arrays_path = _recipe().save(tmp_path / "r")
    arrays_path.unlink()
    with pytest.raises(RecipeError, match="arrays file .* is missing"):
        Recipe.load(json_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RecipeError, match="bad.json: not a valid recipe"):
        Recipe.load(tmp_path / "bad.json")


def test_static_spec_needs_params():
    with pytest.raises(RecipeError, match="'x': a static spec needs params"):
        TensorRecipe("x", "activation", QuantSpec())


def test_graph_file_round_trip(tmp_path):
    g = QuantGraph(
        [
            Node(
                "fc",
                "linear",
                ["x"],
                ["y"],
                weights={"weight": "w"},
                attrs={"channel_axis": 0, "pads": (1, 2)},
            )
        ],
        ["x"],
        ["y"],
        {"w": np.ones((2, 3), np.float32)},
        name="tiny",
        input_shapes={"x": (None, 3)},
    )
    path = save_graph(g, tmp_path / "tiny.qgraph")
    back = load_graph(path)
    assert back.name == "tiny" and back.nodes[0].attrs["pads"] == [1, 2]
    np.testing.assert_array_equal(back.initializers["w"], g.initializers["w"])
    assert back.input_shapes == {"x": (None, 3)}
    truncated = tmp_path / "cut.qgraph"
    truncated.write_bytes(path.read_bytes()[:40])  # a cut-off download
    with pytest.raises(ValueError, match="cut.qgraph: not a readable quantfw graph"):
        load_graph(truncated)
