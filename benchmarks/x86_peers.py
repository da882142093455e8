"""quantfw against its x86 peers, measured side by side in one run.

    python benchmarks/x86_peers.py [--quick] [--models cnn,minilm] [--out results.json]
                                   [--cpu native|avx2] [--seq 128] [--n-calib 256] [--n-eval 1000]

``--cpu avx2`` runs the whole benchmark (quantfw's target detection, every ONNX Runtime session)
in a child process that sees an AVX2-only CPU (``quantfw_onnx.cpu_mask``: CPUID faulting hides
AVX-512, VNNI and AMX), so ONNX Runtime runs its real saturating AVX2 kernels and ``x86`` resolves
to ``x86-avx2`` on a VNNI machine; the header says which CPU path was measured.  The weight-format
rows (int7, uint8 U8U8, int4 W4A8) and the dynamic rows (no calibration; with calibration, which
turns on SmoothQuant; per-token) show each choice side by side.

Rows: the float model; ONNX Runtime ``quantize_static`` (QDQ, per-channel int8 weights, uint8
activations, MinMax, the same calibration batches as every other static row); ONNX Runtime
``quantize_dynamic`` (per-channel QInt8); NNCF ``nncf.quantize`` on the ONNX model with its default
preset (and, for MiniLM, once more with ``model_type=TRANSFORMER``, NNCF's documented setting for
transformers, plus "ort static tuned": quantize_static restricted by hand to MatMul inputs and
Gather tables, see FINDINGS); then quantfw's own rows from :func:`ours_rows` (one per
calibrator, plus dynamic).

Models: (a) the numpy-trained digits CNN of ``quantfw_onnx.samples`` -- top-1 accuracy on its test
split; (b) all-MiniLM-L6-v2 (``minilm_export.py``) -- calibration on 128 standard-library docstring
sentences, evaluation on 512 disjoint ones: mean and 5th-percentile cosine of each sentence
embedding to the float one, top-1 retrieval agreement with float (each sentence's nearest other
sentence in the evaluation set), size ratio, median latency ratio to float at batch 1 and 32
(sequence padded to 64, the same inputs for every row), time to quantize.

Timing protocol: all sessions use identical SessionOptions (intra-op threads set explicitly, default
2); every repeat visits every row (in a rotating order) with a 0.1 s pause before each timed call,
because a finished ORT session's spinning threads slow the next call; medians and ratios to float
are reported.  Absolute milliseconds move with machine load; the ratios are the result.

reduce_range: this benchmark passes ``reduce_range=False``.  That is right only where the CPU has
VNNI (AVX512-VNNI or AVX-VNNI: ``VPDPBUSD`` accumulates u8 x s8 products straight into int32).  On
AVX2 without VNNI, MLAS uses ``VPMADDUBSW``, whose pairwise int16 sums saturate, so 8-bit weights
need ``reduce_range=True`` (7-bit).  The machine's flags are printed and stored in the JSON.

-----------------------------------------------------------------------------------------------
FINDINGS (ORT 1.32, NNCF 3.4; 2 cores with avx512_vnni + avx_vnni; full run of this script plus
one-off variants named below).  Numbers: cosine to float (mean) / latency ratio to float at
batch 1 / batch 32 (seq 64).

The exported MiniLM has 48 MatMul (36 weight x activation, 12 attention activation x activation),
62 Add (36 bias, 12 residual, 2 embedding sums, 6 attention-mask, 6 inside GELU), 19 Mul (6
attention scale, 12 GELU, 1 mask), 13 LayerNormalization, 6 Softmax, 6 Div + 6 Erf (GELU), 16
Gather (3 embedding tables).  ORT's optimizer turns the float graph into 42 MatMul + 6 FusedMatMul
(QK^T with the scale folded) + 6 BiasGelu + 13 LayerNormalization.  ``--inspect`` prints, per row,
the artifact's Q/DQ counts, the integer kernels in ORT's optimized graph, the float ops still fed
by a DequantizeLinear (float compute on dequantized data) and the ops whose output is requantized.

* ORT quantize_static (0.370 / 0.43x / 0.60x) -- fast, not accurate.  It quantizes every op its
  registry knows, inputs *and* outputs: 225 Q / 326 DQ; optimized: 48 QLinearMatMul (all linears
  and both attention matmuls), 62 QLinearAdd (bias, residual, embedding and attention-mask Adds),
  19 QLinearMul, 6 QLinearSoftmax; LayerNormalization (13) and Div/Erf stay float between DQ and
  Q; every float fusion (FusedMatMul, BiasGelu, SkipLayerNormalization) is lost.  What breaks it:
  (1) the masked score tensor (Add output = Softmax input) is quantized with the additive mask's
  -3.4e38 inside its calibrated range: uint8 scale 1.33e36, zero point 255, so every real score
  lands on the same code and attention turns uniform.  Excluding the 6 mask Adds changes nothing
  (the Softmax still quantizes its input); excluding the Softmax nodes too: 0.82.  (2) Requantizing
  every output per tensor (pre-bias MatMul outputs, residual sums, GELU, LN inputs): quantizing
  MatMul alone but with its outputs gives 0.937; MatMul inputs only, outputs float
  (``op_types_to_quantize=["MatMul", "Gather"]`` + ``OpTypesToExcludeOutputQuantization``, the
  "ort static tuned" row) gives 0.989 / 0.53x / 0.56x: 42 MatMulIntegerToFloat (bias folded,
  float out), BiasGelu/SkipLayerNormalization survive.  Also: ORT's Entropy and Percentile
  calibrators crash on variable-length calibration batches (they stack the collected arrays);
  its SmoothQuant needs neural-compressor (absent); ``quant_pre_process`` fails on this model
  (symbolic shape inference incomplete) and with that step skipped changes nothing.
* ORT quantize_dynamic (0.993 / 0.49x / 0.48x) -- the best default here, not the most accurate.
  Weight MatMuls only: 18 DynamicQuantizeMatMul + 6 DynamicQuantizeLinear shared by the 18 q/k/v
  MatMulIntegerToFloat; float output with bias; attention matmuls, Softmax, LN, GELU stay float
  and keep (even gain) fusions: FusedMatMul, Gelu, SkipLayerNormalization.  Likely ceiling: one
  u8 range per whole activation tensor (outlier channels of LN outputs); top-1 agreement 0.91
  vs 0.945 for NNCF-transformer.  On the digits CNN dynamic is the slowest row (ConvInteger +
  float rescale: 1.2x / 1.6x), so it is no answer for conv nets.
* NNCF default preset (0.425 / 1.48x / 1.05x) -- neither.  Signed int8 symmetric activations on
  all MatMul inputs (attention ones too) and on both inputs of the mask Add, whose scale overflows
  to inf (statistics of the -3.4e38 mask; "overflow encountered" warnings).  Ignoring the 6 mask
  Adds (IgnoredScope) lifts it to 0.856; the rest is residual/LN-path quantization without
  SmoothQuant.  Slow because ORT's x86 QDQ MatMul selector accepts signed int8 activations only on
  ARM (``QDQIsInt8Allowed()``): only 18 MatMulIntegerToFloat + 6 QLinearMatMul, 24 MatMuls stay
  DQ -> fp32 MatMul, 13 Adds and 6 SkipLayerNormalization are DQ-fed.
* NNCF model_type=TRANSFORMER (0.998 / 1.17x / 0.76x) -- most accurate, slow.  SmoothQuant (24
  Mul scales left in the graph, each followed by Q) and only weight-MatMul inputs plus QK^T
  quantized; Add/Softmax/LN/GELU float.  The signed-int8 rule above leaves the 18 q/k/v MatMuls as
  DQ -> fp32 MatMul (24 MatMulIntegerToFloat only).  Rewriting its activation Q/DQ zero points to
  uint8 (+128, bit-identical values) makes ORT fuse all 42 and brings it to ~0.53-0.59x.

What this decides for the x86 planner: (a) u8 asymmetric activations, s8 per-channel weights
(MatMul axis 1); never signed activations on x86; (b) quantize the *inputs* of weighted ops
(MatMul/Gemm/Conv) and leave their output float unless its consumer is itself an integer kernel
(QLinearConv chains in CNNs are fine; in transformers MatMulIntegerToFloat keeps the bias and the
float fusions); (c) no Q/DQ on the additive attention mask, the Add that applies it, or Softmax
inputs; keep LayerNorm, GELU (Div/Erf/Mul) and residual Adds float -- a DQ-fed float Add is a
Q/DQ pair that buys nothing; (d) quantize Gather tables (the word embeddings are 52 % of the file:
size ratio 0.25 instead of 0.65); (e) calibrate with padded batches, as evaluation sees them.
(f) SmoothQuant-style migration is where the last accuracy comes from.

What quantfw does with this (x86 target spec + planner + lowering), and what it measured in the
final run (quiet machine, 2 threads): u8/s8 QDQ on MatMul/Gemm/Conv inputs only (outputs float
unless an integer kernel reads them); Add/Mul/Concat/pools quantized only between integer ops;
LayerNorm, GELU, Softmax, the mask and residual adds float; embedding tables int8 per row (Gather
codes, then scale: size 0.258); SmoothQuant on by default with its strength searched per layer
(it multiplies the LN/GELU outputs by 1/s in a float Mul before the Q: a per-axis QuantizeLinear
folding it measured 5x slower in ORT 1.32); no inferred intermediate shapes in the artifact
(with them ORT fuses residual Add + LN into SkipLayerNormalization, much slower here: 1.58x ->
1.90x faster than float).  Result: static minmax cos 0.9980 (p5 0.9970) at 0.46x / 0.46x
latency, dynamic 0.9927 at 0.40x / 0.44x; the digits CNN keeps float accuracy at 0.27x size and
0.61x latency at batch 32.  quantfw's percentile and entropy rows still clip the outlier channels
that SmoothQuant leaves (0.992 / 0.925): min-max (or mse) is the calibrator for transformers.
-----------------------------------------------------------------------------------------------
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUT_DIR = HERE / "out"
CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
PAUSE_S = 0.1
SEQ_LEN = 128  # the protocol: sentences padded to 128 tokens (--seq)
N_CALIB, N_EVAL = 256, 1000  # real sentences for calibration / evaluation (--n-calib/--n-eval)


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return sorted(
                f
                for f in flags
                if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"}
            )
    return []


def session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # what quantfw's backend pins (its weight-only rows fuse into MatMulNBits, whose default
    # accuracy level 4 would quantize the activations too); no effect on the other models
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return opts


def make_session(path: str | os.PathLike[str], threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


@contextlib.contextmanager
def quiet():
    """Silence the peers' progress bars, warnings and log chatter."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(buf_out),
        contextlib.redirect_stderr(buf_err),
    ):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(level)


