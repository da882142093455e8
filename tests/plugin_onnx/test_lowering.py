"""Lowering recipes to ONNX Runtime artifacts: the artifact computes what the reference computes.

Reference = :func:`quantfw.interpreter.run_graph` on the QuantGraph with the recipe applied by
:mod:`quantfw.simulate`.  Tolerances:

* un-optimized session (``ORT_DISABLE_ALL``: every Q/DQ executed as written, float ops in MLAS):
  float32 rounding only, ``atol = 1e-5 * max|y|``;
* optimized session (``ORT_ENABLE_ALL``: QLinearConv, QGemm, MatMulIntegerToFloat,
  DynamicQuantizeMatMul…): requantizing inside a fused kernel may move an intermediate code by
  one step where the reference lands within float error of a rounding tie, so at most 1 % of the
  outputs may differ by more than float error, and none by more than one quantization step on
  every input of the last layer (``s_in * max column L1 norm of its weight``).  On these models
  the measured difference is ~1e-7, i.e. no code moved;
* integers are exact: weight codes, and QuantizeLinear outputs.

Recipes are for this CPU's x86 target (``onnx_test_models.x86_target``: ``x86-vnni`` with VNNI,
``x86-avx2`` without), whose integer kernels ONNX Runtime runs exactly here; the tests about
``x86-vnni``'s saturating weights name that target.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from onnx_test_models import (  # noqa: E402
    avx2_kernel_here,
    mlp_model,
    optimized_ops,
    session,
    x86_target,
    x86_weight_spec,
)
from quantfw_onnx.avx2 import (  # noqa: E402
    max_safe_weight_code,
    saturation_free,
    u8s8_matmul_avx2,
    u8s8_matmul_exact,
)
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.lowering import LoweringError, count_ops, write_qdq  # noqa: E402

from quantfw import Backend, Node, QuantGraph, QuantParams, QuantSpec, Recipe, TensorRecipe  # noqa: E402
from quantfw.interpreter import run_graph  # noqa: E402
from quantfw.numerics import dequantize, params_from_tensor, quantize  # noqa: E402
from quantfw.pipeline import quantize as quantize_model  # noqa: E402
from quantfw.simulate import activation_hooks, reference_runner  # noqa: E402

ort.set_default_logger_severity(3)


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# models: an ONNX model and the QuantGraph a frontend would capture from it
# ------------------------------------------------------------------------------------------------


def make_mlp(seed: int = 0, hidden: int = 32, ffn: int = 64, opset: int = 13):
    """``onnx_test_models.mlp_model`` and the QuantGraph a frontend would capture from it."""
    model = mlp_model(seed, hidden, ffn, opset)
    qg = QuantGraph(
        nodes=[
            Node(
                "fc1",
                "linear",
                ["x"],
                ["fc1.out"],
                {"weight": "fc1.weight", "bias": "fc1.bias"},
                {"channel_axis": 1, "onnx_nodes": ["fc1/MatMul", "fc1/Add"]},
                "MatMul",
            ),
            Node("relu", "relu", ["fc1.out"], ["act"], attrs={"onnx_nodes": ["relu"]}),
            Node(
                "fc2",
                "linear",
                ["act"],
                ["y"],
                {"weight": "fc2.weight", "bias": "fc2.bias"},
                {"channel_axis": 1, "onnx_nodes": ["fc2/MatMul", "fc2/Add"]},
                "MatMul",
            ),
        ],
        inputs=["x"],
        outputs=["y"],
        initializers={i.name: nh.to_array(i) for i in model.graph.initializer},
        name="mlp",
        forms={"onnx": model},
    )
    return model, qg


def make_cnn(seed: int = 0):
    """Conv+Relu -> MaxPool -> Conv+Relu -> GlobalAveragePool -> Flatten -> Gemm (8x8 images, two channels:
    2*3*3 = 18 products per output, above the x86 targets' min_reduction)."""
    rng = np.random.default_rng(seed)
    w = {
        "conv1.weight": f32(rng.normal(size=(8, 2, 3, 3)) / 4),
        "conv1.bias": f32(rng.normal(size=8) * 0.1),
        "conv2.weight": f32(rng.normal(size=(16, 8, 3, 3)) / np.sqrt(72)),
        "conv2.bias": f32(rng.normal(size=16) * 0.1),
        "fc.weight": f32(rng.normal(size=(10, 16)) / 4),
        "fc.bias": f32(rng.normal(size=10) * 0.1),
    }
    conv = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    nodes = [
        h.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        h.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        h.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = h.make_graph(
        nodes,
        "cnn",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 2, 8, 8])],
        [h.make_tensor_value_info("logits", T.FLOAT, ["N", 10])],
        [nh.from_array(v, k) for k, v in w.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    conv_attrs = {"channel_axis": 0, "padding": 1, "stride": 1, "kernel_shape": 3}
    qg = QuantGraph(
        nodes=[
            Node(
                "conv1",
                "conv",
                ["x"],
                ["c1"],
                {"weight": "conv1.weight", "bias": "conv1.bias"},
                {**conv_attrs, "onnx_nodes": ["conv1"]},
                "Conv",
            ),
            Node("relu1", "relu", ["c1"], ["r1"], attrs={"onnx_nodes": ["relu1"]}),
            Node(
                "pool1",
                "max_pool",
                ["r1"],
                ["p1"],
                attrs={"kernel_shape": 2, "stride": 2, "onnx_nodes": ["pool1"]},
            ),
            Node(
                "conv2",
                "conv",
                ["p1"],
                ["c2"],
                {"weight": "conv2.weight", "bias": "conv2.bias"},
                {**conv_attrs, "onnx_nodes": ["conv2"]},
                "Conv",
            ),
            Node("relu2", "relu", ["c2"], ["r2"], attrs={"onnx_nodes": ["relu2"]}),
            Node("gap", "global_avg_pool", ["r2"], ["gap"], attrs={"onnx_nodes": ["gap"]}),
            Node(
                "flatten",
                "flatten",
                ["gap"],
                ["flat"],
                attrs={"axis": 1, "onnx_nodes": ["flatten"]},
            ),
            Node(
                "fc",
                "linear",
                ["flat"],
                ["logits"],
                {"weight": "fc.weight", "bias": "fc.bias"},
                {"channel_axis": 0, "onnx_nodes": ["fc"]},
                "Gemm",
            ),
        ],
        inputs=["x"],
        outputs=["logits"],
        initializers={i.name: nh.to_array(i) for i in model.graph.initializer},
        name="cnn",
        forms={"onnx": model},
    )
    return model, qg


def recipe_for(qg: QuantGraph, calib: dict, target: str | None = None, **kw) -> Recipe:
    """The recipe for ``target`` (default: this CPU's x86 target, see the module docstring)."""
    # no transform by default: these tests check the lowering of plain QDQ; SmoothQuant's
    # lowering has its own test below
    kw.setdefault("algorithms", ["none"])
    target = target or x86_target()
    return quantize_model(qg, calib, target=target, frontend="graph", **kw).recipe


def weight_of(qg: QuantGraph, recipe: Recipe, name: str):
    """The float weight the recipe quantizes: a transform's rewrite (SmoothQuant) or the model's."""
    return recipe.weights.get(name, qg.initializers[name])


def reference(qg: QuantGraph, recipe: Recipe, feeds: dict, outputs=None) -> dict:
    return reference_runner(qg, recipe, outputs)(feeds)


def last_layer_step(recipe: Recipe, act: str, weight: np.ndarray, in_axis: int) -> float:
    """One quantization step on every input of the last layer, in output units."""
    s = float(recipe.tensors[act].params.scale)
    return s * float(np.abs(weight).sum(axis=in_axis).max())


def assert_close_fused(y: np.ndarray, ref: np.ndarray, step: float) -> None:
    d = np.abs(y.astype(np.float64) - ref)
    float_tol = 1e-5 * float(np.abs(ref).max()) + 1e-6
    assert d.max() <= step + float_tol, (d.max(), step)
    assert np.mean(d > float_tol) <= 0.01, np.mean(d > float_tol)


def initializer(model, name: str) -> np.ndarray:
    return next(nh.to_array(i) for i in model.graph.initializer if i.name == name)


def dq_input_of(model, output: str):
    return next(
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == output
    )


# ------------------------------------------------------------------------------------------------
# fixtures (module scope: each model is quantized once)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    model, qg = make_mlp()
    rng = np.random.default_rng(1)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(16, 8, 32)))})
    x = f32(rng.normal(size=(4, 8, 32)) * 1.2)  # a little outside the calibrated range too
    return model, qg, recipe, {"x": x}


