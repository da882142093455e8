"""Weights and activations below 8 bits on x86: ONNX Runtime's artifact against quantfw's simulation.

    python benchmarks/x86_low_bit.py [--cpu native|avx2] [--models cnn,minilm]
                                     [--n-calib 64] [--n-eval 256] [--seq 128]

For the digits CNN and all-MiniLM-L6-v2 (real weights, real sentences: the standard library's
docstrings), each weight format quantized for target ``x86`` -- the target's own (int8), int4,
int3 and int2 per channel with quantized activations (W4A8...: int8 codes in the narrower range,
ONNX Runtime's integer kernels), uint4/uint3 activations (W8A4, W4A4, W4A3: uint8 codes clipped
to the narrow grid between QuantizeLinear and DequantizeLinear, the integer kernels kept) and int4
per group of 32, weight-only (packed, ``MatMulNBits``) -- is run twice on the same held-out inputs: as the ONNX Runtime artifact (all optimizations on,
the backend's session) and as quantfw's simulation (``result.simulate()``).  Printed per row:
the quality of each against float (digits: accuracy; MiniLM: mean embedding cosine and top-1
retrieval agreement), how far the artifact is from the simulation (digits: argmax agreement and
max |difference| over the logits' range; MiniLM: mean and minimum embedding cosine between
them), the artifact's size relative to float and the quantization seconds; for the CNN also the
artifact's latency on the held-out batch (one thread, CPU milliseconds per run, median of
round-robin runs with a 0.1 s pause) and its ratio to the target default's (W8A8) artifact.

``--cpu avx2`` re-runs the whole script as an AVX2-only CPU (``quantfw_onnx.cpu_mask``): target
``x86`` then resolves to ``x86-avx2`` and ONNX Runtime runs its saturating AVX2 kernels.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FORMATS: list[tuple[str, dict[str, Any] | None]] = [
    ("target default (W8A8)", None),
    ("W4A8 int4 per-channel", {"weight": {"dtype": "int4"}}),
    ("W3A8 int3 per-channel", {"weight": {"dtype": "int3"}}),
    ("W2A8 int2 per-channel", {"weight": {"dtype": "int2"}}),
    ("W8A4 uint4 activations", {"activation": {"bits": 4}}),
    ("W4A4 int4 / uint4", {"weight": {"bits": 4}, "activation": {"bits": 4}}),
    ("W4A3 int4 / uint3", {"weight": {"bits": 4}, "activation": {"bits": 3}}),
    (
        "W4 int4 g32 weight-only",
        {"weight": {"dtype": "int4", "granularity": "per_group", "group_size": 32}},
    ),
]
#: rounds of the round-robin latency measurement (CNN), each artifact run ``REPS`` times a round
ROUNDS, REPS = 30, 10


def _quantize(model: Any, calib: Any, out: Path, overrides: dict[str, Any] | None):
    import quantfw

    t0 = time.perf_counter()
    res = quantfw.quantize(model, calib, target="x86", output=str(out), overrides=overrides)
    return res, time.perf_counter() - t0


def _size(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def cnn_rows(workdir: Path) -> list[dict[str, Any]]:
    import onnx
    from quantfw_onnx.backend import OnnxRuntimeBackend
    from quantfw_onnx.samples import digits_cnn

    model, data = digits_cnn(0)
    float_path = workdir / "digits.onnx"
    onnx.save(model, str(float_path))
    backend = OnnxRuntimeBackend()
    x = data.x_test
    float_acc = data.accuracy(backend.session(str(float_path)).run(None, {"image": x})[0])
    rows = [{"system": "float", "accuracy": float_acc, "size": 1.0}]
    paths = {"float": float_path}
    for label, overrides in FORMATS:
        out = workdir / f"digits.{label.split()[0]}.onnx"
        paths[label] = out
        res, secs = _quantize(model, data.x_calib, out, overrides)
        art = backend.session(str(out)).run(None, {"image": x})[0]
        sim = res.simulate()({"image": x})["logits"]
        rows.append(
            {
                "system": label,
                "accuracy": data.accuracy(art),
                "sim_accuracy": data.accuracy(sim),
                "argmax_agree": float(np.mean(art.argmax(-1) == sim.argmax(-1))),
                "max_diff": float(np.abs(art - sim).max() / np.ptp(sim)),
                "size": _size(out) / _size(float_path),
                "quant_s": secs,
            }
        )
    latency = _latencies(backend, paths, x)
    base = latency[FORMATS[0][0]]
    for row in rows:
        row["ms_batch"] = latency[row["system"]] * 1e3
        row["vs_W8A8"] = latency[row["system"]] / base
    return rows


def _latencies(backend: Any, paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    """Median seconds per run of each artifact on batch ``x``, one thread, round-robin with a
    0.1 s pause before each artifact's turn (so none profits from a warmer cache or clock).
    Timed as the calling thread's CPU time: with one intra-op thread ONNX Runtime runs the graph
    in it, and CPU time does not count the time other processes of a shared machine take (their
    wall times varied by 15 % between runs on a loaded 2-core machine, CPU time by 2-3 %)."""
    sessions = {k: backend.session(str(p), threads=1) for k, p in paths.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"image": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for k, s in sessions.items():
            time.sleep(0.1)
            t0 = time.thread_time()
            for _ in range(REPS):
                s.run(None, {"image": x})
            times[k].append((time.thread_time() - t0) / REPS)
    return {k: float(np.median(v)) for k, v in times.items()}


def minilm_rows(workdir: Path, n_calib: int, n_eval: int, seq: int) -> list[dict[str, Any]]:
    from minilm_export import embed, export_minilm, load_tokenizer, tokenize
    from quantfw_onnx.backend import OnnxRuntimeBackend
    from x86_peers import OUT_DIR, embedding_metrics

    from quantfw.samples import docstring_sentences

    path = export_minilm(OUT_DIR)
    tok = load_tokenizer()
    cal = docstring_sentences(n_calib, seed=0, offset=0)
    ev = docstring_sentences(n_eval, seed=0, offset=n_calib)
    calib = [tokenize(tok, cal[i : i + 16], pad_to=seq) for i in range(0, n_calib, 16)]
    backend = OnnxRuntimeBackend()
    ref = embed(backend.session(str(path)), tok, ev)
    rows = [{"system": "float", "cos_mean": 1.0, "top1_agree": 1.0, "size": 1.0}]
    for label, overrides in FORMATS:
        out = workdir / f"minilm.{label.split()[0]}.onnx"
        res, secs = _quantize(str(path), calib, out, overrides)
        art = embed(backend.session(str(out)), tok, ev)
        sim = embed(res.simulate(), tok, ev)
        m_art, m_sim = embedding_metrics(art, ref), embedding_metrics(sim, ref)
        between = np.sum(art * sim, axis=1) / (
            np.linalg.norm(art, axis=1) * np.linalg.norm(sim, axis=1)
        )
        rows.append(
            {
                "system": label,
                "cos_mean": m_art["cos_mean"],
                "top1_agree": m_art["top1_agree"],
                "sim_cos_mean": m_sim["cos_mean"],
                "sim_top1_agree": m_sim["top1_agree"],
                "art_vs_sim_cos_mean": float(between.mean()),
                "art_vs_sim_cos_min": float(between.min()),
                "size": _size(out) / _size(Path(path)),
                "quant_s": secs,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[-1] if k != "system"]
    width = max(len(r["system"]) for r in rows) + 2
    lines = ["system".ljust(width) + "  ".join(f"{k:>{max(len(k), 9)}}" for k in keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            text = "-" if v is None else f"{v:.2e}" if k == "max_diff" else f"{v:.4f}"
            cells.append(f"{text:>{max(len(k), 9)}}")
        lines.append(r["system"].ljust(width) + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", choices=("native", "avx2"), default="native")
    ap.add_argument("--models", default="cnn,minilm")
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "x86_low_bit")
    args = ap.parse_args(argv)
    if args.cpu == "avx2" and os.environ.get("QUANTFW_CPU_MASK") != "avx2":
        from quantfw_onnx.cpu_mask import availability, avx2_environment

        ok, why = availability()
        if not ok:
            ap.error(f"--cpu avx2 is not available here: {why}")
        cmd = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
        return subprocess.run(cmd, env=avx2_environment()).returncode
    from quantfw_onnx.cpu import detect_x86
    from x86_peers import cpu_flags

    args.workdir.mkdir(parents=True, exist_ok=True)
    masked = os.environ.get("QUANTFW_CPU_MASK") == "avx2"
    print(
        f"CPU flags seen: {' '.join(cpu_flags())}"
        f"{' (AVX2-only emulation: quantfw_onnx.cpu_mask)' if masked else ''}; "
        f"target x86 -> {detect_x86().target}"
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "cnn" in models:
        print("\n== digits CNN (accuracy on the held-out digits)")
        print(_table(cnn_rows(args.workdir)))
    if "minilm" in models:
        print(
            f"\n== all-MiniLM-L6-v2 ({args.n_calib} calibration sentences, {args.n_eval} held-out, "
            f"{args.seq} tokens)"
        )
        print(_table(minilm_rows(args.workdir, args.n_calib, args.n_eval, args.seq)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
