"""Capturing a ``torch.nn.Module``: torch.export, then the ONNX graph quantfw plans on.

How a module becomes a QuantGraph, and why:

1. ``torch.export.export`` (non-strict) traces the module with the example inputs into an
   ExportedProgram of ATen ops.  We chose torch.export over ``torch.fx.symbolic_trace`` because
   it captures real models: Hugging Face transformers (``**kwargs``, ``ModelOutput`` returns,
   shape arithmetic, attention-mask builders) trace through it, while symbolic tracing stops at
   the first Python branch on a shape or a tensor.  What it cannot trace (a branch on tensor
   *values*) fails loudly, and :func:`export_module` turns that failure into an error naming the
   submodule at fault.  Every input dimension is exported as ``Dim.AUTO``: dimensions the model
   lets vary (batch, sequence) stay symbolic, the others are specialised.
2. ``scaled_dot_product_attention`` is decomposed into its math (``q @ k^T * scale``, mask,
   softmax, ``@ v``), so that the attention products are ordinary ``matmul`` nodes a target can
   quantize, instead of one fused op.
3. The program is translated to ONNX by ``torch.onnx.export(..., dynamo=True)``.  The exporter
   names every ONNX value after the FX node that computes it (its ``exported_program`` is the
   decomposed program it translated), so ONNX names and FX node names are one namespace.
4. The ONNX model is prepared and captured by the ``onnx`` plugin (:mod:`quantfw_onnx`): the
   QuantGraph, the plan and the recipe of a torch model are the ones its ONNX export gets, and
   the ONNX-based backends (ONNX Runtime x86 today) lower it unchanged.

The torch side of the work — collecting activations, fake-quant simulation, QAT — runs the
decomposed program's module with quantfw's changes spliced in by :mod:`quantfw_torch.bind`, at
the FX nodes that carry the QuantGraph's tensor names.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CaptureError",
    "Exported",
    "TorchModel",
    "as_torch_model",
    "export_module",
    "sdpa_math",
    "to_tensor",
]


class CaptureError(ValueError):
    """A module that torch.export (or the ONNX translation) cannot capture."""


@dataclass
class TorchModel:
    """A module plus the example inputs it is captured with.

    :param module: the model.  It is exported in eval mode (its mode is restored afterwards).
    :param args: positional example inputs (tensors or arrays).
    :param kwargs: keyword example inputs (Hugging Face models: ``input_ids=…``).
    :param dynamic_shapes: passed to ``torch.export.export``; ``None`` marks every dimension of
        every tensor input ``Dim.AUTO``.
    """

    module: nn.Module
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic_shapes: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"TorchModel needs a torch.nn.Module, not {type(self.module).__name__}")
        if not isinstance(self.args, tuple):
            self.args = (self.args,)
        self.args = tuple(to_tensor(a) for a in self.args)
        self.kwargs = {k: to_tensor(v) for k, v in dict(self.kwargs).items()}
        if not self.args and not self.kwargs:
            raise ValueError(
                f"{type(self.module).__name__}: capturing a torch module needs example inputs "
                "(example_inputs=… or calibration data whose first batch can serve)"
            )


def to_tensor(value: Any) -> Any:
    """numpy arrays become tensors (sharing memory); tensors and other values pass through."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _forward_params(module: nn.Module) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []


def example_from_batch(module: nn.Module, batch: Any) -> TorchModel:
    """Example inputs from one calibration batch, the way a training loop would feed it.

    A dict is passed as keyword arguments (keys that are not named parameters of the forward,
    such as ``labels``, are dropped); a tuple/list gives as many leading positional inputs as the forward requires
    (so a DataLoader's ``(images, labels)`` feeds ``images``); anything else is the single input.
    """
    params = _forward_params(module)
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if isinstance(batch, Mapping):
        # only the forward's named parameters: a **kwargs catch-all would also swallow labels
        kwargs = {k: v for k, v in batch.items() if k in names}
        return TorchModel(module, (), kwargs)
    if isinstance(batch, (tuple, list)):
        positional = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        count = max(1, len(positional))
        return TorchModel(module, tuple(batch[:count]))
    return TorchModel(module, (batch,))


