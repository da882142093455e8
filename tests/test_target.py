"""Target specs: loading, validation messages, availability."""

from __future__ import annotations

import ast
import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

import quantfw.target
from quantfw.graph import OpKind
from quantfw.spec import QuantSpec
from quantfw.target import (
    TargetSpec,
    TargetSpecError,
    builtin_target_paths,
    load_target,
    read_cpu_flags,
)


def minimal() -> dict[str, Any]:
    """The smallest valid target document."""
    return {
        "name": "mini",
        "artifact": "onnx",
        "weight": {"dtype": "int8", "granularity": "per_channel"},
        "activation": {"dtype": "uint8", "symmetric": False},
        "bias": {"mode": "int32"},
        "ops": {"quantize": ["conv", "linear"]},
    }


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# the shipped generic target
# ------------------------------------------------------------------------------------------------


def test_builtin_paths_include_generic() -> None:
    names = [p.name for p in builtin_target_paths()]
    assert "generic.toml" in names
    assert all(p.suffix == ".toml" and p.is_file() for p in builtin_target_paths())


@pytest.mark.parametrize("path", builtin_target_paths(), ids=lambda p: p.name)
def test_every_builtin_target_loads(path: Path) -> None:
    spec = load_target(path)
    assert spec.name == path.stem
    assert spec.source == str(path)


def test_generic_target_contents() -> None:
    (path,) = [p for p in builtin_target_paths() if p.name == "generic.toml"]
    t = load_target(path)
    assert t.simulation_only and t.artifact == "none"
    assert t.availability() == (True, "")
    assert t.weight.spec(axis=0) == QuantSpec(
        "int8", symmetric=True, narrow_range=True, granularity="per_channel", axis=0
    )
    assert t.activation.spec() == QuantSpec("int8", symmetric=False, granularity="per_tensor")
    assert t.bias.mode == "int32"
    assert t.dynamic.supported and not t.dynamic.default
    for kind in (
        "conv",
        "conv_transpose",
        "linear",
        "matmul",
        "add",
        "mul",
        "concat",
        "avg_pool",
        "global_avg_pool",
    ):
        assert OpKind(kind) in t.ops.quantize
    for kind in ("softmax", "layernorm"):
        assert OpKind(kind) in t.ops.float_only
    for kind in ("concat", "max_pool", "reshape", "transpose", "flatten"):
        assert OpKind(kind) in t.ops.shared_scale
    assert (OpKind.CONV, OpKind.RELU) in t.fusions
    assert (OpKind.LINEAR, OpKind.CLIP) in t.fusions
    # generic allows anything a user may ask for
    w_allowed, a_allowed = t.allowed_for("linear")
    assert (
        w_allowed.violations(QuantSpec("int4", granularity="per_group", axis=1, group_size=32))
        == []
    )
    assert a_allowed.violations(QuantSpec("fp8_e4m3fn")) == []


def test_round_trip_through_to_dict() -> None:
    t = load_target(builtin_target_paths()[0])
    assert TargetSpec.from_dict(t.to_dict(), source=t.source) == t


def test_minimal_defaults() -> None:
    doc_without_bias = minimal()
    t = TargetSpec.from_dict({**minimal(), "artifact": "npz"})  # plugins may name formats
    assert t.artifact == "npz"
    assert t.source == "<dict>"
    assert t.description == "" and not t.simulation_only
    assert t.ops.quantize_outputs == "always"
    assert t.dynamic.supported is False
    # dynamic ops default to the weighted kinds among ops.quantize
    assert t.dynamic.ops == frozenset({OpKind.CONV, OpKind.LINEAR})
    assert t.fusions == ()
    del doc_without_bias["bias"]
    assert TargetSpec.from_dict(doc_without_bias).bias.mode == "int32"


