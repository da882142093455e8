"""The ``onnxruntime`` backend: Recipe -> QDQ ONNX artifact, run by ONNX Runtime's CPU provider.

``lower`` writes the float model (the frontend's prepared copy, ``graph.forms["onnx"]``) with the
recipe's Q/DQ (see :mod:`quantfw_onnx.lowering` for why the lowering looks the way it does, and
``tests/plugin_onnx/test_ort_rules.py`` for what ONNX Runtime fuses), checks it with
``onnx.checker`` and writes it atomically.  ``run`` executes an artifact with all graph
optimizations on, so the integer kernels are the ones that run.

An artifact with full 8-bit weights is exact only on CPUs with VNNI: on AVX2 without VNNI the
u8 x s8 kernel saturates in int16 (:mod:`quantfw_onnx.avx2`).  ``run`` refuses such an artifact
on such a CPU instead of returning silently wrong numbers (``check_cpu=False`` lets it run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantfw.api import Artifact, Batch
from quantfw.errors import UnavailableError
from quantfw.fileio import atomic_write_bytes, check_not_input, publish
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe
from quantfw.target import TargetSpec

from .avx2 import PAIR_LIMIT, max_kernel_pair_sum, saturates_on_avx2
from .cpu import cpu_vnni, saturation_warning
from .opset import default_opset

__all__ = [
    "OnnxRuntimeBackend",
    "PROTOBUF_LIMIT",
    "MATMULNBITS_ACCURACY_LEVEL",
    "artifact_stats",
    "run_session",
]

#: A single protobuf message cannot exceed 2 GiB; above this the weights go to an external file.
PROTOBUF_LIMIT = (1 << 31) - (64 << 20)
#: ``MatMulNBits`` accuracy level of the sessions this backend opens (1 = float32 compute).
MATMULNBITS_ACCURACY_LEVEL = 1

_INSTALL = 'pip install "quantfw[onnx]"'


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise UnavailableError(
            f"the onnxruntime backend needs ONNX Runtime, which is not importable here ({exc}); "
            f"{_INSTALL}"
        ) from None
    return onnxruntime


def _load_model(model: object, graph: QuantGraph) -> Any:
    """The ONNX model to lower: the capture's prepared model when the graph has one (the
    recipe's tensor names are its names), else ``model`` itself (a ModelProto or a path)."""
    import onnx

    form = graph.forms.get("onnx")
    if isinstance(form, onnx.ModelProto):
        return form
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise ValueError(
        f"graph {graph.name!r} carries no ONNX model (its forms: {sorted(graph.forms) or 'none'}) "
        f"and the model is a {type(model).__name__}: capture the model with a frontend that "
        "records its ONNX form (onnx, torch), or pass the float onnx.ModelProto / .onnx path"
    )


