"""What ONNX Runtime's CPU provider does with the patterns the ONNX lowering emits.

Each test builds a tiny model with ``onnx.helper``, lets ONNX Runtime optimize it
(``ORT_ENABLE_EXTENDED``, the optimized model read back) or run it, and states one rule; its
docstring names the lowering choice (``quantfw_onnx.lowering``) that depends on the rule, so that
an ONNX Runtime release that changes it fails here, loudly, instead of making artifacts silently
slow or wrong.  Measured on ONNX Runtime 1.32.

Which kernel a fusion produces is decided on the graph and is the same on every CPU.  Numbers
are compared only where every x86 kernel is exact: weight codes within +-63, so that even AVX2's
int16 pair sums (255 * 63 * 2 < 32768) cannot saturate.  What depends on the CPU (AVX2 without
VNNI saturating on 8-bit weights, MatMulNBits' int8 compute path) is tested in test_lowering.py.
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from onnx_test_models import optimized_model, optimized_ops  # noqa: E402

from quantfw import QuantParams, QuantSpec  # noqa: E402
from quantfw.numerics import quantize, quantize_dynamic  # noqa: E402

ort.set_default_logger_severity(3)

K, N = 32, 8  # a MatMul's inner and output widths
X_SCALE, X_ZP = np.float32(0.02), 128  # uint8 activation codes


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


class Net:
    """A tiny model under construction: nodes, initializers, and Q/DQ helpers."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def init(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def dq(self, name: str, codes, scale, zero_point, axis: int | None = None) -> str:
        """``DequantizeLinear`` of constant ``codes``, writing ``name``."""
        attrs = {} if axis is None else {"axis": axis}
        inputs = [
            self.init(f"{name}.codes", codes),
            self.init(f"{name}.scale", f32(scale)),
            self.init(f"{name}.zp", zero_point),
        ]
        return self.op("DequantizeLinear", inputs, name, **attrs)

    def qdq(self, x: str, scale=X_SCALE, zero_point=X_ZP) -> str:
        """``x`` through ``QuantizeLinear -> DequantizeLinear`` (uint8); the DQ output."""
        s = self.init(f"{x}.q_scale", f32(scale))
        z = self.init(f"{x}.q_zp", np.uint8(zero_point))
        self.op("QuantizeLinear", [x, s, z], f"{x}.q")
        return self.op("DequantizeLinear", [f"{x}.q", s, z], f"{x}.dq")

    def weight(self, name: str, shape=(K, N), axis: int = 1) -> tuple[str, np.ndarray]:
        """An int8 per-channel weight (zero point 0, codes within +-63) behind a DQ; its name
        and scales."""
        codes = self.rng.integers(-63, 64, size=shape).astype(np.int8)
        scale = f32(self.rng.uniform(0.005, 0.02, size=shape[axis]))
        zp = np.zeros(shape[axis], np.int8)
        return self.dq(name, codes, scale, zp, axis=axis), scale

    def model(self, inputs, outputs, value_info=(), check: bool = True) -> onnx.ModelProto:
        graph = h.make_graph(
            self.nodes,
            "rule",
            inputs,
            outputs,
            [nh.from_array(v, k) for k, v in self.inits.items()],
            value_info=list(value_info),
        )
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
        if check:  # the checker wants every graph input and output to have a shape
            onnx.checker.check_model(m)
        return m


def tensor(name: str, shape, elem=T.FLOAT) -> onnx.ValueInfoProto:
    """A tensor's type; ``shape`` ``[]`` is a scalar, ``None`` an unknown shape."""
    v = h.make_tensor_value_info(name, elem, shape)
    if shape == []:
        v.type.tensor_type.shape.SetInParent()
    return v


def run(model: onnx.ModelProto, feeds: dict, optimized: bool = True, config=None) -> list:
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def x_feed(shape, seed: int = 1) -> np.ndarray:
    return f32(np.random.default_rng(seed).normal(size=shape))


# ------------------------------------------------------------------------------------------------
# static activations (lowering/static.py, lowering/weights.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [["n", K], ["batch", "seq", K]])
def test_qdq_matmul_with_a_float_output_runs_as_matmul_integer_to_float(tmp_path, shape):
    """``DQ(u8 x) + DQ(s8 W, per channel) -> MatMul`` with no Q after it becomes
    ``MatMulIntegerToFloat``: why the lowering quantizes activations and weights only (one Q/DQ
    pair per activation, the op's float output left as it is) and still gets integer kernels --
    all-MiniLM-L6-v2's linears run this way."""
    net = Net()
    w, _ = net.weight("w")
    net.op("MatMul", [net.qdq("x"), w], "y")
    model = net.model([tensor("x", shape)], [tensor("y", [*shape[:-1], N])])
    ops = optimized_ops(model, tmp_path)
    assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops, ops


