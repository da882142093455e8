"""The shared learned-rounding variables (AdaRound's rectified sigmoid), on the numpy engine,
checked against the reference numerics."""

import numpy as np
import pytest

from quantfw.algorithms.soft_rounding import SoftRounding, beta_schedule
from quantfw.api.engines import NumpyEngine
from quantfw.numerics import fake_quantize, params_from_tensor
from quantfw.spec import QuantSpec


@pytest.fixture
def weight_and_params():
    w = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float32)
    spec = QuantSpec(dtype="int4", symmetric=True, granularity="per_channel", axis=0)
    return w, params_from_tensor(w, spec), spec


def test_learning_starts_at_the_float_weight_and_the_hard_choice_is_nearest(weight_and_params):
    w, params, spec = weight_and_params
    sr = SoftRounding(NumpyEngine(), w, params, spec)
    np.testing.assert_allclose(sr.weight(soft=True), w, atol=1e-6)
    np.testing.assert_array_equal(sr.hard_weight(), fake_quantize(w, params, spec))
    assert sr.codes_changed() == 0.0


def test_hard_weights_stay_on_the_grid_and_in_range_whatever_v_is(weight_and_params):
    w, params, spec = weight_and_params
    sr = SoftRounding(NumpyEngine(), w, params, spec)
    sr.v = np.random.default_rng(1).normal(scale=5, size=w.shape).astype(np.float32)
    hard = sr.hard_weight()
    np.testing.assert_array_equal(fake_quantize(hard, params, spec), hard)
    np.testing.assert_allclose(sr.weight(soft=False), hard, rtol=1e-6)
    codes = np.rint(hard / params.scale[:, None])
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    # every element is its float position's floor, or that plus one (or saturated)
    pos = w / params.scale[:, None]
    inside = (pos > spec.qmin) & (pos < spec.qmax - 1)
    assert np.all((codes == np.floor(pos)) | (codes == np.floor(pos) + 1) | ~inside)
    assert 0.0 < sr.codes_changed() < 1.0


def test_regulariser_is_zero_only_for_decided_offsets(weight_and_params):
    w, params, spec = weight_and_params
    sr = SoftRounding(NumpyEngine(), w, params, spec)
    assert sr.regularizer(2.0) > 0
    sr.v = np.where(np.arange(w.size).reshape(w.shape) % 2 == 0, 20.0, -20.0).astype(np.float32)
    assert sr.regularizer(2.0) == pytest.approx(0.0, abs=1e-6)


def test_beta_schedule_waits_then_decays_from_start_to_end():
    betas = [beta_schedule(i, 100) for i in range(100)]
    assert betas[:20] == [None] * 20
    decay = betas[20:]
    assert decay[0] == pytest.approx(20.0) and decay[-1] == pytest.approx(2.0, abs=0.01)
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
