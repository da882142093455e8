"""Loading user weight files safely: never unpickling arbitrary objects.

:func:`load_state_dict` reads ``.safetensors`` files with safetensors and every other file with
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain containers and
refuses pickled code, so a tampered checkpoint fails instead of running.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_state_dict", "WeightsFileError"]


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely, or does not fit the module."""


def load_state_dict(
    module: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> nn.Module:
    """Load the weights in ``path`` into ``module`` (in place) and return it.

    :param strict: every parameter and buffer must be present, and nothing else.
    :raises WeightsFileError: naming the file and what is wrong (missing, not a state dict,
        pickled objects beyond tensors, keys that do not fit).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsFileError(f"weights file {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            with warnings.catch_warnings():  # torch's pickle-protocol notes precede our error
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, … for unsafe/bad files
        raise WeightsFileError(
            f"cannot read weights file {str(p)!r} safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); quantfw only loads tensors "
            "(torch.load weights_only=True or .safetensors), never pickled objects — re-save the "
            "checkpoint as a plain state_dict"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(
            f"weights file {str(p)!r} holds a {type(state).__name__}, not a state dict of tensors"
        )
    result = module.load_state_dict(state, strict=strict)
    if strict and (
        result.missing_keys or result.unexpected_keys
    ):  # pragma: no cover - torch raises
        raise WeightsFileError(f"{p}: keys do not fit {type(module).__name__}: {result}")
    return module
