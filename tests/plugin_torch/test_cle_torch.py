"""Cross-layer equalisation and bias correction on a torch model whose BatchNorms the frontend
folds at capture: the same chains and factors as on its ONNX translation, the float model
unchanged, and the corrections applied."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin's tests need torch")

from torch import nn  # noqa: E402

import quantfw  # noqa: E402


def conv_bn_net() -> nn.Sequential:
    """conv-BN-ReLU, depthwise conv-BN-ReLU, pointwise conv: BN statistics far from (0, 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 1),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.copy_(torch.logspace(-1.5, 1.5, 8)[torch.randperm(8)])
            bn.bias.copy_(torch.randn(8))
            bn.running_mean.copy_(torch.randn(8))
            bn.running_var.copy_(torch.rand(8) + 0.5)
    return net.eval()


def images(seed: int, n: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 6, 6)).astype(np.float32)


def test_cle_on_torch_matches_its_onnx_translation_and_keeps_the_float_model():
    torch.set_num_threads(1)
    net = conv_bn_net()
    a = quantfw.quantize(net, images(1), target="generic", algorithms=[("cle", {"absorb": False})])
    pairs = a.recipe.provenance["cle"]["pairs"]
    assert len(pairs) == 2 and pairs[0]["between"] == ["relu"]  # BN folded: conv-relu-conv
    b = quantfw.quantize(
        a.graph.forms["onnx"], images(1), target="generic", algorithms=[("cle", {"absorb": False})]
    )
    for got, want in zip(pairs, b.recipe.provenance["cle"]["pairs"], strict=True):
        np.testing.assert_allclose(got["scale"], want["scale"], rtol=1e-5)
    x = images(4)
    out = a.graph.outputs[0]
    (got,) = a.frontend.collect(a.model, a.graph, [out], [{a.graph.inputs[0]: x}],
                                weights=a.recipe.weights)  # fmt: skip
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got[out], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow  # two torch captures (~3 s each)
def test_cle_and_bias_correction_lower_the_w4_error_on_torch():
    torch.set_num_threads(1)
    net, x = conv_bn_net(), images(5, n=64)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    w4 = {"weight": {"bits": 4, "granularity": "per_tensor"}}
    errs = {}
    for name, algos in {"nearest": ["none"], "cle+bc": ["cle", "bias_correction"]}.items():
        res = quantfw.quantize(net, images(1), target="generic", algorithms=algos, overrides=w4)
        got = res.simulate()({res.graph.inputs[0]: x})[res.graph.outputs[0]]
        errs[name] = float(np.sqrt(((got - want) ** 2).mean()) / want.std())
    assert errs["cle+bc"] < 0.7 * errs["nearest"], errs
