"""AdaRound and AdaQuant, written once on the layer-problem seam, learning on the torch engine:
on the core ``graph`` frontend (errors measured with the reference numerics), on the digits CNN
as ONNX and as torch (the same codes), and deployed to ONNX Runtime (the artifact computes its
simulation, on x86-vnni and on x86-avx2 with its pair limit)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="AdaRound learns on the torch engine")
pytest.importorskip("onnxruntime", reason="the artifacts run in ONNX Runtime")

from click.testing import CliRunner  # noqa: E402
from quantfw_onnx.samples import digits_cnn_onnx  # noqa: E402
from quantfw_torch.models import digits_cnn_module  # noqa: E402

import quantfw  # noqa: E402
from quantfw import Node, QuantGraph  # noqa: E402
from quantfw.interpreter import layer_output  # noqa: E402
from quantfw.numerics import fake_quantize, quantize  # noqa: E402
from quantfw.pairs import pairs_within  # noqa: E402
from quantfw.samples import digits_cnn_weights, digits_data  # noqa: E402

torch.set_num_threads(1)
FAST = {"iters": 60, "max_samples": 128}


def one_linear(k: int = 64, n: int = 16) -> QuantGraph:
    rng = np.random.default_rng(0)
    return QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w", "bias": "b"})],
        ["x"],
        ["y"],
        {
            "w": (rng.normal(size=(n, k)) / np.sqrt(k)).astype(np.float32),
            "b": (rng.normal(size=n) * 0.1).astype(np.float32),
        },
        name="one",
    )


def rows(seed: int, n: int = 512, k: int = 64) -> np.ndarray:
    """Correlated inputs with a mean, from one fixed distribution (``seed``: the draw)."""
    fixed = np.random.default_rng(100)
    mix, mean = fixed.normal(size=(k, k)) / np.sqrt(k), fixed.normal(size=k)
    return (np.random.default_rng(seed).normal(size=(n, k)) @ mix + mean).astype(np.float32)


def reconstruction_mse(res, x: np.ndarray) -> float:
    """The deployed layer's output error against the float layer, by the reference numerics:
    the input and the weight fake-quantized with the recipe's parameters."""
    g, r = res.graph, res.recipe
    node, w, b = g.nodes[0], g.initializers["w"], g.initializers["b"]
    tw, tx = r.tensors["w"], r.tensors["x"]
    y = layer_output(
        node,
        fake_quantize(x, tx.params, tx.spec),
        fake_quantize(r.weights.get("w", w), tw.params, tw.spec),
        r.weights.get("b", b),
    )
    return float(np.mean((y - layer_output(node, x, w, b)) ** 2))


@pytest.fixture(scope="module")
def one_layer_results():
    x = rows(1)
    out = {}
    for algo in ("nearest", "adaround", "adaquant"):  # the defaults: 1000 steps, < 1 s here
        res = quantfw.quantize(
            one_linear(), x, target="generic", algorithms=["none", algo],
            overrides={"weight": {"bits": 4}},
        )  # fmt: skip
        out[algo] = res
    return out


@pytest.mark.parametrize("name", ["adaround", "adaquant"])
def test_learning_lowers_the_reconstruction_error_of_nearest_at_4_bits(one_layer_results, name):
    nearest, learned = one_layer_results["nearest"], one_layer_results[name]
    for x in (rows(1), rows(2)):  # the calibration rows, and held-out rows
        ratio = reconstruction_mse(learned, x) / reconstruction_mse(nearest, x)
        assert ratio <= (0.7 if name == "adaround" else 0.85), (name, ratio)
    entry = learned.recipe.provenance[name]["layers"]["fc"]
    assert entry["loss_learned"] < entry["loss_nearest"] and 0 < entry["codes_changed"] < 0.5
    w, t = learned.recipe.weights["w"], learned.recipe.tensors["w"]
    np.testing.assert_array_equal(fake_quantize(w, t.params, t.spec), w)  # on the grid
    assert np.abs(quantize(w, t.params, t.spec)).max() <= 7


def test_adaquant_keeps_the_int32_bias_scale_consistent(one_layer_results):
    r = one_layer_results["adaquant"].recipe
    assert r.provenance["adaquant"]["layers"]["fc"]["scale_changed"] > 0
    bias, w, x = r.tensors["b"], r.tensors["w"], r.tensors["x"]
    np.testing.assert_array_equal(
        bias.params.scale, (x.params.scale.reshape(()) * w.params.scale).astype(np.float32)
    )
    assert not np.array_equal(r.weights["b"], one_layer_results["adaquant"].graph.initializers["b"])


