"""The planner, on hand-built QuantGraphs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from quantfw.graph import Node, QuantGraph
from quantfw.planner import Overrides, PlanError, QuantPlan, plan
from quantfw.spec import Granularity, QuantParams, QuantSpec
from quantfw.target import TargetSpec, builtin_target_paths, load_target


@pytest.fixture(scope="module")
def generic() -> TargetSpec:
    (path,) = [p for p in builtin_target_paths() if p.name == "generic.toml"]
    return load_target(path)


class GraphBuilder:
    """Tiny helper: add nodes with small numpy weights, then build the QuantGraph."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.inits: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def op(self, name: str, op: str, inputs: list[str], output: str, **attrs: Any) -> None:
        self.nodes.append(Node(name, op, inputs, [output], attrs=attrs))

    def weighted(
        self,
        name: str,
        op: str,
        x: str,
        y: str,
        shape: tuple[int, ...],
        bias: bool = True,
        **attrs: Any,
    ) -> None:
        weights = {"weight": f"{name}.weight"}
        self.inits[f"{name}.weight"] = self.rng.standard_normal(shape).astype(np.float32)
        if bias:
            weights["bias"] = f"{name}.bias"
            out_ch = shape[attrs.get("channel_axis", 0)]
            self.inits[f"{name}.bias"] = np.zeros(out_ch, np.float32)
        self.nodes.append(Node(name, op, [x], [y], weights, attrs))

    def build(self, inputs: list[str], outputs: list[str], name: str) -> QuantGraph:
        return QuantGraph(self.nodes, inputs, outputs, self.inits, name=name)


def residual_graph() -> QuantGraph:
    """conv-bn-relu, conv + skip add -> relu, two branches -> concat -> maxpool -> fc -> softmax."""
    b = GraphBuilder()
    b.weighted("conv1", "conv", "x", "c1", (8, 3, 3, 3), channel_axis=0)
    b.op("bn1", "batchnorm", ["c1"], "b1")
    b.op("relu1", "relu", ["b1"], "r1")
    b.weighted("conv2", "conv", "r1", "c2", (8, 8, 3, 3), channel_axis=0)
    b.op("add1", "add", ["c2", "r1"], "s1")
    b.op("relu2", "relu", ["s1"], "r2")
    b.weighted("branch_a", "conv", "r2", "ba", (4, 8, 1, 1), channel_axis=0)
    b.weighted("branch_b", "conv", "r2", "bb", (4, 8, 1, 1), bias=False, channel_axis=0)
    b.op("cat", "concat", ["ba", "bb"], "cat_out", axis=1)
    b.op("pool", "max_pool", ["cat_out"], "p")
    b.op("flat", "flatten", ["p"], "f")
    b.weighted("fc", "linear", "f", "logits", (10, 8))
    b.op("softmax", "softmax", ["logits"], "probs")
    return b.build(["x"], ["probs"], "resnetish")


def transformer_graph() -> QuantGraph:
    """One pre-norm transformer block with single-head attention and a GELU MLP."""
    d, hidden = 8, 16
    b = GraphBuilder()
    b.op("blk.ln1", "layernorm", ["x"], "h1")
    for proj in ("q", "k", "v"):
        b.weighted(f"blk.attn.{proj}", "linear", "h1", f"{proj}_out", (d, d))
    b.op("blk.attn.kt", "transpose", ["k_out"], "kt_out")
    b.op("blk.attn.scores", "matmul", ["q_out", "kt_out"], "s")
    b.op("blk.attn.softmax", "softmax", ["s"], "a")
    b.op("blk.attn.ctx", "matmul", ["a", "v_out"], "c")
    b.weighted("blk.attn.o", "linear", "c", "o_out", (d, d))
    b.op("blk.res1", "add", ["o_out", "x"], "r1")
    b.op("blk.ln2", "layernorm", ["r1"], "h2")
    b.weighted("blk.mlp.fc1", "linear", "h2", "f1", (hidden, d))
    b.op("blk.mlp.gelu", "gelu", ["f1"], "g")
    b.weighted("blk.mlp.fc2", "linear", "g", "f2", (d, hidden))
    b.op("blk.res2", "add", ["f2", "r1"], "y")
    return b.build(["x"], ["y"], "block")


def names(tensors: list[Any]) -> set[str]:
    return {t.name for t in tensors}


# ------------------------------------------------------------------------------------------------
# (a) residual block: fusions, share groups, bias pairs, decisions
# ------------------------------------------------------------------------------------------------


