"""A numpy model of the AVX2 u8 x s8 integer kernel, to show where it saturates.

Without VNNI, ONNX Runtime's MLAS computes a u8 x s8 dot product with two instructions:

1. ``VPMADDUBSW`` multiplies unsigned bytes of the activation by signed bytes of the weight and
   adds each *adjacent pair* of products into a signed 16-bit lane **with saturation**
   (to [-32768, 32767]);
2. ``VPMADDWD`` against a vector of ones adds adjacent int16 lanes into int32 (exact), and the
   int32 results are accumulated (exact as long as int32 does not overflow).

So every pair ``a[k] * b[k] + a[k+1] * b[k+1]`` must fit int16.  With u8 codes up to 255 and full
int8 weights (127, or -128) it does not: 255*127*2 = 64770.  With 7-bit weights (|b| <= 63, the
``int7`` narrow grid; ONNX Runtime's ``reduce_range``) the worst pair is 255*63*2 = 32130, which
fits.  VNNI's ``VPDPBUSD`` accumulates the four products of a group straight into int32 and never
saturates.

The kernel multiplies the *raw* codes (zero points are corrected afterwards with row and column
sums), which is what :func:`u8s8_matmul_avx2` takes.  Which two k's MLAS pairs depends on its
packing; any pairing of consecutive k is modelled here, and the saturation-free bound
(:func:`max_safe_weight_code`) holds for every pairing.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "INT16_MIN",
    "INT16_MAX",
    "u8s8_matmul_avx2",
    "u8s8_matmul_exact",
    "max_safe_weight_code",
    "saturation_free",
]

INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.int8:
        raise TypeError(f"expected uint8 activations and int8 weights, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"expected (M, K) @ (K, N) codes, got {a.shape} and {b.shape}")
    return a, b


def u8s8_matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact int32 product of raw u8 codes ``a`` (M, K) and s8 codes ``b`` (K, N) (VNNI)."""
    a, b = _check(a, b)
    return a.astype(np.int64) @ b.astype(np.int64)


def u8s8_matmul_avx2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The int32 accumulator the AVX2 kernel produces for raw codes ``a`` (M, K) @ ``b`` (K, N).

    K is zero-padded to a multiple of 4; products of k-pairs ``(2j, 2j+1)`` are summed with int16
    saturation (``VPMADDUBSW``), then pairs of int16 are added into int32 (``VPMADDWD`` with
    ones) and accumulated over K.
    """
    a, b = _check(a, b)
    m, k = a.shape
    n = b.shape[1]
    pad = (-k) % 4
    a64 = np.pad(a.astype(np.int64), ((0, 0), (0, pad)))
    b64 = np.pad(b.astype(np.int64), ((0, pad), (0, 0)))
    kp = k + pad
    # products[m, k, n], then adjacent k pairs
    prods = a64[:, :, None] * b64[None, :, :]
    pairs = prods.reshape(m, kp // 2, 2, n).sum(axis=2)
    sat16 = np.clip(pairs, INT16_MIN, INT16_MAX)
    quads = sat16.reshape(m, kp // 4, 2, n).sum(axis=2)  # VPMADDWD: exact int32
    return quads.sum(axis=1)


def max_safe_weight_code(act_max: int = 255) -> int:
    """Largest ``|b|`` for which no u8 x s8 pair sum can saturate int16 with activations up to
    ``act_max`` (64 for u8: 2*255*64 = 32640; the int7 narrow grid's 63 is inside it)."""
    if act_max <= 0:
        raise ValueError("act_max must be positive")
    return INT16_MAX // (2 * act_max)


def saturation_free(weight_codes: np.ndarray, act_max: int = 255) -> bool:
    """Whether weights with these codes are exact in the AVX2 kernel for every input up to
    ``act_max``: a sufficient condition (any two codes might be paired), checking the largest
    positive pair ``2 * act_max * max(b)`` and the largest negative one ``2 * act_max * min(b)``
    against the int16 range."""
    w = np.asarray(weight_codes).astype(np.int64)
    if w.size == 0:
        return True
    hi = 2 * act_max * max(int(w.max()), 0)
    lo = 2 * act_max * min(int(w.min()), 0)
    return hi <= INT16_MAX and lo >= INT16_MIN