@pytest.mark.parametrize("name", ["adaround", "adaquant"])
def test_a_fixed_seed_gives_identical_weights(name):
    x = rows(1, n=128)
    runs = [
        quantfw.quantize(
            one_linear(),
            x,
            target="generic",
            algorithms=["none", (name, {"iters": 40})],
            overrides={"weight": {"bits": 4}},
        )  # fmt: skip
        for _ in range(2)
    ]
    a, b = (r.recipe for r in runs)
    assert a.weights.keys() == b.weights.keys() and "w" in a.weights
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])


@pytest.fixture(scope="module")
def digits():
    return digits_cnn_weights(), digits_data()


@pytest.mark.slow  # the torch export takes most of its ~15 s
def test_onnx_and_torch_models_get_the_same_codes(digits):
    """One implementation, two frontends: the same network captured from ONNX and from torch
    learns exactly the same codes (the layers' inputs agree to float rounding, the learning runs
    on the same torch engine, and no code sits on a rounding boundary at the end)."""
    weights, data = digits
    kw = {
        "target": "x86-vnni",
        "algorithms": [("adaround", FAST)],
        "overrides": {"weight": {"bits": 4}},
    }
    a = quantfw.quantize(digits_cnn_onnx(weights), data.x_calib, **kw)
    b = quantfw.quantize(digits_cnn_module(), data.x_calib, **kw)
    learned = [k for k in a.recipe.weights if a.recipe.tensors[k].role == "weight"]
    assert len(learned) >= 3 and set(learned) <= set(b.recipe.weights)
    for k in learned:
        ta, tb = a.recipe.tensors[k], b.recipe.tensors[k]
        np.testing.assert_array_equal(ta.params.scale, tb.params.scale)
        qa = quantize(a.recipe.weights[k], ta.params, ta.spec)
        np.testing.assert_array_equal(qa, quantize(b.recipe.weights[k], tb.params, tb.spec), k)
        assert np.any(qa != quantize(weights[k], ta.params, ta.spec)), k  # it did learn


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
@pytest.mark.parametrize("bits", [4, 2])
def test_the_onnx_runtime_artifact_computes_the_simulation(digits, kit, tmp_path, target, bits):
    weights, data = digits
    res = quantfw.quantize(
        digits_cnn_onnx(weights), data.x_calib, target=target, output=tmp_path / "m.onnx",
        algorithms=[("adaround", FAST)], overrides={"weight": {"bits": bits}},
    )  # fmt: skip
    assert res.recipe.provenance["adaround"]["layers"]
    x = data.x_test[:64]
    sim = res.simulate()({"image": x})["logits"]
    art = kit.ort_run(tmp_path / "m.onnx", {"image": x}, optimize=False)[0]
    np.testing.assert_allclose(art, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))


def test_on_avx2_the_learned_8_bit_codes_keep_the_pair_limit(digits, kit, tmp_path):
    """On x86-avx2 the 8-bit weight grid has a pair limit: the learned codes are brought within
    it before they are written, so quantizing the written weight changes nothing and ONNX
    Runtime computes the simulation."""
    weights, data = digits
    res = quantfw.quantize(
        digits_cnn_onnx(weights), data.x_calib, target="x86-avx2", output=tmp_path / "m.onnx",
        algorithms=[("adaround", {**FAST, "lr": 0.1})],
    )  # fmt: skip
    layers = res.recipe.provenance["adaround"]["layers"]
    written = [k for k in res.recipe.weights if res.recipe.tensors[k].role == "weight"]
    assert written
    for k in written:
        t = res.recipe.tensors[k]
        assert t.spec.pair_limit is not None
        w = res.recipe.weights[k]
        codes = np.rint(w / t.params.scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int64)
        assert pairs_within(codes, t.spec), k
        np.testing.assert_array_equal(quantize(w, t.params, t.spec), codes, k)
    assert sum(e["pair_limit_moved"] for e in layers.values()) > 0  # the limit did bite
    x = data.x_test[:64]
    sim = res.simulate()({"image": x})["logits"]
    art = kit.ort_run(tmp_path / "m.onnx", {"image": x}, optimize=False)[0]
    np.testing.assert_allclose(art, sim, rtol=0, atol=1e-5 * float(np.ptp(sim)))