def test_residual_block(generic: TargetSpec) -> None:
    g = residual_graph()
    p = plan(g, generic)
    assert isinstance(p, QuantPlan) and p.target == "generic" and not p.dynamic
    assert p.warnings == []

    # fusions: conv+bn+relu (longest chain first), add+relu; conv2 feeds add but
    # relu1's output has two readers, so nothing else fuses
    assert p.fusions == [("conv1", "bn1", "relu1"), ("add1", "relu2")]
    # fused intermediates stay float
    for t in ("c1", "b1", "s1"):
        assert t not in p.tensors

    # concat inputs + output, then maxpool and flatten (shared-scale pass-through): one group
    assert p.share_groups == {"cat": ["ba", "bb", "cat_out", "p", "f"]}
    for t in ("ba", "bb", "cat_out", "p", "f"):
        assert p.tensors[t].share_group == "cat"
    assert len({p.tensors[t].spec for t in p.share_groups["cat"]}) == 1

    assert names(p.activations()) == {
        "x",
        "r1",
        "c2",
        "r2",
        "ba",
        "bb",
        "cat_out",
        "p",
        "f",
        "logits",
    }
    assert names(p.weights()) == {
        f"{n}.weight" for n in ("conv1", "conv2", "branch_a", "branch_b", "fc")
    }
    # int32 biases, paired with (input activation, weight) for s_b = s_x * s_w
    bias_of = {t.name: t.bias_of for t in p.biases()}
    assert bias_of == {
        "conv1.bias": ("x", "conv1.weight"),
        "conv2.bias": ("r1", "conv2.weight"),
        "branch_a.bias": ("r2", "branch_a.weight"),
        "fc.bias": ("f", "fc.weight"),
    }
    b = p.tensors["conv1.bias"]
    assert b.spec == QuantSpec("int32", granularity="per_channel", axis=0)
    assert b.node == "conv1"

    w = p.tensors["conv2.weight"]
    assert w.role == "weight" and w.node == "conv2" and w.consumers == ("conv2",)
    assert w.spec == QuantSpec(
        "int8", symmetric=True, narrow_range=True, granularity="per_channel", axis=0
    )
    act = p.tensors["r1"]
    assert act.spec == QuantSpec("int8", symmetric=False)
    assert act.node is None and act.producer == "relu1"
    assert act.consumers == ("conv2", "add1")
    assert p.tensors["x"].producer is None

    reasons = {d.node: d.reason for d in p.decisions}
    assert [d.node for d in p.decisions] == [n.name for n in g.nodes]
    assert reasons["bn1"] == "fused into conv1 (conv+batchnorm+relu)"
    assert reasons["relu2"] == "fused into add1 (add+relu)"
    assert reasons["conv2"] == "quantized: conv"
    assert reasons["conv1"].startswith("quantized: conv, fused with bn1, relu1")
    assert "share one scale" in reasons["cat"]
    assert "shared-scale" in reasons["pool"]
    assert reasons["softmax"] == "op kind softmax is float-only on target 'generic'"
    assert p.float_nodes() == ["softmax"]
    assert set(p.quantized_nodes()) == {n.name for n in g.nodes} - {"softmax"}


def test_share_groups_merge_across_branches(generic: TargetSpec) -> None:
    """Two concats sharing an input, followed by reshape: union-find makes one group."""
    b = GraphBuilder()
    b.weighted("a", "conv", "x", "ya", (4, 3, 1, 1))
    b.weighted("b", "conv", "x", "yb", (4, 3, 1, 1))
    b.weighted("c", "conv", "x", "yc", (4, 3, 1, 1))
    b.op("cat1", "concat", ["ya", "yb"], "k1")
    b.op("cat2", "concat", ["yb", "yc"], "k2")
    b.op("r", "reshape", ["k2"], "k2r")
    b.op("sm1", "softmax", ["k1"], "o1")
    b.op("sm2", "softmax", ["k2r"], "o2")
    p = plan(b.build(["x"], ["o1", "o2"], "branches"), generic)
    assert p.share_groups == {"cat1": ["ya", "yb", "yc", "k1", "k2", "k2r"]}


def test_float_constant_input_and_embedding_indices(generic: TargetSpec) -> None:
    b = GraphBuilder()
    b.nodes.append(Node("emb", "embedding", ["ids"], ["e"], {"weight": "emb.weight"}))
    b.inits["emb.weight"] = np.zeros((50, 8), np.float32)
    b.inits["pos"] = np.zeros((1, 8), np.float32)
    b.inits["shape"] = np.array([8, 1], np.int64)
    b.op("addpos", "add", ["e", "pos"], "ep")
    b.op("rs", "reshape", ["ep", "shape"], "epr")
    b.weighted("fc", "linear", "epr", "y", (4, 8))
    p = plan(b.build(["ids"], ["y"], "emb"), generic)
    # embedding is not quantized on generic; its integer ids never are
    assert "ids" not in p.tensors and "emb.weight" not in p.tensors
    # the float constant read by add is quantized like a weight, with the activation spec
    assert p.tensors["pos"].role == "weight"
    assert p.tensors["pos"].spec == generic.activation.spec()
    assert "shape" not in p.tensors  # integer constant
    assert p.share_groups == {"rs": ["ep", "epr"]}


