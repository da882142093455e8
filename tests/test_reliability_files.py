"""Files a user hands quantfw or gets from it: recipes that are damaged, renamed or mismatched
get a one-line error naming the file and the field; written files get the usual permissions;
an artifact for a machine this one is not says so.

Real files throughout: each bad recipe is a real save edited the way a person or a tool would.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantfw.api import Artifact
from quantfw.errors import QuantfwError
from quantfw.fileio import atomic_write_bytes, atomic_write_text, output_mode
from quantfw.graph import Node, QuantGraph
from quantfw.graph_io import save_graph
from quantfw.pipeline import host_warnings
from quantfw.recipe import SCHEMA_VERSION, Equalization, Recipe, RecipeError, TensorRecipe
from quantfw.recipe_file import arrays_digest
from quantfw.spec import QuantParams, QuantSpec
from quantfw.target import TargetSpec, builtin_target_paths, load_target


def _recipe(scale: float = 0.02) -> Recipe:
    r = Recipe(target="generic", provenance={"calibration_samples": 8})
    r.add(
        TensorRecipe(
            "x",
            "activation",
            QuantSpec("uint8", symmetric=False),
            QuantParams(np.float32(scale), np.int32(128)),
            shape=(2, 4),
            consumers=("fc",),
        )
    )
    r.add(
        TensorRecipe(
            "w",
            "weight",
            QuantSpec("int8", granularity="per_channel", axis=0),
            QuantParams(np.array([0.1, 0.2, 0.3], np.float32)),
            node="fc",
            shape=(3, 4),
        )
    )
    r.weights["w"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    r.equalizations["x"] = Equalization("x", np.ones(4, np.float32), ("fc",), "smoothquant")
    r.decisions.append({"node": "fc", "op": "linear", "quantized": True, "reason": "linear"})
    return r


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _edit_arrays(json_path: Path, arrays_path: Path, change) -> None:
    """Rewrite the arrays file with ``change`` applied and record its new digest in the JSON
    (a consistent pair whose contents disagree with the JSON's fields)."""
    arrays = load_file(str(arrays_path))
    change(arrays)
    save_file(arrays, str(arrays_path))
    digest = arrays_digest(arrays_path.read_bytes())
    _edit_json(json_path, lambda d: d.update(arrays_sha256=digest))


# -- schema version -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, True, False, "2", 1.5, [2]])
def test_a_schema_version_that_is_not_a_positive_int_is_refused(tmp_path, bad):
    json_path, _ = _recipe().save(tmp_path / "r")
    _edit_json(json_path, lambda d: d.update(schema_version=bad))
    with pytest.raises(RecipeError) as err:
        Recipe.load(json_path)
    msg = str(err.value)
    assert str(json_path) in msg and f"schema_version {json.dumps(bad)} " in msg, msg
    assert f"reads versions 1 to {SCHEMA_VERSION}" in msg, msg
    assert isinstance(err.value, QuantfwError) and "\n" not in msg


def test_a_missing_schema_version_and_a_newer_one(tmp_path):
    json_path, _ = _recipe().save(tmp_path / "r")
    _edit_json(json_path, lambda d: d.pop("schema_version"))
    with pytest.raises(RecipeError, match=r"r\.json: schema_version is missing; this quantfw"):
        Recipe.load(json_path)
    _edit_json(json_path, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(RecipeError, match="upgrade quantfw"):
        Recipe.load(json_path)
    _edit_json(json_path, lambda d: d.update(schema_version=1))  # an older version still loads
    assert Recipe.load(json_path) == _recipe()


# -- which arrays file --------------------------------------------------------------------------
def test_a_pair_renamed_together_loads(tmp_path):
    json_path, arrays_path = _recipe().save(tmp_path / "old-name")
    json_path.rename(tmp_path / "new-name.json")
    arrays_path.rename(tmp_path / "new-name.safetensors")
    assert Recipe.load(tmp_path / "new-name.json") == _recipe()
    assert Recipe.load(tmp_path / "new-name") == _recipe()  # the suffix is optional


def test_a_json_renamed_alone_still_finds_its_arrays_by_the_saved_name(tmp_path):
    json_path, _ = _recipe().save(tmp_path / "old-name")
    json_path.rename(tmp_path / "new-name.json")
    assert Recipe.load(tmp_path / "new-name.json") == _recipe()


def test_missing_arrays_name_the_file_expected_and_the_saved_name(tmp_path):
    json_path, arrays_path = _recipe().save(tmp_path / "old-name")
    json_path.rename(tmp_path / "new-name.json")
    arrays_path.unlink()
    with pytest.raises(RecipeError) as err:
        Recipe.load(tmp_path / "new-name.json")
    expected = str(tmp_path / "new-name.safetensors")
    assert str(err.value) == (
        f"{tmp_path / 'new-name.json'}: its arrays file {expected!r} is missing (it was saved as "
        "'old-name.safetensors', which is not there either); keep the .json and .safetensors "
        "files together, and when renaming a recipe rename both (NAME.json + NAME.safetensors)"
    )


def test_of_two_arrays_files_the_one_whose_bytes_match_is_used(tmp_path):
    # new.json was copied from old.json; new.safetensors is another recipe's: the digest
    # recorded in the JSON passes it over for old.safetensors, the one saved with it
    json_path, _ = _recipe().save(tmp_path / "old")
    (tmp_path / "new.json").write_bytes(json_path.read_bytes())
    _recipe(scale=0.5).save(tmp_path / "other")
    (tmp_path / "other.safetensors").rename(tmp_path / "new.safetensors")
    assert Recipe.load(tmp_path / "new.json") == _recipe()
    # ... and the one named after the JSON wins when it matches
    _recipe().save(tmp_path / "new")
    (tmp_path / "old.safetensors").write_bytes((tmp_path / "other.json").read_bytes())
    assert Recipe.load(tmp_path / "new.json") == _recipe()


def test_arrays_from_another_save_are_refused(tmp_path):
    json_path, arrays_path = _recipe().save(tmp_path / "r")
    _recipe(scale=0.5).save(tmp_path / "other")
    (tmp_path / "other.safetensors").replace(arrays_path)
    with pytest.raises(RecipeError) as err:
        Recipe.load(json_path)
    assert str(err.value) == (
        f"{json_path}: its arrays file 'r.safetensors' does not match it (SHA-256 differs from "
        "the one recorded when the recipe was saved): they come from different saves; use the "
        ".safetensors file written together with this .json"
    )


def test_without_a_digest_mismatched_arrays_are_caught_by_name(tmp_path):
    # files of earlier releases record no digest: a missing array is what shows the mismatch
    json_path, arrays_path = _recipe().save(tmp_path / "r")
    _edit_json(json_path, lambda d: d.pop("arrays_sha256"))
    save_file({"params/y/scale": np.ones((), np.float32)}, str(arrays_path))
    with pytest.raises(RecipeError) as err:
        Recipe.load(json_path)
    assert str(err.value) == (
        f"{arrays_path}: array 'params/x/scale' (named by tensors.x.scale in r.json) is "
        "missing: the two files do not belong together"
    )


# -- fields of the wrong type -------------------------------------------------------------------
def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        obj = doc
        for p in parents:
            obj = obj[p]
        if value is _DROP:
            del obj[last]
        else:
            obj[last] = value

    return change


_DROP = object()
BAD_FIELDS = [
    ("tensors", [], "tensors is a list; expected a JSON object"),
    ("tensors.x", "uint8", 'tensors.x is "uint8" (str); expected a JSON object'),
    ("tensors.x.role", 5, "tensors.x.role is 5 (int); expected a string"),
    ("tensors.x.role", _DROP, "tensors.x.role is missing"),
    ("tensors.x.role", "output", "tensor 'x': role 'output' is not one of"),
    ("tensors.x.spec", "uint8", 'tensors.x.spec is "uint8" (str); expected a JSON object'),
    ("tensors.x.spec.dtype", "int9", "tensors.x.spec"),
    ("tensors.x.spec.granularity", "per_row", "unknown granularity 'per_row'"),
    ("tensors.x.shape", "2x4", 'tensors.x.shape is "2x4" (str); expected a list'),
    ("tensors.x.shape", [2, -4], "tensors.x.shape [2, -4] is not a shape"),
    ("tensors.x.consumers", ["fc", 3], "tensors.x.consumers must be a list of strings"),
    ("tensors.x.node", 7, "tensors.x.node is 7 (int); expected a string"),
    ("tensors.x.scale", ["params/x/scale"], "tensors.x.scale is a list; expected a string"),
    ("tensors.x.zero_point", _DROP, "tensors.x.zero_point is missing"),
    ("weights.w.shape", _DROP, "weights.w.shape is missing"),
    ("weights.w.shape", [4, 3], "weight 'w' has shape [3, 4] in the arrays file"),
    ("weights.w.dtype", "float16", "weight 'w' is float32 in the arrays file r.safetensors but"),
    ("equalizations.x.consumers", _DROP, "equalizations.x.consumers is missing"),
    ("equalizations.x.source", 1, "equalizations.x.source is 1 (int); expected a string"),
    ("decisions", {"fc": 1}, "decisions is a JSON object; expected a list"),
    ("target", None, "target is null; expected a string"),
    ("target", 3, "target is 3 (int); expected a string"),
    ("provenance", [], "provenance is a list; expected a JSON object"),
    ("arrays_file", "../elsewhere.safetensors", 'arrays_file is "../elsewhere.safetensors"'),
    ("arrays_sha256", 12, "arrays_sha256 is 12 (int); expected a string"),
]


@pytest.mark.parametrize("field,value,expected", BAD_FIELDS, ids=[f for f, *_ in BAD_FIELDS])
def test_a_field_of_the_wrong_type_names_the_file_and_the_field(tmp_path, field, value, expected):
    json_path, _ = _recipe().save(tmp_path / "r")
    _edit_json(json_path, _set(field, value))
    with pytest.raises(RecipeError) as err:
        Recipe.load(json_path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg
    assert msg.startswith(str(tmp_path / "r.")), msg  # the .json or .safetensors at fault


def test_a_bad_equalised_pairing_names_the_file(tmp_path):
    json_path, _ = _recipe().save(tmp_path / "r")
    _edit_json(json_path, _set("tensors.x.consumers", None))
    with pytest.raises(RecipeError, match=r"r\.json: activation 'x' is equalised for"):
        Recipe.load(json_path)


# -- arrays of the wrong dtype or shape ---------------------------------------------------------
BAD_ARRAYS = [
    ("params/x/scale", np.int32(3), "array 'params/x/scale' (tensors.x.scale) is int32; expected a floating-point scale"),
    ("params/x/zero_point", np.float32(128), "array 'params/x/zero_point' (tensors.x.zero_point) is float32; expected an integer zero point"),
    ("params/w/scale", np.ones(4, np.float32), "tensors.w.scale has shape [4]; a per_channel int8 tensor of shape [3, 4] needs [3]"),
    ("params/w/zero_point", np.zeros(2, np.int32), "tensors.w: zero point shape [2] does not fit scale shape [3]"),
    ("params/w/scale", np.array([0.1, 0.0, 0.3], np.float32), "tensors.w.scale holds non-finite or non-positive scales"),
    ("params/x/scale", np.ones(3, np.float32), "tensors.x.scale has shape [3]; a per_tensor uint8 tensor"),
    ("weights/w", np.zeros((3, 4), np.float64), "weight 'w' is float64 in the arrays file r.safetensors but float32 in the JSON"),
    ("weights/w", np.zeros((3, 4), np.bool_), "array 'weights/w' (weights.w.array) is bool; expected a numeric array"),
    ("equalizations/x/scale", np.ones((2, 2), np.float32), "equalisation of 'x': the scale must be a 1-D array"),
]  # fmt: skip


@pytest.mark.parametrize("key,value,expected", BAD_ARRAYS, ids=[e[:40] for *_, e in BAD_ARRAYS])
def test_an_array_of_the_wrong_dtype_or_shape_is_named(tmp_path, key, value, expected):
    json_path, arrays_path = _recipe().save(tmp_path / "r")
    _edit_arrays(json_path, arrays_path, lambda a: a.update({key: np.asarray(value)}))
    with pytest.raises(RecipeError) as err:
        Recipe.load(json_path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg
    assert msg.startswith(str(tmp_path / "r.")), msg


def test_a_damaged_arrays_file_without_a_digest_is_named(tmp_path):
    json_path, arrays_path = _recipe().save(tmp_path / "r")
    _edit_json(json_path, lambda d: d.pop("arrays_sha256"))
    arrays_path.write_bytes(arrays_path.read_bytes()[:50])  # a cut-off copy
    with pytest.raises(RecipeError, match=r"r\.safetensors: unreadable safetensors file"):
        Recipe.load(json_path)


def test_a_recipe_without_arrays_round_trips(tmp_path):
    r = Recipe(target="generic")
    r.add(TensorRecipe("t", "activation", QuantSpec("int8", granularity="per_token", dynamic=True)))
    json_path, arrays_path = r.save(tmp_path / "dyn")
    assert arrays_path.read_bytes() == b""
    assert Recipe.load(json_path) == r


# -- permissions of written files ---------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tiny_graph() -> QuantGraph:
    return QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"],
        ["y"],
        {"w": np.ones((2, 3), np.float32)},
    )


@pytest.mark.parametrize(
    "mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_new_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    written = [
        atomic_write_bytes(tmp_path / "a.bin", b"x"),
        atomic_write_text(tmp_path / "sub" / "a.txt", "x"),  # in a folder it creates
        *_recipe().save(tmp_path / "r"),
        save_graph(_tiny_graph(), tmp_path / "g.qgraph"),
    ]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(mode) for p in written}
    assert output_mode(tmp_path / "none-yet") == mode
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []  # no temporary file left behind


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    targets = [tmp_path / "a.bin", tmp_path / "r.json", tmp_path / "r.safetensors"]
    for p, m in zip(targets, (0o640, 0o600, 0o444), strict=True):
        p.write_bytes(b"old")
        p.chmod(m)
    atomic_write_bytes(targets[0], b"new")
    _recipe().save(tmp_path / "r")
    assert [oct(_mode(p)) for p in targets] == [oct(0o640), oct(0o600), oct(0o444)]
    assert targets[0].read_bytes() == b"new" and Recipe.load(tmp_path / "r") == _recipe()


def test_a_write_over_a_folder_fails_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "out", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- an artifact for another machine ------------------------------------------------------------
def _needing(flags: list[str], any_of: list[str]) -> TargetSpec:
    base = load_target(builtin_target_paths()[0]).to_dict()
    base["name"] = "needs-flags"
    base["requires"] = {**base["requires"], "cpu_flags": flags, "cpu_flags_any": any_of}
    return TargetSpec.from_dict(base, source="test")


def test_host_warnings_for_a_target_this_machine_is_not(tmp_path):
    spec = _needing(["avx2"], ["avx512_vnni", "avx_vnni"])
    art = Artifact(path=tmp_path / "m.bin", target=spec.name, format="onnx", metadata={})
    (w,) = host_warnings(spec, art, "somebackend", cpu_flags={"avx2", "sse4_2"})
    assert w == (
        f"{tmp_path / 'm.bin'} is for another machine: target 'needs-flags' needs one of the CPU "
        "flags avx512_vnni, avx_vnni, which this one lacks; somebackend runs here but not as on "
        "the target (wrong numbers, other kernels or a failure), so test and deploy it on a "
        "machine of that target"
    )
    assert host_warnings(spec, art, "somebackend", cpu_flags={"avx2", "avx_vnni"}) == []
    # the backend's own account, when it gave one, wins: it knows this artifact runs right here
    art.metadata["host_warnings"] = []
    assert host_warnings(spec, art, "somebackend", cpu_flags={"sse2"}) == []
    art.metadata["host_warnings"] = ["exact reason"]
    assert host_warnings(spec, art, "somebackend", cpu_flags={"avx2", "avx_vnni"}) == [
        "exact reason"
    ]