def _cnn_case(target: str | None = None):
    model, qg = make_cnn()
    rng = np.random.default_rng(2)
    recipe = recipe_for(qg, {"x": f32(rng.uniform(0, 1, size=(64, 2, 8, 8)))}, target)
    x = f32(rng.uniform(0, 1, size=(128, 2, 8, 8)))
    return model, qg, recipe, {"x": x}


@pytest.fixture(scope="module")
def cnn():
    return _cnn_case()


@pytest.fixture(scope="module")
def cnn_vnni():
    """The CNN for ``x86-vnni`` on any CPU: full int8 weights, pairs over the AVX2 limit."""
    return _cnn_case("x86-vnni")


@pytest.fixture(scope="module")
def mlp_dynamic():
    model, qg = make_mlp(seed=3)
    rng = np.random.default_rng(4)
    recipe = recipe_for(qg, None, overrides={"dynamic": True})
    x = f32(rng.normal(size=(4, 8, 32)))
    return model, qg, recipe, {"x": x}


# ------------------------------------------------------------------------------------------------
# fidelity: static transformer-style MLP
# ------------------------------------------------------------------------------------------------


def test_mlp_recipe_is_static_u8s8(mlp):
    _, _, recipe, _ = mlp
    assert recipe.tensors["x"].spec.dtype == "uint8"
    assert recipe.tensors["fc1.weight"].spec.dtype == "int8"
    assert recipe.tensors["fc1.bias"].spec.dtype == "int32"