def size_of(path: str | os.PathLike[str]) -> int:
    """Bytes of an ONNX model, external-data files included."""
    p = Path(path)
    total = p.stat().st_size
    import onnx

    m = onnx.load(str(p), load_external_data=False)
    seen = set()
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location" and kv.value not in seen:
                seen.add(kv.value)
                total += (p.parent / kv.value).stat().st_size
    return total


@dataclass
class Row:
    """One system's measurements on one model."""

    system: str
    path: str | None = None
    quantize_s: float | None = None
    note: str = ""
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    size_ratio: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_ratio: dict[str, float] = field(default_factory=dict)
    census: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# graph census: what got quantized, what ORT fused, what stayed float
# ---------------------------------------------------------------------------------------------


def _census_graph(model) -> dict[str, Any]:
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    ops = collections.Counter(n.op_type for n in g.node if n.op_type != "Constant")
    dq_fed = collections.Counter()
    q_after = collections.Counter()
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        if any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input):
            dq_fed[n.op_type] += 1
        if any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers[o]):
            q_after[n.op_type] += 1
    return {
        "ops": dict(ops.most_common()),
        "dq_fed": dict(dq_fed.most_common()),
        "q_after": dict(q_after.most_common()),
    }


def census(path: str | os.PathLike[str], threads: int) -> dict[str, Any]:
    """Op counts of the artifact and of ORT's optimized graph (ORT_ENABLE_ALL, as timed).

    ``dq_fed``: ops with a DequantizeLinear input -- in the optimized graph these run in float on
    dequantized data (ORT found no integer kernel for them).  ``q_after``: ops whose output is
    quantized again.
    """
    import onnx
    import onnxruntime as ort

    out = {"artifact": _census_graph(onnx.load(str(path)))}
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out["optimized"] = _census_graph(onnx.load(opts.optimized_model_filepath))
    return out