# ------------------------------------------------------------------------------------------------
# (b) transformer block with overrides
# ------------------------------------------------------------------------------------------------

LINEARS = ("blk.attn.q", "blk.attn.k", "blk.attn.v", "blk.attn.o", "blk.mlp.fc1", "blk.mlp.fc2")


def test_transformer_default(generic: TargetSpec) -> None:
    p = plan(transformer_graph(), generic)
    assert p.warnings == []
    assert names(p.activations()) == {
        "x",
        "h1",
        "q_out",
        "k_out",
        "v_out",
        "kt_out",
        "s",
        "a",
        "c",
        "o_out",
        "r1",
        "h2",
        "f1",
        "g",
        "f2",
        "y",
    }
    assert names(p.weights()) == {f"{n}.weight" for n in LINEARS}
    assert names(p.biases()) == {f"{n}.bias" for n in LINEARS}
    assert p.share_groups == {"blk.attn.kt": ["k_out", "kt_out"]}
    assert p.fusions == []
    floats = {"blk.ln1", "blk.attn.softmax", "blk.ln2", "blk.mlp.gelu"}
    assert set(p.float_nodes()) == floats
    assert p.decision("blk.mlp.gelu").reason == "op kind gelu is float-only on target 'generic'"
    # softmax output is quantized because the quantized matmul reads it, not by softmax itself
    assert p.tensors["a"].producer == "blk.attn.softmax"
    assert p.tensors["a"].consumers == ("blk.attn.ctx",)


def test_transformer_with_overrides(generic: TargetSpec) -> None:
    ov = Overrides(
        ignore_patterns=("blk.attn.*",),
        ignore_ops=("add",),
        layers={"blk.mlp.fc2": {"bits": 4}},
    )
    p = plan(transformer_graph(), generic, ov)
    assert p.warnings == []
    assert set(p.quantized_nodes()) == {"blk.mlp.fc1", "blk.mlp.fc2"}
    assert names(p.activations()) == {"h2", "f1", "g", "f2"}
    assert names(p.weights()) == {"blk.mlp.fc1.weight", "blk.mlp.fc2.weight"}
    assert names(p.biases()) == {"blk.mlp.fc1.bias", "blk.mlp.fc2.bias"}
    assert p.tensors["blk.mlp.fc2.weight"].spec.dtype == "int4"
    assert p.tensors["blk.mlp.fc2.weight"].spec.granularity is Granularity.PER_CHANNEL
    assert p.tensors["blk.mlp.fc1.weight"].spec.dtype == "int8"
    assert p.decision("blk.attn.q").reason == "ignored by override pattern 'blk.attn.*'"
    assert p.decision("blk.res1").reason == "ignored by override op kind 'add'"
    assert p.share_groups == {}


def test_transformer_more_overrides(generic: TargetSpec) -> None:
    ov = Overrides.from_dict(
        {
            "ignore_names": ["blk.attn.scores", "blk.attn.ctx"],
            "weight": {"granularity": "per_group", "group_size": 4},
            "layers": {
                "blk.attn.[qk]": {"weight": {"dtype": "uint4", "symmetric": False}},
                "blk.mlp.*": {"bits": 4, "activation": {"dtype": "uint8"}},
            },
        }
    )
    p = plan(transformer_graph(), generic, ov)
    # per-group axis = reduction axis (1 for (out, in) weights)
    wq = p.tensors["blk.attn.q.weight"].spec
    assert (wq.dtype, wq.granularity, wq.axis, wq.group_size) == (
        "uint4",
        Granularity.PER_GROUP,
        1,
        4,
    )
    assert p.tensors["blk.mlp.fc1.weight"].spec.dtype == "int4"
    assert p.tensors["blk.mlp.fc1.weight"].spec.group_size == 4
    # per-group weights cannot carry an int32 bias (many scales per channel): biases stay float
    assert p.biases() == []
    # the matmuls are ignored: their outputs are quantized only where a quantized
    # node needs them (c is read by o), softmax's output a by nobody; kt_out still passes
    # k_out's scale through the transpose
    assert names(p.activations()) == {
        "x",
        "h1",
        "q_out",
        "k_out",
        "v_out",
        "kt_out",
        "c",
        "o_out",
        "r1",
        "h2",
        "f1",
        "g",
        "f2",
        "y",
    }
    assert "s" not in p.tensors and "a" not in p.tensors
    assert p.share_groups == {"blk.attn.kt": ["k_out", "kt_out"]}
    # mlp layers quantize their inputs with uint8
    assert p.tensors["h2"].spec.dtype == "uint8"
    assert p.tensors["g"].spec.dtype == "uint8"
    # f2 is read by res2 (int8 default) and written by fc2 (uint8): the reader wins, with a warning
    assert p.tensors["f2"].spec.dtype == "int8"
    assert any("'f2'" in w and "blk.res2" in w for w in p.warnings)


