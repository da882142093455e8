"""The narrow digits ResNet (the learned-rounding benchmark model): deterministic training, float
accuracy, the structures it must have once captured, W8A8 on x86 keeping accuracy with the ONNX
Runtime artifact computing what the simulation computes, its ONNX twin, and the benchmark
harness run on it."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin's tests need torch")
pytest.importorskip("onnxruntime", reason="the x86 artifact runs in ONNX Runtime")

import quantfw  # noqa: E402
from quantfw.samples import digits_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
    return digits_data()


@pytest.fixture(scope="module")
def net():
    from quantfw_torch.models import digits_resnet

    return digits_resnet(0)  # trained once per process (a few seconds)


@pytest.fixture(scope="module")
def w8a8(net, data, tmp_path_factory):
    from quantfw_torch.models import digits_torch_model

    out = tmp_path_factory.mktemp("resnet") / "w8a8.onnx"
    result = quantfw.quantize(digits_torch_model(net), data.x_calib, target="x86-vnni", output=out)
    return result, out


def _logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_training_is_reproducible_for_a_seed():
    from quantfw_torch.digits_resnet import train_digits_resnet

    first = train_digits_resnet(3, epochs=1)
    second = train_digits_resnet(3, epochs=1)
    other = train_digits_resnet(4, epochs=1)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert any(not np.array_equal(first[k], other[k]) for k in first if k.endswith("weight"))


@pytest.mark.slow
def test_full_training_is_reproducible(net):
    from quantfw_torch.digits_resnet import train_digits_resnet

    again = train_digits_resnet(0)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), again[name], err_msg=name)


def test_float_accuracy(net, data):
    assert data.accuracy(_logits(net, data.x_test)) >= 0.97
    assert 5000 <= sum(p.numel() for p in net.parameters()) <= 8000
    assert not net.training


def test_each_call_returns_its_own_weights(net):
    from quantfw_torch.models import digits_resnet

    other = digits_resnet(0)
    with torch.no_grad():
        other.head.weight.zero_()
    assert net.head.weight.abs().sum() > 0


def test_captured_graph_has_the_structures_reconstruction_must_handle(w8a8):
    graph = w8a8[0].graph
    producers = graph.producers()
    convs = graph.nodes_of(["conv"])
    assert len(convs) == 10
    # BatchNorm is folded: no normalisation node is left, every conv carries a bias
    assert {n.op.value for n in graph.nodes} <= {"conv", "relu", "add", "concat", "reduce_mean",
                                                 "linear"}  # fmt: skip
    assert all(graph.weight(c, "bias") is not None for c in convs)

    adds = graph.nodes_of(["add"])
    assert len(adds) == 2
    fed_by = [[producers.get(t) for t in a.inputs] for a in adds]
    # identity skip: one input of the first add comes straight from a ReLU
    assert sorted(p.op.value for p in fed_by[0]) == ["conv", "relu"]
    # projection skip: both inputs of the second add are convs, one of them 1x1
    assert [p.op.value for p in fed_by[1]] == ["conv", "conv"]
    assert any(graph.weight(p).shape[2:] == (1, 1) for p in fed_by[1])

    depthwise = [c for c in convs if c.attrs.get("groups", 1) > 1]
    assert len(depthwise) == 1
    w = graph.weight(depthwise[0])
    assert depthwise[0].attrs["groups"] == w.shape[0] == 16 and w.shape[1] == 1

    (cat,) = graph.nodes_of(["concat"])
    assert len(cat.inputs) == 2 and all(producers[t].op.value == "relu" for t in cat.inputs)
    (pool,) = graph.nodes_of(["reduce_mean"])
    assert pool.inputs == cat.outputs and {a % 4 for a in pool.attrs["axes"]} == {2, 3}
    (head,) = graph.nodes_of(["linear"])
    assert head.inputs == pool.outputs


def test_w8a8_on_x86_keeps_accuracy_and_the_artifact_computes_the_simulation(w8a8, net, data):
    from quantfw_onnx.backend import OnnxRuntimeBackend

    result, out = w8a8
    sess = OnnxRuntimeBackend().session(str(out))
    feed = {sess.get_inputs()[0].name: data.x_test}
    art = sess.run(None, feed)[0]
    (sim,) = result.simulate()(feed).values()
    float_acc = data.accuracy(_logits(net, data.x_test))
    assert data.accuracy(art) >= float_acc - 0.01
    # 1.0 where measured (Zen 4, VNNI); one image of 539 is allowed to flip on a CPU whose
    # ONNX Runtime kernels round or saturate differently
    assert np.mean(art.argmax(-1) == np.asarray(sim).argmax(-1)) >= 538 / 539


def test_onnx_twin_computes_the_module(net, data):
    import onnxruntime as ort
    from quantfw_torch.models import digits_resnet_onnx

    twin = digits_resnet_onnx(module=net)
    assert [i.name for i in twin.graph.input] == ["image"]
    assert [o.name for o in twin.graph.output] == ["logits"]
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    x = data.x_test[:100]
    got = sess.run(None, {"image": x})[0]
    np.testing.assert_allclose(got, _logits(net, x), atol=1e-4, rtol=0)
    # any batch size: the batch dimension stays dynamic
    assert sess.run(None, {"image": x[:3]})[0].shape == (3, 10)


def _harness():
    spec = importlib.util.spec_from_file_location(
        "reconstruction_bench", ROOT / "benchmarks" / "reconstruction.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS_ARGV = ["--models", "resnet", "--settings", "W8A8,W3A8", "--variants", "plain", "--quick"]


def test_benchmark_harness_smoke(net, tmp_path, capsys):
    """``--quick``, nearest, the ResNet: W8A8 and W3A8 run, an unregistered method is reported
    and skipped."""
    bench = _harness()
    argv = [*HARNESS_ARGV, "--methods", "nearest,no_such_algo", "--workdir", str(tmp_path)]
    assert bench.main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["resnet"]["rows"]
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("W8A8", "nearest"), ("W8A8", "no_such_algo"), ("W3A8", "nearest"), ("W3A8", "no_such_algo")
    ]  # fmt: skip
    w8, missing, w3 = rows[0], rows[1], rows[2]
    assert missing["note"] == "not available: algorithm 'no_such_algo' is not registered"
    assert w8["accuracy"] >= 0.97 and w8["argmax_agree"] == 1.0
    assert w3["accuracy"] < w8["accuracy"]
    assert w3["accuracy"] == w3["sim_accuracy"]
    printed = capsys.readouterr().out
    assert "not available: algorithm 'no_such_algo'" in printed and "W3A8" in printed


@pytest.mark.slow
def test_benchmark_harness_is_repeatable(net, tmp_path):
    bench = _harness()
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        argv = [*HARNESS_ARGV, "--methods", "nearest", "--workdir", str(tmp_path), "--json"]
        assert bench.main([*argv, str(out)]) == 0
        runs.append(json.loads(out.read_text())["resnet"]["rows"])
    for a, b in zip(*runs, strict=True):
        assert a["accuracy"] == b["accuracy"] and a["sim_accuracy"] == b["sim_accuracy"]


def test_harness_rows_name_their_algorithms_in_stage_order():
    bench = _harness()
    algos, why = bench.resolve_algorithms(["nearest"], seed=0, quick=True, explicit={})
    assert algos == [("nearest", {})] and why == ""
    assert bench.algorithm_list("adaround", "cle+bc") == [
        "cle", "smoothquant", "adaround", "bias_correction"
    ]  # fmt: skip


def test_harness_passes_seed_and_quick_iterations_to_algorithms_that_take_them(
    quantfw_registry_with,
):
    from quantfw import AlgorithmInfo, Stage

    class Learned:
        def __init__(self, iters: int = 1000, seed: int = 0):
            if iters < 1:
                raise ValueError("iters must be positive")
            self.iters, self.seed = iters, seed

        def run(self, ctx):
            pass

    class Plugin:
        @quantfw.hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("learned_probe", Stage.ROUND, lambda **o: Learned(**o)))

    quantfw_registry_with(Plugin())
    bench = _harness()
    full, _ = bench.resolve_algorithms(["learned_probe"], seed=5, quick=False, explicit={})
    quick, _ = bench.resolve_algorithms(["learned_probe"], seed=5, quick=True, explicit={})
    mine, _ = bench.resolve_algorithms(
        ["learned_probe"], seed=5, quick=True, explicit={"learned_probe": {"iters": 7}}
    )
    assert full == [("learned_probe", {"seed": 5})]
    assert quick == [("learned_probe", {"seed": 5, "iters": bench.QUICK_ITERS})]
    assert mine == [("learned_probe", {"seed": 5, "iters": 7})]