def test_mixed_bits_per_layer(digits):
    weights, data = digits
    res = quantfw.quantize(
        digits_cnn_onnx(weights), data.x_calib, target="x86-vnni",
        algorithms=[("adaround", FAST)], overrides={"layers": {"fc*": {"bits": 3}}},
    )  # fmt: skip
    for k, w in res.recipe.weights.items():
        t = res.recipe.tensors[k]
        if t.role != "weight":
            continue
        assert t.spec.dtype == ("int3" if k.startswith("fc") else "int8"), k
        assert np.abs(quantize(w, t.params, t.spec)).max() <= t.spec.qmax
    layers = res.recipe.provenance["adaround"]["layers"]
    assert {"fc1", "fc2"} <= set(layers)
    # the ReLU the runtime fuses into a layer is part of its reconstruction
    assert layers["conv2"]["activation"] == layers["fc1"]["activation"] == "relu"
    assert layers["fc2"]["activation"] is None


def test_too_few_samples_warns_with_the_number_needed():
    """Fewer calibration rows than the layer has input features: said in the summary."""
    x = rows(1, n=24)  # 24 rows for 64 input features
    res = quantfw.quantize(
        one_linear(), x, target="generic", algorithms=["none", ("adaround", {"iters": 5})],
        overrides={"weight": {"bits": 4}},
    )  # fmt: skip
    (note,) = res.recipe.provenance["warnings"]
    assert "layer 'fc'" in note and "24 rows" in note and "at least 64 calibration samples" in note
    assert note in str(res.summary)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"weight": {"granularity": "per_group", "group_size": 16}}, "quantized per_group"),
        ({"weight": {"dtype": "fp8_e4m3"}}, "grid is fp8_e4m3fn, not an integer grid"),
        ({"dynamic": True}, "its input is quantized dynamically"),
    ],
)
@pytest.mark.parametrize("name", ["adaround", "adaquant"])
def test_a_layer_that_cannot_be_learned_keeps_nearest_and_says_why(name, overrides, why):
    res = quantfw.quantize(
        one_linear(), rows(1, n=96), target="generic", algorithms=["none", (name, {"iters": 5})],
        overrides=overrides,
    )  # fmt: skip
    (note,) = res.recipe.provenance["warnings"]
    assert f"{name}: layer 'fc' keeps nearest rounding: " in note and why in note, note
    assert "w" not in res.recipe.weights and res.recipe.provenance[name]["layers"] == {}