def test_mlp_unoptimized_equals_reference(mlp):
    model, qg, recipe, feeds = mlp
    qm = write_qdq(model, qg, recipe)
    ref = reference(qg, recipe, feeds)["y"]
    y = session(qm, optimized=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_mlp_fused_kernels_agree(mlp, tmp_path):
    model, qg, recipe, feeds = mlp
    qm = write_qdq(model, qg, recipe)
    ops = optimized_ops(qm, tmp_path)
    # int8 kernels run: every MatMul became an integer one, no float MatMul/Gemm is left
    assert ops.count("MatMulIntegerToFloat") + ops.count("QGemm") == 2, ops
    assert "MatMul" not in ops and "Gemm" not in ops, ops
    ref = reference(qg, recipe, feeds)["y"]
    y = session(qm, optimized=True).run(None, feeds)[0]
    assert_close_fused(
        y, ref, last_layer_step(recipe, "act", weight_of(qg, recipe, "fc2.weight"), 0)
    )


def test_mlp_integers_are_the_reference_integers(mlp):
    model, qg, recipe, feeds = mlp
    qm = write_qdq(model, qg, recipe)
    for name in ("fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"):
        t = recipe.tensors[name]
        dq = dq_input_of(qm, name)
        codes = initializer(qm, dq.input[0])
        expected = quantize(weight_of(qg, recipe, name), t.params, t.spec)
        assert codes.dtype == expected.dtype and np.array_equal(codes, expected), name
        np.testing.assert_array_equal(initializer(qm, dq.input[1]), t.params.scale)
    # QuantizeLinear outputs: expose them as graph outputs and compare codes
    probe = onnx.ModelProto()
    probe.CopyFrom(qm)
    q_of = {n.input[0]: n.output[0] for n in probe.graph.node if n.op_type == "QuantizeLinear"}
    for src in ("x", "act"):
        probe.graph.output.append(h.make_tensor_value_info(q_of[src], T.UINT8, None))
        probe.graph.output.append(h.make_tensor_value_info(src, T.FLOAT, None))
    outs = dict(
        zip(
            [o.name for o in probe.graph.output],
            session(probe, optimized=False).run(None, feeds),
            strict=True,
        )
    )
    # the graph input: bit-exact against the reference's codes of the same values
    t = recipe.tensors["x"]
    assert np.array_equal(outs[q_of["x"]], quantize(feeds["x"], t.params, t.spec))
    # an inner tensor: the Q node's codes are numerics.quantize of the float it received
    t = recipe.tensors["act"]
    assert np.array_equal(outs[q_of["act"]], quantize(outs["act"], t.params, t.spec))
    # …and that float is the reference's (pre-quantization) value to float error
    raw = {}
    hook, on_input = activation_hooks(recipe)

    def record(node, name, value):
        raw[name] = value
        return on_input(node, name, value)

    from quantfw.simulate import simulated_weights

    run_graph(qg, feeds, weights=simulated_weights(qg, recipe), on_tensor=hook, on_input=record)
    np.testing.assert_allclose(outs["act"], raw["act"], atol=1e-5)


def test_mlp_artifact_is_valid_and_keeps_interface(mlp):
    model, qg, recipe, _ = mlp
    before = model.SerializeToString()
    qm = write_qdq(model, qg, recipe)
    assert model.SerializeToString() == before  # the input model is not mutated
    onnx.checker.check_model(qm, full_check=True)
    assert [(i.name, i.type.tensor_type.elem_type) for i in qm.graph.input] == [("x", T.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in qm.graph.output] == [("y", T.FLOAT)]
    assert next(i.version for i in qm.opset_import if i.domain == "") == 13
    counts = count_ops(qm)
    assert counts["QuantizeLinear"] == 2  # x and act
    assert counts["DequantizeLinear"] == 2 + 4  # two activations, two weights, two biases
    # the float weights are gone: only codes, scales and zero points remain
    assert not any(
        i.data_type == T.FLOAT and i.name.endswith(".weight") for i in qm.graph.initializer
    )


# ------------------------------------------------------------------------------------------------
# fidelity: CNN as an integer chain
# ------------------------------------------------------------------------------------------------


def test_cnn_unoptimized_equals_reference(cnn):
    model, qg, recipe, feeds = cnn
    qm = write_qdq(model, qg, recipe)
    ref = reference(qg, recipe, feeds)["logits"]
    y = session(qm, optimized=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_cnn_runs_as_qlinear_chain(cnn, tmp_path):
    model, qg, recipe, feeds = cnn
    qm = write_qdq(model, qg, recipe)
    ops = optimized_ops(qm, tmp_path)
    assert ops.count("QLinearConv") == 2, ops
    assert "QLinearGlobalAveragePool" in ops and "QGemm" in ops, ops
    assert not {"Conv", "Gemm", "FusedConv", "Relu"} & set(ops), ops  # relu folded, no float
    ref = reference(qg, recipe, feeds)["logits"]
    y = session(qm, optimized=True).run(None, feeds)[0]
    assert_close_fused(
        y, ref, last_layer_step(recipe, "flat", weight_of(qg, recipe, "fc.weight"), 1)
    )


def test_cnn_codes_and_bias_scale(cnn):
    model, qg, recipe, _ = cnn
    qm = write_qdq(model, qg, recipe)
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        t = recipe.tensors[name]
        dq = dq_input_of(qm, name)
        assert np.array_equal(
            initializer(qm, dq.input[0]), quantize(weight_of(qg, recipe, name), t.params, t.spec)
        )
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    # int32 bias with scale s_x * s_w: what QLinearConv insists on (else it stays float)
    b = recipe.tensors["conv2.bias"]
    expected = f32(recipe.tensors["p1"].params.scale) * recipe.tensors["conv2.weight"].params.scale
    np.testing.assert_array_equal(b.params.scale, expected)
    assert initializer(qm, dq_input_of(qm, "conv2.bias").input[0]).dtype == np.int32


# ------------------------------------------------------------------------------------------------
# dynamic activations
# ------------------------------------------------------------------------------------------------


def test_dynamic_lowers_to_matmul_integer(mlp_dynamic, tmp_path):
    model, qg, recipe, feeds = mlp_dynamic
    assert recipe.tensors["x"].spec.dynamic
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    counts = count_ops(qm)
    assert counts["DynamicQuantizeLinear"] == 2 and counts["MatMulInteger"] == 2
    assert "MatMul" not in counts and "DequantizeLinear" not in counts  # weight DQs pruned
    ops = optimized_ops(qm, tmp_path)
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 2, ops
    ref = reference(qg, recipe, feeds)["y"]
    for optimized in (False, True):
        y = session(qm, optimized=optimized).run(None, feeds)[0]
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_dynamic_tensor_read_by_float_op_gets_dequantized(tmp_path):
    """A dynamic tensor also read by a float op: that reader sees DQ(DynamicQuantizeLinear(x)),
    like the reference's hook, while the MatMul runs on the integer codes."""
    rng = np.random.default_rng(5)
    w = f32(rng.normal(size=(16, 8)))
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        h.make_node("Relu", ["x"], ["side"], name="side"),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["n", 16])],
        [
            h.make_tensor_value_info("mm", T.FLOAT, ["n", 8]),
            h.make_tensor_value_info("side", T.FLOAT, ["n", 16]),
        ],
        [nh.from_array(w, "w")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    qg = QuantGraph(
        [
            Node("mm", "linear", ["x"], ["mm"], {"weight": "w"}, {"channel_axis": 1}),
            Node("side", "relu", ["x"], ["side"]),
        ],
        ["x"],
        ["mm", "side"],
        {"w": w},
    )
    wspec = x86_weight_spec(axis=1)
    recipe = Recipe(x86_target())
    recipe.add(TensorRecipe("x", "activation", QuantSpec("uint8", symmetric=False, dynamic=True)))
    recipe.add(TensorRecipe("w", "weight", wspec, params_from_tensor(w, wspec), node="mm"))
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    assert count_ops(qm)["DequantizeLinear"] == 1  # the relu's input; the weight's is pruned
    feeds = {"x": f32(rng.normal(size=(5, 16)))}
    ref = reference(qg, recipe, feeds)
    for optimized in (False, True):
        mm, side = session(qm, optimized=optimized).run(None, feeds)
        np.testing.assert_allclose(mm, ref["mm"], atol=1e-5)
        np.testing.assert_array_equal(side, ref["side"])


def test_dynamic_gemm_transposed_weight():
    rng = np.random.default_rng(6)
    w, b = f32(rng.normal(size=(8, 16))), f32(rng.normal(size=8))
    node = h.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    graph = h.make_graph(
        [node],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["n", 16])],
        [h.make_tensor_value_info("y", T.FLOAT, ["n", 8])],
        [nh.from_array(w, "w"), nh.from_array(b, "b")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    qg = QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], {"weight": "w", "bias": "b"}, {"channel_axis": 0})],
        ["x"],
        ["y"],
        {"w": w, "b": b},
    )
    recipe = recipe_for(qg, None, overrides={"dynamic": True})
    qm = write_qdq(model, qg, recipe)
    assert "MatMulInteger" in count_ops(qm) and "Gemm" not in count_ops(qm)
    feeds = {"x": f32(rng.normal(size=(6, 16)))}
    ref = reference(qg, recipe, feeds)["y"]
    for optimized in (False, True):
        y = session(qm, optimized=optimized).run(None, feeds)[0]
        np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# storage formats and opsets
