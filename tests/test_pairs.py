"""quantfw.pairs: int8 weight codes whose adjacent pairs fit a saturating 16-bit lane."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantfw import pairs
from quantfw.numerics import dequantize, fake_quantize, params_from_tensor, quantize
from quantfw.spec import QuantParams, QuantSpec, SpecError

INT16_MAX = 32767


def spec(granularity="per_channel", axis=1, dtype="int8", limit=128, **kw):
    return QuantSpec(dtype, True, True, granularity, axis, pair_limit=limit, **kw)


def worst_pair_accumulator(codes_kn: np.ndarray) -> int:
    """The largest |255*b[2j] + 255*b[2j+1]| (u8 activations at 255 where b > 0, or where b < 0),
    the int16 lane VPMADDUBSW fills: computed from the definition, pair by pair."""
    k, n = codes_kn.shape
    worst = 0
    for j in range(0, k - 1, 2):
        for c in range(n):
            b0, b1 = int(codes_kn[j, c]), int(codes_kn[j + 1, c])
            pos = 255 * max(b0, 0) + 255 * max(b1, 0)
            neg = 255 * min(b0, 0) + 255 * min(b1, 0)
            worst = max(worst, pos, -neg)
    return worst


def test_a_pair_over_the_limit_gives_up_exactly_its_excess():
    # MatMul layout [K, N], channel axis 1: pairs run down each column
    w = np.array([[120.2, 5.0], [30.4, -5.0], [-100.0, 1.0], [-40.0, 1.0]], np.float32)
    s = spec()
    p = QuantParams(np.array([1.0, 1.0], np.float32))
    q = quantize(w, p, s)
    # (120, 30): sum 150, excess 22, split to the least squared rounding error: 120.2 and 30.4
    # were both rounded down, so each gives up 11 -> (109, 19); (-100, -40): excess 12 -> 6 each
    np.testing.assert_array_equal(q[:, 0], [109, 19, -94, -34])
    np.testing.assert_array_equal(q[:, 1], [5, -5, 1, 1])  # within the limit: untouched
    assert worst_pair_accumulator(q) <= INT16_MAX
    assert (
        worst_pair_accumulator(np.rint(w).astype(np.int64)) > INT16_MAX
    )  # plain rounding does not


def test_the_split_is_the_least_squared_error_one():
    rng = np.random.default_rng(3)
    for _ in range(200):
        y = rng.uniform(40, 127, size=2)
        q = np.rint(y).astype(np.int64)
        e = int(q.sum()) - 128
        if e <= 0:
            continue
        got = pairs.limit_pairs(q.reshape(1, 2), y.reshape(1, 2), spec("per_channel", 0))
        best = min(
            ((y[0] - (q[0] - d)) ** 2 + (y[1] - (q[1] - e + d)) ** 2, d) for d in range(e + 1)
        )
        cost = ((y - got.ravel()) ** 2).sum()
        assert got.sum() == 128
        assert cost <= best[0] + 1e-9


def _layouts():
    rng = np.random.default_rng(0)
    mm = rng.standard_normal((64, 24)).astype(np.float32)
    mm[7] *= 6  # an outlier input channel (as SmoothQuant leaves them)
    yield "matmul [K, N]", mm, spec("per_channel", 1), "cols"
    yield "gemm / torch linear [N, K]", mm.T.copy(), spec("per_channel", 0), "rows"
    yield (
        "conv, even C_in",
        rng.standard_normal((8, 6, 3, 3)).astype(np.float32),
        spec("per_channel", 0),
        "conv",
    )
    yield (
        "conv, odd C_in",
        rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        spec("per_channel", 0),
        "conv",
    )
    yield "per group [K, N]", mm, spec("per_group", 0, group_size=16), "cols"


@pytest.mark.parametrize("case", list(_layouts()), ids=lambda c: c[0])
def test_every_layout_keeps_its_pairs_within_the_limit(case):
    _, w, s, layout = case
    p = params_from_tensor(w, s)
    q = quantize(w, p, s)
    assert pairs.max_pair_sum(q, layout) <= 128
    assert pairs.pairs_within(q, s)
    # idempotent: the dequantized weight quantizes back to the same codes (set_quantized_weight,
    # the torch simulation and the ONNX lowering all re-quantize it)
    np.testing.assert_array_equal(quantize(dequantize(q, p, s), p, s), q)


def test_conv_pairs_follow_the_channels_last_im2col_order():
    # [C_out=1, C_in=3, 1, 2]: K order is (k0,c0) (k0,c1) (k0,c2) (k1,c0) (k1,c1) (k1,c2)
    q = np.zeros((1, 3, 1, 2), np.int64)
    q[0, 2, 0, 0] = 100  # (k0, c2): index 2
    q[0, 0, 0, 1] = 100  # (k1, c0): index 3 -> paired with index 2
    assert pairs.max_pair_sum(q, "conv") == 200
    q2 = np.zeros((1, 3, 1, 2), np.int64)
    q2[0, 0, 0, 0] = q2[0, 0, 0, 1] = 100  # (k0,c0) and (k1,c0): indices 0 and 3, not paired
    assert pairs.max_pair_sum(q2, "conv") == 100


def test_per_tensor_codes_stay_within_half_the_limit_in_either_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 48)).astype(np.float32)
    s = spec("per_tensor", None)
    p = params_from_tensor(w, s)
    q = quantize(w, p, s)
    assert np.abs(q).max() <= 64
    np.testing.assert_array_equal(quantize(w.T, p, s), q.T)


def test_the_error_lies_between_int8_and_int7():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((384, 96)).astype(np.float32)
    w[::37] *= 5

    def mse(s):
        return float(((fake_quantize(w, params_from_tensor(w, s), s) - w) ** 2).mean())

    limited = mse(spec())
    int8 = mse(spec(limit=None))
    int7 = mse(QuantSpec("int7", True, True, "per_channel", 1))
    assert int8 <= limited < 0.5 * int7


def test_formats_the_limit_cannot_bind_ignore_it():
    w = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32) * 10
    for dtype in ("int7", "int4", "uint8"):
        s = QuantSpec(dtype, True, True, "per_channel", 1, pair_limit=128)
        assert not pairs.applies(s)
        plain = s.replace(pair_limit=None)
        np.testing.assert_array_equal(
            quantize(w, params_from_tensor(w, s), s),
            quantize(w, params_from_tensor(w, plain), plain),
        )


def test_spec_validation_and_serialisation():
    with pytest.raises(SpecError, match="pair_limit must be a positive integer"):
        QuantSpec("int8", pair_limit=0)
    with pytest.raises(SpecError, match="pair_limit must be a positive integer"):
        QuantSpec("int8", pair_limit=True)
    s = spec()
    assert QuantSpec.from_dict(s.to_dict()) == s
    assert "pair_limit" not in spec(limit=None).to_dict()  # recipes without it are unchanged


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 40),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    outliers=st.integers(0, 3),
)
def test_random_weights_never_saturate_and_round_trip(k, n, seed, outliers):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    for i in rng.integers(0, k, size=outliers):
        w[i] *= rng.uniform(2, 20)
    s = spec()
    p = params_from_tensor(w, s)
    q = quantize(w, p, s)
    assert worst_pair_accumulator(q) <= INT16_MAX
    assert np.abs(q).max() <= 127
    np.testing.assert_array_equal(quantize(dequantize(q, p, s), p, s), q)


def test_every_pair_within_the_limit_fits_int16_for_every_activation():
    # the limit is the largest that is safe: 255 * 128 fits int16 and 255 * 129 does not
    for b0, b1 in itertools.product(range(-127, 128), repeat=2):
        worst = max(abs(a0 * b0 + a1 * b1) for a0 in (0, 255) for a1 in (0, 255))
        assert (worst <= INT16_MAX) == (abs(b0 + b1) <= 128 or (b0 > 0) != (b1 > 0))