# ---------------------------------------------------------------------------------------------
# the peers
# ---------------------------------------------------------------------------------------------


class _Reader:
    """ONNX Runtime CalibrationDataReader over a fixed list of feed dicts."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - used by some ORT versions
        pass


def _ort_static(
    float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]], **kwargs
) -> None:
    from onnxruntime import quantization as q

    reader = type("Reader", (_Reader, q.CalibrationDataReader), {})(batches)
    q.quantize_static(
        str(float_path),
        str(out),
        reader,
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
        **kwargs,
    )


def ort_static(float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]]) -> str:
    _ort_static(float_path, out, batches)
    return "QDQ, per-channel s8 weights, u8 activations, MinMax, reduce_range=False"


def ort_static_matmul_inputs(
    float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]]
) -> str:
    """ORT static configured by hand the way the findings above suggest (not an ORT default)."""
    _ort_static(
        float_path,
        out,
        batches,
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
    )
    return "hand-tuned: MatMul inputs only (outputs float) + Gather tables (not a default)"


def ort_dynamic(float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]]) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(float_path), str(out), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8
    )
    return "per-channel s8 weights, u8 activations per call"


def _nncf(float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]], **kwargs) -> None:
    import nncf
    import onnx

    model = onnx.load(str(float_path))
    q = nncf.quantize(model, nncf.Dataset(list(batches)), subset_size=len(batches), **kwargs)
    onnx.save(q, str(out))


def nncf_default(float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]]) -> str:
    _nncf(float_path, out, batches)
    return "default preset (performance), subset = all calibration batches"


def nncf_transformer(float_path: Path, out: Path, batches: Sequence[dict[str, np.ndarray]]) -> str:
    import nncf

    _nncf(float_path, out, batches, model_type=nncf.ModelType.TRANSFORMER)
    return "default preset + model_type=TRANSFORMER (SmoothQuant, Add/Softmax/LN ignored)"


class OursUnavailable(RuntimeError):
    """The quantfw ONNX plugin cannot run yet (missing modules, no x86 backend, ...)."""


def _ours_ready() -> None:
    try:
        import quantfw

        for mod in ("quantfw_onnx.frontend", "quantfw_onnx.backend"):
            importlib.import_module(mod)
        reg = quantfw.get_registry()
        reg.target("x86")
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable yet"
        raise OursUnavailable(f"{type(exc).__name__}: {exc}") from exc


# ======================================================================================
# HOOK: quantfw's own rows.  Called once per model with the same float model and the same
# calibration data the peers got.  Returns (label, artifact path, seconds, note) tuples, or
# raises OursUnavailable with the reason when the plugin is not usable; a failing row is
# reported as an error row, never replaced by a number.
# ======================================================================================
def ours_rows(
    float_path: Path,
    calib: Any,
    workdir: Path,
    calibrators: Sequence[str] = CALIBRATORS,
    dynamic: bool = True,
):
    """Yield ``(label, artifact_path_or_None, seconds, note_or_error)`` for quantfw on target x86."""
    _ours_ready()
    import quantfw

    runs: list[tuple[str, Any, dict[str, Any]]] = [
        (f"quantfw static {name}", calib, {"algorithms": [name]}) for name in calibrators
    ]
    # the same recipe as the first static row, written in QOperator form
    runs.append(
        (
            f"quantfw static {calibrators[0]} qop",
            calib,
            {"algorithms": [calibrators[0]], "backend_options": {"fmt": "qoperator"}},
        )
    )
    first = {"algorithms": [calibrators[0]]}
    for label, weight in (
        ("int7 weights", {"dtype": "int7"}),
        ("uint8 weights (U8U8)", {"dtype": "uint8"}),
        ("W4A8 int4 per-channel", {"dtype": "int4"}),
        (
            "W4 weight-only int4 g32 (MatMulNBits)",
            {"dtype": "int4", "granularity": "per_group", "group_size": 32},
        ),
    ):
        runs.append((f"quantfw static {label}", calib, {**first, "overrides": {"weight": weight}}))
    if dynamic:
        runs.append(("quantfw dynamic", None, {"overrides": {"dynamic": True}}))
        runs.append(("quantfw dynamic +calib", calib, {"overrides": {"dynamic": True}}))
        token = {"dynamic": True, "activation": {"granularity": "per_token"}}
        runs.append(("quantfw dynamic per-token +calib", calib, {"overrides": token}))
    for label, data, kwargs in runs:
        out = workdir / (label.replace(" ", "_") + ".onnx")
        t0 = time.perf_counter()
        try:
            with quiet():
                result = quantfw.quantize(
                    str(float_path), data, target="x86", output=str(out), **kwargs
                )
            seconds = time.perf_counter() - t0
            artifact = getattr(result, "artifact", None)
            path = Path(artifact.path) if artifact is not None else out
            if not path.is_file():
                raise RuntimeError(f"quantfw.quantize wrote no artifact at {path}")
            yield label, path, seconds, f"target x86, {kwargs}"
        except Exception as exc:  # noqa: BLE001 - reported as an error row
            yield label, None, time.perf_counter() - t0, f"error: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# models: data, metrics
# ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What one model contributes: its float file, calibration, evaluation and timing inputs."""

    name: str
    float_path: Path
    calib_batches: list[dict[str, np.ndarray]]  # the same batches for every static row
    ours_calib: Any  # what quantfw.quantize gets (the same samples)
    evaluate: Callable[[Any], dict[str, float]]  # session -> metrics
    timing_feeds: dict[str, dict[str, np.ndarray]]
    peers: list[tuple[str, Callable[..., str]]]
    repeats: dict[str, int]
    metric_names: list[str]


