"""Tests of the byte layouts in quantfw.packing."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantfw.formats import get_format
from quantfw.packing import bits_per_code, pack, packed_nbytes, unpack

INT_FORMATS = [
    "int8",
    "uint8",
    "int4",
    "uint4",
    "int3",
    "uint3",
    "int2",
    "uint2",
    "ternary",
    "int32",
]


@st.composite
def codes(draw, formats=tuple(INT_FORMATS)):
    name = draw(st.sampled_from(formats))
    fmt = get_format(name)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7))
    q = draw(hnp.arrays(fmt.storage, shape, elements=st.integers(fmt.qmin, fmt.qmax)))
    return name, q


@settings(max_examples=200, deadline=None)
@given(codes())
def test_round_trip(case):
    name, q = case
    packed = pack(q, name)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == packed_nbytes(q.size, name)
    out = unpack(packed, name, q.shape)
    assert out.dtype == get_format(name).storage
    assert out.shape == q.shape
    np.testing.assert_array_equal(out, q)


@settings(max_examples=50, deadline=None)
@given(codes(("int4", "uint4", "int3", "int2", "ternary")))
def test_padding_is_zero(case):
    name, q = case
    packed = pack(q, name)
    bits = bits_per_code(name)
    used = q.size * bits
    if packed.size and used % 8:
        assert packed[-1] >> (used % 8) == 0


def test_int4_layout_low_nibble_first():
    assert pack(np.array([1, -1], np.int8), "int4").tolist() == [0xF1]
    assert pack(np.array([-8, 7, 3], np.int8), "int4").tolist() == [0x78, 0x03]
    assert pack(np.array([[1, 2], [3, 4]], np.int8), "int4").tolist() == [0x21, 0x43]
    assert pack(np.array([15, 0, 9], np.uint8), "uint4").tolist() == [0x0F, 0x09]
    np.testing.assert_array_equal(unpack(np.array([0xF1], np.uint8), "int4", (2,)), [1, -1])
    np.testing.assert_array_equal(unpack(np.array([0xF1], np.uint8), "uint4", 2), [1, 15])


def test_int3_uses_nibbles():
    packed = pack(np.array([-4, 3, -1], np.int8), "int3")
    assert packed.tolist() == [0x3C, 0x0F]
    assert packed_nbytes(3, "int3") == 2
    np.testing.assert_array_equal(unpack(packed, "int3", 3), [-4, 3, -1])


def test_int2_layout_lowest_bits_first():
    assert pack(np.array([1, -1, 0, -2], np.int8), "int2").tolist() == [0b10_00_11_01]
    assert pack(np.array([1, -1, 0, -2, -1], np.int8), "int2").tolist() == [0b10_00_11_01, 0b11]
    assert pack(np.array([1, -1, 0, 1], np.int8), "ternary").tolist() == [0b01_00_11_01]
    out = unpack(np.array([0b10_00_11_01], np.uint8), "int2", (2, 2))
    np.testing.assert_array_equal(out, [[1, -1], [0, -2]])


def test_eight_bit_formats_are_plain_bytes():
    q = np.array([[-128, -1], [0, 127]], np.int8)
    packed = pack(q, "int8")
    assert packed.tolist() == [0x80, 0xFF, 0x00, 0x7F]
    np.testing.assert_array_equal(unpack(packed, "int8", q.shape), q)
    u = np.array([0, 200, 255], np.uint8)
    assert pack(u, "uint8").tolist() == [0, 200, 255]
    # wider integer inputs are accepted when their values fit
    assert pack(np.array([-1, 5], np.int64), "int8").tolist() == [0xFF, 5]


@pytest.mark.parametrize(
    "name,dtype", [("fp8_e4m3fn", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)]
)
def test_fp8_bytes(name, dtype):
    codes_ = np.arange(256, dtype=np.uint8)
    values = codes_.view(dtype).reshape(16, 16)
    packed = pack(values, name)
    np.testing.assert_array_equal(packed, codes_)
    back = unpack(packed, name, (16, 16))
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.view(np.uint8), values.view(np.uint8))


def test_wide_formats_little_endian():
    packed = pack(np.array([1, -2], np.int32), "int32")
    assert packed.tolist() == [1, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF]
    h = np.array([1.0, -2.5], np.float16)
    assert pack(h, "fp16").tolist() == [0x00, 0x3C, 0x00, 0xC1]
    b = np.array([1.0], ml_dtypes.bfloat16)
    np.testing.assert_array_equal(unpack(pack(b, "bf16"), "bf16", 1).astype(np.float32), [1.0])


def test_packed_nbytes():
    assert [packed_nbytes(n, "int4") for n in range(5)] == [0, 1, 1, 2, 2]
    assert [packed_nbytes(n, "int2") for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert packed_nbytes(5, "ternary") == 2
    assert packed_nbytes(5, "uint8") == 5
    assert packed_nbytes(5, "fp8") == 5
    assert packed_nbytes(5, "int32") == 20
    assert packed_nbytes(3, "bf16") == 6
    with pytest.raises(ValueError):
        packed_nbytes(-1, "int4")


@pytest.mark.parametrize(
    "name,bad",
    [
        ("int4", 8),
        ("int4", -9),
        ("uint4", 16),
        ("uint4", -1),
        ("int3", 4),
        ("int3", -5),
        ("int2", 2),
        ("int2", -3),
        ("ternary", -2),
        ("int8", 128),
        ("uint8", 256),
    ],
)
def test_out_of_range_rejected(name, bad):
    with pytest.raises(ValueError, match=f"{bad}.*outside the {name} range"):
        pack(np.array([0, bad], np.int64), name)


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="integer array"):
        pack(np.array([0.5, 1.0], np.float32), "int4")
    with pytest.raises(ValueError, match="dtype"):
        pack(np.array([0.5], np.float32), "fp8_e4m3fn")
    with pytest.raises(ValueError, match="takes 2 bytes, got 1"):
        unpack(np.zeros(1, np.uint8), "int4", (3,))
    with pytest.raises(ValueError, match="uint8"):
        unpack(np.zeros(2, np.int8), "int4", (3,))
    # 0b10 is -2, which ternary never uses
    with pytest.raises(ValueError, match="ternary"):
        unpack(np.array([0b10], np.uint8), "ternary", (1,))
    # a nibble of 7 is not an int3 value
    with pytest.raises(ValueError, match="int3"):
        unpack(np.array([0x07], np.uint8), "int3", (1,))
    with pytest.raises(ValueError, match="unknown number format"):
        pack(np.zeros(2, np.int8), "int5")
