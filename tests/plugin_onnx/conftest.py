"""Small ONNX models built with onnx.helper, for the ONNX frontend tests.

Every builder is deterministic (fixed seeds) and returns an ``onnx.ModelProto`` that ONNX Runtime's
CPU provider runs: IR version 10, default-domain opset 17.  Tests reach the builders and helpers
through the ``kit`` fixture (``kit.build_cnn()``, ``kit.ort_run(model, feeds)``, …).

Without onnx or onnxruntime every test module here skips itself (``pytest.importorskip`` at
its top), so this file must import without them.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # a core-only install: every test module here skips itself, with the reason
    onnx = TensorProto = helper = numpy_helper = None  # type: ignore[assignment]

OPSET = 17
IR_VERSION = 10


def make_model(nodes, inputs, outputs, inits, name="test", opset=OPSET):
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def ort_run(model, feeds, outputs=None, optimize=True):
    """Plain ONNX Runtime on a (small) model: the reference the tests compare with."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def with_outputs(model, names):
    """A copy of ``model`` exposing extra tensors as outputs (type left to ONNX Runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return m


def _rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def build_cnn() -> onnx.ModelProto:
    """Conv+BN+Relu, MaxPool, grouped Conv+BN+Relu, residual Add, 1x1 Conv, Concat,
    GlobalAveragePool, Flatten, Gemm (transB=1).  Input ``input`` (batch, 3, 16, 16)."""
    rng = np.random.default_rng(0)
    inits = {
        "conv1.weight": _rand(rng, 8, 3, 3, 3),
        "conv1.bias": _rand(rng, 8, scale=0.1),
        "bn1.scale": (1 + 0.2 * rng.standard_normal(8)).astype(np.float32),
        "bn1.bias": _rand(rng, 8, scale=0.1),
        "bn1.mean": _rand(rng, 8, scale=0.2),
        "bn1.var": (0.5 + rng.random(8)).astype(np.float32),
        "conv2.weight": _rand(rng, 8, 4, 3, 3),
        "bn2.scale": (1 + 0.2 * rng.standard_normal(8)).astype(np.float32),
        "bn2.bias": _rand(rng, 8, scale=0.1),
        "bn2.mean": _rand(rng, 8, scale=0.2),
        "bn2.var": (0.5 + rng.random(8)).astype(np.float32),
        "conv3.weight": _rand(rng, 4, 8, 1, 1),
        "conv3.bias": _rand(rng, 4, scale=0.1),
        "fc.weight": _rand(rng, 10, 12),
        "fc.bias": _rand(rng, 10, scale=0.1),
    }
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
            kernel_shape=[3, 3], pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"],
            name="bn1", epsilon=1e-3,
        ),
        helper.make_node("Relu", ["b1"], ["r1"]),  # unnamed on purpose
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Conv", ["p1", "conv2.weight"], ["c2"], name="conv2", kernel_shape=[3, 3],
            pads=[1, 1, 1, 1], group=2,
        ),
        helper.make_node(
            "BatchNormalization", ["c2", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"], ["b2"],
            name="bn2",
        ),
        helper.make_node("Relu", ["b2"], ["r2"]),  # unnamed on purpose
        helper.make_node("Add", ["p1", "r2"], ["res"], name="residual"),
        helper.make_node(
            "Conv", ["res", "conv3.weight", "conv3.bias"], ["c3"], name="conv3",
            kernel_shape=[1, 1],
        ),
        helper.make_node("Concat", ["res", "c3"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]  # fmt: skip
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
        name="cnn",
    )


D, H, DH, T, V, FF = 8, 2, 4, 5, 11, 16


def build_transformer() -> onnx.ModelProto:
    """Embedding (Gather) + one encoder block: q/k/v/o as MatMul+Add, Reshape/Transpose heads,
    MatMul(q, k), Div by sqrt(dh), mask (1 - m) * -1e4 added, Softmax, MatMul(p, v),
    residual + LayerNormalization, FFN with the erf GELU, residual + LayerNormalization.
    Inputs ``ids`` (batch, T) int64 and ``mask`` (batch, 1, 1, T) float; output ``y``."""
    rng = np.random.default_rng(1)
    inits: dict[str, np.ndarray] = {"emb.weight": _rand(rng, V, D, scale=1.0)}
    for p in "qkvo":
        inits[f"{p}.weight"] = _rand(rng, D, D)
        inits[f"{p}.bias"] = _rand(rng, D, scale=0.1)
    inits.update(
        {
            "ff1.weight": _rand(rng, D, FF),
            "ff1.bias": _rand(rng, FF, scale=0.1),
            "ff2.weight": _rand(rng, FF, D),
            "ff2.bias": _rand(rng, D, scale=0.1),
            "ln1.weight": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32),
            "ln1.bias": _rand(rng, D, scale=0.1),
            "ln2.weight": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32),
            "ln2.bias": _rand(rng, D, scale=0.1),
            "heads_shape": np.array([0, 0, H, DH], np.int64),
            "merge_shape": np.array([0, 0, D], np.int64),
            "sqrt_dh": np.array(np.sqrt(DH), np.float32),
            "one": np.array(1.0, np.float32),
            "neg_big": np.array(-1e4, np.float32),
            "sqrt2": np.array(np.sqrt(2.0), np.float32),
            "half": np.array(0.5, np.float32),
        }
    )
    mk = helper.make_node
    nodes = [mk("Gather", ["emb.weight", "ids"], ["x"], name="embed")]
    for p in "qkv":
        nodes += [
            mk("MatMul", ["x", f"{p}.weight"], [f"{p}_mm"], name=f"{p}_proj/MatMul"),
            mk("Add", [f"{p}_mm", f"{p}.bias"], [p], name=f"{p}_proj/Add"),
            mk("Reshape", [p, "heads_shape"], [f"{p}_h"], name=f"{p}_reshape"),
        ]
    nodes += [
        mk("Transpose", ["q_h"], ["q_t"], name="q_transpose", perm=[0, 2, 1, 3]),
        mk("Transpose", ["k_h"], ["k_t"], name="k_transpose", perm=[0, 2, 3, 1]),
        mk("Transpose", ["v_h"], ["v_t"], perm=[0, 2, 1, 3]),  # unnamed
        mk("MatMul", ["q_t", "k_t"], ["scores"], name="qk"),
        mk("Div", ["scores", "sqrt_dh"], ["scaled"], name="scale"),
        mk("Sub", ["one", "mask"], ["inv_mask"], name="inv_mask"),
        mk("Mul", ["inv_mask", "neg_big"], ["bias_mask"], name="mask_bias"),
        mk("Add", ["scaled", "bias_mask"], ["masked"], name="add_mask"),
        mk("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        mk("MatMul", ["probs", "v_t"], ["ctx"], name="pv"),
        mk("Transpose", ["ctx"], ["ctx_t"], name="ctx_transpose", perm=[0, 2, 1, 3]),
        mk("Reshape", ["ctx_t", "merge_shape"], ["ctx_m"], name="ctx_reshape"),
        mk("MatMul", ["ctx_m", "o.weight"], ["o_mm"], name="o_proj/MatMul"),
        mk("Add", ["o_mm", "o.bias"], ["attn"], name="o_proj/Add"),
        mk("Add", ["x", "attn"], ["res1"], name="res1"),
        mk("LayerNormalization", ["res1", "ln1.weight", "ln1.bias"], ["h1"], name="ln1", axis=-1,
           epsilon=1e-5),
        mk("MatMul", ["h1", "ff1.weight"], ["f1_mm"], name="ff1/MatMul"),
        mk("Add", ["f1_mm", "ff1.bias"], ["f1"], name="ff1/Add"),
        # torch's erf GELU: ((x * (1 + erf(x / sqrt 2))) * 0.5
        mk("Div", ["f1", "sqrt2"], ["g_div"], name="gelu/Div"),
        mk("Erf", ["g_div"], ["g_erf"], name="gelu/Erf"),
        mk("Add", ["g_erf", "one"], ["g_add"], name="gelu/Add"),
        mk("Mul", ["f1", "g_add"], ["g_mul"], name="gelu/Mul"),
        mk("Mul", ["g_mul", "half"], ["g"], name="gelu/Mul_1"),
        mk("MatMul", ["g", "ff2.weight"], ["f2_mm"], name="ff2/MatMul"),
        mk("Add", ["f2_mm", "ff2.bias"], ["f2"], name="ff2/Add"),
        mk("Add", ["h1", "f2"], ["res2"], name="res2"),
        mk("LayerNormalization", ["res2", "ln2.weight", "ln2.bias"], ["y"], name="ln2", axis=-1,
           epsilon=1e-5),
    ]  # fmt: skip
    return make_model(
        nodes,
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", T]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, T]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, D])],
        inits,
        name="block",
    )


def cnn_batch(n=2, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def transformer_batch(n=2, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, 1, 1, T), np.float32)
    mask[0, ..., -2:] = 0.0
    return {"ids": rng.integers(0, V, size=(n, T)).astype(np.int64), "mask": mask}


@pytest.fixture
def cnn_model():
    return build_cnn()


@pytest.fixture
def transformer_model():
    return build_transformer()


@pytest.fixture(scope="session")
def kit():
    """The builders and helpers of this module."""
    return SimpleNamespace(
        make_model=make_model,
        ort_run=ort_run,
        with_outputs=with_outputs,
        build_cnn=build_cnn,
        build_transformer=build_transformer,
        cnn_batch=cnn_batch,
        transformer_batch=transformer_batch,
        T=T,
        D=D,
        V=V,
    )