def as_torch_model(model: Any, example_inputs: Any = None) -> TorchModel:
    """Normalise ``model`` (+ ``example_inputs``: a tensor, a tuple of positional inputs, or a
    dict of keyword inputs) into a :class:`TorchModel`."""
    if isinstance(model, TorchModel):
        if example_inputs is not None:
            raise ValueError("give example inputs once: in the TorchModel or as example_inputs")
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, not {type(model).__name__}")
    if example_inputs is None:
        return TorchModel(model)  # raises: no inputs
    if isinstance(example_inputs, Mapping):
        return TorchModel(model, (), dict(example_inputs))
    if isinstance(example_inputs, tuple):
        return TorchModel(model, example_inputs)
    return TorchModel(model, (example_inputs,))


def sdpa_math(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` written with matmul / softmax (inference: no dropout)."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    if enable_gqa:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    if is_causal:
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


@contextlib.contextmanager
def _sdpa_as_math() -> Iterable[None]:
    """Trace ``F.scaled_dot_product_attention`` calls as :func:`sdpa_math` (cheaper than
    decomposing the op afterwards; modules that bound the function at import time are still
    caught by the decomposition in :func:`export_module`)."""
    fn = torch.nn.functional
    original = fn.scaled_dot_product_attention
    fn.scaled_dot_product_attention = sdpa_math
    try:
        yield
    finally:
        fn.scaled_dot_product_attention = original


@dataclass
class Exported:
    """A captured module.

    :ivar program: the decomposed ExportedProgram the ONNX model was translated from.
    :ivar module: ``program.module()`` — the FX GraphModule quantfw instruments (its parameters
        are the user's, shared, not copied).
    :ivar onnx_model: the ONNX ModelProto (not yet prepared).
    :ivar input_names: the model's flat inputs (ONNX input names), in the order the FX
        placeholders take them (FX may rename a placeholder, e.g. ``input`` → ``input_1``).
    :ivar output_names: the ONNX outputs, in the order of the FX graph's flat outputs.
    :ivar aliases: ONNX value name → FX node name, where they differ: renamed inputs, outputs
        named after a dict's keys, the outputs of a translated ``split``.  Every other ONNX
        value is named after its FX node, or has no FX counterpart (see
        :func:`quantfw_torch.frontend.TorchFrontend.capture`).
    """

    program: Any
    module: torch.fx.GraphModule
    onnx_model: Any
    input_names: list[str]
    output_names: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)


def _auto_dynamic(tm: TorchModel) -> Any:
    auto = torch.export.Dim.AUTO

    def dims(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return {i: auto for i in range(v.dim())}
        return None

    params = _forward_params(tm.module)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < len(tm.args) or tm.kwargs:
        # torch.export matches a dict of dynamic shapes to the forward's parameter names
        out: dict[str, Any] = {}
        for name, v in zip(positional, tm.args, strict=False):
            out[name] = dims(v)
        for k, v in tm.kwargs.items():
            out[k] = dims(v)
        if len(positional) < len(tm.args):
            return None  # *args forwards: let export specialise
        return out
    return tuple(dims(a) for a in tm.args)


def _culprit(exc: BaseException, module: nn.Module) -> str | None:
    """The qualified name of the innermost submodule whose code raised ``exc``."""
    owners = {id(m): name for name, m in module.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in owners:
            found = owners[id(obj)] or "<root>"
        tb = tb.tb_next
    cause = exc.__cause__ or exc.__context__
    if found is None and cause is not None and cause is not exc:
        return _culprit(cause, module)
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """Silence the exporter's progress prints and warnings (errors still propagate)."""
    sink = io.StringIO()
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _trace_inputs(tm: TorchModel) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example inputs to trace with.  ``Dim.AUTO`` fixes a dimension of size 1 for good, so
    a batch of one would give a batch-1 artifact: its samples are repeated to a batch of two
    (only for tracing; a model that really needs batch 1 is retried with the inputs as given)."""

    def grow(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1:
            return torch.cat([v, v])
        return v

    return tuple(grow(a) for a in tm.args), {k: grow(v) for k, v in tm.kwargs.items()}


@contextlib.contextmanager
def _no_kv_cache(module: nn.Module) -> Iterable[None]:
    """Hugging Face decoders return a key/value cache object by default; one forward pass
    without it is what is exported (``config.use_cache`` is restored afterwards)."""
    config = getattr(module, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old


def _export(tm: TorchModel, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    view = TorchModel(tm.module, args, kwargs, tm.dynamic_shapes)
    dynamic = tm.dynamic_shapes if tm.dynamic_shapes is not None else _auto_dynamic(view)
    with _sdpa_as_math():
        return torch.export.export(
            tm.module, args, kwargs or None, dynamic_shapes=dynamic, strict=False
        )


def _capture_error(exc: BaseException, module: nn.Module) -> CaptureError:
    cls = type(module).__name__
    where = _culprit(exc, module)
    if where and where != "<root>":
        at = f"submodule {where!r} ({type(module.get_submodule(where)).__name__})"
    else:
        at = cls
    text = _first_line(exc)
    if "Cache" in text:
        fixes = (
            "the model returns a key/value cache object: call it with use_cache=False (pass "
            "example_inputs with use_cache=False, or set model.config.use_cache = False)"
        )
    else:
        fixes = (
            "pass example inputs shaped and typed like the real ones (example_inputs=… or a "
            "TorchModel); if the module branches on tensor values, rewrite the branch with "
            f"torch.where / torch.cond or move it out of forward; or keep {where or cls!r} out of "
            "the model you quantize (it stays float) and quantize the parts around it"
        )
    return CaptureError(
        f"cannot capture {cls}: torch.export failed in {at}: {text}.  Fix: {fixes}."
    )


def export_module(tm: TorchModel, *, opset: int | None = None) -> Exported:
    """Capture ``tm`` (see the module docstring).

    :raises CaptureError: naming the submodule whose forward could not be traced and what to do.
    """
    module = tm.module
    cls = type(module).__name__
    was_training = module.training
    module.eval()
    try:
        with _quiet(), torch.no_grad(), _no_kv_cache(module):
            args, kwargs = _trace_inputs(tm)
            try:
                try:
                    program = _export(tm, args, kwargs)
                except Exception:
                    same = set(kwargs) == set(tm.kwargs) and all(
                        a is b
                        for a, b in zip(
                            (*args, *kwargs.values()), (*tm.args, *tm.kwargs.values()), strict=True
                        )
                    )
                    if same:
                        raise
                    args, kwargs = tm.args, dict(tm.kwargs)  # the batch-of-two retry failed
                    program = _export(tm, args, kwargs)
            except Exception as exc:  # torch raises many types here; all mean "not capturable"
                raise _capture_error(exc, module) from exc
            sdpa = torch.ops.aten.scaled_dot_product_attention.default
            if any(n.target is sdpa for n in program.graph.nodes):
                program = program.run_decompositions({sdpa: sdpa_math})
            try:
                options = dict(dynamo=True, optimize=True, verbose=False, report=False)
                if opset is not None:
                    options["opset_version"] = opset
                onnx_program = torch.onnx.export(program, args, kwargs=kwargs, **options)
            except Exception as exc:
                raise CaptureError(
                    f"cannot capture {cls}: torch.export traced it, but its ONNX translation "
                    f"failed: {_first_line(exc)}.  An op without an ONNX translation must be "
                    "replaced (or kept out of the model you quantize)."
                ) from exc
    finally:
        module.train(was_training)
    decomposed = onnx_program.exported_program
    gm = decomposed.module()
    proto = onnx_program.model_proto
    _fix_numeric_dim_params(proto)
    _strip_trace_metadata(proto)
    constants = {
        n.name: n.meta.get("val")
        for n in gm.graph.nodes
        if n.op == "placeholder" and not isinstance(n.meta.get("val"), torch.Tensor)
    }
    placeholders = [
        n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name not in constants
    ]
    named = _name_outputs(proto, gm)
    _restore_passthrough_inputs(proto, placeholders)
    onnx_inputs = [i.name for i in proto.graph.input]
    if len(onnx_inputs) != len(placeholders):
        raise CaptureError(
            f"cannot capture {cls}: its ONNX translation takes inputs {onnx_inputs} but the "
            f"exported module takes {len(placeholders)} ({placeholders}); pass only the inputs "
            "the model uses as example inputs"
        )
    aliases = dict(zip(onnx_inputs, placeholders, strict=True))
    aliases.update(named)
    aliases.update(_split_aliases(proto, gm))
    return Exported(
        program=decomposed,
        module=gm,
        onnx_model=proto,
        input_names=onnx_inputs,
        output_names=[o.name for o in proto.graph.output],
        aliases=aliases,
        constants=constants,
    )


def _rename(proto: Any, old: str, new: str) -> None:
    g = proto.graph
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.name == old:
            vi.name = new


def _value_names(proto: Any) -> set[str]:
    g = proto.graph
    names = {i.name for i in g.input} | {i.name for i in g.initializer}
    for n in g.node:
        names.update(n.output)
    return names


def _restore_passthrough_inputs(proto: Any, placeholders: list[str]) -> None:
    """A model returning an input unchanged is translated with the input renamed ``x_orig`` and
    ``Identity(x_orig) -> x`` as the output; give the input its own name back (the output
    becomes ``x_out``), so calibration data keyed by the forward's argument names fits."""
    g = proto.graph
    outputs = {o.name for o in g.output}
    for inp in list(g.input):
        base = inp.name[: -len("_orig")] if inp.name.endswith("_orig") else None
        if base is None or base not in placeholders or base not in outputs:
            continue
        taken = _value_names(proto)
        out = base + "_out"
        while out in taken:
            out += "_"
        _rename(proto, base, out)
        _rename(proto, inp.name, base)


def _name_outputs(proto: Any, gm: torch.fx.GraphModule) -> dict[str, str]:
    """Give the ONNX outputs of a model returning a dict or a ``ModelOutput`` the keys' names
    (``last_hidden_state`` rather than ``layer_norm_12``); returns ``{new name: FX name}``."""
    from torch.utils import _pytree as pytree

    spec = getattr(gm, "_out_spec", None)
    outs = list(proto.graph.output)
    if spec is None or spec.num_leaves != len(outs):
        return {}
    try:
        paths = [
            p
            for p, _ in pytree.tree_flatten_with_path(
                pytree.tree_unflatten(list(range(len(outs))), spec)
            )[0]
        ]
    except Exception:  # pragma: no cover - exotic output containers
        return {}
    names = []
    for path in paths:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if not keys or not all(isinstance(k, str) for k in keys):
            return {}
        names.append(".".join(keys))
    taken = _value_names(proto) - {o.name for o in outs}
    if len(set(names)) != len(names) or taken & set(names):
        return {}
    aliases = {}
    for o, new in zip(outs, names, strict=True):
        if o.name != new:
            aliases[new] = o.name
            _rename(proto, o.name, new)
    return aliases


def _split_aliases(proto: Any, gm: torch.fx.GraphModule) -> dict[str, str]:
    """Outputs of an ONNX node with several outputs (``Split``), named by the translation
    (``split_split_0``), are FX ``getitem`` nodes of the op that split the same input."""
    import operator

    fx = {n.name: n for n in gm.graph.nodes}
    aliases: dict[str, str] = {}
    for node in proto.graph.node:
        if len(node.output) < 2 or not node.input or node.input[0] not in fx:
            continue
        if all(o in fx for o in node.output):
            continue
        src = fx[node.input[0]]
        for user in src.users:
            items = {
                u.args[1]: u.name
                for u in user.users
                if u.target is operator.getitem and isinstance(u.args[1], int)
            }
            if (
                len(items)
                and max(items) < len(node.output)
                and str(user.target).startswith(
                    ("aten.split", "aten.chunk", "aten.unsafe_split", "aten.tensor_split")
                )
            ):
                for i, fx_name in items.items():
                    if node.output[i] not in fx:
                        aliases[node.output[i]] = fx_name
                break
    return aliases


def _strip_trace_metadata(proto: Any) -> None:
    """Drop the exporter's per-node metadata (FX node text, source stack traces with the user's
    file paths): it would ship inside every artifact (10 % of the digits CNN's int8 file)."""
    g = proto.graph
    for n in g.node:
        del n.metadata_props[:]
    for vi in [*g.input, *g.output, *g.value_info, *g.initializer]:
        del vi.metadata_props[:]


def _fix_numeric_dim_params(proto: Any) -> None:
    """Dimensions ``Dim.AUTO`` let export specialise reach ONNX as ``dim_param: "3"``; make them
    the fixed sizes they are, so shape checks and runtimes see them."""
    g = proto.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.isdigit():
                d.dim_value = int(d.dim_param)


def flat_inputs(exported: Exported, batch: Mapping[str, Any]) -> list[Any]:
    """The FX placeholders' values for a batch keyed by input name (numpy or torch)."""
    missing = [n for n in exported.input_names if n not in batch]
    if missing:
        raise KeyError(f"batch lacks input(s) {missing}; the model takes {exported.input_names}")
    tensors = iter([to_tensor(batch[n]) for n in exported.input_names])
    return [
        exported.constants[n.name] if n.name in exported.constants else next(tensors)
        for n in exported.module.graph.nodes
        if n.op == "placeholder"
    ]
