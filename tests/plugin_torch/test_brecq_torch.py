"""BRECQ and QDrop on torch models: the automatic partition, learned rounding that beats nearest
on a residual block, QDrop at p = 0 being BRECQ, reproducibility, and the ONNX Runtime artifact
computing what the torch simulation computes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin's tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from torch import nn  # noqa: E402
from torch_test_models import build_resnet  # noqa: E402

import quantfw  # noqa: E402
from quantfw.algorithms.block_partition import auto_blocks, user_blocks  # noqa: E402

FAST = {"iters": 40, "batch_size": 16}


class TinyEncoder(nn.Module):
    """One pre-norm transformer layer (attention and MLP sublayers, residual adds) and a head."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.ln1(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * 0.25, dim=-1) @ self.v(h)
        x = x + self.o(a)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


def _images(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _quantize(model, x, round_alg, bits=4, **kw):
    return quantfw.quantize(
        model,
        x,
        target="x86-vnni",
        algorithms=["none", round_alg],
        overrides={"weight": {"bits": bits}},
        **kw,
    )


def _names(graph, nodes, kind):
    return [n for n in nodes if graph.node(n).op.value == kind]


def test_automatic_partition_of_a_residual_net():
    res = _quantize(build_resnet(), _images(8), "nearest", bits=8)
    g = res.graph
    layers = [n.name for n in g.nodes if n.op.value in ("conv", "linear")]
    blocks = auto_blocks(g, layers)
    kinds = [[g.node(n).op.value for n in b] for b in blocks]
    # the stem with its ReLU; the residual block up to the ReLU after the add; the classifier
    assert kinds == [["conv", "relu"], ["conv", "relu", "conv", "add", "relu"], ["linear"]]
    # a cap of one layer per block splits the residual block
    capped = auto_blocks(g, layers, max_layers=1)
    assert [len(_names(g, b, "conv") + _names(g, b, "linear")) for b in capped] == [1, 1, 1, 1]
    # user blocks by pattern; the layers they leave out are single-layer blocks
    conv1, conv2 = layers[1], layers[2]
    mine = user_blocks(g, [[conv1, "node_relu_1"], [conv2]], layers)
    assert mine[0] == [layers[0], "node_relu"] and mine[1] == [conv1, "node_relu_1"]
    assert mine[2] == [conv2] and mine[3] == [layers[3]]
    with pytest.raises(ValueError, match="matches no node"):
        user_blocks(g, [["nothing*"]], layers)
    with pytest.raises(ValueError, match="is in blocks"):
        user_blocks(g, [[conv1], ["node_Conv_5*"]], layers)


def test_automatic_partition_of_a_transformer_layer():
    x = np.random.default_rng(0).standard_normal((8, 5, 16)).astype(np.float32)
    res = quantfw.quantize(TinyEncoder().eval(), x, target="x86-vnni", algorithms=["none"])
    g = res.graph
    linears = [n.name for n in g.nodes if n.op.value == "linear"]
    blocks = auto_blocks(g, linears)
    got = [[g.node(n).op.value for n in b if g.node(n).op.value in ("linear", "layernorm", "add")]
           for b in blocks]  # fmt: skip
    assert got == [
        ["layernorm", "linear", "linear", "linear", "linear", "add"],  # attention sublayer
        ["layernorm", "linear", "linear", "add"],  # MLP sublayer
        ["linear"],  # the head
    ]


def _block_error(res, x, tensor):
    """Mean squared error of ``tensor`` in the quantized model against the float model."""
    batches = [{"x": x}]
    (q,) = res.frontend.collect(res.model, res.graph, [tensor], batches, recipe=res.recipe)
    (f,) = res.frontend.collect(res.model, res.graph, [tensor], batches)
    return float(np.mean((q[tensor] - f[tensor]) ** 2))


@pytest.mark.slow
def test_brecq_lowers_the_residual_blocks_error():
    m, x = build_resnet(), _images(64)
    near = _quantize(m, x, "nearest", bits=2)
    learned = _quantize(m, x, ("brecq", {"iters": 100, "batch_size": 16}), bits=2)
    blocks = learned.recipe.provenance["brecq"]["blocks"]
    residual = blocks[1]
    assert len(residual["weights"]) == 2 and residual["kept"] == "learned"
    assert residual["loss_learned"] < 0.9 * residual["loss_nearest"]
    # measured independently, on held-out data, in the quantized model vs the float model
    residual_out = learned.graph.node(residual["nodes"][-1]).outputs[0]
    held_out = _images(64, seed=5)
    assert _block_error(learned, held_out, residual_out) < _block_error(
        near, held_out, residual_out
    )


_RUNS: dict = {}


def _run(tmp_path_factory, alg, bits, **opts):
    """``_quantize`` of the residual net with ``FAST`` options and an artifact, once per
    arguments in this module (the export dominates a run's time)."""
    key = (alg, bits, tuple(sorted(opts.items())))
    if key not in _RUNS:
        out = tmp_path_factory.mktemp("brecq") / "m.onnx"
        _RUNS[key] = _quantize(
            build_resnet(), _images(32), (alg, {**FAST, **opts}), bits, output=out
        )
    return _RUNS[key]


def _blocks(res, alg):
    return [
        {k: v for k, v in b.items() if k != "seconds"} for b in res.recipe.provenance[alg]["blocks"]
    ]


@pytest.mark.slow
def test_qdrop_at_p_0_is_brecq(tmp_path_factory):
    a = _run(tmp_path_factory, "brecq", 2)
    b = _run(tmp_path_factory, "qdrop", 2, p=0.0)
    assert set(a.recipe.weights) == set(b.recipe.weights) and len(a.recipe.weights) >= 2
    for name, w in a.recipe.weights.items():
        np.testing.assert_array_equal(w, b.recipe.weights[name], err_msg=name)
    assert _blocks(a, "brecq") == _blocks(b, "qdrop")
    # dropping (p = 0.5) changes what is learned
    assert _blocks(_run(tmp_path_factory, "qdrop", 2), "qdrop") != _blocks(b, "qdrop")


@pytest.mark.slow
def test_a_fixed_seed_gives_identical_weights(tmp_path_factory):
    c = _run(tmp_path_factory, "qdrop", 2)
    d = _quantize(build_resnet(), _images(32), ("qdrop", FAST), bits=2)
    assert _blocks(c, "qdrop") == _blocks(d, "qdrop")
    for name, w in c.recipe.weights.items():
        np.testing.assert_array_equal(w, d.recipe.weights[name], err_msg=name)


@pytest.mark.parametrize(
    ("alg", "bits", "opts"),
    [("brecq", 4, {}), ("qdrop", 4, {}), ("qdrop", 2, {}), ("brecq", 2, {"fisher": True})],
)
def test_the_ort_artifact_computes_the_simulation(kit, tmp_path_factory, alg, bits, opts):
    res = _run(tmp_path_factory, alg, bits, **opts)
    record = res.recipe.provenance[alg]
    assert record["fisher"] is bool(opts.get("fisher"))
    assert any(b["kept"] == "learned" for b in record["blocks"])
    held_out = _images(16, seed=9)
    sim = res.simulate()({"x": held_out})[res.graph.outputs[0]]
    art = kit.ort_run(res.artifact.path, {"x": held_out}, optimize=False)[0]
    np.testing.assert_allclose(sim, art, rtol=0, atol=1e-5 * float(np.abs(art).max()))
    optimized = kit.ort_run(res.artifact.path, {"x": held_out}, optimize=True)[0]
    assert np.abs(sim - optimized).max() <= 0.02 * float(np.abs(art).max())


def test_block_reconstruction_needs_a_frontend_with_blocks():
    res = _quantize(build_resnet(), _images(8), "nearest")
    onnx_model = res.graph.forms["onnx"]
    with pytest.raises(ValueError, match=r"'onnx' frontend.*adaround.*torch\.nn\.Module"):
        quantfw.quantize(onnx_model, _images(8), target="x86-vnni", algorithms=["qdrop"])


def test_options_are_checked_and_warnings_given():
    with pytest.raises(ValueError, match="qdrop: option 'p' must be a probability"):
        _quantize(build_resnet(), _images(8), ("qdrop", {"p": 1.5}))
    with pytest.raises(ValueError, match="iters"):
        _quantize(build_resnet(), _images(8), ("brecq", {"iters": 0}))


def test_too_few_samples_are_warned_about(tmp_path_factory):
    notes = _run(tmp_path_factory, "brecq", 4).recipe.provenance["warnings"]
    assert any("32 calibration samples" in n and "at least 256" in n for n in notes)


def test_the_documented_example_runs(capsys):
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "algorithms" / "brecq-qdrop.md"
    text = doc.read_text(encoding="utf-8")
    (code,) = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    exec(compile(code, str(doc), "exec"), {"__name__": "example"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].count("conv") == 2 and "add" in lines[0]  # the residual block, together


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU visible to torch")
def test_qdrop_trains_on_the_gpu(kit, tmp_path):
    res = _quantize(
        build_resnet(),
        _images(32),
        ("qdrop", {**FAST, "device": "cuda"}),
        bits=2,
        output=tmp_path / "m.onnx",
    )
    residual = res.recipe.provenance["qdrop"]["blocks"][1]
    assert residual["kept"] == "learned" and residual["loss_learned"] < residual["loss_nearest"]
    held_out = _images(16, seed=9)
    sim = res.simulate()({"x": held_out})[res.graph.outputs[0]]
    art = kit.ort_run(res.artifact.path, {"x": held_out}, optimize=False)[0]
    np.testing.assert_allclose(sim, art, rtol=0, atol=1e-5 * float(np.abs(art).max()))


def test_qdrop_on_a_transformer_layer_and_user_blocks(kit, tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 5, 16)).astype(np.float32)
    res = quantfw.quantize(
        TinyEncoder().eval(),
        x,
        target="x86-vnni",
        algorithms=["none", ("qdrop", {**FAST, "blocks": [["*"]]})],
        output=tmp_path / "m.onnx",
    )
    (block,) = res.recipe.provenance["qdrop"]["blocks"]  # one user block: the whole graph
    assert len(block["weights"]) == 7 and np.isfinite(block["loss_learned"])
    held_out = np.random.default_rng(1).standard_normal((8, 5, 16)).astype(np.float32)
    name = res.graph.inputs[0]
    sim = res.simulate()({name: held_out})[res.graph.outputs[0]]
    art = kit.ort_run(res.artifact.path, {name: held_out}, optimize=False)[0]
    np.testing.assert_allclose(sim, art, rtol=0, atol=1e-5 * float(np.abs(art).max()))


def test_calibration_batches_of_different_lengths_learn_together():
    """Sequences of 5 and 7 tokens in different batches (padding per batch) cannot stack, so
    the block learns from two shape groups, a step drawing from one; the loss over both is
    what decides, and it is what a run over the same samples in one batch would report."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((16, n, 16)).astype(np.float32) for n in (5, 7)]
    algorithms = ["none", ("brecq", {**FAST, "blocks": [["*"]]})]
    res = quantfw.quantize(TinyEncoder().eval(), batches, target="x86-vnni", algorithms=algorithms)
    (block,) = res.recipe.provenance["brecq"]["blocks"]
    assert block["shape_groups"] == 2 and block["kept"] == "learned"
    assert block["loss_learned"] < block["loss_nearest"]
    # nearest rounding's loss is the sample-weighted mean over the groups: the same samples
    # split into 32 batches of one sample give it too
    singles = [b[i : i + 1] for b in batches for i in range(16)]
    alone = quantfw.quantize(TinyEncoder().eval(), singles, target="x86-vnni",
                             algorithms=algorithms)  # fmt: skip
    (other,) = alone.recipe.provenance["brecq"]["blocks"]
    assert other["shape_groups"] == 2
    assert other["loss_nearest"] == pytest.approx(block["loss_nearest"], rel=1e-5)


class MaskedTokenEncoder(nn.Module):
    """Token ids, an attention mask and two transformer layers, written the way Hugging Face
    BERT is: the additive mask is made once from ``attention_mask`` and read by every layer,
    and the heads are split with sizes taken from the model input ``ids``."""

    def __init__(self, d: int = 16, vocab: int = 40, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "q": nn.Linear(d, d),
                    "k": nn.Linear(d, d),
                    "v": nn.Linear(d, d),
                    "o": nn.Linear(d, d),
                    "fc1": nn.Linear(d, 2 * d),
                    "fc2": nn.Linear(2 * d, d),
                    "ln1": nn.LayerNorm(d),
                    "ln2": nn.LayerNorm(d),
                }
            )  # fmt: skip
            for _ in range(2)
        )

    def forward(self, ids, attention_mask):
        b, s = ids.shape
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -1e4
        x = self.emb(ids)
        for lay in self.layers:

            def split(t, lay=lay):
                return t.view(b, s, self.heads, -1).transpose(1, 2)

            q, k, v = split(lay["q"](x)), split(lay["k"](x)), split(lay["v"](x))
            a = torch.softmax(q @ k.transpose(-1, -2) * 0.35 + mask, dim=-1) @ v
            x = lay["ln1"](x + lay["o"](a.transpose(1, 2).reshape(b, s, -1)))
            x = lay["ln2"](x + lay["fc2"](torch.nn.functional.gelu(lay["fc1"](x))))
        return x


def _token_batches(n=64, s=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 40, size=(n, s)).astype(np.int64)
    mask = np.ones((n, s), dtype=np.int64)
    mask[::3, -2:] = 0  # some padded sequences
    ids[mask == 0] = 0
    return [{"ids": ids[i : i + 16], "attention_mask": mask[i : i + 16]} for i in range(0, n, 16)]


def test_blocks_of_a_masked_encoder_read_model_inputs(kit, tmp_path):
    """The mask every layer reads does not glue the layers into one block; a post-norm
    sublayer's LayerNorm ends its block; a block whose head split takes its sizes from the
    model input ``ids`` computes them itself, from the integer token ids as an input; the
    artifact computes the simulation."""
    res = quantfw.quantize(
        MaskedTokenEncoder().eval(), _token_batches(), target="x86-vnni",
        algorithms=["none", ("brecq", FAST)], overrides={"weight": {"bits": 4}},
        output=tmp_path / "m.onnx",
    )  # fmt: skip
    g = res.graph
    blocks = res.recipe.provenance["brecq"]["blocks"]
    per_block = [[g.node(n).op.value for n in b["nodes"] if g.node(n).op.value == "linear"]
                 for b in blocks]  # fmt: skip
    assert per_block == [["linear"] * 4, ["linear"] * 2] * 2  # attention, MLP; per layer
    # post-norm sublayers: each block's output is taken after its LayerNorm, what the next reads
    assert [g.node(b["nodes"][-1]).op.value for b in blocks] == ["layernorm"] * 4
    for b in blocks[::2]:  # attention: the hidden state, the mask and the ids for the sizes
        assert len(b["inputs"]) == 3 and "ids" in b["inputs"], b["inputs"]
    for b in blocks[1::2]:  # MLP: the hidden state alone
        assert len(b["inputs"]) == 1, b["inputs"]
    assert all(b["kept"] == "learned" and b["loss_learned"] < b["loss_nearest"] for b in blocks)
    feeds = _token_batches(8, seed=3)[0]
    sim = res.simulate()(feeds)[g.outputs[0]]
    art = kit.ort_run(res.artifact.path, feeds, optimize=False)[0]
    np.testing.assert_allclose(sim, art, rtol=0, atol=1e-5 * float(np.abs(art).max()))


def test_a_block_module_takes_the_model_inputs_its_sizes_come_from():
    """Given only the activations at its boundary, the attention block's module still reads the
    sequence sizes from the model input ``ids``: it takes it as an extra argument and computes
    what the simulated model computes."""
    from quantfw.api.blocks import block_boundary
    from quantfw.graph import shape_tensors

    batches = _token_batches(16)
    res = quantfw.quantize(MaskedTokenEncoder().eval(), batches, target="x86-vnni",
                           algorithms=["none"])  # fmt: skip
    g = res.graph
    linears = [n.name for n in g.nodes if n.op.value == "linear"]
    nodes = auto_blocks(g, linears)[0]
    inputs, outputs = block_boundary(g, nodes)
    activations = [t for t in inputs if t not in shape_tensors(g)]
    assert len(activations) == 2 and len(outputs) == 1  # the hidden state and the mask
    block = res.frontend.block_module(res.model, g, res.recipe, nodes, activations, outputs)
    assert block.model_inputs == ("ids",)
    (ins,) = res.frontend.collect(res.model, g, activations, batches, recipe=res.recipe)
    (want,) = res.frontend.collect(res.model, g, outputs, batches, recipe=res.recipe)
    args = [torch.from_numpy(ins[t]) for t in activations] + [torch.from_numpy(batches[0]["ids"])]
    (got,) = block.module(*args)
    w = want[outputs[0]]
    np.testing.assert_allclose(got.detach().numpy(), w, rtol=0, atol=1e-5 * np.abs(w).max())
