"""FakeQuantize against the core's reference numerics (bit-exact), and its gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin tests need torch")

from quantfw_torch.fakequant import FakeQuantize  # noqa: E402

from quantfw.numerics import fake_quantize, params_from_tensor  # noqa: E402
from quantfw.spec import QuantParams, QuantSpec  # noqa: E402

SPECS = [
    QuantSpec("int8"),
    QuantSpec("uint8", symmetric=False),
    QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0),
    QuantSpec("int8", granularity="per_channel", axis=1),
    QuantSpec("int4", symmetric=False),
    QuantSpec("uint4", symmetric=False, granularity="per_channel", axis=0),
    QuantSpec("fp8_e4m3fn"),
    QuantSpec("fp8_e5m2", granularity="per_channel", axis=0),
    # the AVX2 target's int8 weights: adjacent codes limited (quantfw.pairs), per layout
    QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0, pair_limit=128),
    QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=1, pair_limit=128),
    QuantSpec("int8", narrow_range=True, pair_limit=128),
]


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"{s.dtype}-{s.granularity.value}-{s.axis}-{s.pair_limit}"
)
def test_matches_core_bit_for_bit(spec):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 5, 4)) * rng.uniform(0.1, 4, size=(6, 5, 1))).astype(np.float32)
    # parameters from a smaller calibration range, so saturation is exercised too
    params = params_from_tensor(x * 0.7, spec)
    want = fake_quantize(x, params, spec)
    got = FakeQuantize(spec, params)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    if spec.pair_limit:  # the case is one where the limit moves codes
        plain = fake_quantize(x, params, spec.replace(pair_limit=None))
        assert not np.array_equal(plain, want)


def test_round_half_to_even_like_the_runtimes():
    spec = QuantSpec("int8")
    params = QuantParams(np.float32(1.0), np.int32(0))
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0], np.float32)
    got = FakeQuantize(spec, params)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, [0, 2, 2, 0, -2, 127, -128])


def test_ste_passes_gradient_inside_the_grid_only():
    spec = QuantSpec("int8")
    params = QuantParams(np.float32(0.1), np.int32(0))
    x = torch.tensor([0.05, 1.0, -3.0, 20.0, -20.0], requires_grad=True)
    FakeQuantize(spec, params)(x).sum().backward()
    # 20.0 / 0.1 = 200 > 127 and -200 < -128: clipped, no gradient
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_trains_the_scale():
    spec = QuantSpec("int4")
    params = QuantParams(np.float32(0.5), np.int32(0))
    fq = FakeQuantize(spec, params, learn_scale=True)
    assert [n for n, _ in fq.named_parameters()] == ["log_scale"]
    x = torch.linspace(-2, 2, 101)
    opt = torch.optim.SGD(fq.parameters(), lr=0.5)
    before = ((fq(x) - x) ** 2).mean().item()
    for _ in range(50):
        loss = ((fq(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = ((fq(x) - x) ** 2).mean().item()
    assert fq.scale.item() != 0.5
    assert after < before  # a better step size for this range was learned


def test_observing_a_weight_uses_the_core_minmax_params():
    spec = QuantSpec("int8", narrow_range=True, granularity="per_channel", axis=0)
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    fq = FakeQuantize(spec, observe_weight=True)
    got = fq(w).numpy()
    want_params = params_from_tensor(w.numpy(), spec)
    np.testing.assert_array_equal(got, fake_quantize(w.numpy(), want_params, spec))
    np.testing.assert_array_equal(fq.current_params().scale, want_params.scale)


def test_equalization_multiplies_before_quantizing():
    from quantfw.numerics import equalize, fake_quantize

    spec = QuantSpec("uint8", symmetric=False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    smooth = rng.uniform(0.5, 3.0, 7).astype(np.float32)
    params = params_from_tensor(x / smooth, spec)
    got = FakeQuantize(spec, params, equalize=smooth)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, fake_quantize(equalize(x, smooth), params, spec))


def test_integer_inputs_pass_through():
    fq = FakeQuantize(QuantSpec("int8"), QuantParams(np.float32(0.1), np.int32(0)))
    ids = torch.arange(5)
    assert fq(ids) is ids


def test_edge_modules_equalise_float_activations_and_quantized_ones():
    from quantfw_torch.fakequant import Equalize, edge_modules

    from quantfw.numerics import equalize, params_from_tensor
    from quantfw.recipe import Equalization, Recipe, TensorRecipe

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    spec = QuantSpec("uint8", symmetric=False)
    recipe = Recipe("generic")
    recipe.add(
        TensorRecipe("q", "activation", spec, params_from_tensor(x / s, spec), consumers=("a",))
    )
    recipe.equalizations["q"] = Equalization("q", s, ("a",))
    recipe.equalizations["f"] = Equalization("f", s, ("b", "c"))
    mods = edge_modules(
        recipe, lambda name, t, scale: FakeQuantize(t.spec, t.params, equalize=scale)
    )
    consumers, eq = mods["f"]
    assert consumers == ("b", "c") and isinstance(eq, Equalize)
    np.testing.assert_array_equal(eq(torch.from_numpy(x)).numpy(), equalize(x, s))
    consumers, fq = mods["q"]
    assert consumers == ("a",) and isinstance(fq, FakeQuantize)
    assert fq.inv_scale is not None