def test_channel_axis_from_attrs(generic: TargetSpec) -> None:
    b = GraphBuilder()
    b.weighted("dense", "linear", "x", "y", (8, 4), channel_axis=1)  # TF Dense: (in, out)
    p = plan(b.build(["x"], ["y"], "tf"), generic)
    assert p.tensors["dense.weight"].spec.axis == 1
    p = plan(
        b.build(["x"], ["y"], "tf"),
        generic,
        Overrides(weight={"granularity": "per_group", "group_size": 2}),
    )
    assert p.tensors["dense.weight"].spec.axis == 0  # reduction axis of an (in, out) weight


# ------------------------------------------------------------------------------------------------
# (c) overrides the target does not allow
# ------------------------------------------------------------------------------------------------


def restricted_target() -> TargetSpec:
    """TensorRT-like: symmetric int8, int4 weight-only for linear only, float bias."""
    return TargetSpec.from_dict(
        {
            "name": "trt-like",
            "artifact": "onnx",
            "weight": {"dtype": "int8", "narrow_range": True, "granularity": "per_channel"},
            "activation": {"dtype": "int8", "symmetric": True},
            "bias": {"mode": "float"},
            "allowed": {
                "weight": {
                    "dtypes": ["int8", "fp8_e4m3fn"],
                    "symmetric": [True],
                    "granularities": ["per_channel"],
                },
                "activation": {
                    "dtypes": ["int8", "fp8_e4m3fn"],
                    "symmetric": [True],
                    "granularities": ["per_tensor"],
                },
                "per_op": {
                    "linear": {
                        "weight": {
                            "dtypes": ["int8", "fp8_e4m3fn", "int4"],
                            "granularities": ["per_channel", "per_group"],
                            "group_sizes": [64, 128],
                        }
                    }
                },
                "weight_only_dtypes": ["int4"],
            },
            "ops": {
                "quantize": ["conv", "linear", "matmul", "add", "concat"],
                "float_only": ["softmax", "layernorm", "gelu"],
                "shared_scale": ["concat", "max_pool", "flatten", "transpose"],
                "quantize_outputs": "when_consumed",
            },
            "fusions": [["conv", "relu"]],
        },
        source="trt-like.toml",
    )


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            {"layers": {"conv*": {"bits": 4}}},
            [
                "layer 'conv1' (conv)",
                "weight dtype 'int4'",
                "overrides.layers['conv*']",
                "target 'trt-like'",
                "allowed: int8, fp8_e4m3fn",
            ],
        ),
        (
            {"activation": {"symmetric": False}},
            [
                "layer 'conv1' (conv)",
                "activation symmetric False",
                "overrides.activation",
                "allowed: True",
            ],
        ),
        (
            {
                "layers": {
                    "fc": {
                        "weight": {"dtype": "int4", "granularity": "per_group", "group_size": 32}
                    }
                }
            },
            [
                "layer 'fc' (linear)",
                "weight group_size 32",
                "overrides.layers['fc'].weight",
                "allowed: 64, 128",
            ],
        ),
        (
            {"weight": {"dtype": "uint8"}},
            [
                "layer 'conv1' (conv)",
                "weight dtype 'uint8'",
                "overrides.weight",
                "allowed: int8, fp8_e4m3fn",
            ],
        ),
        (
            {"weight": {"granularity": "per_tensor"}},
            ["weight granularity 'per_tensor'", "allowed: per_channel"],
        ),
        (
            {"layers": {"fc": {"bits": 5}}},
            ["layer 'fc' (linear)", "bits 5", "overrides.layers['fc']", "choose bits from"],
        ),
        (
            {"dynamic": True},
            ["overrides.dynamic", "target 'trt-like' does not support dynamic", "allowed: false"],
        ),
    ],
)
def test_disallowed_overrides(overrides: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(PlanError) as info:
        plan(residual_graph(), restricted_target(), Overrides.from_dict(overrides))
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg


def test_malformed_overrides() -> None:
    with pytest.raises(
        PlanError,
        match=r"overrides: unknown key 'ignore'; allowed keys: "
        r"ignore_names, ignore_patterns, ignore_ops",
    ):
        Overrides.from_dict({"ignore": ["fc"]})
    with pytest.raises(PlanError, match=r"overrides\.layers\['fc'\]: unknown key 'wieght'"):
        Overrides.from_dict({"layers": {"fc": {"wieght": {}}}})
    with pytest.raises(
        PlanError,
        match=r"overrides\.weight: unknown key 'dynamic'.*overrides\."
        r"dynamic",
    ):
        Overrides(weight={"dynamic": True})
    with pytest.raises(
        PlanError,
        match=r"overrides\.ignore_ops\[0\]: 'softmaxx' is not an op "
        r"kind; allowed: conv",
    ):
        Overrides(ignore_ops=("softmaxx",))
    with pytest.raises(PlanError, match=r"overrides\.activation\.dtype: unknown number format"):
        Overrides(activation={"dtype": "int9"})
    with pytest.raises(PlanError, match="expected a list of strings"):
        Overrides(ignore_names="fc")


def test_overrides_round_trip() -> None:
    ov = Overrides(
        ignore_patterns=("*.attn*",),
        ignore_ops=("softmax",),
        layers={"fc": {"bits": 4}},
        dynamic=True,
    )
    assert Overrides.from_dict(ov.to_dict()) == ov


def test_restricted_target_placement() -> None:
    t = restricted_target()
    ov = Overrides(
        layers={"fc": {"weight": {"dtype": "int4", "granularity": "per_group", "group_size": 64}}}
    )
    g = residual_graph()
    g.initializers["fc.weight"] = np.ones((10, 128), np.float32)  # room for groups of 64
    p = plan(g, t, ov)
    # float bias mode: no bias tensors at all
    assert p.biases() == []
    # int4 is weight-only here: fc's input (the flatten output) stays float
    assert p.tensors["fc.weight"].spec.dtype == "int4"
    assert p.tensors["fc.weight"].spec.axis == 1
    assert p.decision("fc").reason == "quantized weight-only (int4): linear"
    # when_consumed: conv2's output is quantized (add1 reads it), logits are not (softmax is float)
    assert "c2" in p.tensors and "logits" not in p.tensors
    # conv+relu fuses; relu1's output feeds conv2 and add1 (both quantized)
    assert ("conv1", "bn1", "relu1") not in p.fusions  # no conv+bn+relu chain on this target
    assert "r1" in p.tensors
    # concat inputs are quantized (shared), its output only if a quantized reader wants it:
    # max_pool -> flatten -> weight-only fc: nothing downstream quantizes, so the group is ba, bb
    assert p.share_groups == {"cat": ["ba", "bb"]}
    assert "cat_out" not in p.tensors and "p" not in p.tensors
    assert p.decision("pool").quantized is False


# ------------------------------------------------------------------------------------------------
# (d) dynamic mode
# ------------------------------------------------------------------------------------------------


def test_dynamic_mode(generic: TargetSpec) -> None:
    p = plan(transformer_graph(), generic, Overrides(dynamic=True))
    assert p.dynamic
    # weighted ops and matmuls quantize their inputs dynamically; adds, transpose stay float
    assert names(p.activations()) == {"h1", "q_out", "kt_out", "a", "v_out", "c", "h2", "g"}
    for tp in p.activations():
        assert tp.spec.dynamic and tp.spec.granularity is Granularity.PER_TENSOR
        assert tp.spec.dtype == "int8" and not tp.spec.symmetric
        assert tp.share_group is None and tp.fixed_params is None
    # weights stay static, biases float, no outputs, no share groups
    assert names(p.weights()) == {f"{n}.weight" for n in LINEARS}
    assert all(not tp.spec.dynamic for tp in p.weights())
    assert p.biases() == []
    assert p.share_groups == {}
    assert p.decision("blk.res1").quantized is False
    assert "dynamic mode" in p.decision("blk.res1").reason
    assert p.decision("blk.attn.q").reason == "quantized (dynamic activations): linear"
    assert p.decision("blk.attn.kt").quantized is False


def test_dynamic_per_token_override(generic: TargetSpec) -> None:
    p = plan(
        transformer_graph(),
        generic,
        Overrides(dynamic=True, activation={"granularity": "per_token", "symmetric": True}),
    )
    spec = p.tensors["h1"].spec
    assert spec == QuantSpec("int8", symmetric=True, granularity="per_token", axis=-1, dynamic=True)
    # the same override without dynamic mode is an invalid spec, named clearly
    with pytest.raises(
        PlanError,
        match=r"layer 'blk\.attn\.q' \(linear\): invalid activation "
        r"spec \(set by overrides\.activation\).*dynamic",
    ):
        plan(transformer_graph(), generic, Overrides(activation={"granularity": "per_token"}))


def test_dynamic_default_target() -> None:
    doc = {
        "name": "tpu-like",
        "artifact": "none",
        "weight": {"dtype": "int8", "granularity": "per_channel"},
        "activation": {"dtype": "int8"},
        "bias": {"mode": "float"},
        "dynamic": {"supported": True, "default": True, "granularity": "per_token"},
        "ops": {"quantize": ["linear"]},
    }
    t = TargetSpec.from_dict(doc)
    p = plan(transformer_graph(), t)
    assert p.dynamic
    assert p.tensors["h1"].spec.granularity is Granularity.PER_TOKEN
    # the user may still ask for static activations
    p = plan(transformer_graph(), t, Overrides(dynamic=False))
    assert not p.dynamic and not p.tensors["h1"].spec.dynamic


# ------------------------------------------------------------------------------------------------
# (e) warnings
# ------------------------------------------------------------------------------------------------


def test_patterns_matching_nothing_warn(generic: TargetSpec) -> None:
    ov = Overrides(
        ignore_names=("blk.attn.qq",),
        ignore_patterns=("*.attention.*",),
        ignore_ops=("conv",),
        layers={"decoder.*": {"bits": 4}, "blk.ln*": {"bits": 4}},
    )
    p = plan(transformer_graph(), generic, ov)
    text = "\n".join(p.warnings)
    assert "overrides.ignore_names: no node named 'blk.attn.qq'" in text
    assert "overrides.ignore_patterns: pattern '*.attention.*' matches no node" in text
    assert "overrides.ignore_ops: no node of op kind 'conv'" in text
    assert "overrides.layers: pattern 'decoder.*' matches no node" in text
    assert "pattern 'blk.ln*' matches only nodes whose specs it cannot change" in text
    # nothing was ignored, the plan is the default one
    assert p.tensors.keys() == plan(transformer_graph(), generic).tensors.keys()


# ------------------------------------------------------------------------------------------------
# fixed outputs
# ------------------------------------------------------------------------------------------------


def test_fixed_output_propagates_through_share_group() -> None:
    t = TargetSpec.from_dict(
        {
            "name": "tflite-like",
            "artifact": "tflite",
            "weight": {"dtype": "int8", "narrow_range": True, "granularity": "per_channel"},
            "activation": {"dtype": "int8", "symmetric": False},
            "bias": {"mode": "int32"},
            "ops": {
                "quantize": ["linear", "softmax"],
                "shared_scale": ["reshape"],
                "fixed_output": {"softmax": {"scale": "1/256", "zero_point": -128}},
            },
        }
    )
    b = GraphBuilder()
    b.weighted("fc", "linear", "x", "logits", (10, 4))
    b.op("sm", "softmax", ["logits"], "probs")
    b.op("rs", "reshape", ["probs"], "out")
    p = plan(b.build(["x"], ["out"], "clf"), t)
    expected = QuantParams(np.float32(1 / 256), np.int32(-128))
    assert p.tensors["probs"].fixed_params == expected
    assert p.tensors["out"].fixed_params == expected  # same group, same params
    assert p.tensors["logits"].fixed_params is None
    assert p.share_groups == {"rs": ["probs", "out"]}
    assert "fixed output scale 0.00390625, zero point -128" in p.decision("sm").reason
    d = p.to_dict()
    assert d["tensors"]["probs"]["fixed_params"] == {"scale": 1 / 256, "zero_point": -128}


def test_plan_to_dict_and_explain(generic: TargetSpec) -> None:
    p = plan(residual_graph(), generic)
    d = p.to_dict()
    assert d["target"] == "generic"
    assert d["share_groups"] == {"cat": ["ba", "bb", "cat_out", "p", "f"]}
    assert d["tensors"]["conv1.bias"]["bias_of"] == ["x", "conv1.weight"]
    assert d["decisions"][0] == {
        "node": "conv1",
        "op": "conv",
        "quantized": True,
        "reason": p.decision("conv1").reason,
    }
    text = p.explain()
    assert "softmax" in text and "float-only" in text


# ------------------------------------------------------------------------------------------------
# ops.only_between_quantized: elementwise ops quantized only inside integer chains
# ------------------------------------------------------------------------------------------------


def between_target(quantize_outputs: str = "when_consumed") -> TargetSpec:
    return TargetSpec.from_dict(
        {
            "name": "chain-only",
            "artifact": "onnx",
            "weight": {"dtype": "int8", "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "symmetric": False},
            "ops": {
                "quantize": ["conv", "linear", "matmul", "add", "concat"],
                "only_between_quantized": ["add", "concat"],
                "float_only": ["softmax", "layernorm", "gelu", "batchnorm"],
                "shared_scale": ["concat", "max_pool", "flatten", "transpose"],
                "quantize_outputs": quantize_outputs,
            },
            "fusions": [["conv", "relu"]],
        },
        source="chain-only",
    )


def test_between_quantized_keeps_cnn_residual_add() -> None:
    b = GraphBuilder()
    b.weighted("conv1", "conv", "x", "c1", (8, 3, 3, 3), channel_axis=0)
    b.op("relu1", "relu", ["c1"], "r1")
    b.weighted("conv2", "conv", "r1", "c2", (8, 8, 3, 3), channel_axis=0)
    b.op("add1", "add", ["c2", "r1"], "s1")
    b.op("relu2", "relu", ["s1"], "r2")
    b.weighted("conv3", "conv", "r2", "c3", (8, 8, 1, 1), channel_axis=0)
    p = plan(b.build(["x"], ["c3"], "res"), between_target())
    assert p.decision("add1").quantized, p.decision("add1").reason
    assert {"c2", "r1", "r2"} <= names(p.activations())  # relu2 is folded into the Q of r2


def test_between_quantized_keeps_transformer_adds_float() -> None:
    p = plan(transformer_graph(), between_target())
    for add in ("blk.res1", "blk.res2"):
        d = p.decision(add)
        assert not d.quantized
        assert "only between quantized ops" in d.reason
    assert (
        "comes from" in p.decision("blk.res1").reason
        or "feeds only float" in p.decision("blk.res1").reason
    )
    # linear outputs go on in float (no quantized reader), their inputs are quantized
    acts = names(p.activations())
    assert "h1" in acts and "c" in acts and "o_out" not in acts and "r1" not in acts
    # the attention matmul reads quantized q and transposed k
    assert {"q_out", "kt_out"} <= acts


def test_between_quantized_rejects_mask_add_and_chains_of_adds() -> None:
    b = GraphBuilder()
    b.weighted("q", "linear", "x", "q_out", (8, 8))
    b.weighted("k", "linear", "x", "k_out", (8, 8))
    b.op("kt", "transpose", ["k_out"], "kt_out")
    b.op("scores", "matmul", ["q_out", "kt_out"], "s")
    b.op("mask_ln", "layernorm", ["m"], "mask")  # stands for the float mask arithmetic
    b.op("masked", "add", ["s", "mask"], "sm")
    b.op("probs", "softmax", ["sm"], "p")
    b.op("a1", "add", ["q_out", "k_out"], "t1")
    b.op("a2", "add", ["t1", "q_out"], "t2")
    b.weighted("fc", "linear", "t2", "y", (4, 8))
    p = plan(b.build(["x", "m"], ["p", "y"], "attn"), between_target())
    assert not p.decision("masked").quantized
    assert "mask_ln (layernorm, float)" in p.decision("masked").reason
    # a chain of adds between linears stays integer end to end
    assert p.decision("a1").quantized and p.decision("a2").quantized


def test_only_between_must_be_quantized_kinds() -> None:
    from quantfw.target import TargetSpecError

    with pytest.raises(TargetSpecError, match="only_between_quantized.*'mul'.*in ops.quantize"):
        TargetSpec.from_dict(
            {
                "name": "bad",
                "artifact": "onnx",
                "weight": {"dtype": "int8"},
                "activation": {"dtype": "uint8", "symmetric": False},
                "ops": {"quantize": ["add"], "only_between_quantized": ["mul"]},
            },
            source="bad.toml",
        )


# ------------------------------------------------------------------------------------------------
# ops.weight_only: embedding tables
# ------------------------------------------------------------------------------------------------


def weight_only_target(**ops: Any) -> TargetSpec:
    return TargetSpec.from_dict(
        {
            "name": "wo",
            "artifact": "onnx",
            "weight": {"dtype": "int8", "narrow_range": True, "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "symmetric": False},
            "dynamic": {"supported": True},
            "ops": {"quantize": ["linear", "add"], "weight_only": ["embedding"], **ops},
        }
    )


def embedding_graph() -> QuantGraph:
    b = GraphBuilder()
    b.nodes.append(Node("word", "embedding", ["ids"], ["w"], {"weight": "word.weight"}))
    b.nodes.append(Node("pos", "embedding", ["pos_ids"], ["p"], {"weight": "pos.weight"}))
    b.inits["word.weight"] = b.rng.standard_normal((50, 8)).astype(np.float32)
    b.inits["pos.weight"] = b.rng.standard_normal((16, 8)).astype(np.float32)
    b.op("sum", "add", ["w", "p"], "e")
    b.weighted("fc", "linear", "e", "y", (4, 8))
    return b.build(["ids", "pos_ids"], ["y"], "embedder")


def test_weight_only_embedding_table_per_row() -> None:
    p = plan(embedding_graph(), weight_only_target())
    for table, node in (("word.weight", "word"), ("pos.weight", "pos")):
        tp = p.tensors[table]
        assert tp.role == "weight" and tp.node == node and tp.consumers == (node,)
        assert tp.spec == QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0)
        d = p.decision(node)
        assert d.quantized and d.reason == "weight-only: embedding table int8 per row"
    # the integer indices never are quantized; the lookups' outputs only because the add
    # reading them is a quantized op (its inputs), not on the embedding's behalf
    assert not {"ids", "pos_ids"} & set(p.tensors)
    assert p.tensors["w"].consumers == ("sum",) and p.tensors["p"].consumers == ("sum",)
    p = plan(embedding_graph(), weight_only_target(quantize=["linear"]))
    assert not {"ids", "pos_ids", "w", "p"} & set(p.tensors)
    assert p.tensors["word.weight"].role == "weight"
    assert p.tensors["fc.weight"].spec.axis == 0


def test_weight_only_embedding_follows_overrides_and_modes() -> None:
    t = weight_only_target()
    g = embedding_graph()
    # a user's per-layer spec and the node's channel axis are honoured
    p = plan(g, t, Overrides(layers={"word": {"weight": {"granularity": "per_tensor"}}}))
    assert p.tensors["word.weight"].spec.granularity is Granularity.PER_TENSOR
    assert p.decision("word").reason == "weight-only: embedding table int8 per tensor"
    g.node("pos").attrs["channel_axis"] = 1
    p = plan(g, t, Overrides(layers={"pos": {"bits": 4}}))
    assert p.tensors["pos.weight"].spec.axis == 1 and p.tensors["pos.weight"].spec.dtype == "int4"
    assert p.decision("pos").reason == "weight-only: embedding table int4 per column"
    assert not any("matches only nodes" in w for w in p.warnings)
    # ignored lookups stay float
    p = plan(g, t, Overrides(ignore_names=("word",)))
    assert "word.weight" not in p.tensors and not p.decision("word").quantized
    # dynamic mode: the table is a constant either way
    p = plan(g, t, Overrides(dynamic=True))
    assert p.tensors["word.weight"].role == "weight" and p.decision("word").quantized
    # a target without weight_only keeps the tables float, as before
    p = plan(
        g, TargetSpec.from_dict({**t.to_dict(), "ops": {**t.to_dict()["ops"], "weight_only": []}})
    )
    assert "word.weight" not in p.tensors
    assert p.decision("word").reason == "op kind embedding is not quantized on target 'wo'"


def test_warns_when_nothing_is_quantized(generic: TargetSpec) -> None:
    b = GraphBuilder()
    b.op("sum", "add", ["x", "z"], "y")
    g = b.build(["x", "z"], ["y"], "adds")
    p = plan(g, generic, Overrides(dynamic=True))  # generic quantizes adds statically only
    assert not p.quantized_nodes()
    assert any(
        "no node of graph 'adds' is quantized" in w and "try static" in w for w in p.warnings
    )
    assert not any("no node" in w for w in plan(g, generic).warnings)


def test_min_reduction_spares_depthwise_convs() -> None:
    t = TargetSpec.from_dict(
        {
            "name": "short",
            "artifact": "none",
            "weight": {"dtype": "int8", "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "symmetric": False},
            "ops": {"quantize": ["conv"], "min_reduction": 16},
        },
        source="short",
    )
    b = GraphBuilder()
    b.weighted("stem", "conv", "x", "s", (8, 1, 3, 3), channel_axis=0)  # 9 products: float
    b.weighted("dw", "conv", "s", "d", (8, 1, 3, 3), channel_axis=0, groups=8)  # depthwise
    b.weighted("pw", "conv", "d", "y", (8, 8, 3, 3), channel_axis=0)  # 72 products
    p = plan(b.build(["x"], ["y"], "net"), t)
    assert not p.decision("stem").quantized and "min_reduction = 16" in p.decision("stem").reason
    assert p.decision("dw").quantized and p.decision("pw").quantized