def test_per_op_spec_replaces_defaults() -> None:
    doc = minimal()
    doc["weight"] = {"dtype": "int4", "granularity": "per_group", "group_size": 32}
    doc["ops"]["per_op"] = {"conv": {"weight": {"dtype": "int8", "granularity": "per_channel"}}}
    t = TargetSpec.from_dict(doc)
    assert t.weight_template("conv") == {
        "dtype": "int8",
        "symmetric": True,
        "narrow_range": False,
        "granularity": "per_channel",
    }
    assert t.weight_template("linear")["group_size"] == 32


def test_restricted_target_with_per_op_allowed_and_fixed_output(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name = "trt-like"
        artifact = "onnx"
        fusions = [["conv", "relu"]]
        [weight]
        dtype = "int8"
        narrow_range = true
        granularity = "per_channel"
        [activation]
        dtype = "int8"
        [bias]
        mode = "float"
        [allowed]
        weight_only_dtypes = ["int4"]
        weight_only_granularities = ["per_group"]
        [allowed.weight]
        dtypes = ["int8", "fp8"]
        symmetric = [true]
        [allowed.activation]
        symmetric = [true]
        granularities = ["per_tensor"]
        [allowed.per_op.linear.weight]
        dtypes = ["int8", "fp8_e4m3fn", "int4"]
        granularities = ["per_channel", "per_group"]
        group_sizes = [64, 128]
        [ops]
        quantize = ["conv", "linear", "softmax"]
        quantize_outputs = "when_consumed"
        [ops.fixed_output.softmax]
        scale = "1/256"
        zero_point = -128
    """,
    )
    t = load_target(path)
    assert t.allowed.weight.dtypes == ("int8", "fp8_e4m3fn")  # alias canonicalised
    w_conv, _ = t.allowed_for("conv")
    w_lin, _ = t.allowed_for("linear")
    assert "int4" not in w_conv.dtypes and "int4" in w_lin.dtypes
    assert w_lin.symmetric == (True,)  # inherited from the global list
    assert t.ops.fixed_output[OpKind.SOFTMAX].scale == 1 / 256
    assert t.ops.fixed_output[OpKind.SOFTMAX].params().zero_point == -128
    assert t.allowed.weight_only_dtypes == ("int4",)
    assert t.allowed.weight_only_granularities == ("per_group",)
    assert t.allowed.weight_only(QuantSpec("int8", granularity="per_group", axis=1, group_size=64))
    assert not t.allowed.weight_only(QuantSpec("int8", granularity="per_channel", axis=0))
    assert t.to_dict()["allowed"]["weight_only_granularities"] == ["per_group"]


# ------------------------------------------------------------------------------------------------
# error messages: file, key, value, allowed values
# ------------------------------------------------------------------------------------------------


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        doc = doc.setdefault(k, {})
    doc[keys[-1]] = value


BAD_VALUES = [
    # (dotted key to set, value, expected key in message, expected fragments)
    ("ops.quantize", ["conv", "linear", "convv"], "ops.quantize[2]", ["'convv'", "conv, "]),
    ("ops.float_only", ["softmaxx"], "ops.float_only[0]", ["'softmaxx'", "softmax"]),
    ("ops.shared_scale", ["concat", 3], "ops.shared_scale[1]", ["3", "max_pool"]),
    ("artifact", "ONNX file", "artifact", ["'ONNX file'", "none, onnx, tflite, engine"]),
    ("name", "Bad Name", "name", ["'Bad Name'", "lower-case"]),
    ("simulation_only", "yes", "simulation_only", ["'yes'", "true, false"]),
    ("weight.dtype", "int9", "weight.dtype", ["'int9'", "int8", "fp8_e4m3fn"]),
    (
        "weight.granularity",
        "per_row",
        "weight.granularity",
        ["'per_row'", "per_tensor, per_channel, per_group"],
    ),
    ("weight.granularity", "per_token", "weight.granularity", ["'per_token'", "per_group"]),
    ("weight.group_size", 0, "weight.group_size", ["0", "positive integer"]),
    ("activation.symmetric", 1, "activation.symmetric", ["1", "true, false"]),
    ("bias.mode", "int16", "bias.mode", ["'int16'", "int32, float, none"]),
    ("requires.gpu", "no", "requires.gpu", ["'no'", "true, false"]),
    ("requires.cpu_flags", ["avx2", "AVX 512"], "requires.cpu_flags[1]", ["'AVX 512'", "avx2"]),
    ("requires.modules", ["onnx runtime"], "requires.modules[0]", ["'onnx runtime'", "dotted"]),
    (
        "dynamic.granularity",
        "per_channel",
        "dynamic.granularity",
        ["'per_channel'", "per_tensor, per_token"],
    ),
    ("dynamic.ops", ["matmul"], "dynamic.ops[0]", ["'matmul'", "conv, linear"]),
    ("allowed.weight.dtypes", ["int8", "int5"], "allowed.weight.dtypes[1]", ["'int5'", "int4"]),
    ("allowed.weight.dtypes", [], "allowed.weight.dtypes", ["allows nothing", "*"]),
    ("allowed.weight.group_sizes", [64, -1], "allowed.weight.group_sizes[1]", ["-1", "positive"]),
    (
        "allowed.activation.granularities",
        ["per_block"],
        "allowed.activation.granularities[0]",
        ["'per_block'", "per_token"],
    ),
    (
        "ops.quantize_outputs",
        "sometimes",
        "ops.quantize_outputs",
        ["'sometimes'", "always, when_consumed"],
    ),
    (
        "ops.fixed_output",
        {"softmax": {"scale": 0.1, "zero_point": 0}},
        "ops.fixed_output.softmax",
        ["'softmax'", "conv, linear"],
    ),
    ("fusions", [["conv", "relux"]], "fusions[0][1]", ["'relux'", "relu"]),
    ("fusions", [["relu", "conv"]], "fusions[0][0]", ["'relu'", "conv, linear"]),
    ("fusions", [["conv"]], "fusions[0]", ["['conv']", "two or more"]),
    (
        "ops.per_op",
        {"linear": {"weight": {"dtype": "int5"}}},
        "ops.per_op.linear.weight.dtype",
        ["'int5'", "int4"],
    ),
    ("ops.per_op", {"lineer": {}}, "ops.per_op", ["'lineer'", "linear"]),
    ("dynamic.default", True, "dynamic.default", ["True", "false"]),
    (
        "allowed.weight_only_granularities",
        ["per_row"],
        "allowed.weight_only_granularities[0]",
        ["'per_row'", "per_group"],
    ),
    (
        "allowed.narrow_activations",
        "clip",
        "allowed.narrow_activations",
        ["'clip'", "own_type, clip_8bit"],
    ),
]


@pytest.mark.parametrize(
    ("dotted", "value", "key", "fragments"),
    BAD_VALUES,
    ids=[f"{b[0]}={b[1]!r}" for b in BAD_VALUES],
)
def test_bad_value_messages(dotted: str, value: Any, key: str, fragments: list[str]) -> None:
    doc = minimal()
    _set(doc, dotted, value)
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith(f"mini.toml: {key}: "), msg
    assert "allowed" in msg or "expected" in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    text = (builtin_target_paths()[0]).read_text(encoding="utf-8")
    text = text.replace(
        '"conv", "conv_transpose", "linear", "matmul", "add"',
        '"conv", "conv_transpose", "convv", "matmul", "add"',
        1,
    )
    assert "convv" in text
    path = write(tmp_path, text, "generic.toml")
    with pytest.raises(TargetSpecError) as info:
        load_target(path)
    msg = str(info.value)
    assert str(path) in msg and "generic.toml" in msg
    assert "ops.quantize[2]: 'convv' is not an op kind; allowed: conv, conv_transpose" in msg


@pytest.mark.parametrize(
    ("dotted", "key", "allowed_fragment"),
    [
        ("colour", "colour", "name, description"),
        ("weight.axis", "weight.axis", "dtype, symmetric, narrow_range, granularity, group_size"),
        ("requires.ram", "requires.ram", "cpu_flags, cpu_flags_any, modules, gpu"),
        ("ops.fuse", "ops.fuse", "quantize, float_only, shared_scale"),
        ("bias.dtype", "bias.dtype", "mode"),
        (
            "dynamic.activation.granularity",
            "dynamic.activation.granularity",
            "dtype, symmetric, narrow_range",
        ),
        ("allowed.activation.group_sizes", "allowed.activation.group_sizes", "dtypes"),
        ("allowed.weight.dtype", "allowed.weight.dtype", "dtypes, granularities"),
    ],
)
def test_unknown_keys(dotted: str, key: str, allowed_fragment: str) -> None:
    doc = minimal()
    _set(doc, dotted, "x")
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    leaf = key.rsplit(".", 1)[-1]
    expected = f"mini.toml: {key}: unknown key {leaf!r} (value 'x'); allowed keys: "
    assert msg.startswith(expected), msg
    assert allowed_fragment in msg


@pytest.mark.parametrize("missing", ["name", "artifact", "weight", "activation", "ops"])
def test_missing_required_key(missing: str) -> None:
    doc = minimal()
    del doc[missing]
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith(f"mini.toml: {missing}: required key is missing; expected"), msg


def test_missing_name_in_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        artifact = "none"
        [weight]
        dtype = "int8"
    """,
        "noname.toml",
    )
    with pytest.raises(TargetSpecError, match=r"noname\.toml: name: required key is missing"):
        load_target(path)


