"""Constant folding while preparing: what folds, and how many ONNX Runtime sessions it takes."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX frontend tests need onnx installed")
ort = pytest.importorskip(
    "onnxruntime", reason="the ONNX frontend tests need onnxruntime installed"
)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from quantfw_onnx.loader import prepare  # noqa: E402
from quantfw_onnx.loader.constant_folding import fold_constants  # noqa: E402

mk = helper.make_node


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture
def sessions(monkeypatch):
    """Counts the ONNX Runtime sessions built while the test runs."""
    built = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return built


def values(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_small_constants_fold_in_one_session_and_weights_one_node_at_a_time(kit, sessions):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)).astype(np.float32)  # 32 KiB: a weight
    model = kit.make_model(
        [
            # too big to keep (90,000 elements from 2), and so is what is computed from it
            mk("ConstantOfShape", ["big_shape"], ["ones"], name="ones"),
            mk("Mul", ["ones", "two"], ["twos"], name="twos"),
            mk("Add", ["x", "twos"], ["y1"], name="add"),
            # a weight: folded on its own, and so is what reads it
            mk("Transpose", ["w"], ["wt"], name="transpose_w", perm=[1, 0]),
            mk("Mul", ["wt", "half"], ["wt2"], name="scale_w"),
            mk("MatMul", ["x2", "wt2"], ["y2"], name="fc"),
            # shape arithmetic: one joint session
            mk("Unsqueeze", ["n", "axis0"], ["n1"], name="unsqueeze_n"),
            mk("Concat", ["n1", "rest"], ["target"], name="concat", axis=0),
            mk("Reshape", ["y2", "target"], ["y3"], name="reshape"),
        ],
        [vi("x", [300, 300]), vi("x2", [5, 128])],
        [vi("y1", [300, 300]), vi("y3", [5, 64])],
        {
            "big_shape": np.array([300, 300], np.int64),
            "two": np.array(2.0, np.float32),
            "w": w,
            "half": np.array(0.5, np.float32),
            "n": np.array(5, np.int64),
            "axis0": np.array([0], np.int64),
            "rest": np.array([64], np.int64),
        },
    )
    model = onnx.shape_inference.infer_shapes(model)  # element types, as prepare has them
    assert fold_constants(model) == 4
    assert [n.name for n in model.graph.node] == ["ones", "twos", "add", "fc", "reshape"]
    got = values(model)
    np.testing.assert_array_equal(got["wt2"], w.T * np.float32(0.5))
    np.testing.assert_array_equal(got["target"], [5, 64])
    assert "w" not in got and "n1" not in got  # nothing reads them any more
    assert len(sessions) == 3  # the joint session, then Transpose and Mul of the weight


def test_a_node_the_runtime_cannot_run_stays_and_the_others_fold(kit, sessions):
    model = kit.make_model(
        [
            mk("Reshape", ["six", "four"], ["bad"], name="bad_reshape"),  # 6 elements into 4
            mk("Identity", ["bad"], ["y_bad"], name="out_bad"),
            mk("Add", ["a", "b"], ["s"], name="sum"),
            mk("Mul", ["x", "s"], ["y"], name="mul"),
        ],
        [vi("x", [3])],
        [vi("y_bad", [4]), vi("y", [3])],
        {
            "six": np.arange(6, dtype=np.float32),
            "four": np.array([4], np.int64),
            "a": np.array([1.0, 2.0, 3.0], np.float32),
            "b": np.array([0.5, 0.25, 0.125], np.float32),
        },
    )
    assert fold_constants(model) == 1
    assert [n.name for n in model.graph.node] == ["bad_reshape", "out_bad", "mul"]
    np.testing.assert_array_equal(values(model)["s"], [1.5, 2.25, 3.125])
    assert len(sessions) == 3  # the joint session fails; then each node alone


def test_fp16_values_are_rounded_to_fp16_between_nodes(kit):
    """ORT computes fp16 CumSum in fp32; folded one node at a time, the Mul after it reads the
    sum rounded to fp16, as the model says (one session for both would hand it the fp32 sum)."""
    rng = np.random.default_rng(1)
    a = (rng.random(64) * 3).astype(np.float16)
    b = (rng.random(64) + 0.5).astype(np.float16)
    model = kit.make_model(
        [
            mk("CumSum", ["a", "axis"], ["cs"], name="cumsum"),
            mk("Mul", ["cs", "b"], ["scaled"], name="scale"),
            mk("Add", ["x", "scaled"], ["y"], name="add"),
        ],
        [vi("x", [64], TensorProto.FLOAT16)],
        [vi("y", [64], TensorProto.FLOAT16)],
        {"a": a, "b": b, "axis": np.array(0, np.int64)},
    )
    prepared = prepare(model)
    assert [n.name for n in prepared.graph.node] == ["add"]
    cs = np.cumsum(a.astype(np.float32)).astype(np.float16)
    want = (cs.astype(np.float32) * b.astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(values(prepared)["scaled"], want)
