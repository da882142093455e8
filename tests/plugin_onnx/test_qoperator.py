"""QOperator artifacts: the QDQ model's quantized Conv/MatMul/Gemm as integer ONNX operators.

Tolerances are test_lowering's: against the reference, an un-optimized session of a QDQ model
differs by float rounding only, but ``QLinearConv``/``QLinearMatMul`` requantize inside the kernel
(as the fused kernels of an optimized QDQ session do), so every session of a QOperator model gets
the fused-kernel tolerance: at most 1 % of the outputs beyond float error, none beyond one
quantization step on every input of the last layer (:func:`test_lowering.assert_close_fused`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import test_lowering  # noqa: E402
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from onnx_test_models import x86_target  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.lowering import count_ops, qoperator_census, to_qoperator, write_qdq  # noqa: E402
from test_lowering import (  # noqa: E402
    assert_close_fused,
    f32,
    last_layer_step,
    optimized_ops,
    recipe_for,
    reference,
    session,
    weight_of,
)

from quantfw import Node, QuantGraph, QuantParams, QuantSpec, Recipe, TensorRecipe  # noqa: E402
from quantfw.numerics import params_from_tensor, quantize  # noqa: E402

ort.set_default_logger_severity(3)

# the lowering tests' fixtures: the same models and recipes (for this CPU's x86 target)
mlp = test_lowering.mlp
cnn = test_lowering.cnn
cnn_vnni = test_lowering.cnn_vnni

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def make_chain(seed: int = 5, width: int = 32):
    """x[N, W] -> MatMul -> Relu -> Gemm(transB=1, no C) -> Relu -> MatMul -> y: no biases, so
    the first two layers end in a Q (QLinearMatMul) and the last one in a float output."""
    rng = np.random.default_rng(seed)
    w = {
        "fc1.weight": f32(rng.normal(size=(width, width)) / np.sqrt(width)),
        "fc2.weight": f32(rng.normal(size=(width, width)) / np.sqrt(width)),  # (out, in)
        "fc3.weight": f32(rng.normal(size=(width, 10)) / np.sqrt(width)),
    }
    nodes = [
        h.make_node("MatMul", ["x", "fc1.weight"], ["h1"], name="fc1"),
        h.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        h.make_node("Gemm", ["a1", "fc2.weight"], ["h2"], name="fc2", transB=1),
        h.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        h.make_node("MatMul", ["a2", "fc3.weight"], ["y"], name="fc3"),
    ]
    graph = h.make_graph(
        nodes,
        "chain",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", width])],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", 10])],
        [nh.from_array(v, k) for k, v in w.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])

    def linear(name, x, y, axis, op):
        return Node(
            name,
            "linear",
            [x],
            [y],
            {"weight": f"{name}.weight"},
            {"channel_axis": axis, "onnx_nodes": [name]},
            op,
        )

    qg = QuantGraph(
        nodes=[
            linear("fc1", "x", "h1", 1, "MatMul"),
            Node("relu1", "relu", ["h1"], ["a1"], attrs={"onnx_nodes": ["relu1"]}),
            linear("fc2", "a1", "h2", 0, "Gemm"),
            Node("relu2", "relu", ["h2"], ["a2"], attrs={"onnx_nodes": ["relu2"]}),
            linear("fc3", "a2", "y", 1, "MatMul"),
        ],
        inputs=["x"],
        outputs=["y"],
        initializers=dict(w),
        name="chain",
        source=model,
    )
    return model, qg


@pytest.fixture(scope="module")
def chain():
    model, qg = make_chain()
    rng = np.random.default_rng(6)
    recipe = recipe_for(qg, {"x": f32(rng.normal(size=(64, 32)))})
    x = f32(rng.normal(size=(256, 32)))
    return model, qg, recipe, {"x": x}


def check_both_sessions(qm, ref: np.ndarray, step: float, feeds: dict) -> None:
    for optimized in (False, True):
        y = session(qm, optimized).run(None, feeds)[0]
        assert_close_fused(y, ref, step)


def converted_cleanly(qm, kept_float: set[str] = frozenset()) -> None:
    """No float Conv/MatMul/Gemm left except the nodes the plan kept float (by ONNX node name),
    and no integer op reads a DequantizeLinear output."""
    left = [n.name for n in qm.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert set(left) <= set(kept_float), left
    dq_out = {n.output[0] for n in qm.graph.node if n.op_type == "DequantizeLinear"}
    for n in qm.graph.node:
        if n.op_type in INTEGER_OPS:
            assert not dq_out & set(n.input), (n.op_type, n.input)


def same_interface(qdq, qop) -> None:
    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    assert sig(qop.graph.input) == sig(qdq.graph.input)
    assert sig(qop.graph.output) == sig(qdq.graph.output)


def initializers(model) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------------------------------------
# MLP (transformer FFN): float-output MatMuls -> MatMulInteger
# ------------------------------------------------------------------------------------------------


def test_mlp_runs_as_matmul_integer(mlp, tmp_path):
    model, qg, recipe, feeds = mlp
    before = model.SerializeToString()
    qdq = write_qdq(model, qg, recipe)
    qop = write_qdq(model, qg, recipe, fmt="qoperator")
    assert model.SerializeToString() == before
    onnx.checker.check_model(qop, full_check=True)
    same_interface(qdq, qop)
    converted_cleanly(qop)
    census = qoperator_census(qop)
    assert census["MatMulInteger"] == 2 and census["float_on_dq"] == {}, census
    assert {p.key: p.value for p in qop.metadata_props}["quantfw.format"] == "qoperator"
    ref = reference(qg, recipe, feeds)["y"]
    step = last_layer_step(recipe, "act", weight_of(qg, recipe, "fc2.weight"), 0)
    check_both_sessions(qop, ref, step, feeds)
    # ONNX Runtime fuses MatMulInteger + Cast + Mul(live scale) + Add(bias) into one kernel
    ops = optimized_ops(qop, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 2 and "Add" not in ops, ops
    assert "MatMulInteger" not in ops and "Cast" not in ops, ops


def test_constant_scale_product_is_not_fused(mlp, tmp_path):
    """Without the live x_scale, constant folding eats Mul(x_scale, w_scale) before
    MatMulIntegerToFloatFusion can see it: the same numbers, in unfused kernels."""
    model, qg, recipe, feeds = mlp
    plain = to_qoperator(write_qdq(model, qg, recipe), live_scales=False)
    onnx.checker.check_model(plain, full_check=True)
    assert "DequantizeLinear" not in count_ops(plain)  # every DQ lost its last reader
    ops = optimized_ops(plain, tmp_path)
    assert ops.count("MatMulInteger") == 2 and "MatMulIntegerToFloat" not in ops, ops
    ref = reference(qg, recipe, feeds)["y"]
    step = last_layer_step(recipe, "act", weight_of(qg, recipe, "fc2.weight"), 0)
    check_both_sessions(plain, ref, step, feeds)


def test_codes_scales_and_zero_points_are_the_qdq_models(mlp, cnn, chain):
    for model, qg, recipe, _ in (mlp, cnn, chain):
        qdq, qop = write_qdq(model, qg, recipe), write_qdq(model, qg, recipe, fmt="qoperator")
        a, b = initializers(qdq), initializers(qop)
        for name in a.keys() & b.keys():
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        # every weight the integer ops read is the recipe's codes (transposed for Gemm transB)
        checked = 0
        for n in qop.graph.node:
            if n.op_type not in INTEGER_OPS:
                continue
            w = n.input[3] if n.op_type.startswith("QLinear") else n.input[1]
            if w not in b or w not in a and not w.endswith("_transposed"):
                continue  # an activation
            name = w.removesuffix("_transposed").removesuffix("_quantized")
            t = recipe.tensors[name]
            codes = quantize(weight_of(qg, recipe, name), t.params, t.spec)
            assert np.array_equal(b[w], codes.T if w.endswith("_transposed") else codes), w
            checked += 1
        assert checked == len(recipe.of_role("weight")), checked


# ------------------------------------------------------------------------------------------------
# QLinearMatMul: MatMul / Gemm followed by a Q (Relu absorbed)
# ------------------------------------------------------------------------------------------------


def test_chain_runs_as_qlinear_matmul(chain, tmp_path):
    model, qg, recipe, feeds = chain
    qdq = write_qdq(model, qg, recipe)
    qop = write_qdq(model, qg, recipe, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    same_interface(qdq, qop)
    converted_cleanly(qop)
    ops = count_ops(qop)
    # fc1 (MatMul, per-column scales) and fc2 (Gemm transB=1: codes stored transposed) end in
    # the Q of a Relu output with zero point 0: QLinearMatMul, the Relu absorbed
    assert ops["QLinearMatMul"] == 2 and ops["MatMulInteger"] == 1, ops
    assert "Relu" not in ops, ops
    assert recipe.tensors["a1"].params.zero_point == 0
    qlm = [n for n in qop.graph.node if n.op_type == "QLinearMatMul"]
    inits = initializers(qop)
    assert all(inits[n.input[4]].shape == (32,) for n in qlm)  # per-column b_scale
    assert qlm[1].input[3].endswith("_transposed")
    ref = reference(qg, recipe, feeds)["y"]
    step = last_layer_step(recipe, "a2", weight_of(qg, recipe, "fc3.weight"), 0)
    check_both_sessions(qop, ref, step, feeds)
    assert {"QLinearMatMul", "MatMulIntegerToFloat"} <= set(optimized_ops(qop, tmp_path))


def test_weight_scales_on_the_summed_axis_keep_qdq(chain):
    """Scales along K cannot be factored out of the sum: that MatMul keeps its DQs."""
    model, qg, recipe, feeds = chain
    spec = QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0)
    w = weight_of(qg, recipe, "fc3.weight")
    tensors = dict(recipe.tensors)
    tensors["fc3.weight"] = TensorRecipe(
        "fc3.weight", "weight", spec, params_from_tensor(w, spec), node="fc3"
    )
    other = Recipe(recipe.target, tensors=tensors)
    qop = write_qdq(model, qg, other, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    ops = count_ops(qop)
    assert ops["QLinearMatMul"] == 2 and ops.get("MatMulInteger", 0) == 0, ops
    assert qoperator_census(qop)["float_on_dq"] == {"MatMul": 1}
    ref = reference(qg, other, feeds)["y"]
    # un-optimized only: ONNX Runtime 1.32 fuses DQ(W, axis=0) -> MatMul into a
    # MatMulIntegerToFloat whose kernel then rejects the per-row zero point at run time -- the
    # QDQ artifact of this recipe fails the same way
    y = session(qop, optimized=False).run(None, feeds)[0]
    assert_close_fused(y, ref, last_layer_step(other, "a2", w, 0))


# ------------------------------------------------------------------------------------------------
# CNN: QLinearConv chain
# ------------------------------------------------------------------------------------------------


def test_cnn_runs_as_qlinear_conv(cnn, tmp_path):
    model, qg, recipe, feeds = cnn
    qdq = write_qdq(model, qg, recipe)
    qop = write_qdq(model, qg, recipe, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    same_interface(qdq, qop)
    converted_cleanly(qop)
    census = qoperator_census(qop)
    assert census["QLinearConv"] == 2 and census["MatMulInteger"] == 1, census
    assert "Relu" not in count_ops(qop)  # both absorbed: the Relu outputs' zero point is 0
    # pools and Flatten stay between Q and DQ (ONNX Runtime still runs them on int8)
    assert census["float_on_dq"] == {"MaxPool": 1, "GlobalAveragePool": 1, "Flatten": 1}
    inits = initializers(qop)
    for n in (n for n in qop.graph.node if n.op_type == "QLinearConv"):
        x_scale, w_scale, bias = inits[n.input[1]], inits[n.input[4]], inits[n.input[8]]
        assert bias.dtype == np.int32 and w_scale.shape == bias.shape  # per channel
        assert inits[n.input[5]].shape == ()  # one weight zero point
        name = n.input[8].removesuffix("_quantized")
        np.testing.assert_allclose(recipe.tensors[name].params.scale, x_scale * w_scale, rtol=1e-6)
    ref = reference(qg, recipe, feeds)["logits"]
    step = last_layer_step(recipe, "flat", weight_of(qg, recipe, "fc.weight"), 1)
    check_both_sessions(qop, ref, step, feeds)
    ops = optimized_ops(qop, tmp_path)
    assert ops.count("QLinearConv") == 2 and "MatMulIntegerToFloat" in ops, ops
    assert not {"Conv", "FusedConv", "Gemm", "MatMul"} & set(ops), ops


def test_relu_is_kept_when_the_zero_point_is_not_the_grid_minimum(cnn):
    """Q(Relu(v)) == Q(v) needs Q's zero point at the grid minimum; with 128 the Relu matters,
    so the Conv keeps a float output: ConvInteger + Cast + Mul + Add, then Relu and Q."""
    model, qg, recipe, feeds = cnn
    tensors = dict(recipe.tensors)
    for name in ("r1", "r2"):
        t = tensors[name]
        tensors[name] = dataclasses.replace(
            t, params=QuantParams(t.params.scale * 2, np.int32(128))
        )
    other = Recipe(recipe.target, tensors=tensors)
    qop = write_qdq(model, qg, other, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    converted_cleanly(qop)
    ops = count_ops(qop)
    assert ops["ConvInteger"] == 2 and ops["Relu"] == 2 and "QLinearConv" not in ops, ops
    ref = reference(qg, other, feeds)["logits"]
    step = last_layer_step(other, "flat", weight_of(qg, other, "fc.weight"), 1)
    check_both_sessions(qop, ref, step, feeds)


# ------------------------------------------------------------------------------------------------
# models captured by the ONNX frontend (grouped conv, residuals, attention)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "expected", "left"),
    [
        # conv3 is a 1x1 conv over 8 channels: 8 products per output, below the target's
        # min_reduction, so it stays float
        ("cnn", {"QLinearConv": 2, "MatMulInteger": 1}, {"MaxPool", "Add"}),
        ("transformer", {"QLinearMatMul": 0, "MatMulInteger": 7}, {"Reshape", "Transpose"}),
    ],
)
def test_frontend_models(kit, which, expected, left):
    import quantfw
    from quantfw.simulate import reference_runner

    build, batch = (
        (kit.build_cnn, kit.cnn_batch)
        if which == "cnn"
        else (kit.build_transformer, kit.transformer_batch)
    )
    result = quantfw.quantize(build(), [batch(4, seed=s) for s in range(3)], target=x86_target())
    graph, recipe = result.graph, result.recipe
    qdq = write_qdq(graph.forms["onnx"], graph, recipe)
    qop = write_qdq(graph.forms["onnx"], graph, recipe, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    same_interface(qdq, qop)
    kept = {
        d.node
        for d in result.plan.decisions
        if not d.quantized and d.op in ("conv", "linear", "matmul")
    }
    if which == "cnn":
        assert kept == {"conv3"} and "min_reduction" in result.plan.decision("conv3").reason
    converted_cleanly(qop, kept)
    census = qoperator_census(qop)
    assert {k: census[k] for k in expected} == expected, census
    assert left <= set(census["float_on_dq"]) <= left | {"GlobalAveragePool", "Flatten"}, census
    feeds = batch(8, seed=9)
    (name,) = graph.outputs
    want = reference_runner(graph, recipe)(feeds)[name]
    tol = 1e-5 * float(np.abs(want).max())
    for optimized in (False, True):
        got = session(qop, optimized).run(None, feeds)[0]
        d = np.abs(got - want)
        assert np.mean(d > tol) <= 0.01 and d.max() <= 0.05 * np.abs(want).max(), d.max()
    # optimized, QOperator and QDQ run the same integer kernels
    np.testing.assert_allclose(
        session(qop, True).run(None, feeds)[0],
        session(qdq, True).run(None, feeds)[0],
        rtol=0,
        atol=tol,
    )


# ------------------------------------------------------------------------------------------------
# what stays in QDQ form
# ------------------------------------------------------------------------------------------------


def test_weight_only_and_dynamic_recipes_are_left_as_written(mlp):
    model, qg, recipe, _ = mlp
    spec = QuantSpec("int4", narrow_range=True, granularity="per_channel", axis=1)
    w = weight_of(qg, recipe, "fc1.weight")
    weight_only = Recipe("test")
    weight_only.add(TensorRecipe("fc1.weight", "weight", spec, params_from_tensor(w, spec)))
    dynamic = recipe_for(qg, None, overrides={"dynamic": True})
    for r in (weight_only, dynamic):
        qdq, qop = write_qdq(model, qg, r), write_qdq(model, qg, r, fmt="qoperator")
        assert count_ops(qop) == count_ops(qdq)
        assert [n.input for n in qop.graph.node] == [n.input for n in qdq.graph.node]


def test_unknown_format_is_rejected(mlp):
    model, qg, recipe, _ = mlp
    with pytest.raises(ValueError, match="unknown format 'tflite'; choose one of qdq, qoperator"):
        write_qdq(model, qg, recipe, fmt="tflite")
    with pytest.raises(TypeError, match="to_qoperator takes an onnx.ModelProto"):
        to_qoperator(b"model")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------


def test_backend_lowers_to_qoperator(cnn, cnn_vnni, tmp_path):
    model, qg, recipe, feeds = cnn
    backend = OnnxRuntimeBackend(fmt="qoperator", check_cpu=False)
    # the weights QLinearConv reads count for the AVX2 saturation check: x86-vnni's are over
    # the pair limit (on any CPU: lowering only)
    vnni = backend.lower(*cnn_vnni[:3], tmp_path / "vnni.qop.onnx").metadata
    assert vnni["int8_weight_tensors"] == 3 and vnni["max_pair_sum"] > 128 and vnni["needs_vnni"]
    art = backend.lower(model, qg, recipe, tmp_path / "cnn.qop.onnx")
    md = art.metadata
    assert md["format"] == "qoperator" and md["opset"] == 13
    assert (md["qlinear_conv"], md["qlinear_matmul"], md["matmul_integer"]) == (2, 0, 1)
    assert md["float_ops_on_dequantized"] == 3  # MaxPool, GlobalAveragePool, Flatten
    assert md["int8_weight_tensors"] == 3 and md["max_weight_code"] == 127
    assert md["needs_vnni"] == (recipe.target == "x86-vnni")  # x86-avx2: pairs within the limit
    saved = onnx.load(str(art.path))
    onnx.checker.check_model(saved, full_check=True)
    assert {p.key: p.value for p in saved.metadata_props}["quantfw.format"] == "qoperator"
    y = backend.run(art, {"x": feeds["x"][:16]})["logits"]
    ref = reference(qg, recipe, {"x": feeds["x"][:16]})["logits"]
    assert_close_fused(
        y, ref, last_layer_step(recipe, "flat", weight_of(qg, recipe, "fc.weight"), 1)
    )
