"""Per-token dynamic activations on the x86 targets, end to end: planner -> recipe -> ONNX artifact.

A user asks for them with ``overrides={"dynamic": True, "activation": {"granularity":
"per_token"}}``: uint8 asymmetric, one (scale, zero point) per row of the last axis, computed
from each input like :func:`quantfw.numerics.quantize_dynamic`.  The artifact (see
``quantfw_onnx.lowering.per_token``: ``per_token_nodes`` and ``rewrite_token_matmul``) must
compute what the reference (:func:`quantfw.simulate.reference_runner`) computes:

* weight MatMuls run on integers (``MatMulInteger`` with zero-point columns/rows, fused by ONNX
  Runtime into ``MatMulIntegerToFloat``) and match the reference within float32 rounding -- per
  row, as rows of very different magnitudes are the point of per-token scales;
* activation x activation MatMuls (attention) read the fake-quantized float value;
* the codes are :func:`quantfw.numerics.quantize`'s, ties and all-zero rows included.

Artifacts that ONNX Runtime runs are for this CPU's x86 target by default
(``onnx_test_models.x86_target``): an ``x86-vnni`` artifact's full int8 weights saturate in the
AVX2 kernel of a CPU without VNNI.
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
    mlp_model,
    optimized_ops,
    session,
    x86_target,
    x86_weight_spec,
)
from quantfw_onnx.avx2 import PAIR_LIMIT, u8s8_matmul_avx2, u8s8_matmul_exact  # noqa: E402
from quantfw_onnx.frontend import OnnxFrontend  # noqa: E402
from quantfw_onnx.lowering import LoweringError, count_ops, write_qdq  # noqa: E402

import quantfw  # noqa: E402
from quantfw import Node, QuantGraph, QuantSpec, Recipe, TensorRecipe  # noqa: E402
from quantfw.interpreter import run_graph  # noqa: E402
from quantfw.numerics import params_from_tensor, quantize, quantize_dynamic  # noqa: E402
from quantfw.pairs import max_pair_sum  # noqa: E402
from quantfw.planner import PlanError  # noqa: E402
from quantfw.simulate import reference_runner  # noqa: E402
from quantfw.spec import Granularity  # noqa: E402

ort.set_default_logger_severity(3)

PER_TOKEN = {"dynamic": True, "activation": {"granularity": "per_token"}}
PER_TENSOR = {"dynamic": True}
H, F = 32, 48  # hidden and FFN widths of the MLP


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def build_mlp(opset: int = 17) -> onnx.ModelProto:
    """A transformer's FFN, x[batch, seq, H] -> y (``onnx_test_models.mlp_model``)."""
    return mlp_model(0, H, F, opset, ir_version=10)


def build_gemms() -> onnx.ModelProto:
    """x[n, H] -> Gemm(transB=1, bias) -> Relu -> Gemm(transB=0, no bias) -> y (2-D linears)."""
    rng = np.random.default_rng(1)
    w = {
        "g1.weight": f32(rng.normal(size=(F, H)) / np.sqrt(H)),  # [out, in]: transB = 1
        "g1.bias": f32(rng.normal(size=F) * 0.1),
        "g2.weight": f32(rng.normal(size=(F, H)) / np.sqrt(F)),  # [in, out]
    }
    nodes = [
        h.make_node("Gemm", ["x", "g1.weight", "g1.bias"], ["g1"], name="g1", transB=1),
        h.make_node("Relu", ["g1"], ["g1.act"], name="g1_relu"),
        h.make_node("Gemm", ["g1.act", "g2.weight"], ["y"], name="g2"),
    ]
    graph = h.make_graph(
        nodes,
        "gemms",
        [h.make_tensor_value_info("x", T.FLOAT, ["n", H])],
        [h.make_tensor_value_info("y", T.FLOAT, ["n", H])],
        [nh.from_array(v, k) for k, v in w.items()],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)


