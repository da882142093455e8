"""Plain data that crosses the contract: calibration batches and backend artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Batch", "Artifact"]

#: One calibration / inference batch: model input name → array (first axis = samples).
Batch = Mapping[str, np.ndarray]


@dataclass
class Artifact:
    """What a backend produced: a file on disk plus what it is for.

    :param path: the artifact file.
    :param target: the target name it was lowered for.
    :param format: its file format (a :class:`BackendInfo` ``artifact_format``).
    :param metadata: backend-specific facts (opset, op counts, file size, runtime …).  A
        backend that knows what running the artifact on this machine would get wrong lists it
        under ``host_warnings`` (an empty list: nothing); the pipeline adds them to the
        summary's warnings and logs them.
    """

    path: Path
    target: str
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
