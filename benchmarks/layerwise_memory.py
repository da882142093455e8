"""Memory of the layer-wise seam: is it bounded by one layer, whatever the layer count?

    python benchmarks/layerwise_memory.py [--runs 8x4096,32x4096,96x4096,32x16384] [--width 256]
        [--algorithm ls-nudge|adaround|adaquant]

For each frontend (ONNX, torch) and each ``LAYERSxROWS`` run, a deep MLP (``width`` x ``width`` linear layers
with ReLU between) is quantized for ``x86-vnni`` twice, each in a fresh process: with the default
round-to-nearest, and with the plugin template's layer-wise ``ls-nudge`` (docs/plugin_template),
(or ``--algorithm adaround`` / ``adaquant``, 50 steps a layer, every row kept), which reads
every layer's float and quantized inputs over ``rows`` calibration rows through
:meth:`quantfw.api.StageContext.layer_problems`.  Reported: the model's weights, one layer's
calibration inputs, what holding every layer's inputs at once would take, and the growth of the
process's peak resident memory during ``quantize`` (``ru_maxrss`` after minus RSS before).  If
the seam held more than one layer's data, the ls-nudge column would grow with the "all layers"
column (and with the rows); bounded, it grows with the model only (the recipe keeps every
rewritten weight, and the runtimes hold the model while running it) and with one layer's data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _onnx_mlp(layers: int, width: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)
        b = (rng.normal(size=width) * 0.01).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"l{i}.weight"),
            numpy_helper.from_array(b, f"l{i}.bias"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"l{i}.weight"], [f"l{i}.mm"], name=f"l{i}/MatMul"),
            helper.make_node("Add", [f"l{i}.mm", f"l{i}.bias"], [f"l{i}.out"], name=f"l{i}/Add"),
        ]
        x = f"l{i}.out"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"l{i}.act"], name=f"l{i}/Relu"))
            x = f"l{i}.act"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "deep_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _torch_mlp(layers: int, width: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(width, width))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


def child(frontend: str, layers: int, width: int, rows: int, algorithm: str) -> dict:
    """One measurement, in this (fresh) process."""
    sys.path.insert(0, str(ROOT / "docs" / "plugin_template"))
    import quantfw_example.hooks as example

    import quantfw
    from quantfw.plugins import make_plugin_manager, use_plugin_manager

    pm = make_plugin_manager()
    pm.register(example, name="example")
    model = _onnx_mlp(layers, width) if frontend == "onnx" else _torch_mlp(layers, width)
    x = np.random.default_rng(1).normal(size=(rows, width)).astype(np.float32)
    algos: list = ["none", "ls-nudge"] if algorithm == "ls-nudge" else ["none"]
    if algorithm in ("adaround", "adaquant"):
        algos = ["none", (algorithm, {"iters": 50, "max_samples": rows})]
        import torch  # loaded before the baseline: its libraries are not the algorithm's data

        w = torch.ones(width, width, requires_grad=True)  # and its kernels and Adam warmed up
        opt = torch.optim.Adam([w])
        (torch.ones(rows, width) @ w).square().mean().backward()
        opt.step()
        del w, opt
    with use_plugin_manager(pm):
        before = _rss()
        t0 = time.perf_counter()
        res = quantfw.quantize(
            model, x, target="x86-vnni", algorithms=algos, batch_size=256,
            frontend_options={"threads": 2} if frontend == "onnx" else None,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nudged = res.recipe.provenance.get(algorithm, {}).get("layers", [])
    return {"growth": max(peak - before, 0), "seconds": seconds, "nudged": len(nudged)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="8x4096,32x4096,96x4096,32x16384", help="LAYERSxROWS,...")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rows", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--frontends", default="onnx,torch")
    ap.add_argument("--algorithm", default="ls-nudge", choices=["ls-nudge", "adaround", "adaquant"])
    ap.add_argument(
        "--child", nargs=3, metavar=("FRONTEND", "LAYERS", "ALGORITHM"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        fe, layers, algo = args.child
        print(json.dumps(child(fe, int(layers), args.width, args.rows, algo)))
        return 0
    w = args.width
    print(
        f"deep MLP, {w}x{w} linear layers, calibration in batches of 256 rows, target x86-vnni; "
        "peak RSS growth during quantize, each run in a fresh process"
    )
    head = (
        f"{'frontend':<9}{'layers':>7}{'rows':>7}{'model MB':>10}{'1 layer in MB':>15}"
        f"{'all layers MB':>15}{'nearest MB':>12}{args.algorithm + ' MB':>13}"
        f"{args.algorithm + ' s':>12}"
    )
    print(head)
    runs = [tuple(int(v) for v in r.split("x")) for r in args.runs.split(",")]
    for fe in args.frontends.split(","):
        for layers, n in runs:
            got = {}
            for algo in ("nearest", args.algorithm):
                out = subprocess.run(
                    [sys.executable, __file__, "--width", str(w), "--rows", str(n), "--child", fe, str(layers), algo],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                got[algo] = json.loads(out.stdout.strip().splitlines()[-1])
            mine = got[args.algorithm]
            assert mine["nudged"] == layers, got
            model_mb = layers * (w * w + w) * 4 / MB
            one = n * w * 4 / MB
            print(
                f"{fe:<9}{layers:>7}{n:>7}{model_mb:>10.1f}{one:>15.1f}{layers * one:>15.1f}"
                f"{got['nearest']['growth'] / MB:>12.1f}{mine['growth'] / MB:>13.1f}"
                f"{mine['seconds']:>12.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
