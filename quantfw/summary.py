"""A human- and machine-readable account of one quantization run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import pairs

__all__ = ["Summary"]


@dataclass
class Summary:
    """What was quantized, what stayed float and why, with which algorithms, and what was written.

    :ivar target: target name.
    :ivar frontend: frontend name.
    :ivar nodes: ``{"quantized": n, "float": n}``.
    :ivar float_reasons: rule → node names kept in float by it (each node's own reason is in
        the plan's decisions and the recipe).
    :ivar tensors: one row per quantized tensor (name, role, dtype, granularity, scale range).
    :ivar algorithms: stage → algorithm names.
    :ivar calibration_samples: samples seen by the calibrate stage (``None``: no data).
    :ivar timings: ``"stage:algorithm"`` → seconds.
    :ivar backend: what the backend did, or why there is no artifact.
    :ivar warnings: from planning (e.g. an override pattern that matched nothing), from the
        algorithms (:meth:`~quantfw.api.context.StageContext.warn`), then what
        running the artifact on this machine would get wrong (``host_warnings`` of its
        metadata, see :func:`quantfw.pipeline.host_warnings`).
    """

    target: str
    frontend: str
    nodes: dict[str, int]
    float_reasons: dict[str, list[str]]
    tensors: list[dict[str, Any]]
    algorithms: dict[str, list[str]]
    calibration_samples: int | None
    timings: dict[str, float]
    backend: str
    artifact: str | None = None
    warnings: list[str] = field(default_factory=list)
    total_seconds: float = 0.0

    @classmethod
    def build(
        cls,
        *,
        graph,
        plan,
        recipe,
        target,
        frontend,
        timings,
        backend_note,
        artifact,
        total_seconds,
    ) -> Summary:
        quantized = [d for d in plan.decisions if d.quantized]
        reasons: dict[str, list[str]] = {}
        for d in plan.decisions:
            if not d.quantized:
                reasons.setdefault(d.rule or d.reason, []).append(d.node)
        weight_only = {n.name for n in graph.nodes if n.op in target.ops.weight_only} | {
            t.node
            for t in recipe.tensors.values()
            if t.role == "weight" and target.allowed.weight_only(t.spec)
        }
        rows = []
        for name, t in recipe.tensors.items():
            row: dict[str, Any] = {
                "tensor": name,
                "role": t.role,
                "dtype": t.spec.dtype,
                "granularity": t.spec.granularity.value,
                "symmetric": t.spec.symmetric,
                "dynamic": t.spec.dynamic,
            }
            if t.spec.group_size is not None:
                row["group_size"] = t.spec.group_size
            if t.role == "weight" and t.node in weight_only:
                row["weight_only"] = True
            if t.params is not None:
                row["scale_min"] = float(np.min(t.params.scale))
                row["scale_max"] = float(np.max(t.params.scale))
            if t.role == "weight" and t.params is not None and pairs.applies(t.spec):
                row["pair_limit"] = t.spec.pair_limit
                w = recipe.weights.get(name, graph.initializers.get(name))
                if w is not None:
                    row["scale_vs_plain"] = _scale_vs_plain(np.asarray(w), t)
            rows.append(row)
        return cls(
            target=target.name,
            frontend=frontend,
            nodes={"quantized": len(quantized), "float": len(plan.decisions) - len(quantized)},
            float_reasons=reasons,
            tensors=rows,
            algorithms=dict(recipe.provenance.get("algorithms", {})),
            calibration_samples=recipe.provenance.get("calibration_samples"),
            timings=timings,
            backend=backend_note,
            artifact=None if artifact is None else str(artifact.path),
            warnings=list(plan.warnings)
            + [str(w) for w in recipe.provenance.get("warnings", ())]
            + ([] if artifact is None else list(artifact.metadata.get("host_warnings", []))),
            total_seconds=total_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def to_text(self, max_tensors: int = 0) -> str:
        """A short report; ``max_tensors`` > 0 also lists that many tensor rows."""
        lines = [
            f"target {self.target} via frontend {self.frontend}: "
            f"{self.nodes['quantized']} node(s) quantized, {self.nodes['float']} kept in float",
            "algorithms: " + "; ".join(f"{s}={','.join(a)}" for s, a in self.algorithms.items()),
        ]
        if self.calibration_samples is not None:
            lines.append(f"calibration samples: {self.calibration_samples}")
        for reason, nodes in self.float_reasons.items():
            shown = ", ".join(nodes[:6]) + (f" (+{len(nodes) - 6} more)" if len(nodes) > 6 else "")
            lines.append(f"float: {reason}: {shown}")
        roles: dict[str, int] = {}
        for row in self.tensors:
            roles[row["role"]] = roles.get(row["role"], 0) + 1
        lines.append("quantized tensors: " + ", ".join(f"{n} {r}" for r, n in roles.items()))
        lines.extend(self._weight_format_lines())
        for row in self.tensors[:max_tensors]:
            scale = (
                f"scale {row['scale_min']:.3g}..{row['scale_max']:.3g}"
                if "scale_min" in row
                else "dynamic"
            )
            lines.append(
                f"  {row['tensor']} [{row['role']}] {row['dtype']} {row['granularity']} {scale}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(f"backend: {self.backend}")
        lines.append(f"time: {self.total_seconds:.2f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _weight_format_lines(self) -> list[str]:
        """One line per weight format, with the reason for a pair limit and what it cost."""
        groups: dict[tuple[str, str, Any, bool, Any], list[dict[str, Any]]] = {}
        for row in self.tensors:
            if row["role"] == "weight":
                key = (
                    row["dtype"],
                    row["granularity"],
                    row.get("group_size"),
                    row.get("weight_only", False),
                    row.get("pair_limit"),
                )
                groups.setdefault(key, []).append(row)
        lines = []
        for (dtype, gran, group, alone, limit), rows in groups.items():
            text = f"weights: {len(rows)} x {dtype} {gran.replace('_', '-')}"
            if group is not None:
                text += f" ({group})"
            if alone:
                text += ", weight-only (activations float)"
            if limit is not None:
                ratios = [r["scale_vs_plain"] for r in rows if "scale_vs_plain" in r]
                text += (
                    f", pair limit {limit} (the target's integer kernel adds two adjacent "
                    f"products in a saturating int16: x86 AVX2 without VNNI)"
                )
                if ratios:
                    text += (
                        f"; scales {float(np.median(ratios)):.2f}x the plain grid's "
                        f"(median over layers; 7-bit weights would be 2x)"
                    )
            lines.append(text)
        return lines


def _scale_vs_plain(w: np.ndarray, t: Any) -> float:
    """Median ratio of a pair-limited weight's scales to the plain min/max scales."""
    from .numerics import params_from_tensor

    plain = params_from_tensor(w, t.spec.replace(pair_limit=None))
    return float(np.median(np.asarray(t.params.scale) / np.asarray(plain.scale)))