# ------------------------------------------------------------------------------------------------


def _weight_only(model, qg, spec: QuantSpec, name: str = "fc1.weight") -> Recipe:
    recipe = Recipe("test")
    w = weight_of(qg, recipe, name)
    recipe.add(TensorRecipe(name, "weight", spec, params_from_tensor(w, spec), node="fc1"))
    return recipe


@pytest.mark.parametrize(
    ("spec", "onnx_type", "opset"),
    [
        (QuantSpec("int7", narrow_range=True, granularity="per_channel", axis=1), T.INT8, 13),
        (QuantSpec("uint8", symmetric=True, granularity="per_channel", axis=1), T.UINT8, 13),
        # constant codes narrower than 8 bits: 8-bit storage, which the integer kernels read...
        (QuantSpec("int4", narrow_range=True, granularity="per_channel", axis=1), T.INT8, 13),
        (QuantSpec("int2", granularity="per_channel", axis=1), T.INT8, 13),
        (QuantSpec("uint4", symmetric=False), T.UINT8, 13),
        # ... except per-group ones (no integer kernel reads a blocked DQ): packed when they fit
        (QuantSpec("int4", granularity="per_group", axis=0, group_size=8), T.INT4, 21),
        (QuantSpec("int3", granularity="per_group", axis=0, group_size=16), T.INT4, 21),
        (
            QuantSpec("uint4", symmetric=False, granularity="per_group", axis=0, group_size=16),
            T.UINT4,
            21,
        ),
        (QuantSpec("int8", granularity="per_group", axis=0, group_size=16), T.INT8, 21),
    ],
    ids=[
        "int7",
        "uint8-sym",
        "int4-channel",
        "int2-channel",
        "uint4-tensor",
        "int4-group8",
        "int3-group16",
        "uint4-group16",
        "int8-group16",
    ],
)
def test_weight_storage(spec, onnx_type, opset):
    model, qg = make_mlp()
    recipe = _weight_only(model, qg, spec)
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    assert next(i.version for i in qm.opset_import if i.domain == "") == opset
    dq = dq_input_of(qm, "fc1.weight")
    stored = next(i for i in qm.graph.initializer if i.name == dq.input[0])
    assert stored.data_type == onnx_type
    t = recipe.tensors["fc1.weight"]
    expected = quantize(weight_of(qg, recipe, "fc1.weight"), t.params, t.spec)
    assert np.array_equal(nh.to_array(stored).astype(np.int64), expected.astype(np.int64))
    if spec.dtype == "int7":
        assert np.abs(expected).max() <= 63
    if spec.granularity.value == "per_group":
        assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": spec.group_size}
    feeds = {"x": f32(np.random.default_rng(7).normal(size=(2, 3, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    for optimized in (False, True):
        y = session(qm, optimized=optimized).run(None, feeds)[0]
        np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_weight_only_matmulnbits_default_accuracy_level_quantizes_activations():
    """Why the backend pins the MatMulNBits accuracy level: ORT's default (4) is not exact."""
    model, qg = make_mlp()
    recipe = _weight_only(
        model, qg, QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=1)
    )
    qm = write_qdq(model, qg, recipe)
    feeds = {"x": f32(np.random.default_rng(7).normal(size=(2, 3, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    plain = ort.InferenceSession(qm.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(plain.run(None, feeds)[0] - ref).max() > 1e-3
    np.testing.assert_allclose(session(qm, optimized=True).run(None, feeds)[0], ref, atol=1e-5)


def test_fp8_weights_use_opset_19():
    model, qg = make_mlp()
    recipe = _weight_only(model, qg, QuantSpec("fp8_e4m3fn", granularity="per_channel", axis=1))
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    assert next(i.version for i in qm.opset_import if i.domain == "") == 19
    feeds = {"x": f32(np.random.default_rng(8).normal(size=(2, 3, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    y = session(qm, optimized=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_rewritten_weights_are_used():
    model, qg = make_mlp()
    rng = np.random.default_rng(9)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(8, 4, 32)))})
    recipe.weights["fc1.weight"] = f32(qg.initializers["fc1.weight"] * 0.5)  # quantized
    recipe.weights["fc2.bias"] = f32(qg.initializers["fc2.bias"] + 1.0)  # int32 bias
    t = recipe.tensors["fc1.weight"]
    qm = write_qdq(model, qg, recipe)
    codes = initializer(qm, dq_input_of(qm, "fc1.weight").input[0])
    assert np.array_equal(codes, quantize(recipe.weights["fc1.weight"], t.params, t.spec))
    feeds = {"x": f32(rng.normal(size=(2, 4, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    y = session(qm, optimized=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_int32_bias_with_a_foreign_scale_is_baked_as_float(tmp_path):
    """ORT's QGemm fusion would add such codes as if their scale were s_x * s_w."""
    model, qg = make_mlp()
    rng = np.random.default_rng(15)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(8, 4, 32)))})
    b = recipe.tensors["fc1.bias"]
    b.params = QuantParams(b.params.scale * 3, b.params.zero_point)
    with pytest.warns(UserWarning, match="'fc1.bias': its int32 scale is not"):
        qm = write_qdq(model, qg, recipe)
    assert not any(n.output[0] == "fc1.bias" for n in qm.graph.node)
    baked = initializer(qm, "fc1.bias")
    expected = dequantize(quantize(qg.initializers["fc1.bias"], b.params, b.spec), b.params, b.spec)
    np.testing.assert_array_equal(baked, expected)
    feeds = {"x": f32(rng.normal(size=(2, 4, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    for optimized in (False, True):
        y = session(qm, optimized=optimized).run(None, feeds)[0]
        np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_quantized_graph_output_keeps_its_name():
    model, qg = make_mlp()
    rng = np.random.default_rng(10)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(8, 4, 32)))})
    spec = QuantSpec("uint8", symmetric=False)
    y_cal = run_graph(qg, {"x": f32(rng.normal(size=(8, 4, 32)))})["y"]
    recipe.add(TensorRecipe("y", "activation", spec, params_from_tensor(y_cal, spec)))
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    assert [o.name for o in qm.graph.output] == ["y"]
    assert qm.graph.node[-1].op_type == "DequantizeLinear" and qm.graph.node[-1].output == ["y"]
    feeds = {"x": f32(rng.normal(size=(2, 4, 32)))}
    ref = reference(qg, recipe, feeds)["y"]
    y = session(qm, optimized=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())
    # the output is on the grid: dequantize(quantize(y)) == y
    t = recipe.tensors["y"]
    np.testing.assert_array_equal(dequantize(quantize(y, t.params, t.spec), t.params, t.spec), y)


def test_opset_is_raised_and_other_domains_kept():
    model, qg = make_mlp(opset=11)
    model.opset_import.append(h.make_opsetid("ai.onnx.ml", 3))
    rng = np.random.default_rng(11)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(8, 4, 32)))})
    qm = write_qdq(model, qg, recipe)
    versions = {i.domain: i.version for i in qm.opset_import}
    assert versions[""] == 13 and versions["ai.onnx.ml"] == 3
    onnx.checker.check_model(qm, full_check=True)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_errors_are_clear(mlp):
    model, qg, recipe, _ = mlp
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        write_qdq(model, qg, recipe, fmt="tflite")

    other = Recipe("x86-vnni", tensors=dict(recipe.tensors))
    spec = QuantSpec("uint8", symmetric=False)
    other.add(TensorRecipe("nope", "activation", spec, QuantParams(f32(0.1), 0)))
    with pytest.raises(LoweringError, match=r"does not have, e\.g\. \['nope'\]"):
        write_qdq(model, qg, other)

    narrow = Recipe("trt")
    nspec = QuantSpec("int8", narrow_range=True)
    narrow.add(TensorRecipe("x", "activation", nspec, QuantParams(f32(0.1), 0)))
    with pytest.raises(LoweringError, match=r"\[-127, 127\] is not the full range"):
        write_qdq(model, qg, narrow)

    fp16 = _weight_only(model, qg, QuantSpec("fp16"))
    with pytest.raises(LoweringError, match="fp16 is not an ONNX quantized type"):
        write_qdq(model, qg, fp16)

    tok = Recipe("x")
    tok.add(
        TensorRecipe("x", "activation", QuantSpec("int8", granularity="per_token", dynamic=True))
    )
    with pytest.raises(LoweringError, match="DynamicQuantizeLinear computes uint8 asymmetric"):
        write_qdq(model, qg, tok)


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------


def test_backend_lower_and_run(cnn, tmp_path):
    model, qg, recipe, feeds = cnn
    src = tmp_path / "cnn.onnx"
    onnx.save(model, str(src))
    before = src.read_bytes()
    backend = OnnxRuntimeBackend()
    assert isinstance(backend, Backend)
    with pytest.raises(ValueError, match="refusing to write the output"):
        backend.lower(src, qg, recipe, src)
    out = tmp_path / "out" / "cnn.int8.onnx"
    art = backend.lower(src, qg, recipe, out)
    assert src.read_bytes() == before  # the input file is untouched
    assert art.path == out and art.target == recipe.target and art.format == "onnx"
    md = art.metadata
    assert md["format"] == "qdq" and md["opset"] == 13 and md["file_size"] == out.stat().st_size
    assert md["qdq_nodes"] == md["quantize_linear"] + md["dequantize_linear"] == 6 + 12
    assert md["max_weight_code"] == 127
    # x86-vnni's full int8 weights have pairs over the AVX2 limit; x86-avx2 keeps them within
    vnni = recipe.target == "x86-vnni"
    assert md["needs_vnni"] == vnni and (md["max_pair_sum"] > 128) == vnni, md
    assert not list(out.parent.glob(".*tmp"))  # no temporary left behind
    onnx.checker.check_model(str(out), full_check=True)
    outs = OnnxRuntimeBackend(check_cpu=False).run(art, {"x": feeds["x"][:8].astype(np.float64)})
    assert list(outs) == ["logits"] and outs["logits"].dtype == np.float32
    ref = reference(qg, recipe, {"x": feeds["x"][:8]})["logits"]
    np.testing.assert_allclose(outs["logits"], ref, atol=1e-4)
    with pytest.raises(ValueError, match="missing \\['x'\\]"):
        backend.run(art, {"image": feeds["x"]})


def test_backend_uses_graph_source(mlp, tmp_path):
    model, qg, recipe, feeds = mlp
    backend = OnnxRuntimeBackend(check_cpu=False)
    art = backend.lower(None, qg, recipe, tmp_path / "mlp.onnx")
    sess = backend.session(art.path, optimized=False, threads=1)
    np.testing.assert_allclose(
        sess.run(None, feeds)[0], reference(qg, recipe, feeds)["y"], atol=1e-5
    )
    bare = QuantGraph(list(qg.nodes), qg.inputs, qg.outputs, dict(qg.initializers))
    with pytest.raises(ValueError, match="carries no ONNX model"):
        backend.lower(object(), bare, recipe, tmp_path / "x.onnx")


def test_backend_external_data_above_limit(mlp, tmp_path, monkeypatch):
    import quantfw_onnx.backend as backend_mod

    model, qg, recipe, feeds = mlp
    monkeypatch.setattr(backend_mod, "PROTOBUF_LIMIT", 1000)  # pretend the model is > 2 GB
    art = OnnxRuntimeBackend(check_cpu=False).lower(model, qg, recipe, tmp_path / "big.onnx")
    assert art.metadata["external_data"] == str(tmp_path / "big.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    y = OnnxRuntimeBackend(check_cpu=False).run(art, feeds)["y"]
    np.testing.assert_allclose(y, reference(qg, recipe, feeds)["y"], atol=1e-4)


def test_backend_refuses_saturating_artifact_without_vnni(cnn_vnni, tmp_path, monkeypatch):
    import quantfw_onnx.backend as backend_mod

    model, qg, recipe, feeds = cnn_vnni
    art = OnnxRuntimeBackend().lower(model, qg, recipe, tmp_path / "m.onnx")
    assert art.metadata["needs_vnni"]
    monkeypatch.setattr(backend_mod, "cpu_vnni", lambda: (False, "avx2 without VNNI"))
    with pytest.raises(RuntimeError, match="would saturate in int16"):
        OnnxRuntimeBackend().run(art, feeds)


def test_registered_backend_lowers_through_the_pipeline(tmp_path):
    """quantize(..., output=) finds the registered backend for the x86 targets and lowers."""
    model, qg = make_mlp()
    rng = np.random.default_rng(12)
    res = quantize_model(
        qg,
        {"x": f32(rng.normal(size=(8, 4, 32)))},
        target="x86-avx2",
        frontend="graph",
        backend="onnxruntime",
        output=tmp_path / "a.onnx",
    )
    art = res.artifact
    assert art is not None and art.path.exists() and art.target == "x86-avx2"
    assert art.metadata["max_pair_sum"] <= 128 and not art.metadata["needs_vnni"]


# ------------------------------------------------------------------------------------------------
# AVX2 (no VNNI) saturation
# ------------------------------------------------------------------------------------------------


def test_avx2_emulation_saturates_with_8bit_weights():
    a = np.full((1, 64), 255, np.uint8)
    b = np.full((64, 3), 127, np.int8)
    b[:, 1] = -128
    b[:, 2] = 63
    exact = u8s8_matmul_exact(a, b)
    emulated = u8s8_matmul_avx2(a, b)
    assert emulated[0, 0] == 32 * 32767 != exact[0, 0] == 64 * 255 * 127
    assert emulated[0, 1] == 32 * -32768 != exact[0, 1]
    assert emulated[0, 2] == exact[0, 2]  # 2*255*63 = 32130 fits int16
    assert not saturation_free(b) and saturation_free(b[:, 2])
    assert max_safe_weight_code(255) == 64


def test_avx2_emulation_is_exact_for_int7_weights():
    rng = np.random.default_rng(13)
    for _ in range(20):
        k = int(rng.integers(1, 70))
        a = rng.integers(0, 256, size=(3, k)).astype(np.uint8)
        b = rng.integers(-63, 64, size=(k, 4)).astype(np.int8)
        assert np.array_equal(u8s8_matmul_avx2(a, b), u8s8_matmul_exact(a, b))
    # the worst case, 255*63*2 per pair, both signs
    a = np.full((1, 8), 255, np.uint8)
    for v in (63, -63):
        b = np.full((8, 1), v, np.int8)
        assert np.array_equal(u8s8_matmul_avx2(a, b), u8s8_matmul_exact(a, b))
    # int7 weights from the numerics are inside that bound
    spec = QuantSpec("int7", narrow_range=True, granularity="per_channel", axis=1)
    w = f32(rng.normal(size=(32, 16)))
    assert saturation_free(quantize(w, params_from_tensor(w, spec), spec))


@pytest.mark.skipif(
    not avx2_kernel_here()[0],
    reason=f"needs an x86 CPU with AVX2 and no VNNI; {avx2_kernel_here()[1]} "
    "(test_avx2_emulation.py runs ONNX Runtime's AVX2 kernels here when it can)",
)
def test_onnxruntime_saturates_on_avx2_without_vnni(tmp_path):
    k = 64

    def matmul_integer(b: np.ndarray) -> onnx.ModelProto:
        graph = h.make_graph(
            [h.make_node("MatMulInteger", ["a", "b"], ["y"])],
            "sat",
            [h.make_tensor_value_info("a", T.UINT8, [1, k])],
            [h.make_tensor_value_info("y", T.INT32, [1, b.shape[1]])],
            [nh.from_array(b, "b")],
        )
        return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])

    a = np.full((1, k), 255, np.uint8)
    full = np.full((k, 4), 127, np.int8)
    y = session(matmul_integer(full), optimized=True).run(None, {"a": a})[0]
    assert not np.array_equal(y, u8s8_matmul_exact(a, full))  # silently saturated

    # the x86-avx2 artifact (int8 weights, every kernel pair within the limit) is exact there
    model, qg = make_mlp()
    rng = np.random.default_rng(14)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(8, 4, 32)))}, target="x86-avx2")
    spec = recipe.tensors["fc1.weight"].spec
    assert spec.dtype == "int8" and spec.pair_limit == 128
    art = OnnxRuntimeBackend().lower(model, qg, recipe, tmp_path / "avx2.onnx")
    assert not art.metadata["needs_vnni"]
    feeds = {"x": f32(rng.normal(size=(4, 4, 32)) * 3)}
    y = OnnxRuntimeBackend().run(art, feeds)["y"]
    ref = reference(qg, recipe, feeds)["y"]
    assert_close_fused(
        y, ref, last_layer_step(recipe, "act", weight_of(qg, recipe, "fc2.weight"), 0)
    )


# ------------------------------------------------------------------------------------------------
# weight-only embedding tables: Gather the int8 rows, dequantize only those
# ------------------------------------------------------------------------------------------------


def make_embedding_model(vocab: int = 50, dim: int = 16, seed: int = 20) -> onnx.ModelProto:
    """ids -> Gather(word table) + Gather(position table, pos) -> MatMul+Add -> Relu -> y."""
    rng = np.random.default_rng(seed)
    w = {
        "word.weight": f32(rng.normal(size=(vocab, dim)) * rng.uniform(0.1, 2.0, size=(vocab, 1))),
        "pos.weight": f32(rng.normal(size=(8, dim)) * 0.3),
        "fc.weight": f32(rng.normal(size=(dim, 8)) / np.sqrt(dim)),
        "fc.bias": f32(rng.normal(size=8) * 0.1),
    }
    nodes = [
        h.make_node("Gather", ["word.weight", "ids"], ["word"], name="word/Gather"),
        h.make_node("Gather", ["pos.weight", "pos"], ["position"], name="pos/Gather", axis=0),
        h.make_node("Add", ["word", "position"], ["emb"], name="emb/Add"),
        h.make_node("MatMul", ["emb", "fc.weight"], ["fc.mm"], name="fc/MatMul"),
        h.make_node("Add", ["fc.mm", "fc.bias"], ["fc.out"], name="fc/Add"),
        h.make_node("Relu", ["fc.out"], ["y"], name="relu"),
    ]
    graph = h.make_graph(
        nodes,
        "embedder",
        [
            h.make_tensor_value_info("ids", T.INT64, ["batch", "seq"]),
            h.make_tensor_value_info("pos", T.INT64, ["batch", "seq"]),
        ],
        [
            h.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 8]),
            h.make_tensor_value_info("word", T.FLOAT, ["batch", "seq", dim]),
        ],
        [nh.from_array(v, k) for k, v in w.items()],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)


