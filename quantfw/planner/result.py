"""The result of planning: one :class:`TensorPlan` per quantized tensor, one
:class:`NodeDecision` per node, gathered in a :class:`QuantPlan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import QuantParams, QuantSpec


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is quantized.

    :param name: tensor (or initializer) name.
    :param role: ``activation``, ``weight`` (also float constants read by quantized ops) or
        ``bias``.
    :param spec: the scheme.
    :param node: for weights and biases, the node that uses it; ``None`` for activations.
    :param share_group: name of the group of tensors that must carry identical params.
    :param bias_of: for int32 biases, ``(input activation, weight)``: scale = s_x * s_w.
    :param consumers: quantized nodes that read this tensor quantized.
    :param producer: the node writing an activation (``None`` for graph inputs and constants).
    :param fixed_params: params the runtime imposes (TFLite softmax: 1/256, -128), else ``None``.
    :param all_readers: ``True`` when every reader sees the quantized value (the tensor itself is
        stored quantized: targets with ``quantize_outputs = "always"``); ``False`` when only
        ``consumers`` read it quantized and other readers keep the float value (QDQ on the
        consumers' edges: ``when_consumed`` targets and dynamic activations).
    """

    name: str
    role: str
    spec: QuantSpec | None
    node: str | None = None
    share_group: str | None = None
    bias_of: tuple[str, str] | None = None
    consumers: tuple[str, ...] = ()
    producer: str | None = None
    fixed_params: QuantParams | None = None
    all_readers: bool = True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "spec": None if self.spec is None else self.spec.to_dict(),
            "node": self.node,
            "producer": self.producer,
            "consumers": list(self.consumers),
            "share_group": self.share_group,
            "bias_of": None if self.bias_of is None else list(self.bias_of),
            "all_readers": self.all_readers,
        }
        if self.fixed_params is not None:
            d["fixed_params"] = {
                "scale": self.fixed_params.scale.tolist(),
                "zero_point": self.fixed_params.zero_point.tolist(),
            }
        return d


@dataclass(frozen=True)
class NodeDecision:
    """Whether a node runs quantized, and why.

    :ivar reason: a sentence for people, naming this node's own evidence.
    :ivar rule: the general rule that decided, without node names, so that summaries can group
        nodes by it (``"op kind softmax is float-only on target 'x86'"``).
    """

    node: str
    op: str
    quantized: bool
    reason: str
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "node": self.node,
            "op": self.op,
            "quantized": self.quantized,
            "reason": self.reason,
        }
        if self.rule and self.rule != self.reason:
            d["rule"] = self.rule
        return d


@dataclass
class QuantPlan:
    """The result of :func:`plan`.

    :param target: the target's name.
    :param tensors: quantized tensors by name, in graph order (float tensors are absent).
    :param decisions: one per node, in graph order.
    :param fusions: node-name chains fused by the runtime.
    :param share_groups: group name → member tensors (graph order).
    :param warnings: things the user should know (unmatched patterns, spec conflicts…).
    :param dynamic: whether activations are quantized dynamically.
    """

    target: str
    tensors: dict[str, TensorPlan]
    decisions: list[NodeDecision]
    fusions: list[tuple[str, ...]] = field(default_factory=list)
    share_groups: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dynamic: bool = False

    def _role(self, role: str) -> list[TensorPlan]:
        return [t for t in self.tensors.values() if t.role == role]

    def activations(self) -> list[TensorPlan]:
        return self._role("activation")

    def weights(self) -> list[TensorPlan]:
        return self._role("weight")

    def biases(self) -> list[TensorPlan]:
        return self._role("bias")

    def quantized_nodes(self) -> list[str]:
        return [d.node for d in self.decisions if d.quantized]

    def float_nodes(self) -> list[str]:
        return [d.node for d in self.decisions if not d.quantized]

    def decision(self, node: str) -> NodeDecision:
        for d in self.decisions:
            if d.node == node:
                return d
        raise KeyError(f"no decision for node {node!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dynamic": self.dynamic,
            "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
            "decisions": [d.to_dict() for d in self.decisions],
            "fusions": [list(f) for f in self.fusions],
            "share_groups": {k: list(v) for k, v in self.share_groups.items()},
            "warnings": list(self.warnings),
        }

    def explain(self) -> str:
        """A short human-readable report: one line per node, then warnings."""
        width = max((len(d.node) for d in self.decisions), default=0)
        lines = [f"plan for target {self.target!r}" + (" (dynamic)" if self.dynamic else "")]
        for d in self.decisions:
            mark = "Q" if d.quantized else "-"
            lines.append(f"  {mark} {d.node:<{width}}  {d.reason}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)