def test_missing_nested_required_keys() -> None:
    doc = minimal()
    doc["weight"] = {"granularity": "per_channel"}
    with pytest.raises(TargetSpecError, match=r"mini\.toml: weight\.dtype: required key"):
        TargetSpec.from_dict(doc, source="mini.toml")
    doc = minimal()
    doc["ops"] = {"float_only": ["softmax"]}
    with pytest.raises(TargetSpecError, match=r"mini\.toml: ops\.quantize: required key"):
        TargetSpec.from_dict(doc, source="mini.toml")


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "broken\nartifact = "none"\n', "broken.toml")
    with pytest.raises(TargetSpecError) as info:
        load_target(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: invalid TOML: ")
    assert "line 1" in msg


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TargetSpecError, match="nope.toml: cannot read target spec"):
        load_target(tmp_path / "nope.toml")


def test_inconsistent_spec_is_rejected() -> None:
    doc = minimal()
    doc["activation"] = {"dtype": "fp8", "symmetric": False}
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith("mini.toml: activation: inconsistent spec")
    assert "fp8_e4m3fn" in msg and "symmetric" in msg
    doc = minimal()
    doc["weight"] = {"dtype": "int4", "granularity": "per_group"}
    with pytest.raises(TargetSpecError, match="weight: inconsistent spec.*group_size"):
        TargetSpec.from_dict(doc, source="mini.toml")