def _embedding_feeds(seed: int, batch: int = 4, seq: int = 8, vocab: int = 50):
    rng = np.random.default_rng(seed)
    return {
        "ids": rng.integers(-vocab, vocab, size=(batch, seq)).astype(np.int64),  # negatives wrap
        "pos": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
    }


@pytest.fixture(scope="module")
def embedder():
    model = make_embedding_model()
    calib = [_embedding_feeds(s) for s in range(30, 34)]
    res = quantize_model(model, calib, target=x86_target())
    return model, res


def test_embedding_tables_are_weight_only_per_row(embedder):
    _, res = embedder
    for table, node in (("word.weight", "word/Gather"), ("pos.weight", "pos/Gather")):
        tp = res.plan.tensors[table]
        assert tp.role == "weight" and tp.node == node
        assert tp.spec == QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0)
        d = res.plan.decision(node)
        assert d.quantized and d.reason == "weight-only: embedding table int8 per row"
        assert res.recipe.tensors[table].params.scale.shape == (
            res.graph.initializers[table].shape[0],
        )
    # nothing else of a lookup is quantized: its ids, and its output (read by a float Add)
    assert not {"ids", "pos", "word", "position"} & set(res.recipe.tensors)


def test_embedding_gather_lowering_matches_reference(embedder, tmp_path):
    _, res = embedder
    qm = write_qdq(res.graph.forms["onnx"], res.graph, res.recipe)
    onnx.checker.check_model(qm, full_check=True)
    nodes = list(qm.graph.node)
    # no DequantizeLinear of a whole table: each lookup gathers int8 codes and per-row scales
    for table, node in (("word.weight", "word/Gather"), ("pos.weight", "pos/Gather")):
        gather = next(n for n in nodes if n.name == node)
        codes = initializer(qm, gather.input[0])
        t = res.recipe.tensors[table]
        assert codes.dtype == np.int8
        expected = quantize(res.graph.initializers[table], t.params, t.spec)
        assert np.array_equal(codes.astype(np.int64), expected.astype(np.int64))
        assert not any(table in n.output for n in nodes)
    dq_inputs = [n.input[0] for n in nodes if n.op_type == "DequantizeLinear"]
    assert not [x for x in dq_inputs if x.startswith(("word.weight", "pos.weight"))]
    assert count_ops(qm)["Gather"] == 4 and count_ops(qm)["Cast"] == 2
    feeds = _embedding_feeds(99)
    ref = reference(res.graph, res.recipe, feeds, outputs=["y", "word"])
    # the gathered rows are exactly dequantize(codes) of the table: bit for bit, both sessions
    t = res.recipe.tensors["word.weight"]
    rows = dequantize(
        quantize(res.graph.initializers["word.weight"], t.params, t.spec), t.params, t.spec
    )
    assert np.array_equal(ref["word"], rows[feeds["ids"]])
    step = last_layer_step(res.recipe, "emb", res.graph.initializers["fc.weight"], 0)
    for optimized in (False, True):
        word, y = session(qm, optimized=optimized).run(["word", "y"], feeds)
        assert np.array_equal(word, ref["word"])
        if optimized:
            assert_close_fused(y, ref["y"], step)
        else:
            np.testing.assert_allclose(y, ref["y"], rtol=0, atol=1e-5 * np.abs(ref["y"]).max())
    # the frontend's simulation (the QDQ model, unoptimized) agrees too
    sim = res.simulate()(feeds)
    assert np.array_equal(sim["word"], ref["word"])
    assert "Gather" in optimized_ops(qm, tmp_path)


