"""Capturing torch modules: torch.export → ONNX → QuantGraph, names shared with the FX module."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")
pytest.importorskip("onnxscript", reason="the torch frontend translates through onnxscript")

from quantfw_torch.export import CaptureError, TorchModel  # noqa: E402
from quantfw_torch.frontend import TorchFrontend, exported_of  # noqa: E402
from torch import nn  # noqa: E402

from quantfw.graph import OpKind  # noqa: E402


def capture(module, *args, **kwargs):
    return TorchFrontend().capture(TorchModel(module, args, kwargs))


def test_cnn_batchnorm_is_folded_into_the_convs(kit, images):
    m = kit.build_resnet()
    g = capture(m, torch.from_numpy(images[:4]))
    kinds = [n.op.value for n in g.nodes if n.op is not OpKind.OTHER]  # OTHER: shape arithmetic
    assert kinds == [
        "conv", "relu", "conv", "relu", "conv", "add", "relu", "reduce_mean", "reshape", "linear",
    ]  # fmt: skip
    # the stem's folded weight, computed independently from the module's BatchNorm
    bn = m.bn0
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    want = m.stem.weight.detach().numpy() * factor[:, None, None, None]
    stem = next(n for n in g.nodes if n.op is OpKind.CONV)
    np.testing.assert_allclose(g.initializers[stem.weights["weight"]], want, rtol=1e-5, atol=1e-6)
    want_b = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    np.testing.assert_allclose(g.initializers[stem.weights["bias"]], want_b.numpy(), atol=1e-6)


def test_every_activation_of_the_graph_is_an_fx_node(kit, images):
    g = capture(kit.build_resnet(), torch.from_numpy(images[:4]))
    exp = exported_of(g)
    fx_names = {n.name for n in exp.module.graph.nodes}
    quantizable = [t for n in g.nodes if n.op is not OpKind.OTHER for t in n.inputs + n.outputs]
    missing = [t for t in quantizable if t not in fx_names and t not in g.inputs]
    assert not missing


def test_batch_dimension_stays_dynamic(kit, images):
    g = capture(kit.build_resnet(), torch.from_numpy(images[:4]))
    assert g.input_shapes[g.inputs[0]][0] is None


def test_capture_leaves_the_users_module_alone(kit, images):
    m = kit.build_resnet().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    capture(m, torch.from_numpy(images[:4]))
    assert m.training  # exported in eval mode, mode restored
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_sequential_input_named_input():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    g = capture(m, torch.randn(3, 4))
    assert g.inputs == ["input"]  # FX calls its placeholder input_1; the ONNX name is kept


def test_attention_products_become_matmul_nodes():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 8).unbind(2)
            y = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            return y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 16)

    g = capture(Attn().eval(), torch.randn(2, 5, 16))
    assert [n.op for n in g.nodes].count(OpKind.MATMUL) == 2
    assert [n.op for n in g.nodes].count(OpKind.SOFTMAX) == 1


def test_data_dependent_branch_names_the_submodule():
    class Gate(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # branches on a tensor value: not traceable
                return x * 2
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gate = Gate()

        def forward(self, x):
            return self.gate(self.fc(x))

    with pytest.raises(CaptureError) as err:
        capture(Net().eval(), torch.randn(2, 4))
    msg = str(err.value)
    assert "'gate'" in msg and "Gate" in msg
    assert "example inputs" in msg and "float" in msg


def test_module_without_example_inputs_is_refused():
    with pytest.raises(ValueError, match="example inputs"):
        TorchModel(nn.Linear(2, 2))