def test_defaults_must_pass_own_allowed_lists() -> None:
    doc = minimal()
    doc["allowed"] = {"activation": {"dtypes": ["int8"]}}
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith("mini.toml: activation.dtype: 'uint8'")
    assert "allowed: int8" in msg


def test_contradictory_op_lists() -> None:
    doc = minimal()
    doc["ops"]["float_only"] = ["linear"]
    with pytest.raises(
        TargetSpecError, match=r"ops\.float_only: 'linear' is also in ops\.quantize"
    ):
        TargetSpec.from_dict(doc, source="mini.toml")
    doc = minimal()
    doc["ops"]["float_only"] = ["relu"]
    doc["fusions"] = [["conv", "relu"]]
    with pytest.raises(TargetSpecError, match=r"fusions\[0\]\[1\]: 'relu' is float-only"):
        TargetSpec.from_dict(doc, source="mini.toml")


def test_bad_fixed_output_scale() -> None:
    doc = minimal()
    doc["ops"]["quantize"] = ["conv", "softmax"]
    doc["ops"]["fixed_output"] = {"softmax": {"scale": "1/0", "zero_point": -128}}
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith("mini.toml: ops.fixed_output.softmax.scale: '1/0' is not a positive")
    assert "1/256" in msg
    doc["ops"]["fixed_output"] = {"softmax": {"scale": 0.5, "zero_point": 1.5}}
    with pytest.raises(TargetSpecError, match=r"zero_point: 1\.5 is not an integer"):
        TargetSpec.from_dict(doc, source="mini.toml")


