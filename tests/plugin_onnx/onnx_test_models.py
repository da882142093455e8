"""ONNX model builders and ONNX Runtime helpers shared by several test modules here (imported by tests that have
already skipped themselves without onnx)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from quantfw_onnx.cpu import cpu_vnni, detect_x86

from quantfw import QuantSpec


@functools.cache
def x86_target() -> str:
    """The x86 target whose artifacts ONNX Runtime runs exactly on this CPU: what
    ``target="x86"`` resolves to (:func:`quantfw_onnx.cpu.detect_x86`), ``x86-vnni`` on a CPU with
    VNNI, else ``x86-avx2``.

    An ``x86-vnni`` artifact's full int8 weights saturate in the AVX2 kernel of a CPU without
    VNNI (``quantfw_onnx.avx2``), so a test comparing ONNX Runtime's integer kernels with the
    reference quantizes for this target unless its point is VNNI itself.  On a VNNI CPU it is
    ``x86-vnni``: such a test checks there what it always did.  ``quantfw_onnx.cpu_mask`` runs
    the suite as an AVX2-only CPU (see ``test_avx2_emulation.py``)."""
    return detect_x86().target


def x86_weight_spec(axis: int, target: str | None = None) -> QuantSpec:
    """The default weight spec of ``target`` (default :func:`x86_target`) on channel ``axis``, for
    recipes a test builds by hand: int8 symmetric narrow per channel, with ``x86-avx2``'s
    ``pair_limit`` (so ONNX Runtime's AVX2 kernel cannot saturate on it)."""
    from quantfw.plugins.state import get_registry

    fields = get_registry().target(target or x86_target()).weight_template("linear")
    return QuantSpec(**fields, axis=axis)


def avx2_kernel_here() -> tuple[bool, str]:
    """``(True, what the CPU has)`` when ONNX Runtime's u8 x s8 kernel here is the AVX2 one whose
    int16 pair sums saturate (x86 with AVX2, no VNNI), else ``(False, why not)``."""
    vnni, found = cpu_vnni()
    if vnni:
        return False, f"this CPU has {found}: ONNX Runtime's u8 x s8 kernel cannot saturate"
    if found != "avx2 without VNNI":
        return False, f"this CPU has {found}: ONNX Runtime runs neither its VNNI nor AVX2 kernel"
    return True, found


def mlp_model(
    seed: int = 0, hidden: int = 32, ffn: int = 64, opset: int = 13, ir_version: int | None = None
) -> onnx.ModelProto:
    """x[batch, seq, hidden] -> MatMul+Add -> Relu -> MatMul+Add -> y: a transformer's FFN, with
    initializers ``fc1.weight`` / ``fc1.bias`` / ``fc2.weight`` / ``fc2.bias``."""
    rng = np.random.default_rng(seed)

    def f32(a) -> np.ndarray:
        return np.asarray(a, dtype=np.float32)

    w = {
        "fc1.weight": f32(rng.normal(size=(hidden, ffn)) / np.sqrt(hidden)),
        "fc1.bias": f32(rng.normal(size=ffn) * 0.1),
        "fc2.weight": f32(rng.normal(size=(ffn, hidden)) / np.sqrt(ffn)),
        "fc2.bias": f32(rng.normal(size=hidden) * 0.1),
    }
    nodes = [
        h.make_node("MatMul", ["x", "fc1.weight"], ["fc1.mm"], name="fc1/MatMul"),
        h.make_node("Add", ["fc1.mm", "fc1.bias"], ["fc1.out"], name="fc1/Add"),
        h.make_node("Relu", ["fc1.out"], ["act"], name="relu"),
        h.make_node("MatMul", ["act", "fc2.weight"], ["fc2.mm"], name="fc2/MatMul"),
        h.make_node("Add", ["fc2.mm", "fc2.bias"], ["y"], name="fc2/Add"),
    ]
    graph = h.make_graph(
        nodes,
        "mlp",
        [h.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", hidden])],
        [h.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", hidden])],
        [nh.from_array(v, k) for k, v in w.items()],
    )
    kwargs = {} if ir_version is None else {"ir_version": ir_version}
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], **kwargs)


def session(model: onnx.ModelProto, optimized: bool):
    """The backend's session (MatMulNBits pinned to float32 compute), one thread."""
    from quantfw_onnx.backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend().session(model.SerializeToString(), optimized, threads=1)


def optimized_model(
    model: onnx.ModelProto, tmp_path: Path, config: dict[str, str] | None = None
) -> onnx.ModelProto:
    """The model ONNX Runtime's CPU provider actually runs (``ORT_ENABLE_EXTENDED``: every
    fusion, no layout transforms), read back from its optimized model file; ``config`` holds
    session config entries."""
    import onnxruntime as ort

    out = tmp_path / "optimized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """The kernels ONNX Runtime actually runs, read back from its optimized model."""
    return [n.op_type for n in optimized_model(model, tmp_path).graph.node]
