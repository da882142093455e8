"""The PyTorch-side peers of quantfw's torch plugin, as reusable measurements.

    PYTHONPATH=plugins/torch_backend python benchmarks/torch_peers.py [--quick] [--models cnn]

(``quantfw_torch`` must be importable; ``benchmarks/`` must be on ``sys.path`` when this module is
imported from elsewhere, as it is for the scripts in this folder.)

Peers:

* :func:`pt2e_x86_cnn` -- PT2E static quantization of the digits CNN with torchao's
  ``X86InductorQuantizer`` (default config: u8 asymmetric per-tensor activations, s8 symmetric
  per-channel weights), lowered with ``torch.compile`` (inductor, freezing on) as torchao
  documents, falling back to running the converted module eagerly.
* :func:`ao_dynamic_minilm` -- ``torch.ao.quantization.quantize_dynamic`` (``nn.Linear`` ->
  dynamic s8 weights, activations quantized per call) on Hugging Face all-MiniLM-L6-v2.

Protocol, mirrored from ``x86_peers.py`` so torch and ONNX rows compare: digits accuracy on the
test split of :func:`quantfw.samples.digits_data`; MiniLM calibration on 128 docstring
sentences and evaluation on the 512 after them (same seed), cosine of the mean-pooled sentence
embedding to the float torch model's; latency is the median over repeats, visiting every system
in rotating order with a 0.1 s pause and one untimed call before each timed call
(:func:`time_round_robin_warm`),
torch on 2 intra-op threads, MiniLM timed at sequence length 64.

What ``torch.compile`` does with the PT2E model here (torch 2.13, torchao 0.18, 2 cores):

* The int8 kernels (``onednn.qconv_pointwise`` / ``qlinear_pointwise`` with prepacked weights)
  are inserted by freezing-time pattern passes: without inductor freezing the compiled graph
  keeps float convolutions and linears between fused quantize/dequantize arithmetic.
* ``torch.compile(..., options={"freezing": True})`` fails (fake-tensor propagation meets an
  un-folded ``onednn.qconv_prepack``); a process-wide ``torch._inductor.config.freezing = True``
  compiles the first batch size and then fails on the second one (a stride assertion in the
  qconv lowering).  What works: ``dynamic=False`` with freezing patched on while each new batch
  size compiles -- one compilation per batch size, a few seconds each.
* ``convert_pt2e``'s module still holds the float weights as (unused) attributes next to the
  int8 copies, so its ``state_dict`` is larger than the float model's; sizes here count only the
  tensors the quantized graph reads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from minilm_export import embed, load_tokenizer, load_torch_model, tokenize
from x86_peers import SEQ_LEN, Row, embedding_metrics, format_table, quiet

THREADS = 2
#: Seconds the first ``torch.compile`` of the PT2E model may take before it is judged unusable.
COMPILE_BUDGET_S = 120.0
CNN_REPEATS = {"b1": 40, "b32": 40}
MINILM_REPEATS = {"b1": 30, "b32": 15}
MINILM_CALIB, MINILM_EVAL = 128, 512
MINILM_CALIB_BATCH = 16

__all__ = [
    "COMPILE_BUDGET_S",
    "QuantizedCNN",
    "ao_dynamic_minilm",
    "cnn_metrics",
    "compile_frozen",
    "graph_tensors",
    "minilm_calibration_feeds",
    "minilm_metrics",
    "minilm_runner",
    "minilm_sentences",
    "pt2e_x86_cnn",
    "state_bytes",
    "time_round_robin_torch",
    "time_round_robin_warm",
    "torch_predictor",
    "torch_threads",
]


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int = THREADS) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads inside the block, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def state_bytes(tensors: Mapping[str, Any]) -> int:
    """Bytes of ``torch.save(tensors)``: the payload plus torch's zip container overhead."""
    buf = io.BytesIO()
    torch.save(dict(tensors), buf)
    return buf.tell()


