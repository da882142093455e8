"""ONNX model builders and ONNX Runtime helpers shared by several test modules here (imported by tests that have
already skipped themselves without onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


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
