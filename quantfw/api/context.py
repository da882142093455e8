"""The stage context -- what an algorithm sees and may change while it runs -- and the
:class:`Algorithm` protocol of the objects that run in it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..graph import with_shape_producers
from ..recipe import Equalization
from .blocks import BlockProblem, ProvidesBlocks, ProvidesOutputGradients, block_boundary
from .channel_ranges import ChannelRanges
from .layers import LAYER_KINDS, LayerProblem

if TYPE_CHECKING:  # pragma: no cover
    from ..calibration import CalibrationData
    from ..graph import Node, QuantGraph
    from ..planner import QuantPlan
    from ..recipe import Recipe, TensorRecipe
    from ..target import TargetSpec
    from .engines import Engine
    from .protocols import Frontend

__all__ = ["Algorithm", "StageContext", "ProgressFn", "EngineFactory"]

#: ``progress(task, done, total)``: report that ``done`` of ``total`` units of ``task`` are done.
ProgressFn = Callable[[str, int, "int | None"], None]
#: ``engines(name, device, autograd)``: the compute engine of that name (``None``: numpy, or the
#: first engine with autograd when ``autograd`` is true).
EngineFactory = Callable[["str | None", "str | None", bool], "Engine"]


def _no_progress(task: str, done: int, total: int | None) -> None:
    return None


def _numpy_engine(name: str | None, device: str | None, autograd: bool) -> Engine:
    from .engines import NumpyEngine

    if name not in (None, "numpy") or autograd:
        raise ValueError(
            f"no engine {'with autograd' if autograd else repr(name)} here; only 'numpy'"
        )
    return NumpyEngine(device)


@runtime_checkable
class Algorithm(Protocol):
    """One step of the pipeline, bound to a :class:`~quantfw.api.components.Stage`.

    ``run`` reads and updates the :class:`StageContext`: transform
    algorithms rewrite weights (:meth:`StageContext.set_weight`) and record
    per-channel equalisations, calibrate algorithms fill ``ctx.recipe`` tensor parameters from
    activations, round algorithms choose the integer weights (layer by layer through
    :meth:`StageContext.layer_problems`), finalize algorithms adjust biases
    and similar.

    An algorithm may also have ``prepare(ctx)``: the pipeline calls it for every chosen
    algorithm before the first stage runs, e.g. so that a calibrator can ask an earlier
    stage's float-model pass to gather what it needs
    (:meth:`StageContext.request_channel_ranges`).
    """

    def run(self, ctx: StageContext) -> None:
        """Do the work; raise ``ValueError`` with a clear message on bad input."""


@dataclass
class StageContext:
    """What an algorithm sees and changes while it runs.

    Two views of the weights exist side by side: the *float model* (what calibration runs see;
    transforms such as BatchNorm folding or cross-layer equalisation change it with
    :meth:`set_weight`) and the *quantized model* (``recipe.weights`` first: SmoothQuant's
    ``s * W`` or learned rounding, written with :meth:`set_quantized_weight`, only make sense
    together with quantization).  Neither changes the captured graph's own initializers.

    :ivar model: the user's model object (as the frontend's ``bind`` returned it).
    :ivar frontend: the frontend working object; ``frontend_name`` its registered name.
    :ivar graph: the captured graph (read-only for algorithms).
    :ivar plan: which tensors get which spec.
    :ivar target: the target spec.
    :ivar recipe: filled in by the stages.
    :ivar calibration: validated batches, or ``None`` when none were given.
    :ivar progress: reports progress of long tasks to observers and progress bars.
    :ivar options: free-form options from ``quantize(..., options=...)``.
    :ivar float_weights: the float-model rewrites so far, by initializer name.
    :ivar engines: makes compute engines (``engines(name, device)``); the pipeline passes the
        registry's.
    """

    model: object
    frontend: Frontend
    frontend_name: str
    graph: QuantGraph
    plan: QuantPlan
    target: TargetSpec
    recipe: Recipe
    calibration: CalibrationData | None
    progress: ProgressFn = _no_progress
    options: dict[str, Any] = field(default_factory=dict)
    float_weights: dict[str, np.ndarray] = field(default_factory=dict)
    engines: EngineFactory = _numpy_engine
    _float_version: int = field(default=0, init=False, repr=False)
    _ranges: ChannelRanges | None = field(default=None, init=False, repr=False)

    # -- reporting -----------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Report something the user should know about this quantization (a layer left at
        nearest rounding, too few calibration samples for what an algorithm learns): logged as a
        warning now, kept in ``recipe.provenance["warnings"]`` and shown in the summary."""
        import logging

        logging.getLogger("quantfw").warning("%s", message)
        notes = self.recipe.provenance.setdefault("warnings", [])
        if message not in notes:
            notes.append(message)

    # -- weights -------------------------------------------------------------------------------
    def weight(self, name: str) -> np.ndarray:
        """An initializer as the quantized model will use it: ``recipe.weights`` first, then the
        float model's (rewritten or captured) value."""
        if name in self.recipe.weights:
            return self.recipe.weights[name]
        return self.float_weight(name)

    def float_weight(self, name: str) -> np.ndarray:
        """An initializer as the float model has it (after :meth:`set_weight` rewrites)."""
        if name in self.float_weights:
            return self.float_weights[name]
        return self.graph.initializers[name]

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Rewrite an initializer of the float model (BatchNorm folding, cross-layer
        equalisation): calibration runs see it, and the recipe records it so backends use it."""
        if name not in self.graph.initializers:
            raise KeyError(f"graph {self.graph.name!r} has no initializer named {name!r}")
        value = np.asarray(value)
        self.float_weights[name] = value
        self.recipe.weights[name] = value
        self._float_version += 1  # float activations gathered before no longer hold

    def set_quantized_weight(self, name: str, value: np.ndarray) -> None:
        """Rewrite an initializer for the quantized model only (SmoothQuant's ``s * W``, learned
        rounding): calibration runs of the float model keep the old value."""
        if name not in self.graph.initializers:
            raise KeyError(f"graph {self.graph.name!r} has no initializer named {name!r}")
        self.recipe.weights[name] = np.asarray(value)

    def equalize(
        self, tensor: str, scale: np.ndarray, consumers: Iterable[str], *, source: str
    ) -> Equalization:
        """Record that ``consumers`` read ``tensor`` rescaled by ``1 / scale`` (per channel of the
        last axis).  The caller multiplies those consumers' weights by ``scale`` along their
        input-channel axis (:meth:`set_quantized_weight`); the calibrate stage then observes
        the rescaled value.  See :class:`~quantfw.recipe.Equalization`."""
        eq = Equalization(tensor, scale, tuple(consumers), source)
        self.recipe.equalizations[tensor] = eq
        return eq

    # -- running the model ---------------------------------------------------------------------
    def collect(
        self, tensors: Sequence[str], *, quantized: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run the model over the calibration data, yielding the requested tensors per batch.

        :param quantized: run the model with the recipe so far applied as fake quantization
            (each tensor as its producer computed it, before its own quantizer); by default the
            float model (with :meth:`set_weight` rewrites) runs.
        :raises ValueError: :class:`~quantfw.calibration.CalibrationRequiredError` when no
            calibration data was given (so does reading a layer or
            block problem's inputs).
        """
        if self.calibration is None:
            from ..calibration import CalibrationRequiredError

            raise CalibrationRequiredError()
        done = 0
        wanted = list(tensors)
        asked = set(wanted)
        ranges = self._ranges
        if quantized or ranges is None or ranges.complete:
            ranges = None
        else:  # this float pass also gathers the requested ranges (see request_channel_ranges)
            ranges = self._ranges = ChannelRanges(ranges.names, self._float_version, ranges.aliases)
            wanted += [t for t in ranges.names if t not in asked]
        outs_iter = self.frontend.collect(
            self.model,
            self.graph,
            wanted,
            self.calibration,
            weights=self.float_weights or None,
            recipe=self.recipe if quantized else None,
        )
        for outs in outs_iter:
            done += 1
            self.progress("calibration batches", done, None)
            if ranges is not None:
                ranges.update(outs)
                if len(outs) > len(asked):
                    outs = {k: v for k, v in outs.items() if k in asked}
            yield outs
            del outs  # before the next batch runs (one batch alive at a time)
        if ranges is not None:
            ranges.complete = ranges.version == self._float_version

    def request_channel_ranges(
        self, tensors: Iterable[str], aliases: Mapping[str, str] | None = None
    ) -> None:
        """Ask the next complete float-model pass, whichever algorithm runs it through
        :meth:`collect`, to also gather the per-channel (last axis) extremes of ``tensors``
        (:class:`~quantfw.api.channel_ranges.ChannelRanges`); read them with
        :meth:`channel_ranges`.  A calibrator that only needs extremes asks for them before the
        stages run (its optional ``prepare(ctx)``), and so saves a pass of its own.

        :param aliases: ``{tensor: source}``: tensors that hold another requested tensor's
            values (see :class:`~quantfw.api.channel_ranges.ChannelRanges`)."""
        names = tuple(dict.fromkeys(tensors))
        self._ranges = ChannelRanges(names, self._float_version, aliases) if names else None

    def channel_ranges(self) -> ChannelRanges | None:
        """What :meth:`request_channel_ranges` asked for, once a float pass went over all the
        calibration data with the float model as it is now (``None`` before that, or after a
        :meth:`set_weight`)."""
        r = self._ranges
        if r is None or not r.complete or r.version != self._float_version:
            return None
        return r

    def layer_problems(
        self, nodes: Iterable[str] | None = None, *, quantized_inputs: bool = False
    ) -> Iterator[LayerProblem]:
        """The weighted layers (``linear``, ``conv``) whose weight the plan quantizes, one
        :class:`~quantfw.api.layers.LayerProblem` at a time in graph order, each built only when
        the previous one is done (memory bounded by one layer's data).

        :param nodes: restrict to these node names (in graph order).
        :param quantized_inputs: what :meth:`LayerProblem.inputs` returns by default: ``True``
            for the inputs with every earlier layer quantized as the recipe says *at the time
            they are read* (so weights set on earlier problems count: sequential
            reconstruction), ``False`` for the float model's.
        """
        wanted = None if nodes is None else set(nodes)
        if wanted is not None:
            unknown = wanted - {n.name for n in self.graph.nodes}
            if unknown:
                raise KeyError(f"graph {self.graph.name!r} has no node(s) named {sorted(unknown)}")
        planned = {tp.name for tp in self.plan.weights()}
        chosen = [
            n
            for n in self.graph.nodes
            if n.op in LAYER_KINDS
            and n.inputs
            and n.weights.get("weight") in planned
            and (wanted is None or n.name in wanted)
        ]
        return self._layer_problems(chosen, quantized_inputs)

    def _layer_problems(self, chosen: list[Node], quantized_inputs: bool) -> Iterator[LayerProblem]:
        for done, node in enumerate(chosen):
            self.progress("layers", done, len(chosen))
            w = node.weights["weight"]
            b = node.weights.get("bias")
            x = node.inputs[0]
            yield LayerProblem(
                node=node,
                weight_name=w,
                weight=np.asarray(self.weight(w), dtype=np.float32),
                bias_name=b,
                bias=None if b is None else np.asarray(self.weight(b), dtype=np.float32),
                weight_recipe=self.recipe.tensors.get(w),
                input_name=x,
                input_recipe=self._input_recipe(x, node),
                equalization=self.recipe.equalization_for(x, node.name),
                quantized_inputs=quantized_inputs,
                host=self,
            )
        self.progress("layers", len(chosen), len(chosen))

    def _input_recipe(self, tensor: str, node: Node) -> TensorRecipe | None:
        t = self.recipe.tensors.get(tensor)
        if t is None or t.role != "activation":
            return None
        if t.consumers is not None and node.name not in t.consumers:
            return None
        return t

    def block_problem(self, nodes: Sequence[str]) -> BlockProblem:
        """The block of graph nodes ``nodes`` as a :class:`~quantfw.api.blocks.BlockProblem`:
        its boundary, a trainable module of it with the recipe so far inside (built by the
        frontend), and its data.  The nodes computing the shapes the block reads join it
        (:func:`~quantfw.graph.with_shape_producers`): a block computes its reshapes' sizes
        from the model's inputs itself.

        :raises ValueError: when the frontend cannot build block modules (block-wise
            reconstruction needs one that can: the torch frontend).
        """
        if not isinstance(self.frontend, ProvidesBlocks):
            raise ValueError(
                f"the {self.frontend_name!r} frontend cannot build trainable block modules "
                "(quantfw.api.ProvidesBlocks), so block-wise reconstruction (brecq, qdrop) is "
                "not available for this model; use a layer-wise method (adaround, adaquant), or "
                "give quantize() the torch.nn.Module itself (the torch frontend builds them)"
            )
        nodes = with_shape_producers(self.graph, nodes)
        inputs, outputs = block_boundary(self.graph, nodes)
        ordered = tuple(nodes)
        block = self.frontend.block_module(
            self.model, self.graph, self.recipe, ordered, inputs, outputs
        )
        return BlockProblem(ordered, tuple(inputs), tuple(outputs), block, host=self)

    def output_gradients(self, tensors: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch, the gradient of the prediction loss with respect to
        ``tensors`` (see :meth:`~quantfw.api.blocks.ProvidesOutputGradients.output_gradients`),
        with the recipe as it is now.

        :raises ValueError: when the frontend cannot compute gradients, or without calibration
            data.
        """
        if not isinstance(self.frontend, ProvidesOutputGradients):
            raise ValueError(
                f"the {self.frontend_name!r} frontend cannot compute gradients of the model's "
                "prediction (quantfw.api.ProvidesOutputGradients); the torch frontend can"
            )
        if self.calibration is None:
            from ..calibration import CalibrationRequiredError

            raise CalibrationRequiredError()
        yield from self.frontend.output_gradients(
            self.model,
            self.graph,
            self.recipe,
            list(tensors),
            self.calibration,
            weights=self.float_weights or None,
        )

    def engine(
        self, name: str | None = None, device: str | None = None, *, autograd: bool = False
    ) -> Engine:
        """A compute engine for layer-wise arithmetic (see :mod:`quantfw.api.engines`).

        :param name: a registered engine (``"numpy"``, ``"torch"``); ``None`` takes
            ``options["engine"]`` if the user set it, else numpy (or, with ``autograd``, the
            first engine that has it).
        :param device: the engine's device (``"cpu"``, ``"cuda"``); ``None`` takes
            ``options["device"]``, else the engine's default.
        :param autograd: the algorithm needs gradients.
        """
        name = name if name is not None else self.options.get("engine")
        device = device if device is not None else self.options.get("device")
        return self.engines(name, device, autograd)
