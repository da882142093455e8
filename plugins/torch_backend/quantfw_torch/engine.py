"""The ``torch`` compute engine: layer-wise arithmetic in torch, with autograd, on CPU or GPU.

Layer outputs use the same re-implementations of the QuantGraph's ops that the fake-quant
simulation uses (:mod:`quantfw_torch.bind`), so an algorithm sees on this engine what the
reference interpreter computes on numpy, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from quantfw.graph import Node, OpKind

__all__ = ["TorchEngine"]


class TorchEngine:
    """Engine arrays are ``torch.Tensor`` (float32 unless asked otherwise) on :attr:`device`.

    :param device: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default ``"cpu"``.
    :raises ValueError: a device that does not exist here.
    """

    name = "torch"
    autograd = True
    xp = torch

    def __init__(self, device: str | None = None) -> None:
        try:
            dev = torch.device(device or "cpu")
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"torch engine: {device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"torch engine: device {device!r} asked for, but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
            )
        self.device = str(dev)

    def asarray(
        self, value: np.ndarray, *, dtype: str = "float32", requires_grad: bool = False
    ) -> torch.Tensor:
        # a copy: in-place work on the tensor never reaches the caller's (maybe read-only) array
        t = torch.from_numpy(np.array(value, dtype=dtype, copy=True)).to(self.device)
        return t.requires_grad_(True) if requires_grad else t

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu").numpy()
        return np.asarray(value)

    def layer_output(
        self, node: Node, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        from .bind import _call_args

        if node.op not in (OpKind.LINEAR, OpKind.CONV):
            raise ValueError(
                f"node {node.name!r}: layer_output computes linear and conv, not {node.op.value}"
            )
        fn, args = _call_args(node, x, weight, bias)
        return fn(*args)

    def detach(self, value: torch.Tensor) -> torch.Tensor:
        return value.detach()

    def optimizer(self, params: Sequence[torch.Tensor], *, lr: float) -> _Adam:
        return _Adam(params, lr)


class _Adam:
    """``torch.optim.Adam`` behind the engine's :class:`~quantfw.api.engines.Optimizer`."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float) -> None:
        bad = [i for i, p in enumerate(params) if not p.requires_grad]
        if bad:
            raise ValueError(f"torch engine: parameter(s) {bad} were not made with requires_grad")
        self._opt = torch.optim.Adam(list(params), lr=float(lr))

    def step(self, loss: torch.Tensor) -> float:
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return float(loss.detach())
