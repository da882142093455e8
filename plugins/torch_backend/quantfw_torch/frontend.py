"""The ``torch`` frontend: ``torch.nn.Module`` models, captured through torch.export and ONNX.

* :meth:`TorchFrontend.bind` pairs a module with example inputs (given, or the first
  calibration batch) into a :class:`~quantfw_torch.export.TorchModel`.
* :meth:`TorchFrontend.capture` exports it (:func:`~quantfw_torch.export.export_module`) and
  has the registered ``onnx`` frontend capture the ONNX translation (through quantfw's registry,
  not the ONNX plugin's modules); ``graph.forms["onnx"]`` is the prepared ONNX model, so the
  ONNX-based backends lower torch models unchanged.
* :meth:`TorchFrontend.collect` runs the exported FX module on each batch under ``no_grad`` and
  keeps only the requested tensors (an FX interpreter drops every other value as soon as its
  last reader ran), with the float-model rewrites it is given -- or, with a recipe, the
  simulated module, reading each tensor before its own quantizer.
* :meth:`TorchFrontend.simulate` runs :func:`simulated_module`: the FX module with the recipe's
  fake quantization, which users can also take into their own evaluation loop.

Only the entry points import torch; ``import quantfw_torch.frontend`` is cheap, so asking this
frontend whether it accepts an ONNX file never loads torch.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantfw.api import Batch
from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .export import Exported

__all__ = ["TorchFrontend", "TorchSource", "simulated_module", "exported_of"]


@dataclass
class TorchSource:
    """``graph.source`` of a torch capture (private to this frontend; the prepared ONNX model the
    graph was captured from is ``graph.forms["onnx"]``).

    :ivar exported: the export (FX module, ONNX translation, input names).
    :ivar demoted: nodes kept float because a tensor they read or write exists only inside
        the ONNX translation of one torch op (a GRU's internals), where torch cannot observe it.
    """

    exported: Any
    demoted: list[str] = field(default_factory=list)


def _is_torch_model(model: object) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    from_torch = isinstance(model, torch.nn.Module)
    if from_torch:
        return True
    mod = sys.modules.get("quantfw_torch.export")
    return mod is not None and isinstance(model, mod.TorchModel)


def exported_of(graph: QuantGraph) -> Exported:
    """The capture behind a QuantGraph made by the torch frontend.

    :raises ValueError: for graphs captured by another frontend.
    """
    src = graph.source
    if not isinstance(src, TorchSource):
        raise ValueError(
            f"graph {graph.name!r} was not captured by the torch frontend (no exported module)"
        )
    return src.exported


class TorchFrontend:
    """The ``torch`` frontend (see the module docstring).

    :param opset: ONNX opset of the translation (``None``: the exporter's default).
    """

    name = "torch"

    def __init__(self, *, opset: int | None = None) -> None:
        self.opset = opset

    # -- Frontend protocol ---------------------------------------------------------------------
    def accepts(self, model: object) -> bool:
        return _is_torch_model(model)

    def load(self, path: Path) -> object:
        raise ValueError(
            f"{path}: the torch frontend takes nn.Module objects, not files (a pickled module "
            "would have to be unpickled, which quantfw never does with user files); build the "
            "module in Python, load its weights with torch.load(path, weights_only=True) or "
            "quantfw_torch.load_state_dict, and call quantfw.quantize(module, ...)"
        )

    def bind(self, model: object, *, example_inputs: Any = None, calibration_data: Any = None):
        """A :class:`~quantfw_torch.export.TorchModel` for ``model``: with ``example_inputs``,
        or the first batch of ``calibration_data`` when none are given."""
        from .calibration import first_batch
        from .export import TorchModel, as_torch_model, example_from_batch

        if isinstance(model, TorchModel) or example_inputs is not None:
            return as_torch_model(model, example_inputs)
        batch = first_batch(calibration_data)
        if batch is None:
            return as_torch_model(model, None)  # raises: no example inputs
        return example_from_batch(model, batch)

    def calibration_source(self, model: object, graph: QuantGraph, data: Any) -> Any:
        """Adapt torch-style calibration data (DataLoaders of tensors, ``(x, y)`` tuples, dicts
        with extra keys) to the core's batches of arrays keyed by input name."""
        from .calibration import adapt

        return adapt(data, list(graph.inputs))

    def capture(self, model: object) -> QuantGraph:
        from quantfw.plugins import current_registry

        from .export import TorchModel, as_torch_model, export_module

        tm = model if isinstance(model, TorchModel) else as_torch_model(model, None)
        exp = export_module(tm, opset=self.opset)
        exp.onnx_model.graph.name = type(tm.module).__name__  # names the QuantGraph
        # the translation is ours: the onnx frontend may prepare it in place (no second copy)
        onnx_frontend = current_registry().make_frontend("onnx", {"copy_model": False})
        graph = onnx_frontend.capture(exp.onnx_model)
        graph.source = TorchSource(exp, _demote_untraceable(graph, exp))
        return graph

    def collect(
        self,
        model: object,
        graph: QuantGraph,
        tensors: Sequence[str],
        batches: Iterable[Batch],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        recipe: Recipe | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        import torch

        from .export import flat_inputs

        exp = exported_of(graph)
        if recipe is not None:
            bound = _simulated(graph, recipe)  # tensors read before their own quantizer
        else:
            rewritten = set(weights or ())
            changed = {n.name for n in graph.nodes if _weighted(n) and rewritten & set(_ws(n))}
            bound = _bind_float(exp, graph, changed, weights or {})
        wanted: dict[Any, list[str]] = {}
        for t in tensors:
            node = bound.nodes.get(t)
            if node is None:
                raise KeyError(
                    f"tensor {t!r} of graph {graph.name!r} has no FX node in the exported module"
                )
            wanted.setdefault(node, []).append(t)
        try:
            for batch in batches:
                with torch.no_grad():
                    values = _Recorder(bound.module, wanted).record(flat_inputs(exp, batch))
                missing = [t for t in tensors if t not in values]
                if missing:
                    raise KeyError(f"tensors {missing} were not computed for this batch")
                yield values
        finally:
            # an FX module is cyclic garbage: free this one (and its copy of every weight) now,
            # not whenever the collector next runs, or layer-wise passes pile copies up
            del bound, wanted
            gc.collect()

    def simulate(
        self, model: object, graph: QuantGraph, recipe: Recipe
    ) -> Callable[[Batch], dict[str, np.ndarray]]:
        import torch

        from .export import flat_inputs

        exp = exported_of(graph)
        sim = simulated_module(graph, recipe)
        names = list(exp.output_names)

        def run(batch: Batch) -> dict[str, np.ndarray]:
            with torch.no_grad():
                outs = torch.fx.Interpreter(sim).run(*flat_inputs(exp, batch))
            flat = [o for o in torch.utils._pytree.tree_leaves(outs) if isinstance(o, torch.Tensor)]
            if len(flat) != len(names):
                raise RuntimeError(
                    f"the simulated module returned {len(flat)} tensors, the graph has outputs "
                    f"{names}"
                )
            return {n: v.detach().numpy() for n, v in zip(names, flat, strict=True)}

        run.module = sim  # type: ignore[attr-defined]
        return run

    # -- block-wise reconstruction (quantfw.api.blocks) -----------------------------------------
    def block_module(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        nodes: Sequence[str],
        inputs: Sequence[str],
        outputs: Sequence[str],
    ) -> Any:
        """See :func:`quantfw_torch.blocks.block_module`."""
        from .blocks import block_module

        return block_module(graph, recipe, nodes, inputs, outputs)

    def output_gradients(
        self,
        model: object,
        graph: QuantGraph,
        recipe: Recipe,
        tensors: Sequence[str],
        batches: Iterable[Batch],
        *,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """See :func:`quantfw_torch.blocks.output_gradients`."""
        from .blocks import output_gradients

        yield from output_gradients(graph, recipe, tensors, batches, weights)

    # -- quantization-aware training (quantfw.qat) ---------------------------------------------
    def qat_prepare(self, result: Any, *, learn_scales: bool = False) -> Any:
        """See :func:`quantfw_torch.qat.qat_prepare`."""
        from .qat import qat_prepare

        return qat_prepare(result, learn_scales=learn_scales)

    def qat_recipe(self, model: Any) -> Recipe:
        """See :func:`quantfw_torch.qat.qat_recipe`."""
        from .qat import qat_recipe

        return qat_recipe(model)


# -- capture helpers ---------------------------------------------------------------------------
def _demote_untraceable(graph: QuantGraph, exp: Exported) -> list[str]:
    """Turn nodes that read or write a float tensor with no FX counterpart into ``other`` (kept
    float), so nothing is planned where torch cannot observe or simulate it."""
    from quantfw.graph import OpKind

    fx = {n.name for n in exp.module.graph.nodes} | set(exp.aliases)
    consts = set(graph.initializers)
    demoted = []
    for n in graph.nodes:
        if n.op is OpKind.OTHER:
            continue
        lost = [t for t in (*n.inputs, *n.outputs) if t not in fx and t not in consts]
        if lost:
            n.op = OpKind.OTHER
            n.source_op = f"{n.source_op} (inside the translation of one torch op: kept float)"
            demoted.append(n.name)
    return demoted


# -- helpers -----------------------------------------------------------------------------------
def _weighted(node: Any) -> bool:
    from .bind import WEIGHTED_KINDS

    return node.op in WEIGHTED_KINDS and "weight" in node.weights


def _ws(node: Any) -> list[str]:
    return [w for w in node.weights.values() if w]


def _tensor(a: np.ndarray) -> torch.Tensor:
    import torch

    a = np.asarray(a)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, copy=True)
    return torch.from_numpy(a)


def _bind_float(
    exp: Exported, graph: QuantGraph, nodes: Iterable[str], weights: Mapping[str, np.ndarray]
) -> Any:
    from .bind import WeightedOp, bind

    def value(name: str) -> torch.Tensor:
        return _tensor(weights[name] if name in weights else graph.initializers[name])

    ops = {}
    for name in nodes:
        n = graph.node(name)
        b = n.weights.get("bias")
        ops[name] = WeightedOp(value(n.weights["weight"]), value(b) if b else None)
    return bind(exp.module, graph, ops=ops, aliases=exp.aliases)


class _AllRecorded(Exception):
    """Raised inside the interpreter once every wanted value is in: the rest need not run."""


class _Recorder:
    """Runs an FX module and keeps the values of chosen nodes (as numpy arrays), stopping as
    soon as the last of them is computed (the input of a first layer costs one layer)."""

    def __init__(self, module: Any, wanted: Mapping[Any, Sequence[str]]) -> None:
        import torch

        total = sum(len(v) for v in wanted.values())

        class Interp(torch.fx.Interpreter):
            def run_node(inner, n):  # noqa: ANN001, ANN202, N805
                out = super().run_node(n)
                for name in wanted.get(n, ()):
                    inner.values[name] = out.detach().cpu().numpy().copy()
                if len(inner.values) == total:
                    raise _AllRecorded
                return out

        self.interp = Interp(module)
        self.interp.values = {}

    def record(self, args: Sequence[Any]) -> dict[str, np.ndarray]:
        self.interp.values = {}
        try:
            self.interp.run(*args)
        except _AllRecorded:
            pass
        return self.interp.values


def simulated_module(graph: QuantGraph, recipe: Recipe) -> torch.fx.GraphModule:
    """The captured model with ``recipe`` applied as fake quantization: an ``nn.Module`` taking
    the original model's inputs and returning its outputs, for any torch evaluation loop.

    Weights are the core's :func:`~quantfw.simulate.simulated_weights` (rewritten, then
    fake-quantized: bit-identical to the codes a backend stores); activations pass through
    :class:`~quantfw_torch.fakequant.FakeQuantize` with the recipe's scales and zero points,
    after the recipe's equalisation of their edge where it has one.
    """
    return _simulated(graph, recipe).module


def _simulated(
    graph: QuantGraph, recipe: Recipe, trainable: Mapping[str, Any] | None = None
) -> Any:
    """:func:`simulated_module`'s :class:`~quantfw_torch.bind.Bound` (module and tensor map).

    ``trainable`` maps weighted node names to the :class:`~quantfw_torch.bind.WeightedOp` that
    re-implements them instead of constants already fake-quantized (see :func:`trainable_op`)."""
    from quantfw.simulate import simulated_weights

    from .bind import WeightedOp, bind
    from .fakequant import FakeQuantize, edge_modules

    exp = exported_of(graph)
    weights = simulated_weights(graph, recipe)
    trainable = dict(trainable or {})
    ops = {}
    for n in graph.nodes:
        if n.name in trainable:
            ops[n.name] = trainable[n.name]
            continue
        if not _weighted(n) or not any(w in weights for w in _ws(n)):
            continue
        w = n.weights["weight"]
        b = n.weights.get("bias")
        ops[n.name] = WeightedOp(
            _tensor(weights.get(w, graph.initializers[w])),
            None if not b else _tensor(weights.get(b, graph.initializers[b])),
        )
    constants: dict[str, dict[str, torch.Tensor]] = {}
    for t in recipe.tensors.values():
        if t.role in ("weight", "bias") and t.node not in ops:
            constants.setdefault(t.node, {})[t.name] = _tensor(weights[t.name])
    acts = edge_modules(
        recipe,
        lambda name, t, scale: FakeQuantize(t.spec, t.params, equalize=scale, name=name),
    )
    return bind(
        exp.module, graph, ops=ops, activations=acts, constants=constants, aliases=exp.aliases
    )


def trainable_op(graph: QuantGraph, recipe: Recipe, node: Any) -> Any:
    """A weighted node on its float weight and bias (the recipe's rewritten ones first) as
    ``nn.Parameter``, behind fake quantizers with the recipe's parameters: the simulation's
    numbers, differentiable (rounding passes gradients straight through)."""
    import torch

    from .bind import WeightedOp
    from .fakequant import FakeQuantize

    def param(name: str) -> torch.nn.Parameter:
        value = recipe.weights.get(name, graph.initializers[name])
        return torch.nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32, copy=True)))

    def quantizer(name: str) -> FakeQuantize | None:
        t = recipe.tensors.get(name)
        return (
            None
            if t is None or t.role == "activation"
            else FakeQuantize(t.spec, t.params, name=name)
        )

    if not _weighted(node):
        raise ValueError(f"node {node.name!r} ({node.op.value}) holds no trainable weight")
    w, b = node.weights["weight"], node.weights.get("bias")
    return WeightedOp(
        param(w),
        param(b) if b else None,
        weight_fq=quantizer(w),
        bias_fq=quantizer(b) if b else None,
    )
