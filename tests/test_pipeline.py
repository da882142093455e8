"""quantfw.quantize end to end on real data, checked against independent computations."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

import quantfw
from quantfw import AlgorithmInfo, BackendInfo, Node, QuantGraph, Stage
from quantfw.api import Artifact
from quantfw.interpreter import run_graph
from quantfw.numerics import dequantize, fake_quantize, quantize
from quantfw.plugins import make_plugin_manager, use_plugin_manager
from quantfw.samples import digits_data, train_digits_mlp
from quantfw.target import TargetSpec


@pytest.fixture(scope="module")
def digits():
    """The sample MLP on the sample digits split, images as rows of 64 pixels."""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn (the demo extra)")
    d = digits_data()
    x_tr, x_te = d.x_train.reshape(-1, 64), d.x_test.reshape(-1, 64)
    return train_digits_mlp(x_tr, d.y_train, steps=300), x_tr, x_te, d.y_test


def _acc(fn, x, y):
    return float((fn({"pixels": x})["logits"].argmax(1) == y).mean())


def test_int8_digits_keeps_accuracy(digits):
    graph, x_tr, x_te, y_te = digits
    float_acc = _acc(lambda b: run_graph(graph, b), x_te, y_te)
    assert float_acc > 0.93  # the model really learned something
    res = quantfw.quantize(graph, x_tr[:128], target="generic")
    q_acc = _acc(res.simulate(), x_te, y_te)
    assert abs(q_acc - float_acc) <= 0.01
    assert res.recipe.provenance["calibration_samples"] == 128
    assert res.summary.nodes == {"quantized": 3, "float": 0}  # fc1 (+ fused relu1), fc2


def test_simulation_equals_hand_computed_reference(digits):
    """The simulated model is exactly: fq(x) -> fq(W1) -> +fq_int32(b1) -> relu -> fq -> fq(W2) ..."""
    graph, x_tr, x_te, _ = digits
    res = quantfw.quantize(graph, x_tr[:64], target="generic")
    r = res.recipe.tensors

    def fq(name, v):
        return fake_quantize(v, r[name].params, r[name].spec) if name in r else v

    init = graph.initializers
    x = x_te[:32]
    h = fq("pixels", x) @ fq("fc1.weight", init["fc1.weight"]).T + fq("fc1.bias", init["fc1.bias"])
    a = fq("relu1_out", fq("fc1_out", np.maximum(h, 0)) if "fc1_out" in r else np.maximum(h, 0))
    y = a @ fq("fc2.weight", init["fc2.weight"]).T + fq("fc2.bias", init["fc2.bias"])
    y = fq("logits", y)
    got = res.simulate()({"pixels": x})["logits"]
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)

    # int32 bias: scale = s_x * s_w per output channel, zero point 0
    b = r["fc1.bias"]
    assert b.spec.dtype == "int32"
    np.testing.assert_allclose(
        b.params.scale, r["pixels"].params.scale * r["fc1.weight"].params.scale, rtol=1e-6
    )
    # weights: per output channel, symmetric, codes inside the narrow grid
    w = r["fc1.weight"]
    codes = quantize(init["fc1.weight"], w.params, w.spec)
    assert w.params.scale.shape == (init["fc1.weight"].shape[0],)
    assert codes.min() >= w.spec.qmin and codes.max() <= w.spec.qmax
    assert np.all(np.abs(codes).max(axis=1) == w.spec.qmax)  # amax maps onto the top code
    np.testing.assert_allclose(
        dequantize(codes, w.params, w.spec), fq("fc1.weight", init["fc1.weight"])
    )


def _concat_graph():
    rng = np.random.default_rng(3)
    return QuantGraph(
        [
            Node("a", "linear", ["x"], ["ya"], weights={"weight": "wa"}),
            Node("b", "linear", ["x"], ["yb"], weights={"weight": "wb"}),
            Node("cat", "concat", ["ya", "yb"], ["c"], attrs={"axis": 1}),
            Node("head", "linear", ["c"], ["out"], weights={"weight": "wh"}),
        ],
        ["x"],
        ["out"],
        {
            "wa": rng.normal(size=(4, 6)).astype(np.float32),
            "wb": 10 * rng.normal(size=(4, 6)).astype(np.float32),
            "wh": rng.normal(size=(2, 8)).astype(np.float32),
        },
    )


def test_shared_scale_group_gets_one_param_set():
    g = _concat_graph()
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    res = quantfw.quantize(g, x, algorithms=["mse"])
    r = res.recipe.tensors
    assert r["ya"].params == r["yb"].params == r["c"].params
    assert r["ya"].share_group is not None and r["ya"].share_group == r["c"].share_group
    # the group's range covers the widest branch (b is 10x wider than a)
    yb = x @ g.initializers["wb"].T
    span = float(r["c"].params.scale) * 255
    assert span >= 0.5 * (yb.max() - min(yb.min(), 0))


@pytest.mark.parametrize("method", ["minmax", "moving_average", "percentile", "entropy", "mse"])
def test_every_calibrator_runs_and_stays_close(digits, method):
    graph, x_tr, x_te, y_te = digits
    res = quantfw.quantize(graph, x_tr[:128], algorithms=[method])
    float_out = run_graph(graph, {"pixels": x_te})["logits"]
    sim = res.simulate()({"pixels": x_te})["logits"]
    agree = float((float_out.argmax(1) == sim.argmax(1)).mean())
    assert agree > 0.95, (method, agree)


def test_algorithm_pairs_may_be_lists_as_json_gives_them(digits):
    graph, x_tr, _, _ = digits
    as_list = quantfw.quantize(graph, x_tr[:128], algorithms=[["percentile", {"percentile": 99.0}]])
    as_tuple = quantfw.quantize(
        graph, x_tr[:128], algorithms=[("percentile", {"percentile": 99.0})]
    )
    default = quantfw.quantize(graph, x_tr[:128], algorithms=["percentile"])
    for name, t in as_tuple.recipe.of_role("activation").items():
        np.testing.assert_array_equal(as_list.recipe.tensors[name].params.scale, t.params.scale)
    assert any(
        not np.array_equal(t.params.scale, default.recipe.tensors[n].params.scale)
        for n, t in as_list.recipe.of_role("activation").items()
    )  # the options were used
    with pytest.raises(TypeError, match="give a name or a"):
        quantfw.quantize(graph, x_tr[:128], algorithms=[["percentile", 99.0]])


def test_dynamic_needs_no_calibration(digits):
    graph, _, x_te, y_te = digits
    res = quantfw.quantize(graph, None, overrides={"dynamic": True})
    acts = res.recipe.of_role("activation")
    assert acts and all(t.spec.dynamic and t.params is None for t in acts.values())
    assert _acc(res.simulate(), x_te, y_te) > 0.9


def test_pipeline_errors(digits):
    graph, x_tr, _, _ = digits
    with pytest.raises(ValueError, match="needs calibration data"):
        quantfw.quantize(graph, None)
    with pytest.raises(ValueError, match="choose one calibrate algorithm"):
        quantfw.quantize(graph, x_tr[:8], algorithms=["minmax", "entropy"])
    with pytest.raises(LookupError, match="entropyy"):
        quantfw.quantize(graph, x_tr[:8], algorithms=["entropyy"])
    with pytest.raises(LookupError, match="generic"):
        quantfw.quantize(graph, x_tr[:8], target="genric")
    with pytest.raises(RuntimeError, match="no backend"):
        quantfw.quantize(graph, x_tr[:8], output="out.bin")
    with pytest.raises(TypeError, match="name or a \\(name, options\\)"):
        quantfw.quantize(graph, x_tr[:8], algorithms=[42])


class _Recorder:
    def __init__(self):
        self.events = []
        self.progress = []

    @quantfw.hookimpl
    def quantfw_on_stage(self, event):
        self.events.append((event.stage.value, event.phase, event.algorithm))

    @quantfw.hookimpl
    def quantfw_on_progress(self, task, done, total):
        self.progress.append(done)


class _NeedsMissing:
    @quantfw.hookimpl
    def quantfw_register_algorithms(self, register):
        register(
            AlgorithmInfo(
                "needs-missing",
                Stage.TRANSFORM,
                lambda: None,
                requires=("no_such_module_for_quantfw",),
                install_hint="pip install x",
            )
        )


class _ToyBackend:
    """A third-party target + backend: writes integer weights to an .npz and runs them."""

    @quantfw.hookimpl
    def quantfw_register_targets(self, register):
        register(
            TargetSpec.from_dict(
                {
                    "name": "toy-int8",
                    "description": "toy",
                    "artifact": "npz",
                    "weight": {"dtype": "int8", "granularity": "per_channel"},
                    "activation": {"dtype": "uint8", "symmetric": False},
                    "ops": {"quantize": ["linear"]},
                },
                source="toy",
            )
        )

    @quantfw.hookimpl
    def quantfw_register_backends(self, register):
        # lowers from the QuantGraph itself ("qgraph"): every captured model has that form
        register(BackendInfo("toy", _ToyLowering, artifact_format="npz", accepts=("qgraph",)))


class _ToyLowering:
    def lower(self, model, graph, recipe, output, *, target=None):
        assert model is graph and target.name == "toy-int8"
        import io

        from quantfw.fileio import atomic_write_bytes

        buf = io.BytesIO()
        codes = {
            k: quantize(graph.initializers[k], t.params, t.spec)
            for k, t in recipe.of_role("weight").items()
        }
        np.savez(buf, **codes)
        atomic_write_bytes(output, buf.getvalue())
        return Artifact(output, recipe.target, "npz", {"weights": sorted(codes)})

    def run(self, artifact, inputs):
        raise RuntimeError("toy backend cannot run")


def test_events_plugins_and_backends(digits, tmp_path):
    graph, x_tr, _, _ = digits
    pm = make_plugin_manager(load_entrypoints=False)
    rec = _Recorder()
    pm.register(rec, name="recorder")
    pm.register(_NeedsMissing(), name="needs-missing")
    pm.register(_ToyBackend(), name="toy")
    with use_plugin_manager(pm):
        res = quantfw.quantize(graph, x_tr[:64], batch_size=16)
        assert rec.events == [
            ("transform", "started", "smoothquant"),
            ("transform", "finished", "smoothquant"),
            ("calibrate", "started", "minmax"),
            ("calibrate", "finished", "minmax"),
            ("round", "started", "nearest"),
            ("round", "finished", "nearest"),
        ]
        assert rec.progress == [1, 2, 3, 4]
        with pytest.raises(Exception, match="no_such_module_for_quantfw"):
            quantfw.quantize(graph, x_tr[:8], algorithms=["needs-missing"])
        out = tmp_path / "model.npz"
        res = quantfw.quantize(graph, x_tr[:32], target="toy-int8", output=out)
        assert res.artifact.path == out and res.artifact.metadata["weights"] == [
            "fc1.weight",
            "fc2.weight",
        ]
        with np.load(out, allow_pickle=False) as data:
            assert data["fc1.weight"].dtype == np.int8
        assert "toy wrote" in res.summary.backend


def test_consumer_side_quantization_leaves_float_readers_float():
    """On a when_consumed target only the quantized reader sees the quantized value."""
    rng = np.random.default_rng(5)
    g = QuantGraph(
        [
            Node("ln", "layernorm", ["x"], ["h"]),
            Node("fc", "linear", ["h"], ["f"], weights={"weight": "w"}),
            Node("res", "add", ["f", "h"], ["y"]),
        ],
        ["x"],
        ["y"],
        {"w": rng.normal(size=(6, 6)).astype(np.float32)},
    )
    target = TargetSpec.from_dict(
        {
            "name": "edges",
            "artifact": "none",
            "weight": {"dtype": "int8", "granularity": "per_channel"},
            "activation": {"dtype": "uint8", "symmetric": False},
            "ops": {
                "quantize": ["linear", "add"],
                "only_between_quantized": ["add"],
                "float_only": ["layernorm"],
                "quantize_outputs": "when_consumed",
            },
        },
        source="edges",
    )

    class EdgesPlugin:
        @quantfw.hookimpl
        def quantfw_register_targets(self, register):
            register(target)

    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(EdgesPlugin(), name="edges")
    x = rng.normal(size=(32, 6)).astype(np.float32)
    with use_plugin_manager(pm):
        res = quantfw.quantize(g, x, target="edges", algorithms=["none"])
    h_rec = res.recipe.tensors["h"]
    assert h_rec.consumers == ("fc",)
    assert not res.plan.decision("res").quantized
    # reference by hand: fc reads fq(h), the residual add reads the float h
    h = run_graph(g, {"x": x}, outputs=["h"])["h"]
    w = res.recipe.tensors["w"]
    f = (
        fake_quantize(h, h_rec.params, h_rec.spec)
        @ fake_quantize(g.initializers["w"], w.params, w.spec).T
    )
    np.testing.assert_allclose(res.simulate()({"x": x})["y"], f + h, rtol=1e-5, atol=1e-5)
    # and the recipe keeps that through a save/load
    back = quantfw.Recipe.load(res.recipe.save(Path(tempfile.mkdtemp()) / "r")[0])
    assert back.tensors["h"].consumers == ("fc",)


def test_plugins_see_the_registry_of_the_quantization_in_progress():
    """A component that asks for another during a run (a frontend capturing through another
    format's frontend) gets the registry the run was given, not the process-wide one."""
    from quantfw.graph_frontend import GraphFrontend
    from quantfw.plugins import build_registry, current_registry, get_registry

    seen = []

    class Spy(GraphFrontend):
        def capture(self, model):
            seen.append(current_registry())
            return super().capture(model)

    class Plugin:
        @quantfw.hookimpl
        def quantfw_register_frontends(self, register):
            register(quantfw.FrontendInfo("spy", Spy))

    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(Plugin(), name="spy")
    mine = build_registry(pm)
    g = QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"], ["y"], {"w": np.ones((2, 3), np.float32)},
    )  # fmt: skip
    quantfw.quantize(g, np.ones((4, 3), np.float32), frontend="spy", registry=mine)
    assert seen == [mine] and current_registry() is get_registry()
