"""The real all-MiniLM-L6-v2, given as a Hugging Face torch module (default SDPA attention)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from torch_test_models import mean_pool  # noqa: E402

import quantfw  # noqa: E402
import quantfw.qat  # noqa: E402

pytestmark = pytest.mark.slow  # the real all-MiniLM-L6-v2: an export and a QAT step each


def _embeddings(run, batches):
    out = []
    for b in batches:
        out.append(mean_pool(run(b), b["attention_mask"]))
    return np.concatenate(out)


def _float(model):
    def run(b):
        with torch.no_grad():
            feeds = {k: torch.from_numpy(v) for k, v in b.items()}
            return model(**feeds).last_hidden_state.numpy()

    return run


@pytest.fixture(scope="module")
def minilm_x86(minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    res = quantfw.quantize(minilm.model, minilm.calibration, target="x86", output=out)
    return res


def test_static_int8_keeps_sentence_embeddings(minilm, minilm_x86):
    res = minilm_x86
    hidden = res.graph.outputs[0]
    sim = res.simulate()
    ref = _embeddings(_float(minilm.model), minilm.evaluation)
    got = _embeddings(lambda b: sim(b)[hidden], minilm.evaluation)
    cos = (ref * got).sum(1)
    assert cos.mean() >= 0.995 and cos.min() >= 0.98
    kinds = {res.graph.node(n).op.value for n in res.plan.quantized_nodes()}
    assert {"linear", "matmul"} <= kinds  # projections and both attention products


def test_artifact_agrees_with_the_torch_simulation(kit, minilm, minilm_x86):
    res = minilm_x86
    hidden = res.graph.outputs[0]
    sim = res.simulate()
    names = res.graph.inputs

    def art(b):
        return kit.ort_run(res.artifact.path, {k: b[k] for k in names})[0]

    a = _embeddings(art, minilm.evaluation)
    s = _embeddings(lambda b: sim(b)[hidden], minilm.evaluation)
    assert ((a * s).sum(1)).mean() >= 0.999
    # a longer sequence and another batch size than calibration: the artifact's axes are free
    b = minilm.encode(["a short one", "and another sentence here"], pad_to=40)
    assert art(b).shape == (2, 40, 384)


def test_calibration_as_torch_dataloader_gives_the_same_recipe(minilm, minilm_x86):
    """A DataLoader yielding dicts of tensors with an extra key calibrates like the arrays."""
    from torch.utils.data import DataLoader

    batches = [
        {
            **{k: torch.from_numpy(v) for k, v in b.items()},
            "labels": torch.zeros(len(b["input_ids"])),
        }
        for b in minilm.calibration
    ]
    res = quantfw.quantize(minilm.model, DataLoader(batches, batch_size=None), target="x86")
    for name, t in minilm_x86.recipe.of_role("activation").items():
        assert res.recipe.tensors[name].params == t.params, name


def test_qat_runs_on_minilm(minilm, tmp_path):
    qm = quantfw.qat.prepare(minilm.model, minilm.calibration[:2], target="x86")
    b = {k: torch.from_numpy(v) for k, v in minilm.calibration[0].items()}
    opt = torch.optim.SGD(qm.parameters(), lr=1e-5)
    out = qm(**b)
    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    loss = hidden.pow(2).mean()
    loss.backward()
    grads = [p.grad for p in qm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    result = quantfw.qat.convert(qm, output=tmp_path / "qat.onnx")
    assert result.artifact.path.is_file()
