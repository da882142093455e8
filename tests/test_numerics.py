"""Tests of the reference quantization numerics (quantfw.numerics)."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantfw.numerics import (
    broadcast_params,
    compute_qparams,
    dequantize,
    fake_quantize,
    param_shape,
    params_from_tensor,
    quantization_error,
    quantize,
    quantize_dynamic,
    reduce_range,
)
from quantfw.spec import QuantParams, QuantSpec

F32 = np.float32
INT_FORMATS = ["int8", "uint8", "int4", "uint4", "int3", "uint3", "int2", "uint2", "ternary"]
FLOAT_FORMATS = ["fp8_e4m3fn", "fp8_e5m2", "fp16", "bf16"]

# (dtype, symmetric, narrow_range) for every valid integer combination.
INT_SCHEMES = [
    (f, sym, narrow)
    for f, sym, narrow in itertools.product(INT_FORMATS, (True, False), (False, True))
    if not (f == "ternary" and not sym)
]
ALL_SCHEMES = INT_SCHEMES + [(f, True, False) for f in FLOAT_FORMATS]

PROPERTY = settings(max_examples=150, deadline=None)
QUICK = settings(max_examples=40, deadline=None)


def _spec(dtype, symmetric, narrow, granularity="per_tensor", axis=None, group_size=None):
    return QuantSpec(
        dtype=dtype,
        symmetric=symmetric,
        narrow_range=narrow,
        granularity=granularity,
        axis=axis,
        group_size=group_size,
    )


@st.composite
def spec_and_tensor(draw, schemes):
    """A spec (any static granularity) and a float32 tensor it applies to."""
    dtype, sym, narrow = draw(st.sampled_from(schemes))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    ndim = len(shape)
    gran = draw(st.sampled_from(["per_tensor", "per_channel", "per_group"]))
    axis = draw(st.integers(-ndim, ndim - 1)) if gran != "per_tensor" else None
    group = draw(st.integers(1, 4)) if gran == "per_group" else None
    magnitude = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    elements = st.floats(-1.0, 1.0, width=32, allow_subnormal=False)
    x = draw(hnp.arrays(F32, shape, elements=elements)) * F32(magnitude)
    return _spec(dtype, sym, narrow, gran, axis, group), x.astype(F32)


def _random_spec_tensor(dtype, sym, narrow, rng, granularity="per_tensor"):
    x = (rng.standard_normal((4, 6)) * 3 + 0.5).astype(F32)
    kw = {}
    if granularity == "per_channel":
        kw = dict(axis=0)
    elif granularity == "per_group":
        kw = dict(axis=1, group_size=4)
    return _spec(dtype, sym, narrow, granularity, **kw), x


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
@PROPERTY
@given(spec_and_tensor(INT_SCHEMES))
def test_error_at_most_half_a_step_inside_range(case):
    spec, x = case
    params = params_from_tensor(x, spec)
    scale, zp = broadcast_params(params, spec, x.shape)
    s = scale.astype(np.float64)
    lo = (spec.qmin - zp.astype(np.float64)) * s
    hi = (spec.qmax - zp.astype(np.float64)) * s
    inside = (x >= lo) & (x <= hi)
    err = np.abs(fake_quantize(x, params, spec).astype(np.float64) - x)
    slack = 2.0**-22 * (np.abs(x) + s)
    assert np.all(err[inside] <= s[inside] / 2 + slack[inside])


@PROPERTY
@given(spec_and_tensor(ALL_SCHEMES))
def test_idempotent(case):
    spec, x = case
    params = params_from_tensor(x, spec)
    once = fake_quantize(x, params, spec)
    twice = fake_quantize(once, params, spec)
    assert once.dtype == np.float32
    np.testing.assert_array_equal(twice, once)


@QUICK
@given(spec_and_tensor(ALL_SCHEMES))
def test_zero_is_exact_for_calibrated_params(case):
    spec, x = case
    params = params_from_tensor(x, spec)
    zeros = np.zeros_like(x)
    np.testing.assert_array_equal(fake_quantize(zeros, params, spec), zeros)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("dtype,sym,narrow", ALL_SCHEMES)
def test_zero_is_exact_for_every_spec(dtype, sym, narrow, granularity):
    rng = np.random.default_rng(0)
    spec, x = _random_spec_tensor(dtype, sym, narrow, rng, granularity)
    for data in (x, x + 10, x - 10, np.zeros_like(x)):  # ranges on both sides of zero
        params = params_from_tensor(data, spec)
        assert np.all(params.scale > 0) and np.all(np.isfinite(params.scale))
        zeros = np.zeros_like(x)
        np.testing.assert_array_equal(fake_quantize(zeros, params, spec), zeros)
        # also when zero sits among other values
        mixed = data.copy()
        mixed[0, 0] = 0.0
        assert fake_quantize(mixed, params, spec)[0, 0] == 0.0


@pytest.mark.parametrize("dtype,sym,narrow", INT_SCHEMES)
def test_saturation_int(dtype, sym, narrow):
    rng = np.random.default_rng(1)
    spec, x = _random_spec_tensor(dtype, sym, narrow, rng, "per_channel")
    params = params_from_tensor(x, spec)
    big = np.full_like(x, 1e30)
    assert np.all(quantize(big, params, spec) == spec.qmax)
    assert np.all(quantize(-big, params, spec) == spec.qmin)
    inf = np.full_like(x, np.inf)
    assert np.all(quantize(inf, params, spec) == spec.qmax)
    assert np.all(quantize(-inf, params, spec) == spec.qmin)
    q = quantize(x, params, spec)
    assert q.dtype == spec.format.storage
    assert q.min() >= spec.qmin and q.max() <= spec.qmax


def test_narrow_range_drops_lowest_code():
    spec = QuantSpec("int8", narrow_range=True)
    params = QuantParams(F32(0.1))
    assert quantize(np.array([-1e9], F32), params, spec)[0] == -127
    spec = QuantSpec("uint8", symmetric=False, narrow_range=True)
    assert quantize(np.array([-1e9], F32), QuantParams(F32(0.1), 128), spec)[0] == 1


def test_round_half_to_even():
    spec = QuantSpec("int8")
    params = QuantParams(F32(0.5))  # power of two: k.5 * scale is exact
    halves = np.array([2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 126.5], F32) * F32(0.5)
    q = quantize(halves, params, spec)
    np.testing.assert_array_equal(q, [2, 4, -2, -4, 0, 0, 2, 126])
    # with a zero point the tie is broken on x / scale before adding zp
    spec_u = QuantSpec("uint8", symmetric=False)
    q = quantize(halves[:3], QuantParams(F32(0.5), 7), spec_u)
    np.testing.assert_array_equal(q, [9, 11, 5])


def test_quantize_divides_in_float32():
    spec = QuantSpec("int8")
    scale = F32(0.1)
    x = np.linspace(-12, 12, 2001).astype(F32)
    expected = np.clip(np.rint(x / scale), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize(x, QuantParams(scale), spec), expected)
    # float64 input is first cast to float32, like the runtimes' float inputs
    x64 = x.astype(np.float64) + 1e-12
    np.testing.assert_array_equal(quantize(x64, QuantParams(scale), spec), expected)


def test_dequantize_formula():
    spec = QuantSpec("uint8", symmetric=False)
    params = QuantParams(F32(0.3), 100)
    q = np.arange(256, dtype=np.uint8)
    expected = (q.astype(np.int32) - 100).astype(F32) * F32(0.3)
    out = dequantize(q, params, spec)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------------------------
# float formats
# ---------------------------------------------------------------------------------------------
@QUICK
@given(
    st.sampled_from(FLOAT_FORMATS),
    hnp.arrays(F32, (3, 7), elements=st.floats(-1e6, 1e6, width=32)),
    st.floats(1e-4, 1e3),
)
def test_float_quantize_matches_independent_cast(dtype, x, scale):
    spec = QuantSpec(dtype)
    fmt = spec.format
    params = QuantParams(F32(scale))
    m = F32(fmt.max_value)
    expected = np.clip(x / F32(scale), -m, m).astype(fmt.storage)
    got = quantize(x, params, spec)
    assert got.dtype == fmt.storage
    np.testing.assert_array_equal(
        got.view(np.uint8 if fmt.bits == 8 else np.uint16),
        expected.view(np.uint8 if fmt.bits == 8 else np.uint16),
    )


def test_fp8_per_channel_matches_independent_cast():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 5)) * 50).astype(F32)
    spec = QuantSpec("fp8_e4m3fn", granularity="per_channel", axis=-1)
    params = params_from_tensor(x, spec)
    s = params.scale.reshape(1, 5)
    expected = np.clip(x / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(quantize(x, params, spec).view(np.uint8), expected.view(np.uint8))
    # amax of each channel maps to the largest finite value
    amax = np.abs(x).max(axis=0)
    np.testing.assert_array_equal(params.scale, amax / F32(448))


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "fp8_e5m2"])
@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**-7])
def test_fp8_all_codes_round_trip(dtype, scale):
    spec = QuantSpec(dtype)
    storage = spec.format.storage
    codes = np.arange(256, dtype=np.uint8).view(storage)
    codes = codes[np.isfinite(codes.astype(F32))]
    params = QuantParams(F32(scale))
    values = dequantize(codes, params, spec)
    back = quantize(values, params, spec)
    np.testing.assert_array_equal(back.view(np.uint8), codes.view(np.uint8))


@pytest.mark.parametrize("dtype,limit", [("fp8_e4m3fn", 448.0), ("fp8_e5m2", 57344.0)])
def test_fp8_saturation(dtype, limit):
    spec = QuantSpec(dtype)
    params = QuantParams(F32(1.0))
    x = np.array([1e6, -1e6, np.inf, -np.inf, limit * 1.2, -limit * 1.01], F32)
    q = quantize(x, params, spec).astype(F32)
    np.testing.assert_array_equal(q, [limit, -limit, limit, -limit, limit, -limit])
    assert np.isnan(quantize(np.array([np.nan], F32), params, spec).astype(F32)[0])


def test_float_format_scale():
    for dtype, m in [("fp8_e4m3fn", 448), ("fp8_e5m2", 57344), ("fp16", 65504)]:
        p = compute_qparams(-3.0, 2.0, QuantSpec(dtype))
        assert p.scale == F32(3.0) / F32(m)
        assert p.zero_point == 0
    # bf16 spans float32's range: amax / max_value would be subnormal, so the scale is 1 (a cast)
    p = compute_qparams(-3.0, 2.0, QuantSpec("bf16"))
    assert p.scale == 1.0
    x = np.array([-3.0, 0.1, 2.0], F32)
    np.testing.assert_array_equal(
        fake_quantize(x, p, QuantSpec("bf16")), x.astype(ml_dtypes.bfloat16).astype(F32)
    )


# ---------------------------------------------------------------------------------------------
# closed-form parameters
# ---------------------------------------------------------------------------------------------
def test_closed_form_uint8_asymmetric():
    p = compute_qparams(-1.0, 3.0, QuantSpec("uint8", symmetric=False))
    assert p.scale == F32(4.0) / F32(255)
    assert p.zero_point == 64
    assert p.scale.shape == () and p.zero_point.dtype == np.int32


def test_closed_form_int8_asymmetric():
    p = compute_qparams(-1.0, 3.0, QuantSpec("int8", symmetric=False))
    assert p.scale == F32(4.0) / F32(255)
    assert p.zero_point == -64  # rint(-128 + 63.75)


def test_closed_form_symmetric():
    p = compute_qparams(-1.0, 2.0, QuantSpec("int8"))
    assert p.scale == F32(2.0) / F32(127) and p.zero_point == 0
    p = compute_qparams(-2.0, 1.0, QuantSpec("int8", narrow_range=True))
    assert p.scale == F32(2.0) / F32(127) and p.zero_point == 0
    p = compute_qparams(-1.0, 2.0, QuantSpec("uint8"))
    assert p.scale == F32(2.0) / F32(127) and p.zero_point == 128
    p = compute_qparams(-1.0, 2.0, QuantSpec("uint4"))
    assert p.scale == F32(2.0) / F32(7) and p.zero_point == 8
    p = compute_qparams(-1.0, 2.0, QuantSpec("int4"))
    assert p.scale == F32(2.0) / F32(7) and p.zero_point == 0
    p = compute_qparams(-0.5, 0.25, QuantSpec("ternary"))
    assert p.scale == F32(0.5) and p.zero_point == 0
    # +amax lands exactly on the top code
    spec = QuantSpec("int8")
    p = compute_qparams(-1.0, 2.0, spec)
    assert quantize(np.array([2.0], F32), p, spec)[0] == 127


def test_degenerate_constant_tensor():
    x = np.full((3, 4), 5.0, F32)
    p = params_from_tensor(x, QuantSpec("int8"))
    assert p.scale == F32(5.0) / F32(127) and p.zero_point == 0
    p = params_from_tensor(x, QuantSpec("uint8", symmetric=False))
    assert p.scale == F32(5.0) / F32(255) and p.zero_point == 0
    out = fake_quantize(x, p, QuantSpec("uint8", symmetric=False))
    np.testing.assert_allclose(out, x, rtol=1e-6)


@pytest.mark.parametrize("dtype,sym,narrow", ALL_SCHEMES)
def test_degenerate_all_zeros(dtype, sym, narrow):
    spec = _spec(dtype, sym, narrow)
    x = np.zeros((2, 3), F32)
    p = params_from_tensor(x, spec)
    assert p.scale == 1.0
    fmt = spec.format
    if spec.is_float:
        assert p.zero_point == 0
    elif sym:
        assert p.zero_point == (0 if fmt.signed else 1 << (fmt.bits - 1))
    else:
        assert p.zero_point == spec.qmin
    np.testing.assert_array_equal(fake_quantize(x, p, spec), x)


def test_tiny_range_is_degenerate():
    p = compute_qparams(-1e-40, 1e-40, QuantSpec("int8"))
    assert p.scale == 1.0
    p = compute_qparams(0.0, 1e-39, QuantSpec("uint8", symmetric=False))
    assert p.scale == 1.0 and p.zero_point == 0


def test_range_not_containing_zero_is_widened():
    spec = QuantSpec("uint8", symmetric=False)
    p = compute_qparams(2.0, 6.0, spec)
    assert p.scale == F32(6.0) / F32(255) and p.zero_point == 0
    spec = QuantSpec("int8", symmetric=False)
    p = compute_qparams(-6.0, -2.0, spec)
    assert p.scale == F32(6.0) / F32(255) and p.zero_point == 127
    x = np.linspace(-6, -2, 9).astype(F32)
    err = np.abs(fake_quantize(x, p, spec).astype(np.float64) - x)
    assert np.all(err <= float(p.scale) / 2 + 2.0**-22 * (np.abs(x) + float(p.scale)))
    p = compute_qparams(2.0, 6.0, QuantSpec("int8"))
    assert p.scale == F32(6.0) / F32(127)


def test_compute_qparams_rejects_bad_ranges():
    spec = QuantSpec("int8")
    with pytest.raises(ValueError, match="inf"):
        compute_qparams(-np.inf, 1.0, spec)
    with pytest.raises(ValueError, match="nan"):
        compute_qparams(0.0, np.nan, spec)
    with pytest.raises(ValueError, match="min_val > max_val"):
        compute_qparams(3.0, 1.0, spec)
    with pytest.raises(ValueError, match="per_tensor"):
        compute_qparams(np.zeros(3), np.ones(3), spec)


def test_huge_asymmetric_range_stays_finite():
    p = compute_qparams(-3e38, 3e38, QuantSpec("uint8", symmetric=False))
    assert np.isfinite(p.scale) and p.scale > 0


def test_int32_bias_quantization():
    spec = QuantSpec("int32")
    scale = F32(0.02) * F32(0.003)
    params = QuantParams(scale)
    bias = np.array([0.5, -0.25, 1e-5, 0.0, 3.0], F32)
    q = quantize(bias, params, spec)
    assert q.dtype == np.int32
    np.testing.assert_array_equal(q, np.rint(bias / scale).astype(np.int32))
    assert np.all(np.abs(dequantize(q, params, spec) - bias) <= scale / 2 * (1 + 1e-5))
    assert quantize(np.array([np.inf], F32), params, spec)[0] == 2**31 - 1
    assert quantize(np.array([-np.inf], F32), params, spec)[0] == -(2**31)


# ---------------------------------------------------------------------------------------------
# granularities
# ---------------------------------------------------------------------------------------------
def test_per_channel_non_zero_and_negative_axis():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4)).astype(F32)
    spec = QuantSpec("int8", granularity="per_channel", axis=1)
    lo, hi = reduce_range(x, spec)
    assert lo.shape == hi.shape == (3,)
    np.testing.assert_array_equal(lo, x.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, x.max(axis=(0, 2)))
    p = params_from_tensor(x, spec)
    amax = np.abs(x).max(axis=(0, 2))
    np.testing.assert_array_equal(p.scale, amax / F32(127))
    spec_neg = QuantSpec("int8", granularity="per_channel", axis=-2)
    assert params_from_tensor(x, spec_neg) == p
    q = quantize(x, p, spec)
    np.testing.assert_array_equal(quantize(x, p, spec_neg), q)
    # each channel's amax hits +-127
    assert np.all(np.abs(q).max(axis=(0, 2)) == 127)
    expected = np.clip(np.rint(x / p.scale.reshape(1, 3, 1)), -128, 127)
    np.testing.assert_array_equal(q, expected)


def test_per_group_with_partial_last_group():
    x = np.array([[1, -2, 3, 4, -10], [0.5, 0.25, -8, 1, 2]], F32)
    spec = QuantSpec("int4", granularity="per_group", axis=1, group_size=2)
    lo, hi = reduce_range(x, spec)
    assert lo.shape == (2, 3)
    np.testing.assert_array_equal(lo, [[-2, 3, -10], [0.25, -8, 2]])
    np.testing.assert_array_equal(hi, [[1, 4, -10], [0.5, 1, 2]])
    p = params_from_tensor(x, spec)
    np.testing.assert_array_equal(p.scale, np.array([[2, 4, 10], [0.5, 8, 2]], F32) / F32(7))
    scale, zp = broadcast_params(p, spec, x.shape)
    assert scale.shape == x.shape and zp.shape == x.shape
    np.testing.assert_array_equal(scale[0], np.array([2, 2, 4, 4, 10], F32) / F32(7))
    q = quantize(x, p, spec)
    assert q[0, 4] == -7 and q[1, 4] == 7
    assert param_shape(x.shape, spec) == (2, 3)


def test_per_group_on_axis_zero():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 3)).astype(F32)
    spec = QuantSpec("uint4", symmetric=False, granularity="per_group", axis=0, group_size=3)
    p = params_from_tensor(x, spec)
    assert p.scale.shape == (3, 3)
    fq = fake_quantize(x, p, spec)
    scale, _ = broadcast_params(p, spec, x.shape)
    assert np.all(np.abs(fq - x) <= scale * 0.5 * (1 + 1e-5))


def test_per_token_dynamic():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 8)) * rng.uniform(0.1, 10, (2, 3, 1))).astype(F32)
    spec = QuantSpec("int8", granularity="per_token", dynamic=True)
    q, p = quantize_dynamic(x, spec)
    assert p.scale.shape == (2, 3, 1)
    np.testing.assert_array_equal(p.scale, np.abs(x).max(axis=-1, keepdims=True) / F32(127))
    assert q.dtype == np.int8 and np.all(np.abs(q).max(axis=-1) == 127)
    spec1 = QuantSpec("uint8", symmetric=False, granularity="per_token", axis=1, dynamic=True)
    q1, p1 = quantize_dynamic(x, spec1)
    assert p1.scale.shape == (2, 1, 8) and q1.dtype == np.uint8
    # per-tensor dynamic (ONNX DynamicQuantizeLinear)
    spec_t = QuantSpec("uint8", symmetric=False, dynamic=True)
    qt, pt = quantize_dynamic(x, spec_t)
    assert pt.scale.shape == ()
    assert pt.scale == (max(x.max(), 0) - min(x.min(), 0)) / F32(255)


def test_quantize_dynamic_needs_dynamic_spec():
    with pytest.raises(ValueError, match="dynamic"):
        quantize_dynamic(np.ones(3, F32), QuantSpec("int8"))


def test_broadcast_params_per_tensor():
    p = QuantParams(F32(0.5), 3)
    spec = QuantSpec("uint8", symmetric=False)
    scale, zp = broadcast_params(p, spec, (2, 3))
    assert scale.shape == zp.shape == (2, 3)
    assert scale.dtype == np.float32 and zp.dtype == np.int32
    assert np.all(scale == 0.5) and np.all(zp == 3)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_wrong_param_shape_message():
    x = np.ones((2, 4), F32)
    spec = QuantSpec("int8", granularity="per_channel", axis=1)
    with pytest.raises(ValueError, match=r"shape \(3,\).*expects shape \(4,\)") as info:
        quantize(x, QuantParams(np.ones(3, F32)), spec)
    assert "per_channel" in str(info.value)
    with pytest.raises(ValueError, match=r"expects shape \(\)"):
        dequantize(x, QuantParams(np.ones(2, F32)), QuantSpec("int8"))
    spec_g = QuantSpec("int4", granularity="per_group", axis=1, group_size=3)
    with pytest.raises(ValueError, match=r"expects shape \(2, 2\)"):
        fake_quantize(x, QuantParams(np.ones((2, 1), F32)), spec_g)


def test_axis_out_of_range():
    spec = QuantSpec("int8", granularity="per_channel", axis=2)
    with pytest.raises(ValueError, match="axis 2"):
        reduce_range(np.ones((2, 3), F32), spec)


def test_nan_input_rejected():
    x = np.array([1.0, np.nan, 2.0], F32)
    with pytest.raises(ValueError, match="NaN"):
        reduce_range(x, QuantSpec("int8"))
    with pytest.raises(ValueError, match="NaN"):
        params_from_tensor(x, QuantSpec("int8"))
    with pytest.raises(ValueError, match="NaN"):
        quantize(x, QuantParams(F32(1.0)), QuantSpec("int8"))


def test_bad_zero_point_rejected():
    with pytest.raises(ValueError, match="zero point"):
        quantize(np.ones(2, F32), QuantParams(F32(1.0), 300), QuantSpec("uint8", symmetric=False))
    with pytest.raises(ValueError, match="zero point"):
        quantize(np.ones(2, F32), QuantParams(F32(1.0), 1), QuantSpec("fp8_e4m3fn"))


def test_empty_tensor_rejected():
    with pytest.raises(ValueError, match="empty"):
        reduce_range(np.zeros((0, 3), F32), QuantSpec("int8"))


# ---------------------------------------------------------------------------------------------
# stats helper
# ---------------------------------------------------------------------------------------------
def test_quantization_error():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(1000).astype(F32)
    e8 = quantization_error(x, QuantSpec("int8"))
    e4 = quantization_error(x, QuantSpec("int4"))
    assert set(e8) == {"mse", "max_abs", "sqnr_db"}
    assert 0 < e8["mse"] < e4["mse"]
    assert e8["sqnr_db"] > e4["sqnr_db"] > 0
    p = params_from_tensor(x, QuantSpec("int8"))
    assert e8["max_abs"] <= float(p.scale) / 2 * (1 + 1e-5)
    exact = np.array([0.0, 0.5, -1.0], F32)
    e = quantization_error(exact, QuantSpec("int8"), QuantParams(F32(0.5)))
    assert e["mse"] == 0.0 and e["sqnr_db"] == float("inf")


def test_zero_dim_tensors():
    """Scalars (0-d arrays, e.g. an ONNX Mul's constant operand) quantize like any tensor."""
    for dtype, sym in (("uint8", False), ("int8", True), ("fp8_e4m3fn", True)):
        spec = QuantSpec(dtype, symmetric=sym)
        x = np.array(0.37, np.float32)
        p = params_from_tensor(x, spec)
        q = quantize(x, p, spec)
        assert q.shape == () and q.dtype == spec.format.storage
        assert abs(float(dequantize(q, p, spec)) - 0.37) <= float(p.scale) / 2 + 1e-7


@pytest.mark.parametrize(
    ("dtype", "symmetric"),
    [
        (d, sym)
        for d in ("int8", "uint8", "int4", "uint4", "int3", "int2", "ternary", "int7")
        for sym in (True, False)
        if sym or d != "ternary"  # ternary is symmetric by definition
    ],
)
@pytest.mark.parametrize(
    "granularity",
    [
        {},
        {"granularity": "per_channel", "axis": 1},
        {"granularity": "per_group", "axis": 1, "group_size": 5},
    ],
)
def test_fake_quantize_fast_path_is_quantize_then_dequantize(dtype, symmetric, granularity):
    """fake_quantize on integer grids computes in float32 alone: the same bits as the codes."""
    from quantfw.numerics import params_from_tensor

    spec = QuantSpec(dtype, symmetric=symmetric, **granularity)
    rng = np.random.default_rng(0)
    x = (rng.standard_cauchy(size=(7, 23)) * 3).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 2], x[3, 3], x[4, 4] = 1e30, -1e30, -0.0, np.inf, -np.inf
    p = params_from_tensor(np.clip(x, -50, 50), spec)
    got, want = fake_quantize(x, p, spec), dequantize(quantize(x, p, spec), p, spec)
    assert got.dtype == want.dtype == np.float32
    assert got.tobytes() == want.tobytes()