def hard_rows(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Normal data whose rows (last axis) also hold the cases per-token scales are about: an
    all-zero row (degenerate scale -> 1.0), magnitudes from 1e-3 to 1e3, an all-negative and an
    all-positive row (zero point 255 and 0), a row of exact rounding ties (range [0, 255]:
    scale 1, values k + 0.5) and a row of subnormal values (degenerate scale too)."""
    rng = np.random.default_rng(seed)
    x = f32(rng.normal(size=shape))
    rows = x.reshape(-1, shape[-1])
    n = rows.shape[0]
    rows *= f32(10.0 ** rng.uniform(-3, 3, size=(n, 1)))
    rows[0] = 0.0
    rows[1] = -np.abs(rows[1]) - 0.5
    rows[2] = np.abs(rows[2]) + 0.5
    ties = np.arange(shape[-1], dtype=np.float32) % 254 + 0.5
    ties[0], ties[-1] = 0.0, 255.0
    rows[3] = ties
    rows[4] = rows[4] * np.float32(1e-42)
    return rows.reshape(shape)


def quantize_to(model, tmp_path, overrides, target=None, data=None, name="model"):
    """``quantfw.quantize`` as a user calls it (default: for this CPU's x86 target); returns
    (result, the artifact as written)."""
    out = tmp_path / f"{name}.onnx"
    target = target or x86_target()
    result = quantfw.quantize(model, data, target=target, overrides=overrides, output=str(out))
    return result, onnx.load(str(out))


def with_outputs(model, names):
    """A copy of ``model`` exposing extra tensors as outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return m


def mlp_weight(name: str) -> np.ndarray:
    return next(nh.to_array(i) for i in build_mlp().graph.initializer if i.name == name)


def assert_rows_close(
    got: np.ndarray, want: np.ndarray, step: np.ndarray | None = None, rtol: float = 1e-5
) -> None:
    """Float32 rounding, judged per row (last axis): a row of magnitude 1e-3 next to one of
    1e3 must be right too.

    With ``step`` (per row: one quantization step on every input of the last layer, in output
    units), up to 1 % of the outputs may be off by that much: the artifact's hidden activation
    differs from the reference's by float rounding, which moves a code by one where the value
    lands within that rounding of a tie (not seen on these inputs here; BLAS summation order
    elsewhere may differ)."""
    g = got.reshape(-1, got.shape[-1]).astype(np.float64)
    w = want.reshape(-1, want.shape[-1]).astype(np.float64)
    tol = rtol * np.abs(w).max(axis=1, keepdims=True) + 1e-30
    bad = np.abs(g - w) > tol
    if step is None:
        assert not bad.any(), (np.argwhere(bad)[:5], (np.abs(g - w) / tol).max())
        return
    assert bad.mean() <= 0.01, bad.mean()
    assert np.all(np.abs(g - w) <= step.reshape(-1, 1) + tol), "beyond one quantization step"


def last_layer_step(result, feeds, act: str, weight: str, in_axis: int = 0) -> np.ndarray:
    """Per row: one step of ``act``'s per-token grid on every input of the layer reading it,
    in output units (``row scale * max column L1 norm of the float weight``)."""
    value = reference_runner(result.graph, result.recipe, [act])(feeds)[act]
    scale = params_from_tensor(value, result.recipe.tensors[act].spec).scale
    w = np.abs(result.graph.initializers[weight]).sum(axis=in_axis).max()
    return (scale * w).reshape(-1)


# ------------------------------------------------------------------------------------------------
# planner: how the user asks for it
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["x86", "x86-vnni", "x86-avx2"])
def test_the_x86_targets_plan_per_token_on_request(tmp_path, target):
    result, _ = quantize_to(build_mlp(), tmp_path, PER_TOKEN, target=target)
    acts = result.recipe.of_role("activation")
    assert set(acts) == {"x", "act"}
    for t in acts.values():
        assert t.spec == QuantSpec(
            "uint8", symmetric=False, granularity="per_token", axis=-1, dynamic=True
        )
        assert t.params is None
    assert result.plan.dynamic
    # the default stays per tensor
    result, _ = quantize_to(build_mlp(), tmp_path, PER_TENSOR, target=target, name="pt")
    assert {t.spec.granularity for t in result.recipe.of_role("activation").values()} == {
        Granularity.PER_TENSOR
    }


def test_static_per_token_is_refused_clearly():
    data = [{"x": f32(np.random.default_rng(0).normal(size=(2, 4, H)))}]
    with pytest.raises(
        PlanError,
        match=r"layer 'fc1/MatMul' \(linear\): invalid activation spec \(set by overrides\.activation\): "
        r"per_token quantization is dynamic: set dynamic=True",
    ):
        quantfw.quantize(
            build_mlp(), data, target="x86-vnni", overrides={"activation": PER_TOKEN["activation"]}
        )
    # and "dynamic" is not an activation field: the message points to overrides.dynamic
    with pytest.raises(PlanError, match=r"use overrides\.dynamic for dynamic activations"):
        quantfw.quantize(
            build_mlp(),
            data,
            target="x86-vnni",
            overrides={"activation": {"granularity": "per_token", "dynamic": True}},
        )


# ------------------------------------------------------------------------------------------------
# (1) linears: integer kernels, reference numbers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "opset"),
    # this CPU's x86 target at both opsets (x86-vnni here only with VNNI), and x86-avx2
    list(dict.fromkeys([(x86_target(), 17), (x86_target(), 18), ("x86-avx2", 17)])),
)
def test_mlp_matches_reference(tmp_path, target, opset):
    result, art = quantize_to(build_mlp(opset), tmp_path, PER_TOKEN, target=target)
    counts = count_ops(art)
    assert counts["MatMulInteger"] == 2 and counts["QuantizeLinear"] == 2, counts
    assert "MatMul" not in counts and "DynamicQuantizeLinear" not in counts, counts
    reduce_min = next(n for n in art.graph.node if n.op_type == "ReduceMin")
    assert (len(reduce_min.input) == 2) == (opset >= 18)  # axes: an input from opset 18
    # ONNX Runtime runs both linears as MatMulIntegerToFloat (the integer kernel, fused)
    ops = optimized_ops(art, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops, ops
    feeds = {"x": hard_rows((4, 6, H), seed=opset)}
    want = reference_runner(result.graph, result.recipe)(feeds)["y"]
    step = last_layer_step(result, feeds, "act", "fc2.weight")
    for optimized in (False, True):
        got = session(art, optimized).run(None, feeds)[0]
        assert_rows_close(got, want, step)


def test_gemm_linears_match_reference(tmp_path):
    result, art = quantize_to(build_gemms(), tmp_path, PER_TOKEN)
    counts = count_ops(art)
    assert counts["MatMulInteger"] == 2 and "Gemm" not in counts, counts
    feeds = {"x": hard_rows((9, H), seed=3)}
    want = reference_runner(result.graph, result.recipe)(feeds)["y"]
    step = last_layer_step(result, feeds, "g1.act", "g2.weight")
    for optimized in (False, True):
        assert_rows_close(session(art, optimized).run(None, feeds)[0], want, step)


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
def test_codes_are_the_references(tmp_path, target):
    """The uint8 codes the integer MatMul reads are numerics' (ties to even, all-zero rows),
    followed by the row's zero point; the weight codes are numerics.quantize's, followed by
    rows that cancel the zero point exactly -- within the AVX2 kernel's no-saturation bound
    where the target has 7-bit weights."""
    result, art = quantize_to(build_mlp(), tmp_path, PER_TOKEN, target=target)
    (mm,) = [n for n in art.graph.node if n.op_type == "MatMulInteger" and "fc1" in n.name]
    (rescale,) = [n for n in art.graph.node if n.name.endswith("_TokenScale") and "fc1" in n.name]
    codes_name, w_name, scale_name = mm.input[0], mm.input[1], rescale.input[1]
    x = hard_rows((2, 5, H), seed=7)
    sess = session(with_outputs(art, [codes_name, scale_name]), False)
    got, scale = sess.run([codes_name, scale_name], {"x": x})
    spec = result.recipe.tensors["x"].spec
    q, params = quantize_dynamic(x, spec)
    np.testing.assert_array_equal(scale, params.scale)  # bit for bit, shape [2, 5, 1]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., :H], q)
    extra = got.shape[-1] - H
    assert extra >= 1
    np.testing.assert_array_equal(
        got[..., H:], np.broadcast_to(params.zero_point, got[..., H:].shape)
    )
    assert params.scale.reshape(-1)[0] == params.scale.reshape(-1)[4] == 1.0  # degenerate
    # weights: numerics' codes on top, zero-point rows below
    init = {i.name: nh.to_array(i) for i in art.graph.initializer}
    w_aug = init[w_name]
    wt = result.recipe.tensors["fc1.weight"]
    w_codes = quantize(mlp_weight("fc1.weight"), wt.params, wt.spec)
    np.testing.assert_array_equal(w_aug[:H], w_codes)
    zp_rows = w_aug[H:].astype(np.int64)
    np.testing.assert_array_equal(zp_rows.sum(axis=0), -w_codes.astype(np.int64).sum(axis=0))
    # within the weight's grid, and under the AVX2 target's pair limit within half of it
    assert np.abs(zp_rows).max() <= (64 if wt.spec.pair_limit else max(wt.spec.qmax, 63))
    # the integer accumulator is exactly sum_k (q - zp) * W ...
    a = got.reshape(-1, got.shape[-1])
    centred = (q.reshape(-1, H).astype(np.int64) - params.zero_point.reshape(-1, 1)) @ w_codes
    np.testing.assert_array_equal(u8s8_matmul_exact(a, w_aug), centred)
    if target == "x86-avx2":  # ... even in the AVX2 kernel, whose int16 pair sums saturate
        assert max_pair_sum(w_aug, "cols") <= PAIR_LIMIT
        np.testing.assert_array_equal(u8s8_matmul_avx2(a, w_aug), centred)


def test_per_token_beats_per_tensor_on_rows_of_different_magnitudes(tmp_path):
    """One per-tensor scale is set by the largest row; rows 100x smaller then get a couple of
    codes.  Per-token keeps every row at 8 bits."""
    model = build_mlp()
    rng = np.random.default_rng(11)
    x = f32(rng.normal(size=(4, 16, H)))
    x[:, ::2] *= 100.0  # every other token 100x larger (outlier tokens)
    feeds = {"x": x}
    float_y = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    errors = {}
    for label, overrides in (("token", PER_TOKEN), ("tensor", PER_TENSOR)):
        result, art = quantize_to(model, tmp_path, overrides, name=label)
        got = session(art, True).run(None, feeds)[0]
        want = reference_runner(result.graph, result.recipe)(feeds)["y"]
        step = last_layer_step(result, feeds, "act", "fc2.weight")  # per row, or one for all
        assert_rows_close(got, want, np.broadcast_to(step, (want.size // H,)))
        small = slice(1, None, 2)  # the ordinary rows
        rel = np.abs(got[:, small] - float_y[:, small]).max(axis=-1) / np.abs(
            float_y[:, small]
        ).max(axis=-1)
        errors[label] = float(rel.mean())
    assert errors["token"] < 0.05, errors
    assert errors["token"] < errors["tensor"] / 10, errors


# ------------------------------------------------------------------------------------------------
# (2) activation x activation MatMuls: the float fallback
# ------------------------------------------------------------------------------------------------


def test_attention_matmuls_get_the_fake_quantized_value(kit, tmp_path):
    result, art = quantize_to(kit.build_transformer(), tmp_path, PER_TOKEN)
    recipe, graph = result.recipe, result.graph
    # the attention inputs are per-token too (dynamic.ops has matmul): read in float; the
    # softmax probabilities are never quantized (ops.float_outputs), so P x V stays float
    for name in ("q_t", "k_t"):
        assert recipe.tensors[name].spec.granularity is Granularity.PER_TOKEN, name
    assert "probs" not in recipe.tensors and "v_t" not in recipe.tensors
    pv = next(d for d in result.plan.decisions if d.node == "pv")
    assert not pv.quantized and "ops.float_outputs" in pv.reason
    counts = count_ops(art)
    assert counts["MatMulInteger"] == 6, counts  # q, k, v, o, ff1, ff2
    by_name = {n.name: n for n in art.graph.node}
    producers = {o: n for n in art.graph.node for o in n.output}
    assert all(producers[x].op_type != "DequantizeLinear" for x in by_name["pv"].input)
    for node in ("qk",):
        mm = by_name[node]
        assert mm.op_type == "MatMul"
        for x in mm.input:  # each reads Reshape(DequantizeLinear(per-row codes))
            assert producers[x].op_type == "Reshape", (node, x)
            assert producers[producers[x].input[0]].op_type == "DequantizeLinear"
    onnx.checker.check_model(art, full_check=True)
    ops = optimized_ops(art, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 6, ops
    feeds = kit.transformer_batch(3, seed=4)
    want = reference_runner(graph, recipe)(feeds)["y"]
    floats = run_graph(graph, feeds)["y"]
    assert np.abs(floats - want).max() > 1e-3  # it did quantize
    tol = 1e-5 * float(np.abs(want).max())
    for optimized in (False, True):
        # float rounding; a code moved by one at a rounding tie may show in 1 % of outputs
        d = np.abs(session(art, optimized).run(None, feeds)[0] - want)
        assert np.mean(d > tol) <= 0.01 and d.max() <= 0.05 * np.abs(want).max(), d.max()


def test_a_float_reader_and_a_graph_output_see_the_reference_value():
    """A per-token tensor stored quantized (every reader sees the quantized value) that is a
    graph output and also read by a float op besides the integer MatMul: the output keeps its
    name, and it and the float reader see the reference's fake-quantized value."""
    rng = np.random.default_rng(5)
    w = f32(rng.normal(size=(H, F)))
    nodes = [
        h.make_node("Relu", ["x"], ["hidden"], name="relu"),
        h.make_node("MatMul", ["hidden", "w"], ["mm"], name="mm"),
        h.make_node("Tanh", ["hidden"], ["side"], name="side"),
    ]
    outputs = {"mm": F, "side": H, "hidden": H}
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["n", H])],
        [h.make_tensor_value_info(k, T.FLOAT, ["n", d]) for k, d in outputs.items()],
        [nh.from_array(w, "w")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
    qg = QuantGraph(
        [
            Node("relu", "relu", ["x"], ["hidden"]),
            Node("mm", "linear", ["hidden"], ["mm"], {"weight": "w"}, {"channel_axis": 1}),
            Node("side", "tanh", ["hidden"], ["side"]),
        ],
        ["x"],
        list(outputs),
        {"w": w},
    )
    wspec = x86_weight_spec(axis=1)
    aspec = QuantSpec("uint8", symmetric=False, granularity="per_token", dynamic=True)
    recipe = Recipe(x86_target())
    recipe.add(TensorRecipe("hidden", "activation", aspec))  # consumers None: every reader
    recipe.add(TensorRecipe("w", "weight", wspec, params_from_tensor(w, wspec), node="mm"))
    art = write_qdq(model, qg, recipe)
    onnx.checker.check_model(art, full_check=True)
    assert [i.name for i in art.graph.input] == ["x"]
    assert [o.name for o in art.graph.output] == list(outputs)
    assert count_ops(art)["MatMulInteger"] == 1
    feeds = {"x": hard_rows((7, H), seed=2)}
    want = reference_runner(qg, recipe)(feeds)
    floats = run_graph(qg, feeds)
    assert not np.array_equal(want["hidden"], floats["hidden"])  # the output is quantized
    for optimized in (False, True):
        got = dict(zip(outputs, session(art, optimized).run(None, feeds), strict=True))
        assert_rows_close(got["mm"], want["mm"])
        np.testing.assert_array_equal(got["hidden"], want["hidden"])  # bit for bit
        np.testing.assert_allclose(got["side"], want["side"], rtol=1e-6, atol=1e-7)  # tanh ulps


# ------------------------------------------------------------------------------------------------
# (3) what is refused, (4) validity
# ------------------------------------------------------------------------------------------------


def test_unsupported_per_token_specs_are_refused():
    graph = OnnxFrontend().capture(build_gemms())
    for spec, match in (
        (
            QuantSpec("int8", granularity="per_token", dynamic=True),
            "DynamicQuantizeLinear computes uint8 asymmetric",
        ),
        (
            QuantSpec("uint8", symmetric=False, granularity="per_token", axis=0, dynamic=True),
            "per-token quantization over axis 0 is not lowered",
        ),
    ):
        recipe = Recipe("x86-vnni")
        recipe.add(TensorRecipe("x", "activation", spec))
        with pytest.raises(LoweringError, match=match):
            write_qdq(graph.forms["onnx"], graph, recipe)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_artifact_passes_the_full_checker(tmp_path, opset):
    _, art = quantize_to(build_mlp(opset), tmp_path, PER_TOKEN)
    onnx.checker.check_model(art, full_check=True)
    assert [(i.name, i.type) for i in art.graph.input] == [
        (i.name, i.type) for i in build_mlp(opset).graph.input
    ]
    assert [o.name for o in art.graph.output] == ["y"]
    _, art = quantize_to(build_gemms(), tmp_path, PER_TOKEN, name="gemms")
    onnx.checker.check_model(art, full_check=True)


def test_qoperator_form_leaves_per_token_as_written(tmp_path):
    result, _ = quantize_to(build_mlp(), tmp_path, PER_TOKEN)
    graph, recipe = result.graph, result.recipe
    qdq = write_qdq(graph.forms["onnx"], graph, recipe)
    qop = write_qdq(graph.forms["onnx"], graph, recipe, fmt="qoperator")
    onnx.checker.check_model(qop, full_check=True)
    feeds = {"x": hard_rows((2, 3, H), seed=1)}
    np.testing.assert_array_equal(
        session(qop, False).run(None, feeds)[0], session(qdq, False).run(None, feeds)[0]
    )
