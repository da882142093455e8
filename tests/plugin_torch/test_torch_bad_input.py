"""Bad input to the torch frontend: clear errors naming the culprit, nothing lost."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from quantfw_torch import load_state_dict  # noqa: E402
from quantfw_torch.export import CaptureError  # noqa: E402
from quantfw_torch.weights import WeightsFileError  # noqa: E402
from torch import nn  # noqa: E402

import quantfw  # noqa: E402
from quantfw.calibration import CalibrationError  # noqa: E402


class Wavy(nn.Module):
    """A layer no target has an integer kernel for (sin), between two linears."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.sin(self.fc1(x)))


def test_unsupported_layers_stay_float_and_are_listed():
    torch.manual_seed(0)
    m = Wavy().eval()
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    res = quantfw.quantize(m, x, target="x86")
    sin = [n for n in res.graph.nodes if n.source_op == "Sin"]
    assert len(sin) == 1
    assert sin[0].name in res.plan.float_nodes()
    assert sin[0].name in str(res.summary)  # listed, with its reason
    assert {res.graph.node(n).op.value for n in res.plan.quantized_nodes()} == {"linear"}


def test_data_dependent_control_flow_through_quantize():
    class Router(nn.Module):
        def forward(self, x):
            return x.relu() if x.mean() > 0 else x.tanh()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.router = Router()

        def forward(self, x):
            return self.router(self.body(x))

    with pytest.raises(CaptureError, match=r"submodule 'router' \(Router\)"):
        quantfw.quantize(Net().eval(), np.zeros((4, 4), np.float32), target="x86")


def test_no_example_inputs_and_no_calibration():
    with pytest.raises(ValueError, match="example inputs"):
        quantfw.quantize(nn.Linear(2, 2), target="x86")


def test_calibration_batch_with_wrong_input_name():
    m = nn.Linear(3, 2).eval()
    with pytest.raises(CalibrationError, match=r"unknown input\(s\) \['y'\]"):
        quantfw.quantize(
            m, [{"y": np.ones((2, 3), np.float32)}], example_inputs=torch.ones(2, 3), target="x86"
        )


def test_calibration_batch_with_wrong_shape():
    m = nn.Linear(3, 2).eval()
    with pytest.raises(
        CalibrationError, match="input 'input': dimension 1 is 5, the model expects 3"
    ):
        quantfw.quantize(m, np.ones((4, 5), np.float32), example_inputs=torch.ones(2, 3))


def test_model_files_are_not_unpickled(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module
    before = path.read_bytes()
    with pytest.raises(ValueError, match="never unpickles|unpickled"):
        quantfw.quantize(path, target="x86", frontend="torch")
    assert path.read_bytes() == before


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_load_state_dict_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(WeightsFileError, match="evil.pt"):
        load_state_dict(nn.Linear(2, 2), path)


def test_load_state_dict_reads_torch_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    src = nn.Linear(3, 2)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        dst = load_state_dict(nn.Linear(3, 2), tmp_path / name)
        assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_state_dict(nn.Linear(4, 2), tmp_path / "w.pt")
    with pytest.raises(WeightsFileError, match="does not exist"):
        load_state_dict(src, tmp_path / "missing.pt")