def artifact_stats(model: Any) -> dict[str, Any]:
    """Counts describing a lowered model: Q/DQ nodes, integer ops, the weight code range."""
    from onnx import TensorProto, numpy_helper

    from .lowering import count_ops

    ops = count_ops(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    max_code = 0
    int8_weights = 0
    for n in g.node:
        if n.op_type not in ("DequantizeLinear", "MatMulInteger"):
            continue
        names = [n.input[0]] if n.op_type == "DequantizeLinear" else list(n.input[:2])
        for x in names:
            t = inits.get(x)
            if t is None or t.data_type != TensorProto.INT8 or t.data_location == 1:
                continue
            codes = numpy_helper.to_array(t)
            if codes.size:
                int8_weights += 1
                max_code = max(max_code, int(np.abs(codes.astype(np.int64)).max()))
    q = ops.get("QuantizeLinear", 0)
    dq = ops.get("DequantizeLinear", 0)
    return {
        "quantize_linear": q,
        "dequantize_linear": dq,
        "qdq_nodes": q + dq,
        "dynamic_quantize_linear": ops.get("DynamicQuantizeLinear", 0),
        "matmul_integer": ops.get("MatMulInteger", 0),
        "int8_weight_tensors": int8_weights,
        "max_weight_code": max_code,
        "max_pair_sum": max_kernel_pair_sum(model),
        "needs_vnni": saturates_on_avx2(model),
    }


class OnnxRuntimeBackend:
    """Lowers recipes to ONNX QDQ models and runs them with ONNX Runtime's CPU provider.

    :param fmt: ``"qdq"`` (default) or ``"qoperator"`` (QLinearConv / QLinearMatMul /
        MatMulInteger where a pattern converts; see :mod:`quantfw_onnx.lowering.qoperator`).  Through
        :func:`quantfw.quantize` it is ``backend_options={"fmt": "qoperator"}``, on the command line
        ``--backend-option fmt=qoperator``.
    :param check_cpu: refuse, in :meth:`run`, artifacts whose 8-bit weights saturate on this CPU.
    :param threads: intra-op threads for :meth:`run`'s sessions (``None``: ONNX Runtime's choice).
    """

    name = "onnxruntime"

    def __init__(self, *, fmt: str = "qdq", check_cpu: bool = True, threads: int | None = None):
        from .lowering import FORMATS

        if fmt not in FORMATS:
            raise ValueError(
                f"onnxruntime backend option fmt={fmt!r}: choose one of {', '.join(FORMATS)}"
            )
        self.fmt = fmt
        self.check_cpu = check_cpu
        self.threads = threads
        self._sessions: dict[tuple[Any, ...], Any] = {}

    # -- lowering ------------------------------------------------------------------------------
    def lower(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        output: Path,
        *,
        target: TargetSpec | None = None,
    ) -> Artifact:
        """Write the quantized model to ``output`` atomically and describe it.

        ``model`` is the float ONNX model (a ModelProto or a path); when ``graph`` records the
        capture's prepared model (``graph.forms["onnx"]``) that one is lowered, since the
        recipe's tensor names are its names.  ``target`` names the artifact's target (default:
        the recipe's) and says how activations below 8 bits are carried
        (``allowed.narrow_activations``; without it, this plugin's own target of the recipe's
        name, e.g. ``x86-vnni``: uint8 codes clipped to the narrow grid).

        The format is the backend's ``fmt``: ``"qdq"`` (the default) or ``"qoperator"`` -- the same QDQ model with
        its quantized Conv/MatMul/Gemm rewritten as QLinearConv/QLinearMatMul/MatMulInteger/
        ConvInteger (:mod:`quantfw_onnx.lowering.qoperator`), e.g.
        ``OnnxRuntimeBackend(fmt="qoperator").lower(result.model, result.graph, result.recipe,
        path)`` after a ``quantize`` without ``output``.  A QOperator artifact's metadata also
        counts its integer ops (``qlinear_conv``, ``qlinear_matmul``, ``matmul_integer``,
        ``conv_integer``) and the float ops still reading a DequantizeLinear
        (``float_ops_on_dequantized``), and ``max_weight_code``/``needs_vnni`` cover the weights
        the integer ops read directly.

        :raises ValueError: when ``output`` is the input model's file, the format is unknown, or
            the recipe cannot be expressed in ONNX (:class:`~quantfw_onnx.lowering.LoweringError`).
        """
        import onnx

        from .lowering import write_qdq

        output = Path(output)
        if isinstance(model, (str, os.PathLike)):
            check_not_input(output, [model])
        source = _load_model(model, graph)
        narrow = _narrow_activations(target, recipe.target)
        qmodel = write_qdq(source, graph, recipe, fmt=self.fmt, narrow_activations=narrow)
        stats = artifact_stats(qmodel)
        if self.fmt == "qoperator":
            from .lowering import qoperator_stats

            stats.update(qoperator_stats(qmodel))
        size = qmodel.ByteSize()
        external = None
        if size > PROTOBUF_LIMIT:
            external = self._write_external(qmodel, output)
        else:
            onnx.checker.check_model(qmodel, full_check=True)
            atomic_write_bytes(output, qmodel.SerializeToString())
        opset = default_opset(qmodel)
        file_size = output.stat().st_size + (external.stat().st_size if external else 0)
        metadata = {
            "format": self.fmt,
            "opset": opset,
            **stats,
            "file_size": file_size,
            "external_data": None if external is None else str(external),
            "runtime": "onnxruntime (CPUExecutionProvider)",
        }
        warning = saturation_warning(output, metadata)
        metadata["host_warnings"] = [warning] if warning else []
        name = target.name if target is not None else recipe.target
        return Artifact(path=output, target=name, format="onnx", metadata=metadata)

    @staticmethod
    def _write_external(qmodel: Any, output: Path) -> Path:
        """Save a model above protobuf's 2 GiB limit as ``output`` + ``output.data``, each
        moved into place only after the whole pair was written and checked (with the modes of
        :func:`quantfw.fileio.output_mode`)."""
        import onnx

        output.parent.mkdir(parents=True, exist_ok=True)
        data_name = output.name + ".data"
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            onnx.save_model(
                qmodel,
                str(tmp / output.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            onnx.checker.check_model(str(tmp / output.name), full_check=True)
            publish(tmp / data_name, output.parent / data_name)
            publish(tmp / output.name, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return output.parent / data_name

    # -- running -------------------------------------------------------------------------------
    def session(
        self,
        path: str | os.PathLike[str] | bytes,
        optimized: bool = True,
        threads: int | None = None,
    ) -> Any:
        """An ONNX Runtime CPU session for ``path`` (or serialized model bytes): all graph
        optimizations (the fused integer kernels) when ``optimized``, none otherwise (every Q/DQ
        executed as written).

        Weight-only ``DQ -> MatMul`` is fused into ``MatMulNBits``, whose default accuracy level
        (4) quantizes the *activations* to int8 on the fly -- a quantization the recipe never
        asked for, worth ~1e-2 absolute error on a unit-scale layer.  The session pins
        :data:`MATMULNBITS_ACCURACY_LEVEL` (1: float32 compute) so the artifact computes what the
        simulation computes.
        """
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimized
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.add_session_config_entry(
            "session.qdq_matmulnbits_accuracy_level", str(MATMULNBITS_ACCURACY_LEVEL)
        )
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        source = path if isinstance(path, bytes) else os.fspath(path)
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])

    def run(self, artifact: Artifact, inputs: Batch) -> dict[str, np.ndarray]:
        """Run ``artifact`` on ``inputs`` (input name -> array) with all optimizations on.

        :raises UnavailableError: (a RuntimeError) when ONNX Runtime is missing, or when the artifact's 8-bit weights
            would saturate in this CPU's AVX2 kernel (no VNNI) and ``check_cpu`` is on.
        :raises ValueError: on missing or unknown input names.
        """
        if self.check_cpu and artifact.metadata.get("needs_vnni"):
            ok, found = cpu_vnni()
            if not ok:
                raise UnavailableError(
                    f"{artifact.path} has int8 weights whose adjacent codes sum up to "
                    f"{artifact.metadata.get('max_pair_sum')} (over {PAIR_LIMIT}) and this CPU has "
                    f"{found}: ONNX Runtime's AVX2 u8 x s8 kernel would saturate in int16 and "
                    "return wrong numbers. Lower for target 'x86-avx2' (its int8 weights keep "
                    "every pair within the limit), or pass check_cpu=False to run anyway"
                )
        path = Path(artifact.path)
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, self.threads)
        sess = self._sessions.get(key)
        if sess is None:
            sess = self.session(path, optimized=True, threads=self.threads)
            self._sessions = {key: sess}  # keep one: artifacts are rewritten in place
        return run_session(sess, inputs)


def _narrow_activations(target: TargetSpec | None, name: str) -> str:
    """``allowed.narrow_activations`` of ``target``, else of this plugin's target ``name``
    (``"own_type"`` for a target it does not ship)."""
    if target is None:
        path = Path(__file__).resolve().parent / "targets" / f"{name}.toml"
        if not path.is_file():
            return "own_type"
        from quantfw.target import load_target

        target = load_target(path)
    return target.allowed.narrow_activations


_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def run_session(sess: Any, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Feed ``inputs`` (cast to the session's input types) and return outputs by name."""
    wanted = [i for i in sess.get_inputs()]
    names = [i.name for i in wanted]
    missing = [n for n in names if n not in inputs]
    unknown = [n for n in inputs if n not in names]
    if missing or unknown:
        raise ValueError(f"the model takes inputs {names}; missing {missing}, unknown {unknown}")
    feeds = {}
    for i in wanted:
        arr = np.asarray(inputs[i.name])
        dtype = _ORT_NUMPY.get(i.type)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        feeds[i.name] = arr
    outs = sess.run(None, feeds)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}