def cnn_bench(workdir: Path, quick: bool) -> Bench:
    import onnx
    from quantfw_onnx.samples import digits_cnn

    model, data = digits_cnn(0)
    path = workdir / "digits_cnn.onnx"
    onnx.save(model, str(path))
    xc = data.x_calib
    batches = [{"image": xc[i : i + 32]} for i in range(0, len(xc), 32)]

    def evaluate(sess) -> dict[str, float]:
        logits = sess.run(["logits"], {"image": data.x_test})[0]
        return {"accuracy": data.accuracy(logits), "_pred": np.argmax(logits, axis=1)}

    return Bench(
        "cnn",
        path,
        batches,
        xc,
        evaluate,
        {"b1": {"image": data.x_test[:1]}, "b32": {"image": data.x_test[:32]}},
        [("ort static", ort_static), ("ort dynamic", ort_dynamic), ("nncf default", nncf_default)],
        {"b1": 8 if quick else 40, "b32": 8 if quick else 40},
        ["accuracy"],
    )


def minilm_bench(workdir: Path, quick: bool, threads: int) -> Bench:
    from minilm_export import embed, export_minilm, load_tokenizer, tokenize

    from quantfw.samples import docstring_sentences

    with quiet():
        path = export_minilm(OUT_DIR)
        tok = load_tokenizer()
    n_cal, n_eval = (32, 128) if quick else (N_CALIB, N_EVAL)
    cal = docstring_sentences(n_cal, seed=0, offset=0)
    ev = docstring_sentences(n_eval, seed=0, offset=n_cal)
    # calibration: batches of 16 sentences padded to SEQ_LEN tokens (the protocol); the
    # very same list goes to ORT, NNCF and quantfw.
    batches = [tokenize(tok, cal[i : i + 16], pad_to=SEQ_LEN) for i in range(0, n_cal, 16)]

    def evaluate(sess) -> dict[str, float]:
        return {"_emb": embed(sess, tok, ev, batch=32)}

    return Bench(
        "minilm",
        path,
        batches,
        batches,
        evaluate,
        {
            "b1": tokenize(tok, ev[:1], pad_to=SEQ_LEN),
            "b32": tokenize(tok, ev[:32], pad_to=SEQ_LEN),
        },
        [
            ("ort static", ort_static),
            ("ort dynamic", ort_dynamic),
            ("nncf default", nncf_default),
            ("nncf transformer", nncf_transformer),
            ("ort static tuned", ort_static_matmul_inputs),
        ],
        {"b1": 6 if quick else 30, "b32": 4 if quick else 15},
        ["cos_mean", "cos_p5", "top1_agree"],
    )