def test_command_line(model_files, tmp_path):
    from quantfw.cli import cli

    model, calib = model_files
    out = CliRunner().invoke(
        cli,
        ["quantize", str(model), "--calib", str(calib), "-a", "none", "--weight-bits", "4",
         "-a", "adaround:iters=20,beta=10:2,lam=0.01", "--recipe-out", str(tmp_path / "r")],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    recipe = quantfw.Recipe.load(tmp_path / "r")
    assert recipe.provenance["adaround"]["beta"] == [10.0, 2.0]
    bad = CliRunner().invoke(
        cli, ["quantize", str(model), "--calib", str(calib), "-a", "adaround:iters=-1"]
    )
    assert bad.exit_code != 0 and "iters=-1 must be a positive integer" in bad.output


def test_the_documented_example_runs():
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "algorithms" / "adaround.md"
    (block,) = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    exec(compile(block, str(doc), "exec"), {})


def test_engines_detach_and_optimize():
    """The two engine calls learned rounding needs: Adam on the torch engine minimises a
    quadratic; a straight-through rounding passes the gradient; numpy refuses to optimise."""
    from quantfw_torch.engine import TorchEngine

    from quantfw.api import NumpyEngine

    eng = TorchEngine()
    v = eng.asarray(np.array([3.0, -2.0]), requires_grad=True)
    opt = eng.optimizer([v], lr=0.1)
    first = opt.step(((v - 1.0) ** 2).sum())
    for _ in range(200):
        last = opt.step(((v - 1.0) ** 2).sum())
    assert first == pytest.approx(13.0) and last < 1e-3
    x = eng.asarray(np.array([0.3, 1.6]), requires_grad=True)
    (x + eng.detach(torch.round(x) - x)).sum().backward()
    np.testing.assert_array_equal(eng.to_numpy(x.grad), [1.0, 1.0])
    with pytest.raises(ValueError, match=r'pip install "quantfw\[torch\]"'):
        NumpyEngine().optimizer([np.zeros(2)], lr=0.1)
    assert NumpyEngine().detach(np.ones(2)).tolist() == [1.0, 1.0]


def test_sequence_inputs_are_reconstructed_on_token_rows():
    """A linear layer on ``(batch, tokens, features)`` learns from its token rows: the same rows
    given as 3-D sequences give exactly the codes they give as a 2-D matrix (with the step's
    row count matched), and calibration batches of different lengths join."""
    x, g = rows(1), one_linear()
    settings = {"target": "generic", "overrides": {"weight": {"bits": 4}}}

    def run(batches, batch_size):
        res = quantfw.quantize(
            g, batches, algorithms=["none", ("adaround", {"iters": 60, "batch_size": batch_size})],
            **settings,
        )  # fmt: skip
        return res.recipe

    seq = run([x[i : i + 64].reshape(8, 8, 64) for i in range(0, 512, 64)], 4)  # 4 x 8 rows
    flat = run([x[i : i + 64] for i in range(0, 512, 64)], 32)
    assert seq.provenance["adaround"]["layers"]["fc"]["codes_changed"] > 0
    np.testing.assert_array_equal(seq.weights["w"], flat.weights["w"])

    ragged = run([x[:40].reshape(8, 5, 64), x[40:112].reshape(8, 9, 64)], 4)
    entry = ragged.provenance["adaround"]["layers"]["fc"]
    assert entry["loss_learned"] < entry["loss_nearest"] and "kept" not in entry


def test_the_held_out_check_keeps_nearest_where_learned_rounding_only_fits_the_data():
    """4,096 independent input features and 320 calibration rows: the rounding can fit those
    rows and nothing else.  Judged on its own data (holdout 0, the default) AdaRound's weight is
    worse than nearest's on fresh rows; the held-out check sees that and keeps nearest."""
    k = 4096
    g = one_linear(k=k)
    x = np.random.default_rng(1).normal(size=(320, k)).astype(np.float32)
    fresh = np.random.default_rng(2).normal(size=(2000, k)).astype(np.float32)
    common = {"target": "generic", "overrides": {"weight": {"bits": 4}}}
    near = quantfw.quantize(g, x, algorithms=["none"], **common)
    opts = {"iters": 300, "batch_size": 64}
    fitted = quantfw.quantize(
        g, x, algorithms=["none", ("adaround", {**opts, "holdout": 0})], **common
    )
    checked = quantfw.quantize(
        g, x, algorithms=["none", ("adaround", {**opts, "holdout": 0.1})], **common
    )

    e_fit = fitted.recipe.provenance["adaround"]["layers"]["fc"]
    assert e_fit["loss_learned"] < 0.7 * e_fit["loss_nearest"]  # on the calibration rows
    assert reconstruction_mse(fitted, fresh) > reconstruction_mse(near, fresh)  # overfitted
    e = checked.recipe.provenance["adaround"]["layers"]["fc"]
    assert e["kept"] == "nearest" and e["held_out_learned"] >= e["held_out_nearest"]
    assert "w" not in checked.recipe.weights
    assert reconstruction_mse(checked, fresh) == reconstruction_mse(near, fresh)


def _mlp() -> QuantGraph:
    rng = np.random.default_rng(0)
    return QuantGraph(
        [
            Node("fc1", "linear", ["x"], ["h"], weights={"weight": "w1"}),
            Node("relu", "relu", ["h"], ["a"]),
            Node("fc2", "linear", ["a"], ["y"], weights={"weight": "w2"}),
        ],
        ["x"],
        ["y"],
        {
            "w1": (rng.normal(size=(48, 64)) / 8).astype(np.float32),
            "w2": (rng.normal(size=(16, 48)) / 7).astype(np.float32),
        },
        name="mlp",
    )


@pytest.mark.parametrize(
    ("inputs", "sequences", "used"),
    [
        ("quantized", False, "quantized"),
        ("float", False, "float"),
        ("auto", False, "quantized"),  # rows: as the paper does
        ("auto", True, "float"),  # sequences: the transformer case
        ("quantized", True, "quantized"),
    ],
)
def test_inputs_option_says_whether_earlier_layers_rounding_reaches_a_layer(
    inputs, sequences, used
):
    """fc1 at 4 or 2 bits changes fc2's quantized-model input, so from quantized inputs fc2
    learns different codes; from float inputs it reads the float model and learns the same
    codes whatever fc1's rounding.  ``auto`` takes float inputs for sequences only."""
    x = rows(1)
    if sequences:
        x = x.reshape(64, 8, 64)
    codes = []
    for fc1_bits in (4, 2):
        res = quantfw.quantize(
            _mlp(), x, target="generic",
            algorithms=["none", ("adaround", {"iters": 60, "batch_size": 8, "inputs": inputs})],
            overrides={"weight": {"bits": 4}, "layers": {"fc1": {"bits": fc1_bits}}},
        )  # fmt: skip
        record = res.recipe.provenance["adaround"]
        assert record["inputs"] == inputs and record["layers"]["fc2"]["inputs"] == used
        codes.append(res.recipe.weights["w2"])
    assert np.array_equal(codes[0], codes[1]) == (used == "float")