def graph_tensors(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors an FX graph actually reads (its ``get_attr`` nodes), by attribute path."""
    out: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                out[str(node.target)] = value
    return out


def torch_predictor(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], np.ndarray]:
    """Wrap a tensor -> tensor callable as numpy -> numpy, run under ``torch.no_grad``."""

    def predict(x: Any) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()

    return predict


def compile_frozen(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor) of ``module`` for inference, with inductor freezing.

    Freezing folds the weights into the graph as constants, which is when the x86 int8 patterns
    (weight prepacking, quantized conv / linear with fused ReLU) apply.  Shapes are static: the
    first call with each new input shape compiles, with freezing patched on just for that call,
    so the setting does not leak into other compilations in the process; later calls with a
    known shape go straight to the compiled code.  Dynamo's recompile limit (8 by default) caps
    the number of distinct shapes.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, backend="inductor", dynamic=False)
    seen: set[tuple[int, ...]] = set()

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape in seen:
            return compiled(x)
        with inductor_config.patch(freezing=True), warnings.catch_warnings():
            # the int8 conv lowering copy-constructs its zero points: harmless, once per shape
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            out = compiled(x)
        seen.add(shape)
        return out

    return run


def time_round_robin_warm(
    systems: Mapping[str, Callable[[Any], Any]], x: Any, repeats: int
) -> dict[str, float]:
    """Median seconds per call ``fn(x)`` of each system, every repeat visiting all in rotating
    order.

    Before each timed call: a 0.1 s pause (a finished ONNX Runtime session's spinning threads
    stop; see ``x86_peers.time_round_robin``), then one untimed call of the same system, because
    after a pause torch's OpenMP threads take ~10 ms to wake up (the digits CNN measured 11.8 ms
    per batch-1 call right after a pause, 0.16 ms otherwise) and ONNX Runtime's too.
    """
    names = list(systems)
    with torch.no_grad():
        for n in names:
            systems[n](x)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                time.sleep(0.1)
                systems[n](x)
                t0 = time.perf_counter()
                systems[n](x)
                times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(v)) for n, v in times.items()}


def time_round_robin_torch(
    systems: Mapping[str, Callable[[Any], Any]], x: Any, repeats: int, threads: int = THREADS
) -> dict[str, float]:
    """:func:`time_round_robin_warm` on ``threads`` torch threads."""
    with torch_threads(threads):
        return time_round_robin_warm(systems, x, repeats)


# ---------------------------------------------------------------------------------------------
# digits CNN: PT2E + X86InductorQuantizer
# ---------------------------------------------------------------------------------------------


@dataclass
class QuantizedCNN:
    """A PT2E-quantized CNN, callable numpy ``[N, 1, 8, 8]`` -> numpy logits."""

    #: numpy in, numpy out; the compiled or the eager converted module behind it.
    predict: Callable[[Any], np.ndarray]
    #: ``"inductor"`` (torch.compile, freezing) or ``"eager"`` (the converted module as is).
    mode: str
    #: why this mode (the compile error or time when it fell back to eager).
    note: str
    #: the ``convert_pt2e`` output: Q/DQ ops around float aten ops, int8 weights folded in.
    converted: torch.fx.GraphModule
    #: ``torch.save`` bytes of the tensors the quantized graph reads: int8 weights, their
    #: per-channel float32 scales and int64 zero points, float32 biases.
    size_bytes: int
    #: seconds for export + prepare + calibration + convert.
    quantize_s: float
    #: seconds of the compilations for ``example_x`` and the warm-up batches; None when eager.
    compile_s: float | None

    def __call__(self, x: Any) -> np.ndarray:
        return self.predict(x)


def pt2e_x86_cnn(
    module: torch.nn.Module,
    example_x: torch.Tensor,
    calib_batches: Sequence[torch.Tensor],
    *,
    use_compile: bool = True,
    warmup_batches: Sequence[torch.Tensor] = (),
    compile_budget_s: float = COMPILE_BUDGET_S,
) -> QuantizedCNN:
    """Quantize an NCHW CNN with PT2E and torchao's X86 Inductor quantizer (default config).

    ``torch.export.export`` (batch dimension dynamic, so ``example_x`` needs a batch of at least
    2) -> ``prepare_pt2e`` -> one forward per calibration batch -> ``convert_pt2e``.

    Then, with ``use_compile``, :func:`compile_frozen` and one call on ``example_x`` and on each of
    ``warmup_batches`` (pass the batch sizes you will run: every new one compiles again, and
    this way a failure shows up here); if any raises or they take longer than
    ``compile_budget_s`` together, the converted module runs eagerly instead (``mode`` and
    ``note`` say which and why).  ``module`` (in eval mode) is not modified.
    """
    if example_x.ndim < 1 or example_x.shape[0] < 2:
        raise ValueError(
            "example_x needs a batch of at least 2 (export marks the batch dimension dynamic)"
        )
    with quiet():  # torchao's import logs the CUDA extensions it cannot load
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

    t0 = time.perf_counter()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(module, (example_x,), dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for xb in calib_batches:
            prepared(xb)
    converted = convert_pt2e(prepared)
    quantize_s = time.perf_counter() - t0
    size = state_bytes(graph_tensors(converted))

    def eager(reason: str) -> QuantizedCNN:
        return QuantizedCNN(
            torch_predictor(converted), "eager", reason, converted, size, quantize_s, None
        )

    if not use_compile:
        return eager("use_compile=False")
    run = compile_frozen(converted)
    t1 = time.perf_counter()
    try:
        with quiet(), torch.no_grad():
            for xb in (example_x, *warmup_batches):
                run(xb)
    except Exception as exc:  # noqa: BLE001 - any compile failure means: run eagerly
        return eager(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:300]}")
    compile_s = time.perf_counter() - t1
    if compile_s > compile_budget_s:
        return eager(f"torch.compile took {compile_s:.0f} s > {compile_budget_s:.0f} s")
    note = "torch.compile inductor, freezing, static shapes (one compilation per batch size)"
    return QuantizedCNN(
        torch_predictor(run), "inductor", note, converted, size, quantize_s, compile_s
    )


def cnn_metrics(
    predict: Callable[[np.ndarray], np.ndarray], data: Any, reference: np.ndarray | None = None
) -> dict[str, float]:
    """``accuracy``: top-1 on the test split of a ``quantfw.samples`` ``DigitsData``; with
    ``reference`` (the float model's test logits) also ``agree_float``, the share of test images
    whose top-1 class matches the float model's."""
    logits = predict(data.x_test)
    out = {"accuracy": data.accuracy(logits)}
    if reference is not None:
        out["agree_float"] = float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1)))
    return out