def _table_recipe(graph: QuantGraph, spec: QuantSpec, name: str = "word.weight") -> Recipe:
    recipe = Recipe("test")
    w = graph.initializers[name]
    recipe.add(TensorRecipe(name, "weight", spec, params_from_tensor(w, spec), node="word/Gather"))
    return recipe


@pytest.mark.parametrize(
    ("spec", "ops"),
    [
        (QuantSpec("int7", narrow_range=True, granularity="per_channel", axis=0), {"Mul"}),
        (QuantSpec("uint8", symmetric=True, granularity="per_channel", axis=0), {"Sub", "Mul"}),
        (QuantSpec("int8", symmetric=False, granularity="per_channel", axis=-2), {"Sub", "Mul"}),
        (QuantSpec("int8", narrow_range=True), {"DequantizeLinear"}),
        (
            QuantSpec("uint8", symmetric=False, granularity="per_channel", axis=1),
            {"DequantizeLinear"},
        ),
        # 4-bit rows are stored as int8 codes: the same gathered lookup
        (QuantSpec("int4", granularity="per_channel", axis=0), {"Mul"}),
        # per-group (blocked) tables are not gathered: the DequantizeLinear stays, the lookup
        # reads its output
        (QuantSpec("int4", granularity="per_group", axis=1, group_size=2), {"DequantizeLinear"}),
    ],
    ids=[
        "int7-row",
        "uint8-sym-row",
        "int8-asym-row",
        "int8-tensor",
        "uint8-column",
        "int4-row",
        "int4-group",
    ],
)
def test_embedding_lowering_is_bit_exact(embedder, spec, ops):
    """Every spec: the looked-up rows are exactly numerics.dequantize of the stored codes."""
    _, res = embedder
    recipe = _table_recipe(res.graph, spec)
    qm = write_qdq(res.graph.forms["onnx"], res.graph, recipe)
    onnx.checker.check_model(qm, full_check=True)
    t = recipe.tensors["word.weight"]
    codes = quantize(res.graph.initializers["word.weight"], t.params, t.spec)
    gather = next(n for n in qm.graph.node if n.name == "word/Gather")
    if spec.granularity.value == "per_group":
        assert gather.input[0] == "word.weight"  # fed by DequantizeLinear(whole table)
    else:
        assert np.array_equal(initializer(qm, gather.input[0]).astype(np.int64), codes)
        producer = next(n for n in qm.graph.node if "word" in n.output)
        assert producer.op_type == ("Mul" if "Mul" in ops else "DequantizeLinear")
    assert ops <= set(count_ops(qm))
    feeds = _embedding_feeds(7)
    expected = dequantize(codes, t.params, t.spec)[feeds["ids"]]
    ref = reference(res.graph, recipe, feeds, outputs=["word", "y"])
    assert np.array_equal(ref["word"], expected)
    for optimized in (False, True):
        word, y = session(qm, optimized=optimized).run(["word", "y"], feeds)
        assert np.array_equal(word, expected), optimized
        np.testing.assert_allclose(y, ref["y"], rtol=0, atol=1e-5 * np.abs(ref["y"]).max())