def test_top_level_must_be_table() -> None:
    with pytest.raises(
        TargetSpecError, match=r"^mini\.toml: top level: \['conv', 'linear'\] is not"
    ):
        TargetSpec.from_dict(copy.deepcopy(minimal())["ops"]["quantize"], source="mini.toml")


# ------------------------------------------------------------------------------------------------
# availability
# ------------------------------------------------------------------------------------------------


def _with_requires(**requires: Any) -> TargetSpec:
    doc = minimal()
    doc["requires"] = requires
    return TargetSpec.from_dict(doc)


def test_availability_cpu_flags_injected() -> None:
    t = _with_requires(cpu_flags=["avx2", "fma"])
    assert t.availability(cpu_flags={"avx2", "fma", "sse4_2"}) == (True, "")
    ok, why = t.availability(cpu_flags={"avx2"})
    assert not ok and "fma" in why and "avx2" not in why.split("needs", 1)[1]
    assert "'mini'" in why


def test_availability_any_flags() -> None:
    t = _with_requires(cpu_flags_any=["avx512_vnni", "avx_vnni"])
    assert t.availability(cpu_flags=["avx2", "avx_vnni"])[0]
    ok, why = t.availability(cpu_flags=["avx2"])
    assert not ok and "one of the CPU flags avx512_vnni, avx_vnni" in why


def test_availability_reads_cpuinfo_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n",
        encoding="utf-8",
    )
    assert read_cpu_flags(cpuinfo) == frozenset({"fpu", "avx2"})  # only what every core has
    t = _with_requires(cpu_flags=["avx2"])
    assert t.availability(cpuinfo=cpuinfo) == (True, "")
    ok, why = _with_requires(cpu_flags=["avx512_vnni"]).availability(cpuinfo=cpuinfo)
    assert not ok and "avx512_vnni" in why
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n", encoding="utf-8")
    assert _with_requires(cpu_flags=["asimddp", "i8mm"]).availability(cpuinfo=arm)[0]


def test_availability_without_cpuinfo(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "missing") is None
    ok, why = _with_requires(cpu_flags=["avx2"]).availability(cpuinfo=tmp_path / "missing")
    assert not ok and "cannot read" in why and "avx2" in why


def test_availability_modules() -> None:
    assert _with_requires(modules=["json", "importlib.util"]).availability() == (True, "")
    ok, why = _with_requires(
        modules=["json", "quantfw_no_such_runtime", "no_such_pkg.sub"]
    ).availability()
    assert not ok
    assert "quantfw_no_such_runtime" in why and "no_such_pkg.sub" in why and "json" not in why


def test_availability_gpu_injected() -> None:
    t = _with_requires(gpu=True)
    assert t.availability(gpu=True) == (True, "")
    ok, why = t.availability(gpu=False)
    assert not ok and "NVIDIA GPU" in why


def test_availability_reports_everything_missing() -> None:
    t = _with_requires(cpu_flags=["avx2"], modules=["quantfw_no_such_runtime"], gpu=True)
    ok, why = t.availability(cpu_flags=[], gpu=False)
    assert not ok
    assert "avx2" in why and "quantfw_no_such_runtime" in why and "GPU" in why


# ------------------------------------------------------------------------------------------------
# ops.weight_only
# ------------------------------------------------------------------------------------------------