# ---------------------------------------------------------------------------------------------
# MiniLM: torch.ao quantize_dynamic
# ---------------------------------------------------------------------------------------------


def ao_dynamic_minilm(model: torch.nn.Module, per_channel: bool = False) -> torch.nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by torch.ao's dynamic int8 linear.

    ``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``: s8 symmetric weights, per tensor
    (its default) or, with ``per_channel``, per output channel (``per_channel_dynamic_qconfig``);
    u8 activations quantized on every call.  Embeddings, LayerNorm, attention matmuls and softmax
    stay float.  ``model`` is unchanged.  Size: :func:`state_bytes` of its ``state_dict()``.
    """
    from torch.ao import quantization as ao

    spec = {torch.nn.Linear: ao.per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    with warnings.catch_warnings():  # torch.ao's deprecation notices
        warnings.simplefilter("ignore")
        return ao.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False).eval()


def minilm_runner(model: torch.nn.Module) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """``feeds`` (the int64 arrays of ``minilm_export.tokenize``) -> ``last_hidden_state``."""

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
        return out.last_hidden_state.numpy()

    return run


def minilm_sentences(quick: bool = False) -> tuple[list[str], list[str]]:
    """``(calibration, evaluation)`` docstring sentences, disjoint, as ``x86_peers`` picks them.

    128 and the 512 after them (seed 0); ``quick``: 32 and 128.
    """
    from quantfw.samples import docstring_sentences

    n_cal, n_eval = (32, 128) if quick else (MINILM_CALIB, MINILM_EVAL)
    cal = docstring_sentences(n_cal, seed=0, offset=0)
    return cal, docstring_sentences(n_eval, seed=0, offset=n_cal)


def minilm_calibration_feeds(
    tokenizer: Any, sentences: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """Calibration batches of 16 sentences, each padded to its longest (``x86_peers``'s)."""
    return [
        tokenize(tokenizer, sentences[i : i + MINILM_CALIB_BATCH])
        for i in range(0, len(sentences), MINILM_CALIB_BATCH)
    ]


def minilm_metrics(
    run: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    reference: np.ndarray,
    tokenizer: Any,
    sentences: Sequence[str],
) -> dict[str, float]:
    """``cos_mean`` / ``cos_p5`` (mean, 5th percentile) of the cosine between ``run``'s sentence
    embeddings and ``reference``, and ``top1_agree`` (nearest-neighbour agreement), as
    ``x86_peers`` reports them.  Embeddings are computed in batches of 32 padded to their longest;
    ``reference`` is the float model's, ``minilm_export.embed(run_float, tokenizer, sentences,
    batch=32)``."""
    return embedding_metrics(embed(run, tokenizer, sentences, batch=32), reference)


# ---------------------------------------------------------------------------------------------
# standalone check
# ---------------------------------------------------------------------------------------------


def _cpu_busy_s() -> float:
    """CPU-seconds all processes have spent off idle since boot (``/proc/stat``, steal included)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _load_meter(log: Callable[[str], None], what: str) -> Iterator[None]:
    """Log how long ``what`` took and how many cores *other* processes kept busy meanwhile.

    Latency on this 2-core machine moves a lot when anything else runs (a second torch thread
    then waits for a core), so every timing line says how quiet the machine was.
    """
    wall, busy, own = time.perf_counter(), _cpu_busy_s(), time.process_time()
    yield
    wall = time.perf_counter() - wall
    others = (_cpu_busy_s() - busy - (time.process_time() - own)) / wall
    cores = f"{max(others, 0.0):.2f} of {os.cpu_count()} cores"
    log(f"{what}: {wall:.1f} s; other processes busy {cores}")


def _ratios(rows: list[Row], med: dict[str, dict[str, float]], base: str) -> None:
    for key, seconds in med.items():
        for row in rows:
            if row.system in seconds:
                row.latency_ms[key] = seconds[row.system] * 1e3
                row.latency_ratio[key] = seconds[row.system] / seconds[base]


def _cnn(quick: bool, log: Callable[[str], None]) -> list[Row]:
    from quantfw_torch.models import digits_cnn_module

    from quantfw.samples import digits_cnn_forward, digits_cnn_weights, digits_data

    t = time.perf_counter()
    module = digits_cnn_module(0)
    data = digits_data()
    log(f"[cnn] float module (numpy training, cached per seed): {time.perf_counter() - t:.1f} s")
    x_test = torch.from_numpy(data.x_test)
    with torch.no_grad():
        logits = module(x_test).numpy()
    diff = float(np.abs(logits - digits_cnn_forward(digits_cnn_weights(0), data.x_test)).max())
    log(f"[cnn] torch vs numpy reference logits: max |diff| {diff:.2e} on {len(x_test)} images")
    if diff > 1e-4:
        raise AssertionError(f"digits_cnn_module differs from digits_cnn_forward by {diff}")

    xc = torch.from_numpy(data.x_calib)
    calib = [xc[i : i + 32] for i in range(0, len(xc), 32)]
    with torch_threads():
        q = pt2e_x86_cnn(module, calib[0], calib, warmup_batches=[x_test[:1], x_test])
    compiled_s = "-" if q.compile_s is None else f"{q.compile_s:.1f} s"
    log(
        f"[cnn] pt2e: quantize {q.quantize_s:.2f} s, compile (3 batch sizes) {compiled_s}; {q.note}"
    )

    float_size = state_bytes(module.state_dict())
    t = time.perf_counter()
    float_compiled = torch_predictor(compile_frozen(module))
    with quiet():
        for n in (1, 32, len(x_test)):
            float_compiled(data.x_test[:n])
    log(f"[cnn] float torch.compile (freezing), 3 batch sizes: {time.perf_counter() - t:.1f} s")
    systems = {
        "float torch": torch_predictor(module),
        "float compiled": float_compiled,
        f"pt2e x86 ({q.mode})": q.predict,
    }
    if q.mode != "eager":  # the converted module as is, for comparison
        systems["pt2e x86 (eager)"] = torch_predictor(q.converted)
    rows = [Row(name) for name in systems]
    for row in rows:
        if row.system.startswith("pt2e"):
            row.quantize_s, row.size_ratio = q.quantize_s, q.size_bytes / float_size
            row.note = q.note if row.system.endswith(f"({q.mode})") else ""
        else:
            row.size_ratio = 1.0
    with _load_meter(log, f"[cnn] accuracy of {len(rows)} systems"):
        with torch_threads(), quiet():
            reference = systems["float torch"](data.x_test)
            for row in rows:
                row.metrics = cnn_metrics(systems[row.system], data, reference)
    med = {}
    for key, n in (("b1", 1), ("b32", 32)):
        reps = 8 if quick else CNN_REPEATS[key]
        with _load_meter(log, f"[cnn] timing {key} x {reps} repeats"), quiet():
            med[key] = time_round_robin_torch(systems, data.x_test[:n], reps)
    _ratios(rows, med, "float torch")
    log(f"[cnn] sizes: float state_dict {float_size} B, pt2e graph tensors {q.size_bytes} B")
    return rows


def _minilm(quick: bool, log: Callable[[str], None]) -> list[Row]:
    with _load_meter(log, "[minilm] load model and tokenizer"), quiet():
        tok, model = load_tokenizer(), load_torch_model()
    _, ev = minilm_sentences(quick)  # dynamic quantization needs no calibration sentences
    systems = {"float torch": minilm_runner(model)}
    rows = [Row("float torch", size_ratio=1.0)]
    float_size = state_bytes(model.state_dict())
    for name, per_channel in (("ao dynamic", False), ("ao dynamic per-channel", True)):
        t = time.perf_counter()
        qmodel = ao_dynamic_minilm(model, per_channel=per_channel)
        rows.append(Row(name, quantize_s=time.perf_counter() - t))
        size = state_bytes(qmodel.state_dict())
        rows[-1].size_ratio = size / float_size
        systems[name] = minilm_runner(qmodel)
        log(
            f"[minilm] {name}: quantize {rows[-1].quantize_s:.2f} s, state_dict {size} B "
            f"(float {float_size} B)"
        )
    with _load_meter(log, f"[minilm] embeddings of {len(ev)} sentences x {len(rows) + 1}"):
        with torch_threads():
            ref = embed(systems["float torch"], tok, ev, batch=32)
            for row in rows:
                row.metrics = minilm_metrics(systems[row.system], ref, tok, ev)
    med = {}
    for key, n in (("b1", 1), ("b32", 32)):
        feeds = tokenize(tok, ev[:n], pad_to=SEQ_LEN)
        reps = (6 if key == "b1" else 4) if quick else MINILM_REPEATS[key]
        with _load_meter(log, f"[minilm] timing {key} (seq {SEQ_LEN}) x {reps} repeats"):
            med[key] = time_round_robin_torch(systems, feeds, reps)
    _ratios(rows, med, "float torch")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PT2E / torch.ao peers of the torch plugin")
    ap.add_argument("--quick", action="store_true", help="fewer sentences and repeats")
    ap.add_argument("--models", default="cnn,minilm", help="comma list of: cnn, minilm")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - {"cnn", "minilm"}:
        ap.error(f"unknown model(s) in {models}; choose from cnn, minilm")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f}s {msg}", file=sys.stderr, flush=True)

    print(f"torch {torch.__version__}, {THREADS} threads")
    for name in models:
        rows = _cnn(args.quick, log) if name == "cnn" else _minilm(args.quick, log)
        metrics = (
            ["accuracy", "agree_float"] if name == "cnn" else ["cos_mean", "cos_p5", "top1_agree"]
        )
        print(format_table(name, rows, metrics))
        for row in rows:
            if row.note:
                print(f"  {row.system}: {row.note}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
