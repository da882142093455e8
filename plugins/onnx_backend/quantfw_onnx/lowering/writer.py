"""Lowering a :class:`~quantfw.recipe.Recipe` onto an ONNX model: :func:`write_qdq`.

The writer copies the float model, raises its opset where the recipe's types need it, and hands
each recipe tensor to its lowering: constants to :mod:`.weights` (and :mod:`.gather` for
embedding lookups), static activations to :mod:`.static`, dynamic ones to :mod:`.dynamic` and
:mod:`.per_token`.  It then puts the new nodes in topological order and stamps the artifact.

* Interface: the artifact's input and output names and dtypes are the float model's.  A
  quantized graph output keeps its name: the producer's output is renamed (``<name>_float``) and
  the last node of its quantization writes the original name.  A tensor that is both a graph
  input and a graph output keeps its float value on the output.
* Opset: raised to 13 (``axis`` on Q/DQ) with ``onnx.version_converter``, to 19/21 only where a
  dtype or blocked scale needs it; other domains (``ai.onnx.ml``, ``com.microsoft``) untouched.
* Consumer-side quantization (``TensorRecipe.consumers``): only the named readers are rewired.

Not covered (clear errors): dynamic specs other than uint8 asymmetric full-range per-tensor or
per-token over the last axis; quantized tensors that are not float32; weights that are not
initializers or Constant outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from quantfw.graph import QuantGraph
from quantfw.recipe import Recipe, TensorRecipe
from quantfw.spec import Granularity

from ..opset import default_opset
from .builder import Builder
from .dynamic import (
    DynamicActivation,
    check_dynamic_spec,
    dequantize_dynamic,
    dynamic_quantize,
    rewrite_integer_matmul,
)
from .errors import LoweringError
from .gather import lower_gathers
from .graph_edit import (
    all_names,
    elem_types,
    fix_ir_version,
    prune_unread_dequantize,
    raise_opset,
    read_in_subgraphs,
    rename_reads,
)
from .per_token import (
    TokenActivation,
    TokenMatMul,
    per_token_nodes,
    plan_token_matmul,
    rewrite_token_matmul,
)
from .qoperator import to_qoperator
from .static import NARROW_MODES, carried_in_8bit, clipped_activations, equalize_node, static_qdq
from .storage import MIN_OPSET, required_opset
from .weights import ModelConstants, Weight, bake_float, bias_scale_ok, lower_constant

__all__ = ["FORMATS", "NARROW_MODES", "write_qdq"]

#: Output formats :func:`write_qdq` knows.
FORMATS = ("qdq", "qoperator")


@dataclass
class Writer:
    """One lowering of ``recipe`` onto (a copy of) ``model``."""

    model: onnx.ModelProto
    graph: QuantGraph
    recipe: Recipe
    builder: Builder = field(default_factory=Builder)
    #: the target's ``allowed.narrow_activations`` (``"own_type"`` or ``"clip_8bit"``)
    narrow_activations: str = "own_type"

    def readers_of(self, consumers: tuple[str, ...] | None) -> set[str] | None:
        """The ONNX node names of graph nodes ``consumers``; ``None`` means every reader."""
        if consumers is None:
            return None
        names: set[str] = set()
        for c in consumers:
            try:
                node = self.graph.node(c)
            except KeyError:
                names.add(c)
                continue
            names.update(node.attrs.get("onnx_nodes") or [c])
        return names

    def run(self) -> onnx.ModelProto:
        """The lowered model (a new one; ``model`` is untouched)."""
        recipe = self.recipe
        for t in recipe.tensors.values():
            if t.spec.dynamic:
                check_dynamic_spec(t)
        mode = self.narrow_activations
        clip = {
            n: carried_in_8bit(t, mode) for n, t in recipe.tensors.items() if not t.spec.dynamic
        }
        need = max([MIN_OPSET] + [required_opset(recipe.tensors[n], c) for n, c in clip.items()])
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        m = raise_opset(m, need)
        self.builder.opset = default_opset(m) or 0
        g = m.graph
        all_names(g, self.builder.names)

        consts = ModelConstants.of(g)
        produced = {x for n in g.node for x in n.output} | {i.name for i in g.input}
        outputs = [o.name for o in g.output]
        real_inputs = [i.name for i in g.input if i.name not in consts.inits]
        missing = [n for n in recipe.tensors if n not in consts.inits and n not in produced]
        if missing:
            raise LoweringError(
                f"the recipe quantizes {len(missing)} tensor(s) that model {g.name!r} does not "
                f"have, e.g. {missing[:5]}; was the recipe made for another model (or for the "
                "frontend's prepared copy of it)?"
            )
        self.check_types(m)

        top: list[onnx.NodeProto] = []  # the weights' DQs, which go first
        weights = self.lower_constants(g, consts, top)
        static, dynamic, tokens = self.sort_activations(consts)
        quantized = [*static, *dynamic, *tokens]
        source = self.rename_graph_outputs(g, quantized, outputs, real_inputs)
        rewrites = self.integer_matmuls(g, dynamic, tokens, weights)

        # every other reader of a quantized activation reads the dequantized value (the new
        # nodes wait in `after` until assembly, so renaming readers never touches them)
        after: dict[str, list[onnx.NodeProto]] = {}
        for name, eq in recipe.equalizations.items():
            if (name in dynamic or name in tokens) and name in source:
                raise LoweringError(
                    f"activation {name!r}: an equalised graph output cannot be dynamically "
                    "quantized; keep it float or quantize it statically"
                )
            if name in dynamic or name in tokens:
                continue  # the Mul goes in front of the run-time quantization, below
            if name not in static:  # a float activation rescaled on some edges (AWQ-style)
                node = equalize_node(self.builder, name, name, eq)
                after.setdefault(name, []).append(node)
                rename_reads(g, name, node.output[0], self.readers_of(eq.consumers))
        clipped = clipped_activations(self.graph, recipe, {n for n in static if clip[n]})
        for name, t in static.items():
            src = source.get(name, name)
            out = name if name in source else self.builder.fresh(f"{name}_dequantized")
            eq = recipe.equalizations.get(name)
            nodes = static_qdq(
                self.builder,
                name,
                src,
                out,
                t,
                eq,
                clip_8bit=clip[name],
                in_range=name not in clipped,
            )
            after.setdefault(src, []).extend(nodes)
            if name not in source:
                rename_reads(g, name, out, self.readers_of(t.consumers))
        for name, d in dynamic.items():
            only = self.readers_of(recipe.tensors[name].consumers)
            src = source.get(name, name)
            nodes, qsrc = self.equalized_source(name, src)
            nodes.append(dynamic_quantize(self.builder, name, qsrc, d))
            if name in source or self.read_in_float(g, name, only, rewrites):
                out = name if name in source else self.builder.fresh(f"{name}_dequantized")
                nodes.append(dequantize_dynamic(self.builder, name, d, out))
                if name not in source:
                    rename_reads(g, name, out, only)
            after.setdefault(src, []).extend(nodes)
        for name, tok in tokens.items():
            only = self.readers_of(recipe.tensors[name].consumers)
            src = source.get(name, name)
            if name in source or self.read_in_float(g, name, only, rewrites):
                tok.fake = name if name in source else self.builder.fresh(f"{name}_dequantized")
                if name not in source:
                    rename_reads(g, name, tok.fake, only)
            if tok.int_readers or tok.fake is not None:  # else nothing reads it quantized
                nodes, qsrc = self.equalized_source(name, src)
                nodes.extend(per_token_nodes(self.builder, name, qsrc, tok))
                after.setdefault(src, []).extend(nodes)

        self.assemble(g, top, after, rewrites)
        g.initializer.extend(self.builder.inits)
        prune_unread_dequantize(g, {t.name for t in self.builder.inits})
        # Intermediate shapes came from the frontend's shape inference, not from the user's
        # model. Left in, they let ONNX Runtime 1.32 fuse every residual Add + LayerNorm into
        # SkipLayerNormalization, whose CPU kernel is ~8x slower than the pair here: MiniLM at
        # batch 32 ran 1.58x faster than float with them, 1.90x without (2.17x vs 1.75x dynamic).
        del g.value_info[:]
        fix_ir_version(m)
        _stamp(m, recipe.target)
        return m

    # -- steps of run ----------------------------------------------------------------------------
    def equalized_source(self, name: str, src: str) -> tuple[list[onnx.NodeProto], str]:
        """What a run-time quantization of ``name`` reads: ``src`` itself, or -- when the recipe
        equalises it (SmoothQuant with dynamic activations) -- ``src`` times ``1 / scale`` in a
        float ``Mul``, which only the quantized (equalised) readers see."""
        eq = self.recipe.equalizations.get(name)
        if eq is None:
            return [], src
        node = equalize_node(self.builder, name, src, eq)
        return [node], node.output[0]

    def check_types(self, m: onnx.ModelProto) -> None:
        """Refuse quantized tensors that are not float32 in the model."""
        types = elem_types(m)
        bad = [
            (n, TensorProto.DataType.Name(types[n]))
            for n, t in self.recipe.tensors.items()
            if n in types and types[n] != TensorProto.FLOAT
        ]
        if bad:
            raise LoweringError(
                f"quantized tensors must be float32 in the model, but {bad[:5]} are not; "
                "export the model in float32 before quantizing"
            )

    def lower_constants(
        self, g: onnx.GraphProto, consts: ModelConstants, top: list[onnx.NodeProto]
    ) -> dict[str, Weight]:
        """Write the recipe's rewritten float weights, then quantize its constants (weights and
        biases; activation-role constants are left alone, as the reference's hook never sees
        them).  Returns the quantized constants by name."""
        recipe = self.recipe
        # rewritten float weights (bn folding, equalisation, learned rounding)
        for name, value in recipe.weights.items():
            if name not in recipe.tensors:  # else quantized below from this value
                consts.replace(name, np.asarray(value))
        weights: dict[str, Weight] = {}
        for name, t in recipe.tensors.items():
            if t.role == "activation":
                continue
            if t.role == "bias" and not bias_scale_ok(self.graph, recipe, name, t):
                bake_float(consts, recipe, name, t)
                continue
            w = lower_constant(self.builder, consts, recipe, name, t, top)
            # lookups gather codes and dequantize only their rows; the DQ of the whole table
            # stays only for other readers (pruned when there are none)
            lower_gathers(self.builder, g, name, w)
            weights[name] = w
        return weights

    def sort_activations(
        self, consts: ModelConstants
    ) -> tuple[dict[str, TensorRecipe], dict[str, DynamicActivation], dict[str, TokenActivation]]:
        """The quantized activations (constants excluded), as static, dynamic per-tensor and
        dynamic per-token ones, with the names of their quantized forms."""
        fresh = self.builder.fresh
        static: dict[str, TensorRecipe] = {}
        dynamic: dict[str, DynamicActivation] = {}
        tokens: dict[str, TokenActivation] = {}
        for name, t in self.recipe.of_role("activation").items():
            if name in consts.inits:
                continue
            if t.spec.dynamic and t.spec.granularity is Granularity.PER_TOKEN:
                tokens[name] = TokenActivation(fresh(f"{name}_scale"), fresh(f"{name}_quantized"))
            elif t.spec.dynamic:
                dynamic[name] = DynamicActivation(
                    fresh(f"{name}_quantized"), fresh(f"{name}_scale"), fresh(f"{name}_zero_point")
                )
            else:
                static[name] = t
        return static, dynamic, tokens

    def rename_graph_outputs(
        self, g: onnx.GraphProto, quantized: list[str], outputs: list[str], real_inputs: list[str]
    ) -> dict[str, str]:
        """Rename the producers' outputs of the quantized graph outputs (``<name>_float``), so
        that the last node of their quantization can write the name; returns name -> new name."""
        source: dict[str, str] = {}
        for name in quantized:
            if self.recipe.tensors[name].consumers is not None:
                continue  # quantized on some edges only: the graph output stays float
            if name in outputs and name not in real_inputs:
                src = self.builder.fresh(f"{name}_float")
                for n in g.node:
                    for i, x in enumerate(n.output):
                        if x == name:
                            n.output[i] = src
                source[name] = src
        return source

    def integer_matmuls(
        self,
        g: onnx.GraphProto,
        dynamic: dict[str, DynamicActivation],
        tokens: dict[str, TokenActivation],
        weights: dict[str, Weight],
    ) -> dict[int, list[onnx.NodeProto]]:
        """The integer forms of the MatMuls reading a dynamic activation as A, by node index."""
        rewrites: dict[int, list[onnx.NodeProto]] = {}
        planned: dict[int, tuple[str, TokenMatMul]] = {}
        for idx, n in enumerate(g.node):
            first = n.input[0] if n.input else ""
            if first not in dynamic and first not in tokens:
                continue
            only = self.readers_of(self.recipe.tensors[first].consumers)
            if only is not None and n.name not in only:
                continue
            if first in tokens:
                plan = plan_token_matmul(n, first, weights)
                if plan is not None:
                    planned[idx] = (first, plan)
                    tokens[first].int_readers += 1
                    tokens[first].extra = max(tokens[first].extra, plan.extra)
                continue
            new = rewrite_integer_matmul(self.builder, n, dynamic, weights)
            if new is not None:
                rewrites[idx] = new
        for idx, (first, plan) in planned.items():  # once every reader's zero-point rows are known
            rewrites[idx] = rewrite_token_matmul(self.builder, g.node[idx], tokens[first], plan)
        return rewrites

    @staticmethod
    def read_in_float(
        g: onnx.GraphProto,
        name: str,
        only: set[str] | None,
        rewrites: dict[int, list[onnx.NodeProto]],
    ) -> bool:
        """Whether a reader of ``name`` that quantization applies to (``only``, else all) is not
        rewritten to integers, and so needs the dequantized value."""
        readers = any(
            i not in rewrites and name in n.input and (only is None or n.name in only)
            for i, n in enumerate(g.node)
        )
        return readers or (only is None and read_in_subgraphs(g, name))

    def assemble(
        self,
        g: onnx.GraphProto,
        top: list[onnx.NodeProto],
        after: dict[str, list[onnx.NodeProto]],
        rewrites: dict[int, list[onnx.NodeProto]],
    ) -> None:
        """Replace ``g``'s nodes by the lowered ones in topological order: ``top`` and the
        builder's head first, each node's (or rewrite's) ``after`` nodes right after it."""
        order: list[onnx.NodeProto] = list(top) + self.builder.head
        for x in [i.name for i in g.input]:
            order.extend(after.pop(x, []))
        for idx, n in enumerate(g.node):
            if idx in rewrites:
                order.extend(rewrites[idx])
            else:
                order.append(n)
            for x in n.output:
                order.extend(after.pop(x, []))
        if after:  # pragma: no cover - every quantized tensor has a producer (checked above)
            raise LoweringError(f"no producer found for {sorted(after)}")
        del g.node[:]
        g.node.extend(order)


def _stamp(m: onnx.ModelProto, target: str) -> None:
    """Record the format, the target and quantfw's version in the model's metadata."""
    from quantfw import __version__

    props = {p.key: p for p in m.metadata_props}
    for key, value in (
        ("quantfw.format", "qdq"),
        ("quantfw.target", target),
        ("quantfw.version", __version__),
    ):
        if key in props:
            props[key].value = value
        else:
            entry = m.metadata_props.add()
            entry.key, entry.value = key, value


def write_qdq(
    model: onnx.ModelProto,
    graph: QuantGraph,
    recipe: Recipe,
    *,
    fmt: str = "qdq",
    narrow_activations: str = "own_type",
) -> onnx.ModelProto:
    """A new ONNX model computing ``model`` with ``recipe``'s quantization (``model`` untouched).

    :param model: the float model the recipe was made for (the frontend's prepared copy: its
        tensor names are the recipe's).
    :param graph: the QuantGraph captured from ``model`` (used for messages and checks).
    :param recipe: the quantization decisions and numbers.
    :param fmt: ``"qdq"`` (QuantizeLinear/DequantizeLinear around float ops; ONNX Runtime fuses
        them into integer kernels) or ``"qoperator"`` (QLinearConv/QLinearMatMul/MatMulInteger).
    :param narrow_activations: the target's ``allowed.narrow_activations``: ``"own_type"`` (an
        activation is quantized into its grid's own ONNX type) or ``"clip_8bit"`` (integer grids
        of at most 8 bits in uint8/int8 codes, clipped to the grid: see :mod:`.static`); or
        ``"any"``, the simulation's: the own type where it is the whole grid, else ``clip_8bit``.
    :raises LoweringError: naming the tensor and what ONNX cannot express.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"write_qdq takes an onnx.ModelProto, not {type(model).__name__}")
    if narrow_activations not in NARROW_MODES:
        raise ValueError(
            f"unknown narrow_activations {narrow_activations!r}; choose one of "
            + ", ".join(NARROW_MODES)
        )
    qdq = Writer(model, graph, recipe, narrow_activations=narrow_activations).run()
    if fmt == "qoperator":
        # computed from the QDQ model, so codes, scales and zero points are the recipe's; what
        # matches no integer operator keeps its Q/DQ (see .qoperator)
        return to_qoperator(qdq)
    return qdq
