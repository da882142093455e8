"""BRECQ and QDrop against nearest rounding on a small residual CNN (scikit-learn digits).

    python benchmarks/block_reconstruction.py [--iters 500] [--formats W2A8,W4A8]
                                              [--n-calib 256] [--device cpu]

Trains a residual CNN on 8x8 digits (stem conv, two residual blocks, classifier; about 30 s on
one core), then quantizes it for target ``x86-vnni`` with ``nearest``, ``brecq`` (plain and ``fisher=True``)
and ``qdrop``
rounding at each weight/activation format, and prints the test accuracy of the ONNX Runtime
artifact (all optimizations on), its argmax agreement with quantfw's simulation, and the
quantization seconds.  ``W4A4`` rows need a tree whose x86 target allows 4-bit activations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = {
    "W2A8": ({"bits": 2}, None),
    "W3A8": ({"bits": 3}, None),
    "W4A8": ({"bits": 4}, None),
    "W4A4": ({"bits": 4}, {"bits": 4}),
}


def _model():
    import torch
    from torch import nn

    class Res(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a = nn.Conv2d(c, c, 3, padding=1)
            self.b = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    class Net(nn.Module):
        def __init__(self, c: int = 24) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, c, 3, padding=1)
            self.r1, self.r2 = Res(c), Res(c)
            self.fc = nn.Linear(c * 16, 10)

        def forward(self, x):
            y = self.r1(torch.relu(self.stem(x)))
            y = nn.functional.max_pool2d(self.r2(y), 2)
            return self.fc(y.flatten(1))

    return Net()


def train(seed: int = 0):
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[:1297], y[:1297], x[1297:], y[1297:]
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(15):
        for i in range(0, len(xtr), 64):
            xb, yb = torch.from_numpy(xtr[i : i + 64]), torch.from_numpy(ytr[i : i + 64])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xb), yb).backward()
            opt.step()
    return m.eval(), xtr, xte, yte


def main() -> None:
    import onnxruntime as ort
    import torch

    import quantfw

    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--formats", default="W2A8,W4A8")
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    m, xtr, xte, yte = train()
    with torch.no_grad():
        acc = float((m(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    print(f"float accuracy {acc:.4f} (trained in {time.perf_counter() - t0:.0f} s)")
    calib = xtr[: args.n_calib]
    opts = {"iters": args.iters, "device": args.device}
    print(f"{'format':6} {'rounding':12} {'ORT acc':>8} {'agree':>6} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            weight, act = FORMATS[fmt]
            overrides = {"weight": weight, **({"activation": act} if act else {})}
            for alg in ("nearest", "brecq", "brecq+fisher", "qdrop"):
                out = Path(tmp) / f"{fmt}-{alg}.onnx"
                name, _, extra = alg.partition("+")
                chosen = (
                    alg
                    if alg == "nearest"
                    else (name, {**opts, **({extra: True} if extra else {})})
                )
                t = time.perf_counter()
                try:
                    res = quantfw.quantize(
                        m, calib, target="x86-vnni", algorithms=["none", chosen],
                        overrides=overrides, output=out,
                    )  # fmt: skip
                except ValueError as exc:
                    print(f"{fmt:6} {alg:12} not available: {str(exc)[:100]}")
                    break
                secs = time.perf_counter() - t
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                sess = ort.InferenceSession(str(out), so)
                art = sess.run(None, {sess.get_inputs()[0].name: xte})[0]
                sim = res.simulate()({res.graph.inputs[0]: xte})[res.graph.outputs[0]]
                acc = float((art.argmax(1) == yte).mean())
                agree = float((art.argmax(1) == sim.argmax(1)).mean())
                print(f"{fmt:6} {alg:12} {acc:8.4f} {agree:6.3f} {secs:8.1f}")


if __name__ == "__main__":
    main()