def test_tied_table_keeps_its_dequantize_for_other_readers():
    """A table read by a Gather and by a MatMul: the Gather reads codes, the MatMul the DQ."""
    rng = np.random.default_rng(21)
    table = f32(rng.normal(size=(12, 6)))
    nodes = [
        h.make_node("Gather", ["table", "ids"], ["rows"], name="lookup"),
        h.make_node("MatMul", ["x", "table"], ["proj"], name="proj"),
    ]
    graph = h.make_graph(
        nodes,
        "tied",
        [
            h.make_tensor_value_info("ids", T.INT64, ["n"]),
            h.make_tensor_value_info("x", T.FLOAT, ["n", 12]),
        ],
        [
            h.make_tensor_value_info("rows", T.FLOAT, ["n", 6]),
            h.make_tensor_value_info("proj", T.FLOAT, ["n", 6]),
        ],
        [nh.from_array(table, "table")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
    qg = QuantGraph(
        [
            Node("lookup", "embedding", ["ids"], ["rows"], {"weight": "table"}),
            Node("proj", "linear", ["x"], ["proj"], {"weight": "table"}, {"channel_axis": 1}),
        ],
        ["ids", "x"],
        ["rows", "proj"],
        {"table": table},
        forms={"onnx": model},
    )
    spec = QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0)
    recipe = Recipe("test")
    recipe.add(
        TensorRecipe("table", "weight", spec, params_from_tensor(table, spec), node="lookup")
    )
    qm = write_qdq(model, qg, recipe)
    onnx.checker.check_model(qm, full_check=True)
    ops = {n.name: n for n in qm.graph.node}
    assert ops["lookup"].input[0] != "table" and ops["proj"].input[1] == "table"
    assert dq_input_of(qm, "table").input[0] == ops["lookup"].input[0]  # one copy of the codes
    feeds = {"ids": np.array([0, 11, -1, 3]), "x": f32(rng.normal(size=(4, 12)))}
    ref = reference(qg, recipe, feeds)
    for optimized in (False, True):
        rows, proj = session(qm, optimized=optimized).run(["rows", "proj"], feeds)
        assert np.array_equal(rows, ref["rows"])
        np.testing.assert_allclose(proj, ref["proj"], rtol=0, atol=1e-5 * np.abs(ref["proj"]).max())


def test_smoothquant_lowering_matches_reference(mlp):
    """SmoothQuant's x * (1/s) (an Equalization) is a float Mul in front of the activation's
    quantizer: the unoptimized artifact equals the reference, and the codes are the
    reference's."""
    model, qg, _, feeds = mlp
    rng = np.random.default_rng(11)
    calib = {
        "x": feeds["x"]
        * np.where(rng.random(feeds["x"].shape[-1]) < 0.1, 30.0, 1.0).astype(np.float32)
    }
    recipe = recipe_for(qg, calib, algorithms=[("smoothquant", {"alpha": 0.8})])
    smoothed = list(recipe.equalizations)
    assert smoothed, "an input with outlier channels should be smoothed"
    qm = write_qdq(model, qg, recipe)
    assert count_ops(qm).get("Mul", 0) >= len(smoothed)
    ref = reference(qg, recipe, calib)["y"]
    y = session(qm, optimized=False).run(None, calib)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())
    # the smoothed weights are what the artifact stores
    for name in smoothed:
        for c in recipe.tensors[name].consumers:
            wname = qg.node(c).weights["weight"]
            assert wname in recipe.weights
            t = recipe.tensors[wname]
            codes = initializer(qm, dq_input_of(qm, wname).input[0])
            np.testing.assert_array_equal(codes, quantize(recipe.weights[wname], t.params, t.spec))


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
def test_smoothquant_in_front_of_dynamic_quantization(mlp, granularity):
    """With calibration data, dynamic activations are smoothed too: the Mul sits in front of the
    run-time quantizer (DynamicQuantizeLinear, or the per-token ops), the unoptimized artifact
    equals the core reference, and smoothing beats none on outlier channels."""
    model, qg, _, feeds = mlp
    rng = np.random.default_rng(11)
    calib = {
        "x": feeds["x"]
        * np.where(rng.random(feeds["x"].shape[-1]) < 0.1, 30.0, 1.0).astype(np.float32)
    }
    overrides = {"dynamic": True, "activation": {"granularity": granularity}}
    smooth = recipe_for(
        qg, calib, overrides=overrides, algorithms=[("smoothquant", {"alpha": 0.8})]
    )
    assert smooth.equalizations and all(
        smooth.tensors[n].spec.dynamic for n in smooth.equalizations
    )
    qm = write_qdq(model, qg, smooth)
    ref = reference(qg, smooth, calib)["y"]
    y = session(qm, optimized=False).run(None, calib)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())
    # no calibration data: nothing to smooth with, the plain dynamic recipe
    plain = quantize_model(qg, None, target=smooth.target, frontend="graph", overrides=overrides)
    assert not plain.recipe.equalizations
    float_y = reference(qg, Recipe(target=smooth.target), calib)["y"]

    def err(r):
        return float(np.abs(reference(qg, r, calib)["y"] - float_y).mean())

    assert err(smooth) < err(plain.recipe)


def test_artifact_carries_no_inferred_intermediate_shapes(mlp):
    """The frontend's inferred shapes stay out of the artifact (they switched on a slow ORT fusion)."""
    model, qg, recipe, _ = mlp
    inferred = onnx.shape_inference.infer_shapes(model)
    assert len(inferred.graph.value_info) > 0
    qm = write_qdq(inferred, qg, recipe)
    assert len(qm.graph.value_info) == 0
    assert [i.name for i in qm.graph.input] == [i.name for i in model.graph.input]
