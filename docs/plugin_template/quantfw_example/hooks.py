"""The plugin's hook implementations: this is all quantfw imports from it at start-up.

Keep this module light: no deep-learning framework at import time.  Heavy work belongs in the
factories, which run only when a component is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

import quantfw
from quantfw import AlgorithmInfo, Stage


class SaturationReport:
    """Finalize stage: record, per activation, the share of calibration values that its
    quantization range clips (a quick way to spot an over-eager calibrator)."""

    def __init__(self, max_batches: int = 4) -> None:
        self.max_batches = int(max_batches)

    def run(self, ctx) -> None:
        acts = {n: t for n, t in ctx.recipe.of_role("activation").items() if t.params is not None}
        if not acts or ctx.calibration is None:
            return
        clipped = dict.fromkeys(acts, 0)
        total = dict.fromkeys(acts, 0)
        for i, outs in enumerate(ctx.collect(list(acts))):
            if i >= self.max_batches:
                break
            for name, v in outs.items():
                t = acts[name]
                lo = (t.spec.qmin - t.params.zero_point) * t.params.scale
                hi = (t.spec.qmax - t.params.zero_point) * t.params.scale
                clipped[name] += int(np.count_nonzero((v < lo) | (v > hi)))
                total[name] += int(v.size)
        ctx.recipe.provenance["saturation"] = {n: clipped[n] / max(total[n], 1) for n in acts}


@quantfw.hookimpl
def quantfw_register_targets(register: Callable[[object], None]) -> None:
    register(Path(__file__).with_name("example-npu.toml"))


@quantfw.hookimpl
def quantfw_register_algorithms(register: Callable[[AlgorithmInfo], None]) -> None:
    register(
        AlgorithmInfo(
            "saturation-report",
            Stage.FINALIZE,
            SaturationReport,
            description="share of calibration values each activation range clips",
        )
    )
    register(
        AlgorithmInfo(
            "ls-nudge",
            Stage.ROUND,
            _nudge,
            description="nudge each linear layer towards its least-squares optimum (layer-wise)",
        )
    )


def _nudge(**options):
    from .nudge import LeastSquaresNudge  # imported when used: hooks stay light

    return LeastSquaresNudge(**options)