def embedding_metrics(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = np.sum(emb * ref, axis=1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
    )

    def nearest(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argmax(s, axis=1)

    return {
        "cos_mean": float(cos.mean()),
        "cos_p5": float(np.percentile(cos, 5)),
        "top1_agree": float(np.mean(nearest(emb) == nearest(ref))),
    }


# ---------------------------------------------------------------------------------------------
# running one model
# ---------------------------------------------------------------------------------------------


def time_round_robin(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], repeats: int
) -> dict[str, float]:
    """Median seconds per call of each session; every repeat visits all, order rotating."""
    names = list(sessions)
    feeds_for = {n: {i.name: feeds[i.name] for i in s.get_inputs()} for n, s in sessions.items()}
    for n in names:  # warm-up
        sessions[n].run(None, feeds_for[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            sessions[n].run(None, feeds_for[n])
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(v)) for n, v in times.items()}


def run_model(
    bench: Bench, workdir: Path, threads: int, with_ours: bool, log
) -> tuple[list[Row], str | None]:
    rows = [Row("float", str(bench.float_path), note="fp32 ONNX")]
    for label, fn in bench.peers:
        out = workdir / f"{bench.name}_{label.replace(' ', '_')}.onnx"
        log(f"[{bench.name}] quantizing: {label}")
        t0 = time.perf_counter()
        try:
            with quiet():
                note = fn(bench.float_path, out, bench.calib_batches)
            rows.append(Row(label, str(out), time.perf_counter() - t0, note))
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result too
            rows.append(
                Row(label, None, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
            )
    ours_reason = None
    if with_ours:
        log(f"[{bench.name}] quantizing: quantfw")
        try:
            for label, path, seconds, note in ours_rows(
                bench.float_path, bench.ours_calib, workdir, calibrators=CALIBRATORS
            ):
                if path is None:
                    rows.append(Row(label, None, seconds, error=note.removeprefix("error: ")))
                else:
                    rows.append(Row(label, str(path), seconds, note))
        except OursUnavailable as exc:
            ours_reason = str(exc)
    else:
        ours_reason = "skipped (--no-ours)"

    float_size = size_of(bench.float_path)
    sessions: dict[str, Any] = {}
    for row in rows:
        if row.error or row.path is None:
            continue
        try:
            sessions[row.system] = make_session(row.path, threads)
            row.size_ratio = size_of(row.path) / float_size
            row.census = census(row.path, threads)
        except Exception as exc:  # noqa: BLE001
            row.error = f"cannot load in ORT: {type(exc).__name__}: {exc}"
            sessions.pop(row.system, None)

    log(f"[{bench.name}] evaluating {len(sessions)} systems")
    results = {}
    for row in rows:
        if row.system in sessions:
            try:
                results[row.system] = bench.evaluate(sessions[row.system])
            except Exception as exc:  # noqa: BLE001
                row.error = f"evaluation failed: {type(exc).__name__}: {exc}"
                sessions.pop(row.system)
    ref = results.get("float", {})
    for row in rows:
        res = results.get(row.system)
        if res is None:
            continue
        if "_emb" in res:
            row.metrics = embedding_metrics(res["_emb"], ref["_emb"])
        else:
            row.metrics = {k: v for k, v in res.items() if not k.startswith("_")}
            if "_pred" in res and "_pred" in ref:
                row.metrics["agree_float"] = float(np.mean(res["_pred"] == ref["_pred"]))

    for key, feeds in bench.timing_feeds.items():
        log(f"[{bench.name}] timing {key}: {len(sessions)} systems x {bench.repeats[key]} repeats")
        med = time_round_robin(sessions, feeds, bench.repeats[key])
        for row in rows:
            if row.system in med:
                row.latency_ms[key] = med[row.system] * 1e3
                row.latency_ratio[key] = med[row.system] / med["float"]
    return rows, ours_reason


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def format_table(name: str, rows: list[Row], metric_names: list[str]) -> str:
    heads = ["system", *metric_names, "size", "b1 ms", "b1 x", "b32 ms", "b32 x", "quant s"]
    lines = []
    for r in rows:
        if r.error:
            lines.append([r.system, f"ERROR: {r.error}"[:150]])
            continue
        cells = [r.system]
        cells += [f"{r.metrics[m]:.4f}" if m in r.metrics else "-" for m in metric_names]
        cells.append(f"{r.size_ratio:.3f}" if r.size_ratio is not None else "-")
        for k in ("b1", "b32"):
            cells.append(f"{r.latency_ms[k]:.2f}" if k in r.latency_ms else "-")
            cells.append(f"{r.latency_ratio[k]:.2f}" if k in r.latency_ratio else "-")
        q = r.quantize_s
        cells.append("-" if q is None else f"{q:.2f}" if q < 10 else f"{q:.1f}")
        lines.append(cells)
    full = [c for c in lines if len(c) == len(heads)]
    widths = [
        max(len(h), *(len(c[i]) for c in full)) if full else len(h) for i, h in enumerate(heads)
    ]
    out = [f"== {name}", "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    for c in lines:
        out.append(
            "  ".join(x.ljust(w) for x, w in zip(c, widths, strict=False))
            if len(c) == len(heads)
            else "  ".join(c)
        )
    return "\n".join(out)


def format_census(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if not r.census:
            continue
        a, o = r.census["artifact"], r.census["optimized"]
        q = {
            k: a["ops"].get(k, 0)
            for k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
        }
        ints = {
            k: v
            for k, v in o["ops"].items()
            if k.startswith(
                (
                    "QLinear",
                    "MatMulInteger",
                    "DynamicQuantize",
                    "QGemm",
                    "ConvInteger",
                    "QAttention",
                )
            )
        }
        out.append(
            f"  {r.system}: artifact Q/DQ {q}; optimized integer ops {ints}; "
            f"float ops fed by DQ {o['dq_fed']}; ops requantized after {o['q_after']}"
        )
        floats = {
            k: v
            for k, v in o["ops"].items()
            if k
            in (
                "MatMul",
                "FusedMatMul",
                "Add",
                "Mul",
                "Softmax",
                "LayerNormalization",
                "SkipLayerNormalization",
                "BiasGelu",
                "Gelu",
                "Erf",
                "Conv",
                "Gemm",
            )
        }
        out.append(f"      float compute ops left after optimisation {floats}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="quantfw vs ORT static/dynamic vs NNCF on x86, side by side"
    )
    ap.add_argument("--quick", action="store_true", help="fewer sentences and repeats (smoke run)")
    ap.add_argument("--models", default="cnn,minilm", help="comma list of: cnn, minilm")
    ap.add_argument(
        "--out", type=Path, default=OUT_DIR / "x86_peers.json", help="JSON results file"
    )
    ap.add_argument(
        "--workdir", type=Path, default=OUT_DIR / "x86_peers", help="where artifacts go"
    )
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for every session")
    ap.add_argument("--no-ours", action="store_true", help="measure the peers only")
    ap.add_argument("--inspect", action="store_true", help="print the per-row graph census")
    ap.add_argument(
        "--cpu",
        choices=("native", "avx2"),
        default="native",
        help="avx2: run everything as an AVX2-only CPU (quantfw_onnx.cpu_mask)",
    )
    ap.add_argument(
        "--calibrators",
        default=",".join(CALIBRATORS),
        help="quantfw static rows, one per calibrator (the first also gets the weight-format rows)",
    )
    ap.add_argument("--seq", type=int, default=SEQ_LEN, help="MiniLM tokens per sentence")
    ap.add_argument("--n-calib", type=int, default=N_CALIB, help="MiniLM calibration sentences")
    ap.add_argument("--n-eval", type=int, default=N_EVAL, help="MiniLM evaluation sentences")
    args = ap.parse_args(argv)
    globals().update(
        SEQ_LEN=args.seq,
        N_CALIB=args.n_calib,
        N_EVAL=args.n_eval,
        CALIBRATORS=tuple(c.strip() for c in args.calibrators.split(",") if c.strip()),
    )
    native_flags = cpu_flags()
    if args.cpu == "avx2" and os.environ.get("QUANTFW_CPU_MASK") != "avx2":
        import subprocess

        from quantfw_onnx.cpu_mask import availability, avx2_environment

        ok, why = availability()
        if not ok:
            ap.error(f"--cpu avx2 is not available here: {why}")
        env = avx2_environment()
        env["QUANTFW_BENCH_NATIVE_FLAGS"] = " ".join(native_flags)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            *(sys.argv[1:] if argv is None else argv),
        ]
        return subprocess.run(cmd, env=env).returncode
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"cnn", "minilm"}
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from cnn, minilm")
    args.workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    import onnxruntime as ort

    versions = {"python": platform.python_version(), "onnxruntime": ort.__version__}
    for mod in ("onnx", "nncf", "torch", "transformers", "quantfw"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    flags = cpu_flags()
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni"))
    from quantfw_onnx.cpu import detect_x86

    masked = os.environ.get("QUANTFW_CPU_MASK") == "avx2"
    cpu_path = (
        "AVX2 without VNNI, emulated: CPUID masked on a CPU with "
        + os.environ.get("QUANTFW_BENCH_NATIVE_FLAGS", "?")
        if masked
        else f"native ({'VNNI' if vnni else 'AVX2 without VNNI' if 'avx2' in flags else 'no AVX2'})"
    )
    meta = {
        "versions": versions,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "quick": args.quick,
        "pause_s": PAUSE_S,
        "seq_len_timing": SEQ_LEN,
        "n_calib": N_CALIB,
        "n_eval": N_EVAL,
        "cpu_path": cpu_path,
        "x86_resolves_to": detect_x86().target,
        "reduce_range": False,
        "reduce_range_note": (
            "VNNI present: 8-bit weights are safe, reduce_range=False"
            if vnni
            else "NO VNNI: u8 x s8 products saturate in int16; peers should use reduce_range=True"
        ),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {flags}; "
        f"ORT {ort.__version__}, intra-op threads {args.threads}; {meta['reduce_range_note']}"
    )
    print(f"CPU path measured: {cpu_path}; quantfw target 'x86' -> {detect_x86().target}")

    report: dict[str, Any] = {"meta": meta, "models": {}}
    t_all = time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        bench = (
            cnn_bench(args.workdir, args.quick)
            if name == "cnn"
            else minilm_bench(args.workdir, args.quick, args.threads)
        )
        rows, ours_reason = run_model(bench, args.workdir, args.threads, not args.no_ours, log)
        print()
        print(
            format_table(
                name, rows, bench.metric_names + (["agree_float"] if name == "cnn" else [])
            )
        )
        if ours_reason:
            print(f"ours: not available ({ours_reason})")
        if args.inspect:
            print(format_census(rows))
        report["models"][name] = {
            "rows": [asdict(r) for r in rows],
            "ours_unavailable": ours_reason,
            "seconds": time.perf_counter() - t0,
            "calibration_batches": len(bench.calib_batches),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # pragma: no cover
        traceback.print_exc()
        raise SystemExit(130) from None
