"""The main job: a real model quantized for this machine's x86 target, against float.

A small CNN is trained in numpy on scikit-learn's 8x8 digits (fixed seed, about two seconds),
exported to ONNX, and quantized with ``quantfw.quantize(..., target="x86")`` statically (each
calibrator) and dynamically.  Every artifact runs in ONNX Runtime; the table gives test accuracy,
file size, median latency at batch 1 and 32 relative to float (same session options, round-robin
with a short pause, as ONNX Runtime's spinning threads otherwise slow the next session), and the
time to quantize.

Run: ``pip install -e ".[onnx,demo]" && python -m quantfw_onnx.demo`` (``--out DIR`` keeps the
models; ``--repeats N`` for steadier timings).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["main", "run", "DemoRow"]


@dataclass
class DemoRow:
    name: str
    path: Path
    accuracy: float
    quantize_s: float | None
    size_ratio: float = 1.0
    b1: float = 1.0
    b32: float = 1.0


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _timings(rows: list[DemoRow], x: np.ndarray, threads: int, repeats: int) -> None:
    """Median latency per row at batch 1 and 32, one call at a time, round-robin with a 0.1 s
    pause before each call (a finished ORT session's spinning threads slow the next one); the
    ratios are to the first row."""
    sessions = [_session(r.path, threads) for r in rows]
    for batch, field in ((1, "b1"), (32, "b32")):
        feed = {"image": x[:batch]}
        for s in sessions:  # warm-up
            s.run(None, feed)
        times: list[list[float]] = [[] for _ in rows]
        for rep in range(repeats):
            order = list(range(len(rows)))
            order = order[rep % len(order) :] + order[: rep % len(order)]  # rotate who goes first
            for i in order:
                time.sleep(0.1)
                t0 = time.perf_counter()
                sessions[i].run(None, feed)
                times[i].append(time.perf_counter() - t0)
        base = float(np.median(times[0]))
        for r, t in zip(rows, times, strict=True):
            setattr(r, field, base / float(np.median(t)))


def run(
    out_dir: Path, threads: int = 2, repeats: int = 5, seed: int = 0
) -> tuple[list[DemoRow], str]:
    """Train, quantize and measure; returns the rows and what was detected about the CPU."""
    import quantfw
    from quantfw.fileio import atomic_write_bytes

    from .samples import digits_cnn

    model, data = digits_cnn(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path = out_dir / "digits_cnn.onnx"
    atomic_write_bytes(float_path, model.SerializeToString())
    target = quantfw.get_registry().target("x86")

    def accuracy(path: Path) -> float:
        return data.accuracy(_session(path, threads).run(None, {"image": data.x_test})[0])

    rows = [DemoRow("float32", float_path, accuracy(float_path), None)]
    configs = [
        (f"int8 static {c}", {"algorithms": [c]})
        for c in ("minmax", "percentile", "entropy", "mse")
    ]
    configs.append(("int8 dynamic", {"overrides": {"dynamic": True}}))
    for name, kwargs in configs:
        path = out_dir / f"digits_cnn.{name.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        quantfw.quantize(float_path, data.x_calib, target="x86", output=path, **kwargs)
        rows.append(DemoRow(name, path, accuracy(path), time.perf_counter() - t0))
    size0 = float_path.stat().st_size
    for r in rows:
        r.size_ratio = r.path.stat().st_size / size0
    _timings(rows, data.x_test, threads, repeats)
    return rows, target.description


def format_rows(rows: Sequence[DemoRow]) -> str:
    lines = [
        f"{'model':<24}{'accuracy':>10}{'size':>8}{'speed b1':>10}{'speed b32':>11}{'quantize':>10}"
    ]
    for r in rows:
        q = "-" if r.quantize_s is None else f"{r.quantize_s:.2f}s"
        lines.append(
            f"{r.name:<24}{100 * r.accuracy:>9.2f}%{r.size_ratio:>7.2f}x{r.b1:>9.2f}x{r.b32:>10.2f}x{q:>10}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantfw_onnx.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="keep the ONNX models in this folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per model and batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        try:
            rows, detected = run(out, args.threads, args.repeats, args.seed)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("digits CNN (numpy-trained, scikit-learn digits; 539 held-out test images)")
        print(f"target x86: {detected}")
        print(
            f"ONNX Runtime CPU, {args.threads} threads; speed = float latency / model latency (medians)"
        )
        print(format_rows(rows))
        if args.out:
            print(f"models written to {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