def test_weight_only_kinds() -> None:
    doc = minimal()
    doc["ops"]["weight_only"] = ["embedding"]
    t = TargetSpec.from_dict(doc)
    assert t.ops.weight_only == frozenset({OpKind.EMBEDDING})
    assert t.to_dict()["ops"]["weight_only"] == ["embedding"]
    assert TargetSpec.from_dict(t.to_dict()) == t
    assert TargetSpec.from_dict(minimal()).ops.weight_only == frozenset()
    # the weight spec of a weight-only kind must pass the target's own allowed lists
    doc["ops"]["per_op"] = {"embedding": {"weight": {"dtype": "int4"}}}
    doc["allowed"] = {"weight": {"dtypes": ["int8"]}}
    with pytest.raises(TargetSpecError, match=r"ops\.per_op\.embedding\.weight\.dtype: 'int4'"):
        TargetSpec.from_dict(doc, source="mini.toml")


@pytest.mark.parametrize(
    ("weight_only", "extra", "fragments"),
    [
        (["softmax"], {}, ["ops.weight_only[0]: 'softmax'", "constant weight", "embedding"]),
        (["embeding"], {}, ["ops.weight_only[0]: 'embeding' is not an op kind", "embedding"]),
        (["embedding", "embedding"], {}, ["ops.weight_only[1]", "listed twice"]),
        (["linear"], {}, ["ops.weight_only[0]: 'linear' is also in ops.quantize"]),
        (
            ["embedding"],
            {"float_only": ["embedding"]},
            ["ops.weight_only[0]: 'embedding' is also in ops.float_only"],
        ),
        ("embedding", {}, ["ops.weight_only: 'embedding' is not an array"]),
    ],
)
def test_weight_only_errors(weight_only: Any, extra: dict[str, Any], fragments: list[str]) -> None:
    doc = minimal()
    doc["ops"].update(extra, weight_only=weight_only)
    with pytest.raises(TargetSpecError) as info:
        TargetSpec.from_dict(doc, source="mini.toml")
    msg = str(info.value)
    assert msg.startswith("mini.toml: ops.weight_only"), msg
    for frag in fragments:
        assert frag in msg, msg


def test_target_package_does_not_import_the_planner() -> None:
    """The planner reads targets; a target never reaches back into the planner (no import loop)."""
    for path in Path(quantfw.target.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("planner" in n for n in names), f"{path.name}:{node.lineno}"


def test_backends_are_a_list_of_names_in_order() -> None:
    doc = minimal()
    doc["backends"] = ["onnxruntime", "my-npu.rt"]
    spec = TargetSpec.from_dict(doc, source="mini.toml")
    assert spec.backends == ("onnxruntime", "my-npu.rt")
    assert spec.to_dict()["backends"] == ["onnxruntime", "my-npu.rt"]
    assert TargetSpec.from_dict(minimal(), source="mini.toml").backends == ()
    doc["backends"] = ["onnxruntime", "Bad Name"]
    with pytest.raises(TargetSpecError, match=r"mini\.toml: backends\[1\]: 'Bad Name'"):
        TargetSpec.from_dict(doc, source="mini.toml")
    doc["backends"] = "onnxruntime"
    with pytest.raises(TargetSpecError, match=r"mini\.toml: backends: 'onnxruntime'.*an array"):
        TargetSpec.from_dict(doc, source="mini.toml")


def test_narrow_activations_default_and_round_trip() -> None:
    """``allowed.narrow_activations``: ``own_type`` unless a target says ``clip_8bit`` (x86:
    activations below 8 bits as clipped 8-bit codes), kept by ``to_dict``."""
    assert TargetSpec.from_dict(minimal()).allowed.narrow_activations == "own_type"
    doc = minimal()
    _set(doc, "allowed.narrow_activations", "clip_8bit")
    t = TargetSpec.from_dict(doc)
    assert t.allowed.narrow_activations == "clip_8bit"
    assert t.to_dict()["allowed"]["narrow_activations"] == "clip_8bit"
    assert TargetSpec.from_dict(t.to_dict()) == t