def test_one_dequantize_serves_several_integer_readers(tmp_path):
    """A DQ read by two MatMuls is given to each of them: why the lowering writes a single
    Q -> DQ pair per activation, however many ops read it."""
    net = Net()
    x = net.qdq("x")
    for name in ("a", "b"):
        w, _ = net.weight(f"{name}.w")
        net.op("MatMul", [x, w], name)
    model = net.model([tensor("x", ["n", K])], [tensor("a", ["n", N]), tensor("b", ["n", N])])
    ops = optimized_ops(model, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops, ops


def bias_model(bias: str, factor: float = 1.0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """2-D ``DQ(x) @ DQ(W) + b`` with ``b`` a float initializer (``bias="float"``) or int32 codes
    behind a DQ of scale ``factor * x_scale * w_scale``; the model, the bias codes and the
    scale product."""
    net = Net(seed=2)
    w, w_scale = net.weight("w")
    net.op("MatMul", [net.qdq("x"), w], "mm")
    codes = net.rng.integers(-2000, 2000, size=N).astype(np.int32)
    product = f32(X_SCALE * w_scale)
    if bias == "float":
        b = net.init("b", f32(codes * product))
    else:
        b = net.dq("b", codes, f32(factor * product), np.zeros(N, np.int32), axis=0)
    net.op("Add", ["mm", b], "y")
    return net.model([tensor("x", ["n", K])], [tensor("y", ["n", N])]), codes, product


def test_a_float_bias_turns_the_matmul_into_a_float_gemm(tmp_path):
    """A 2-D MatMul + float-bias Add is fused into a Gemm first, whose QDQ selector then rejects
    the float bias: a float ``Gemm`` on dequantized inputs, no integer kernel at all.  With the
    bias as int32 codes behind a DQ it is ``QGemm``.  Why the lowering stores biases as int32
    codes + DQ rather than baked float values (lowering/weights.py)."""
    ops = optimized_ops(bias_model("float")[0], tmp_path)
    assert "Gemm" in ops, ops
    assert not {"QGemm", "MatMulIntegerToFloat", "MatMulInteger"} & set(ops), ops
    ops = optimized_ops(bias_model("int32")[0], tmp_path)
    assert "QGemm" in ops and "Gemm" not in ops, ops


def test_qgemm_adds_int32_bias_codes_whatever_their_scale(tmp_path):
    """The MatMul + Add(DQ(int32 bias)) -> ``QGemm`` fusion does not check the bias scale: codes
    of scale ``3 * x_scale * w_scale`` are added as if it were ``x_scale * w_scale``.  Why the
    lowering stores a bias whose scale is not ``x_scale * w_scale`` as float values instead
    (``bias_scale_ok`` / ``bake_float`` in lowering/weights.py)."""
    model, codes, product = bias_model("int32", factor=3.0)
    assert "QGemm" in optimized_ops(model, tmp_path)
    feeds = {"x": x_feed((4, K))}
    (fused,) = run(model, feeds)
    (exact,) = run(model, feeds, optimized=False)
    # the fused kernel adds codes * product where the model says codes * 3 * product
    missing = np.broadcast_to(-2 * codes * product, fused.shape)
    assert np.abs(missing).max() > 0.1
    np.testing.assert_allclose(fused - exact, missing, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factor, fused", [(1.0, True), (3.0, False)])
def test_qlinear_conv_needs_the_bias_scale_x_scale_times_w_scale(tmp_path, factor, fused):
    """``DQ(x) -> Conv(DQ(W), DQ(int32 b)) -> Relu -> Q(zp 0)`` becomes ``QLinearConv`` (the Relu
    folded) only when the bias scale is ``x_scale * w_scale``; with any other scale the whole
    group silently stays float.  Why the recipe's int32 bias scale is exactly that product, and
    why any other scale is baked as float (lowering/weights.py)."""
    net = Net(seed=3)
    w, w_scale = net.weight("w", shape=(4, 3, 3, 3), axis=0)
    codes = net.rng.integers(-500, 500, size=4).astype(np.int32)
    b = net.dq("b", codes, f32(factor * X_SCALE * w_scale), np.zeros(4, np.int32), axis=0)
    net.op("Conv", [net.qdq("x"), w, b], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    net.op("Relu", ["conv"], "relu")
    y = net.qdq("relu", scale=0.05, zero_point=0)
    net.op("Identity", [y], "y")
    model = net.model([tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])])
    ops = optimized_ops(model, tmp_path)
    if fused:
        assert "QLinearConv" in ops and "Conv" not in ops, ops
    else:  # a float Conv on dequantized inputs
        assert "Conv" in ops and not {"QLinearConv", "ConvInteger"} & set(ops), ops


# ------------------------------------------------------------------------------------------------
# dynamic activations (lowering/dynamic.py, lowering/per_token.py)
# ------------------------------------------------------------------------------------------------


def dynamic_model(readers: int) -> onnx.ModelProto:
    """``DynamicQuantizeLinear(x)`` read by ``readers`` ``MatMulInteger -> Cast ->
    Mul(Mul(x_scale, w_scale))`` groups, with per-channel int8 weights: lowering/dynamic.py's
    form."""
    net = Net(seed=4)
    net.nodes.append(h.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"))
    outputs = []
    for r in range(readers):
        codes = net.rng.integers(-63, 64, size=(K, N)).astype(np.int8)
        wq = net.init(f"w{r}.codes", codes)
        wz = net.init(f"w{r}.zp", np.zeros(N, np.int8))
        ws = net.init(f"w{r}.scale", f32(net.rng.uniform(0.005, 0.02, size=N)))
        acc = net.op("MatMulInteger", ["xq", wq, "xz", wz], f"acc{r}")
        accf = net.op("Cast", [acc], f"accf{r}", to=T.FLOAT)
        scale = net.op("Mul", ["xs", ws], f"scale{r}")
        outputs.append(net.op("Mul", [accf, scale], f"y{r}"))
    return net.model([tensor("x", ["n", K])], [tensor(y, ["n", N]) for y in outputs])


def test_dynamic_matmul_integer_runs_as_dynamic_quantize_matmul(tmp_path):
    """``DynamicQuantizeLinear + MatMulInteger + Cast + Mul(x_scale * w_scale)`` becomes
    ``com.microsoft::DynamicQuantizeMatMul``; when one ``DynamicQuantizeLinear`` feeds several
    MatMuls (Q/K/V) it stays shared and each becomes ``MatMulIntegerToFloat``.  Why the dynamic
    lowering writes this standard-ONNX form rather than the contrib op (lowering/dynamic.py)."""
    ops = optimized_ops(dynamic_model(1), tmp_path)
    assert ops == ["DynamicQuantizeMatMul"], ops
    ops = optimized_ops(dynamic_model(3), tmp_path)
    assert ops.count("DynamicQuantizeLinear") == 1, ops
    assert ops.count("MatMulIntegerToFloat") == 3 and "MatMulInteger" not in ops, ops


def test_matmul_integer_takes_a_single_a_zero_point():
    """``MatMulInteger`` refuses a per-row ``a_zero_point`` (which the ONNX standard allows).
    Why per-token activations put each row's zero point into the sum as data -- extra
    zero-point columns on the codes and rows summing to ``-colsum(W)`` on the weight
    (lowering/per_token.py)."""
    net = Net(seed=5)
    b = net.init("b", net.rng.integers(-63, 64, size=(K, N)).astype(np.int8))
    zp = net.init("a_zp", np.arange(4, dtype=np.uint8) + 100)
    net.op("MatMulInteger", ["a", b, zp], "y")
    model = net.model([tensor("a", [4, K], T.UINT8)], [tensor("y", [4, N], T.INT32)])
    a = np.random.default_rng(6).integers(0, 256, size=(4, K)).astype(np.uint8)
    with pytest.raises(Exception, match="must be a scalar or 1D tensor of size 1"):
        run(model, {"a": a})


# ------------------------------------------------------------------------------------------------
# numerics of the Q/DQ kernels
# ------------------------------------------------------------------------------------------------


def with_ties(scale: float, zero_point: int) -> np.ndarray:
    """Values whose ``x / scale`` are exact halves around the zero point, values that saturate
    both ends, and random ones."""
    k = np.arange(-300, 300, dtype=np.float32)
    ties = (k + np.float32(0.5) - zero_point) * np.float32(scale)
    rest = np.random.default_rng(7).normal(size=1000) * 100 * scale
    return f32(np.concatenate([ties, [-1e6, 1e6, 0.0], rest]))


@pytest.mark.parametrize(
    "spec, zero_point, elem",
    [
        (QuantSpec("uint8", symmetric=False), 128, T.UINT8),
        (QuantSpec("uint8", symmetric=False), 3, T.UINT8),
        (QuantSpec("int8"), 0, T.INT8),
    ],
)
def test_quantize_linear_is_numerics_quantize(spec, zero_point, elem):
    """``QuantizeLinear`` gives exactly :func:`quantfw.numerics.quantize`'s codes, exact ties
    (half to even) and saturation included.  Why a static artifact's codes are the reference's
    (lowering/static.py); the per-axis ``QuantizeLinear`` of per-token activations is checked by
    test_per_token.py::test_codes_are_the_references."""
    scale = np.float32(0.25)
    x = with_ties(scale, zero_point)
    net = Net()
    zp = np.asarray(zero_point, np.uint8 if elem == T.UINT8 else np.int8)
    net.op("QuantizeLinear", ["x", net.init("s", scale), net.init("z", zp)], "q")
    model = net.model([tensor("x", [x.size])], [tensor("q", [x.size], elem)])
    (got,) = run(model, {"x": x})
    want = quantize(x, QuantParams(scale, zero_point), spec)
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))


@pytest.mark.parametrize("case", ["ties", "random"])
def test_dynamic_quantize_linear_is_numerics_quantize_dynamic(case):
    """``DynamicQuantizeLinear`` gives exactly :func:`quantfw.numerics.quantize_dynamic`'s codes,
    scale and zero point.  Why a per-tensor dynamic artifact reads the reference's codes
    (lowering/dynamic.py)."""
    if case == "ties":  # range [0, 255]: scale 1, zero point 0, every x + 0.5 a tie
        x = f32(np.concatenate([np.arange(256), np.arange(255) + 0.5]))
    else:
        x = f32(np.random.default_rng(8).normal(size=2000) * 3 + 1)
    net = Net()
    net.nodes.append(h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql"))
    model = net.model(
        [tensor("x", [x.size])],
        [tensor("q", [x.size], T.UINT8), tensor("s", [], T.FLOAT), tensor("z", [], T.UINT8)],
    )
    q, s, z = run(model, {"x": x})
    want_q, params = quantize_dynamic(x, QuantSpec("uint8", symmetric=False, dynamic=True))
    if case == "ties":
        assert params.scale == 1.0 and params.zero_point == 0
    np.testing.assert_array_equal(q, want_q)
    assert s == params.scale and z == params.zero_point


# ------------------------------------------------------------------------------------------------
# weight-only and whole-graph fusions
# ------------------------------------------------------------------------------------------------


def test_weight_only_matmul_runs_as_matmul_nbits_at_the_sessions_accuracy_level(tmp_path):
    """Weight-only ``DQ(int8 per channel) -> MatMul`` on a float activation becomes
    ``com.microsoft::MatMulNBits`` with ``accuracy_level`` 4 (int8 compute: the activation
    quantized on the fly where the CPU has that kernel) unless the session option
    ``session.qdq_matmulnbits_accuracy_level`` says otherwise; at level 1 it computes the
    reference's float numbers.  Why the backend's sessions pin level 1
    (``MATMULNBITS_ACCURACY_LEVEL``; the error at level 4 is checked by
    test_lowering.py::test_weight_only_matmulnbits_default_accuracy_level_quantizes_activations)."""
    net = Net(seed=9)
    w, _ = net.weight("w")
    net.op("MatMul", ["x", w], "y")
    model = net.model([tensor("x", ["n", K])], [tensor("y", ["n", N])])
    option = "session.qdq_matmulnbits_accuracy_level"
    for config, level in ((None, 4), ({option: "1"}, 1)):
        nodes = optimized_model(model, tmp_path, config).graph.node
        assert [n.op_type for n in nodes] == ["MatMulNBits"], nodes
        attrs = {a.name: h.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["accuracy_level"] == level
    feeds = {"x": x_feed((4, K))}
    (exact,) = run(model, feeds, optimized=False)
    (level1,) = run(model, feeds, config={option: "1"})
    np.testing.assert_allclose(level1, exact, rtol=1e-5, atol=1e-6)


def test_residual_add_and_layer_norm_fuse_when_intermediate_shapes_are_known(tmp_path):
    """A residual ``Add -> LayerNormalization`` whose inputs have known 3-D shapes becomes
    ``com.microsoft::SkipLayerNormalization``; with the shapes unknown it stays two ops.  Why the
    writer drops the frontend's inferred intermediate shapes (``value_info``) from the artifact:
    the fused CPU kernel was ~8x slower than the pair on all-MiniLM-L6-v2 (lowering/writer.py)."""
    d = 16
    net = Net(seed=10)
    net.op("Relu", ["x"], "a")
    net.op("Relu", ["r"], "b")
    net.op("Add", ["a", "b"], "sum")
    net.init("gamma", f32(np.ones(d)))
    net.init("beta", f32(np.zeros(d)))
    net.op("LayerNormalization", ["sum", "gamma", "beta"], "y", axis=-1, epsilon=1e-5)
    inputs = [tensor("x", None), tensor("r", None)]  # shapes unknown to ONNX Runtime
    shapes = [tensor(n, ["batch", "seq", d]) for n in ("a", "b", "sum")]
    with_shapes = net.model(inputs, [tensor("y", None)], value_info=shapes, check=False)
    ops = optimized_ops(with_shapes, tmp_path)
    assert "SkipLayerNormalization" in ops, ops
    without = net.model(inputs, [tensor("y", None)], check=False)
    ops = optimized_ops(without, tmp_path)
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops, ops
