"""A torch model at W4A4 on x86: the torch frontend's simulation (torch fake quantization, an
implementation independent of the ONNX lowering) equals the ONNX Runtime artifact, whose uint4
activations are uint8 codes clipped to [0, 15] (``allowed.narrow_activations = "clip_8bit"``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

import onnx  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_torch.models import digits_cnn_module  # noqa: E402

import quantfw  # noqa: E402
from quantfw.numerics import dequantize, quantize  # noqa: E402
from quantfw.samples import digits_data  # noqa: E402


def test_a_torch_cnn_at_w4a4_deploys_as_simulated(tmp_path):
    torch.set_num_threads(1)
    data = digits_data()
    path = tmp_path / "cnn.onnx"
    res = quantfw.quantize(
        digits_cnn_module(0),
        torch.from_numpy(data.x_calib),
        target="x86-vnni",
        output=path,
        overrides={"weight": {"bits": 4}, "activation": {"bits": 4}},
    )
    acts = res.recipe.of_role("activation")
    assert {t.spec.dtype for t in acts.values()} == {"uint4"}
    qm = onnx.load(str(path))
    clips = [n for n in qm.graph.node if n.op_type == "Clip"]
    assert len(clips) >= 4
    name = qm.graph.input[0].name
    x = data.x_test
    sim = next(iter(res.simulate()({name: torch.from_numpy(x)}).values()))
    sim = sim.detach().numpy() if hasattr(sim, "detach") else np.asarray(sim)
    art = OnnxRuntimeBackend().session(path).run(None, {name: x})[0]
    assert np.mean(art.argmax(-1) == sim.argmax(-1)) == 1.0
    # one step of the last linear's input moves a logit by at most its scale x the largest
    # dequantized weight of that linear
    last = [n for n in res.graph if n.op.value == "linear"][-1]
    a, w = res.recipe.tensors[last.inputs[0]], res.recipe.tensors[last.weights["weight"]]
    wq = dequantize(quantize(_weight(res, w.name), w.params, w.spec), w.params, w.spec)
    assert np.abs(art - sim).max() <= float(a.params.scale) * float(np.abs(wq).max())
    assert data.accuracy(art) >= 0.97


def _weight(res, name: str) -> np.ndarray:
    """The float weight the recipe quantizes: rewritten by an algorithm, or the model's own."""
    w = res.recipe.weights.get(name)
    return res.graph.initializers[name] if w is None else w
