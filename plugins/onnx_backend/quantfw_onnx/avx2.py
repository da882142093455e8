"""A numpy model of the AVX2 u8 x s8 integer kernel, to show where it saturates.

Without VNNI, ONNX Runtime's MLAS computes a u8 x s8 dot product with two instructions:

1. ``VPMADDUBSW`` multiplies unsigned bytes of the activation by signed bytes of the weight and
   adds each *adjacent pair* of products into a signed 16-bit lane **with saturation**
   (to [-32768, 32767]);
2. ``VPMADDWD`` against a vector of ones adds adjacent int16 lanes into int32 (exact), and the
   int32 results are accumulated (exact as long as int32 does not overflow).

So every pair ``a[k] * b[k] + a[k+1] * b[k+1]`` must fit int16.  With u8 codes up to 255 and full
int8 weights (127, or -128) it does not: 255*127*2 = 64770.  It does when the two paired weight
codes sum to at most :data:`PAIR_LIMIT` (128) in magnitude -- what the ``x86-avx2`` target's
``pair_limit`` guarantees (:mod:`quantfw.pairs`) -- and so with 7-bit weights (|b| <= 63, ONNX
Runtime's ``reduce_range``).  VNNI's ``VPDPBUSD`` accumulates the four products of a group
straight into int32 and never saturates.

Which k's are paired was measured on ONNX Runtime 1.32 running its AVX2 kernels
(``quantfw_onnx.cpu_mask``): consecutive ``(2j, 2j+1)`` of the reduction as the GEMM reads it --
a ``MatMul`` weight's rows, a convolution's channels-last ``im2col`` order (kernel position
outer, input channel inner); depthwise convolutions and u8 x u8 products widen first and are
exact.  :func:`max_kernel_pair_sum` finds the largest pair of an ONNX model's weights.

The kernel multiplies the *raw* codes (zero points are corrected afterwards with row and column
sums), which is what :func:`u8s8_matmul_avx2` takes.  Which two k's MLAS pairs depends on its
packing; any pairing of consecutive k is modelled here, and the saturation-free bound
(:func:`max_safe_weight_code`) holds for every pairing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "INT16_MIN",
    "INT16_MAX",
    "PAIR_LIMIT",
    "max_kernel_pair_sum",
    "saturates_on_avx2",
    "kernel_pairs",
    "u8s8_matmul_avx2",
    "u8s8_matmul_exact",
    "max_safe_weight_code",
    "saturation_free",
]

INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1
#: the largest ``|b[2j] + b[2j+1]|`` that cannot saturate with u8 activations: 32767 // 255
PAIR_LIMIT = INT16_MAX // 255

# integer-kernel ops -> (weight input index, layout of that weight for quantfw.pairs)
_KERNEL_WEIGHTS = {
    "MatMulInteger": (1, "cols"),
    "DynamicQuantizeMatMul": (1, "cols"),
    "MatMulIntegerToFloat": (1, "cols"),
    "QLinearMatMul": (3, "cols"),
    "ConvInteger": (1, "conv"),
    "QLinearConv": (3, "conv"),
}


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


def _dq_layout(node: Any) -> str | None:
    """The layout in which a float op that a fused integer kernel replaces reads its weight."""
    if node.op_type == "MatMul":
        return "cols"
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return "rows" if trans_b else "cols"
    if node.op_type == "Conv":
        return "conv"
    return None


def _depthwise(node: Any, codes: np.ndarray) -> bool:
    """A grouped convolution with one input channel per group: ONNX Runtime's depthwise kernel
    widens to 16 bits first and cannot saturate (a plain convolution over one input channel,
    group 1, runs on the pairing GEMM)."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1 and codes.ndim >= 3 and codes.shape[1] == 1


def max_kernel_pair_sum(model: Any) -> int:
    """The largest ``|b[2j] + b[2j+1]|`` over the int8 weights an x86 integer kernel of ONNX
    Runtime would read in ``model`` (an ``onnx.ModelProto``): initializers of integer ops, and
    ``DequantizeLinear`` weights read by ``MatMul``/``Gemm``/``Conv`` (which ONNX Runtime fuses
    into integer kernels).  Depthwise convolutions (exact kernel) and weights stored outside the
    model file are skipped.  Above :data:`PAIR_LIMIT` the model saturates on AVX2 without VNNI
    -- unless its activations are narrower (:func:`saturates_on_avx2`)."""
    return max((pair for pair, _ in kernel_pairs(model)), default=0)


def saturates_on_avx2(model: Any) -> bool:
    """Whether some integer kernel of ``model`` can saturate the AVX2 kernel's int16 pair sums:
    its weights' largest pair sum times the largest activation code it can read exceeds
    :data:`INT16_MAX`.  The activation bound is 255 unless the kernel reads uint8 codes that a
    ``Clip`` restricted (activations below 8 bits, ``allowed.narrow_activations``): uint4 codes
    (at most 15) never saturate with int8 weights (15 * 254 < 32767)."""
    return any(pair * act > INT16_MAX for pair, act in kernel_pairs(model))


def kernel_pairs(model: Any) -> list[tuple[int, int]]:
    """``(largest |b[2j] + b[2j+1]|, largest activation code read)`` per integer kernel's int8
    weight in ``model`` (see :func:`max_kernel_pair_sum` for which weights count)."""
    from onnx import TensorProto, numpy_helper

    from quantfw.pairs import max_pair_sum

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    out: list[tuple[int, int]] = []

    def visit(name: str, layout: str, reader: Any, codes_in: str) -> None:
        t = inits.get(name)
        if t is None or t.data_type != TensorProto.INT8 or t.data_location == TensorProto.EXTERNAL:
            return
        codes = numpy_helper.to_array(t)
        if codes.size and not (layout == "conv" and _depthwise(reader, codes)):
            out.append((max_pair_sum(codes, layout), _clipped_max(codes_in, producer, inits)))

    for n in g.node:
        if n.op_type in _KERNEL_WEIGHTS:
            k, layout = _KERNEL_WEIGHTS[n.op_type]
            if k < len(n.input):
                visit(n.input[k], layout, n, n.input[0])
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            for reader, idx in readers.get(n.output[0], []):
                layout = _dq_layout(reader)
                if idx == 1 and layout is not None:
                    act = producer.get(reader.input[0])
                    codes_in = (
                        act.input[0]
                        if act is not None and act.op_type == "DequantizeLinear"
                        else ""
                    )
                    visit(n.input[0], layout, reader, codes_in)
    return out


def _clipped_max(codes: str, producer: dict[str, Any], inits: dict[str, Any]) -> int:
    """The largest uint8 activation code tensor ``codes`` can hold: a ``Clip``'s constant upper
    bound on uint8 codes, else 255."""
    from onnx import TensorProto, numpy_helper

    clip = producer.get(codes)
    if clip is None or clip.op_type != "Clip" or len(clip.input) < 3:
        return 255
    hi = inits.get(clip.input[2])
    if hi is None or hi.data_type != TensorProto.UINT8:
        return 255
    return int(numpy_helper.to_array(hi))
