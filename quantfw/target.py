"""Target specs: what a deployment target accepts, as declarative, validated data.

A target spec is a TOML file (read with the standard library's ``tomllib``) that
:func:`load_target` turns into a frozen :class:`TargetSpec`.  Backend plugins ship one file per
target and register the loaded spec; the core ships ``quantfw/targets/generic.toml`` (see
:func:`builtin_target_paths`).  Everything is checked on load: a wrong value, a misspelt key or a
missing required key raises :class:`TargetSpecError` whose message names the file, the dotted key,
the offending value and what is allowed, e.g.::

    generic.toml: ops.quantize[2]: 'convv' is not an op kind; allowed: conv, conv_transpose, …

Schema (every key; ``*`` marks a required one)
-----------------------------------------------

Top level

``name`` *
    Target name: lower-case letters, digits, ``_ - .``, starting with a letter or digit.
``description``
    One line for listings (default ``""``).
``simulation_only``
    ``true`` when no runtime executes the result: the plan is only simulated (default ``false``).
``artifact`` *
    What the backend writes: a lower-case format name; the core knows :data:`ARTIFACT_KINDS`
    (``none`` for simulation only, ``onnx``, ``tflite``, ``engine``), plugins may name others.
``backends``
    The backends that lower this target, in order of preference (``["onnxruntime"]``): the
    target chooses them, so a third-party target can use any installed backend.  Without it,
    every backend that writes the ``artifact`` format serves the target.

``[requires]`` — how to tell whether this machine can run the target (all optional)

``cpu_flags``
    CPU feature flags that must *all* be present (Linux ``/proc/cpuinfo`` ``flags`` on x86,
    ``Features`` on ARM), e.g. ``["avx2"]``.
``cpu_flags_any``
    Flags of which *at least one* must be present, e.g. ``["avx512_vnni", "avx_vnni"]``.
``modules``
    Importable Python modules the runtime needs (checked with ``importlib.util.find_spec``,
    never imported), e.g. ``["onnxruntime"]``.
``gpu``
    ``true`` when an NVIDIA GPU is needed (``nvidia-smi`` on PATH or ``/proc/driver/nvidia``).

``[weight]`` * and ``[activation]`` * — default :class:`~quantfw.spec.QuantSpec` fields

``dtype`` *
    A format name from :mod:`quantfw.formats` (aliases such as ``fp8`` are accepted).
``symmetric`` (default ``true``), ``narrow_range`` (default ``false``)
``granularity``
    ``per_tensor`` (default), ``per_channel`` or ``per_group`` (``per_token`` is dynamic: see
    ``[dynamic]``).  The *axis* is not written here: for weights the planner takes it from the
    node (``attrs["channel_axis"]`` for per-channel, ``attrs["reduction_axis"]`` for per-group).
``group_size``
    Elements per group, required with ``per_group``.

``[bias]``

``mode``
    ``int32`` (the default: scale = input scale x weight scale, zero point 0), ``float`` (bias
    stays float) or ``none`` (the op has no bias input: the backend adds it in float).  With
    ``float`` and ``none`` the planner leaves biases out of the plan.

``[dynamic]`` — dynamic (run-time) activation quantization

``supported``
    Whether the target can compute activation params per inference (default ``false``).
``default``
    Use dynamic activations unless the user says otherwise (default ``false``).
``granularity``
    ``per_tensor`` (default) or ``per_token`` for dynamic activations.
``ops``
    Op kinds quantized in dynamic mode (default: the weighted kinds among ``ops.quantize``);
    every other op stays float in dynamic mode.  Must be a subset of ``ops.quantize``.
``activation``
    Inline table of activation-spec fields that change in dynamic mode: ``dtype``,
    ``symmetric``, ``narrow_range`` (e.g. ``{ dtype = "uint8", symmetric = false }``).

``[allowed]`` — what a user's override may ask for (a missing key or ``"*"`` allows anything)

``[allowed.weight]``, ``[allowed.activation]``
    ``dtypes``, ``granularities``, ``symmetric`` (list of booleans), ``narrow_range`` (list of
    booleans), ``group_sizes`` (list of positive integers; weights only).
``[allowed.per_op.<op kind>.weight]``, ``[allowed.per_op.<op kind>.activation]``
    The same keys; each key given replaces the global list for that op kind (TensorRT: int4 only
    for ``linear``); ``"*"`` or a missing key keeps the global list.
``weight_only_dtypes``
    Weight dtypes this target runs weight-only: a node whose weight gets one of them keeps its
    activations (inputs, output, bias) in float (TensorRT int4: W4A16).

``[ops]`` — op kinds (the :class:`~quantfw.graph.OpKind` vocabulary)

``quantize`` *
    Kinds executed in low precision: their activation inputs, weight and bias are quantized.
``float_only``
    Kinds that must stay float: the planner quantizes nothing on their behalf.
``weight_only``
    Weighted kinds (``conv``, ``conv_transpose``, ``linear``, ``embedding``) whose constant
    weight is stored quantized while the op itself runs in float: its inputs (an embedding's
    indices), output and bias are never quantized on its behalf.  The weight takes the target's
    weight spec (``[weight]`` and ``ops.per_op``); per-channel along ``attrs["channel_axis"]``,
    which for an embedding's ``(vocab, dim)`` table defaults to 0: one scale per token row.
    This is how runtimes shrink embedding tables (ONNX Runtime and TFLite quantize Gather
    tables): the ONNX backend gathers the int8 rows and dequantizes only those.  A kind cannot
    be both weight-only and in ``quantize`` (which already quantizes its weight) or
    ``float_only`` (which quantizes nothing on its behalf).  Weight-only kinds apply in dynamic
    mode too: the weight is a constant either way.
``shared_scale``
    Kinds whose data inputs and output must share one scale and zero point (concat, max_pool,
    reshape…).  A shared-scale kind not in ``quantize`` is quantized only when a neighbouring
    tensor already is (the scale passes through it).
``only_between_quantized``
    Kinds of ``quantize`` that are quantized only where they keep an integer chain going: every
    data input comes from a quantized op (looking through relu/clip and shared-scale ops) and a
    quantized op reads the output.  Elsewhere they would only add Q/DQ pairs and lose precision
    (a transformer's residual add feeding LayerNorm, its attention-mask add feeding Softmax).
``min_reduction``
    Ungrouped convolutions that sum fewer products per output (input channels x kernel area)
    stay float: the integer kernel's fixed costs outweigh a short reduction (a first
    convolution over one image channel).  Grouped and depthwise convolutions are exempt: they
    have their own integer kernels (a 3x3 depthwise conv ran 2x faster in int8 on x86).
    Default 0 (no limit).
``quantize_outputs``
    ``always`` (default: a quantized op writes a quantized output, as ONNX Runtime QDQ and TFLite
    do) or ``when_consumed`` (only when a quantized consumer reads it: TensorRT's placement).
``[ops.fixed_output.<op kind>]``
    ``scale`` (a positive number or a ``"1/256"`` fraction) and ``zero_point`` (integer): the
    output params the runtime imposes (TFLite softmax: ``1/256``, ``-128``).  Kind must be in
    ``quantize``.
``[ops.per_op.<op kind>]``
    ``weight`` and/or ``activation``: inline tables of spec fields replacing the defaults for
    that op kind (e.g. per-group weights for ``linear`` only).

``fusions``
    List of op-kind chains the runtime fuses into one kernel, e.g. ``[["conv", "relu"],
    ["conv", "batchnorm", "relu"]]``: no quantization between members.  The first kind must be
    in ``ops.quantize``; no member may be float-only.

``generic.toml`` carries a commented example of every key.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

from .formats import FORMATS, canonical_name
from .graph import WEIGHTED, OpKind
from .spec import Granularity, QuantParams, QuantSpec, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from .graph import QuantGraph
    from .planner import Overrides, QuantPlan

__all__ = [
    "ARTIFACT_KINDS",
    "BIAS_MODES",
    "OUTPUT_POLICIES",
    "TargetSpecError",
    "Requirements",
    "SpecTemplate",
    "AllowedSet",
    "Allowed",
    "BiasRule",
    "DynamicRule",
    "FixedOutput",
    "OpRules",
    "TargetSpec",
    "load_target",
    "builtin_target_paths",
    "read_cpu_flags",
    "nvidia_gpu_present",
]

#: Well-known values of ``artifact`` (any lower-case name matching the same rule as target names
#: is accepted, so that third-party backends can name their own formats).
ARTIFACT_KINDS = ("none", "onnx", "tflite", "engine")
#: Values of ``bias.mode``.
BIAS_MODES = ("int32", "float", "none")
#: Values of ``ops.quantize_outputs``.
OUTPUT_POLICIES = ("always", "when_consumed")
#: Granularities a static template may use (per_token is dynamic only).
_STATIC_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
_DYNAMIC_GRANULARITIES = ("per_tensor", "per_token")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FLAG_RE = re.compile(r"^[a-z0-9_.]+$")
_BUILTIN_DIR = Path(__file__).with_name("targets")


class TargetSpecError(ValueError):
    """A target spec that cannot be read or breaks the schema (message names file and key)."""


def _fmt_allowed(values: Iterable[Any]) -> str:
    return ", ".join(v if isinstance(v, str) else repr(v) for v in values)


def _all_format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


# ------------------------------------------------------------------------------------------------
# Parts of a spec
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What the machine needs to run the target (see the module docstring, ``[requires]``)."""

    cpu_flags: tuple[str, ...] = ()
    cpu_flags_any: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    gpu: bool = False


@dataclass(frozen=True)
class SpecTemplate:
    """Default QuantSpec fields for weights or activations; the axis is filled in per node."""

    dtype: str
    symmetric: bool = True
    narrow_range: bool = False
    granularity: str = "per_tensor"
    group_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "dtype": self.dtype,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "granularity": self.granularity,
        }
        if self.group_size is not None:
            d["group_size"] = self.group_size
        return d

    def spec(self, axis: int | None = None, dynamic: bool = False) -> QuantSpec:
        """The template as a QuantSpec; ``axis`` is needed for per-channel / per-group."""
        return QuantSpec(**self.to_dict(), axis=axis, dynamic=dynamic)


@dataclass(frozen=True)
class AllowedSet:
    """Values a weight or activation spec may take; ``None`` means anything."""

    dtypes: tuple[str, ...] | None = None
    granularities: tuple[str, ...] | None = None
    symmetric: tuple[bool, ...] | None = None
    narrow_range: tuple[bool, ...] | None = None
    group_sizes: tuple[int, ...] | None = None

    def merged(self, other: AllowedSet) -> AllowedSet:
        """``self`` with every key that ``other`` restricts replaced by ``other``'s value."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def violations(self, spec: QuantSpec) -> list[tuple[str, Any, tuple[Any, ...]]]:
        """``(field, value, allowed values)`` for each field of ``spec`` this set rejects."""
        out: list[tuple[str, Any, tuple[Any, ...]]] = []
        checks: list[tuple[str, Any, tuple[Any, ...] | None]] = [
            ("dtype", spec.dtype, self.dtypes),
            ("granularity", spec.granularity.value, self.granularities),
            ("symmetric", spec.symmetric, self.symmetric),
            ("narrow_range", spec.narrow_range, self.narrow_range),
        ]
        if spec.group_size is not None:
            checks.append(("group_size", spec.group_size, self.group_sizes))
        for name, value, allowed in checks:
            if allowed is not None and value not in allowed:
                out.append((name, value, allowed))
        return out

    def to_dict(self, weights: bool = True) -> dict[str, Any]:
        """TOML-shaped: ``"*"`` for an unrestricted key (no ``group_sizes`` for activations)."""
        return {
            f.name: "*" if getattr(self, f.name) is None else list(getattr(self, f.name))
            for f in fields(self)
            if weights or f.name != "group_sizes"
        }


@dataclass(frozen=True)
class Allowed:
    """Everything a user override may choose, globally and per op kind."""

    weight: AllowedSet = field(default_factory=AllowedSet)
    activation: AllowedSet = field(default_factory=AllowedSet)
    per_op: Mapping[OpKind, tuple[AllowedSet, AllowedSet]] = field(default_factory=dict)
    weight_only_dtypes: tuple[str, ...] = ()

    def for_op(self, op: OpKind | str) -> tuple[AllowedSet, AllowedSet]:
        """``(weight set, activation set)`` in force for op kind ``op``."""
        extra = self.per_op.get(OpKind(op))
        if extra is None:
            return self.weight, self.activation
        return self.weight.merged(extra[0]), self.activation.merged(extra[1])


@dataclass(frozen=True)
class BiasRule:
    """How biases of quantized ops are stored (``int32``, ``float`` or ``none``)."""

    mode: str = "int32"


@dataclass(frozen=True)
class DynamicRule:
    """Dynamic activation quantization (see ``[dynamic]`` in the module docstring)."""

    supported: bool = False
    default: bool = False
    granularity: str = "per_tensor"
    ops: frozenset[OpKind] = frozenset()
    activation: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixedOutput:
    """Output quantization params imposed by the runtime for one op kind."""

    scale: float
    zero_point: int

    def params(self) -> QuantParams:
        return QuantParams(self.scale, self.zero_point)


@dataclass(frozen=True)
class OpRules:
    """Which op kinds are quantized, kept float, share scales, have fixed outputs."""

    quantize: frozenset[OpKind]
    float_only: frozenset[OpKind] = frozenset()
    shared_scale: frozenset[OpKind] = frozenset()
    quantize_outputs: str = "always"
    fixed_output: Mapping[OpKind, FixedOutput] = field(default_factory=dict)
    per_op: Mapping[OpKind, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    only_between_quantized: frozenset[OpKind] = frozenset()
    weight_only: frozenset[OpKind] = frozenset()
    min_reduction: int = 0


# ------------------------------------------------------------------------------------------------
# Machine detection
# ------------------------------------------------------------------------------------------------


def read_cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str] | None:
    """CPU feature flags from a Linux ``cpuinfo`` file, or ``None`` when it cannot be read.

    x86 lists them on ``flags`` lines, ARM on ``Features`` lines; with several cores, only the
    flags every core reports are kept.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    result: set[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("flags", "features"):
            continue
        flags = set(value.lower().split())
        result = flags if result is None else result & flags
    return frozenset(result) if result is not None else None


def nvidia_gpu_present() -> bool:
    """A cheap guess: the NVIDIA driver is loaded or ``nvidia-smi`` is on PATH."""
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------
# The spec
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """A validated target spec; build it with :func:`load_target` or :meth:`from_dict`.

    The fields mirror the TOML schema in the module docstring.  ``source`` is where it came from
    (a file path or ``"<dict>"``), used in messages.
    """

    name: str
    artifact: str
    weight: SpecTemplate
    activation: SpecTemplate
    bias: BiasRule
    ops: OpRules
    description: str = ""
    simulation_only: bool = False
    requires: Requirements = field(default_factory=Requirements)
    dynamic: DynamicRule = field(default_factory=DynamicRule)
    allowed: Allowed = field(default_factory=Allowed)
    fusions: tuple[tuple[OpKind, ...], ...] = ()
    backends: tuple[str, ...] = ()
    source: str = "<dict>"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> TargetSpec:
        """Validate a parsed TOML document (or any mapping of the same shape).

        :raises TargetSpecError: naming ``source``, the dotted key, the value and what is allowed.
        """
        return _Parser(source).target(data)

    # -- queries -------------------------------------------------------------------------------
    def availability(
        self,
        cpu_flags: Iterable[str] | None = None,
        cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo",
        gpu: bool | None = None,
    ) -> tuple[bool, str]:
        """``(True, "")`` when this machine can run the target, else ``(False, what is missing)``.

        :param cpu_flags: the machine's CPU flags (default: read from ``cpuinfo``).
        :param cpuinfo: file to read flags from when ``cpu_flags`` is not given.
        :param gpu: whether an NVIDIA GPU is present (default: :func:`nvidia_gpu_present`).
        """
        req = self.requires
        missing: list[str] = []
        if req.cpu_flags or req.cpu_flags_any:
            flags = (
                frozenset(f.lower() for f in cpu_flags)
                if cpu_flags is not None
                else (read_cpu_flags(cpuinfo))
            )
            if flags is None:
                wanted = list(req.cpu_flags) + list(req.cpu_flags_any)
                missing.append(
                    f"CPU flags {', '.join(wanted)} (cannot read {os.fspath(cpuinfo)} to check)"
                )
            else:
                lacking = [f for f in req.cpu_flags if f not in flags]
                if lacking:
                    missing.append(f"CPU flag(s) {', '.join(lacking)}")
                if req.cpu_flags_any and not flags.intersection(req.cpu_flags_any):
                    missing.append(f"one of the CPU flags {', '.join(req.cpu_flags_any)}")
        absent = [m for m in req.modules if _module_missing(m)]
        if absent:
            missing.append(f"Python module(s) {', '.join(absent)} (not installed)")
        if req.gpu and not (nvidia_gpu_present() if gpu is None else gpu):
            missing.append("an NVIDIA GPU (no driver or nvidia-smi found)")
        if missing:
            return False, f"target {self.name!r} needs " + "; ".join(missing)
        return True, ""

    def allowed_for(self, op: OpKind | str) -> tuple[AllowedSet, AllowedSet]:
        """``(weight, activation)`` allowed sets in force for op kind ``op``."""
        return self.allowed.for_op(op)

    def weight_template(self, op: OpKind | str) -> dict[str, Any]:
        """Default weight spec fields for ``op`` (target default + ``ops.per_op``)."""
        return _merge_template(self.weight, self.ops.per_op.get(OpKind(op), {}).get("weight"))

    def activation_template(self, op: OpKind | str) -> dict[str, Any]:
        """Default activation spec fields for ``op`` (target default + ``ops.per_op``)."""
        return _merge_template(
            self.activation, self.ops.per_op.get(OpKind(op), {}).get("activation")
        )

    def dynamic_template(self, op: OpKind | str) -> dict[str, Any]:
        """Activation spec fields for ``op`` in dynamic mode (``dynamic=True`` not included)."""
        d = self.activation_template(op)
        d.update(self.dynamic.activation)
        d["granularity"] = self.dynamic.granularity
        d.pop("group_size", None)
        return d

    def plan(self, graph: QuantGraph, overrides: Overrides | None = None) -> QuantPlan:
        """Shorthand for :func:`quantfw.planner.plan` with this target."""
        from .planner import plan

        return plan(graph, self, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The spec in the TOML schema's shape (for listings and JSON)."""

        def kinds(s: Iterable[OpKind]) -> list[str]:
            return sorted(k.value for k in s)

        return {
            "name": self.name,
            "description": self.description,
            "simulation_only": self.simulation_only,
            "artifact": self.artifact,
            "backends": list(self.backends),
            "requires": {
                "cpu_flags": list(self.requires.cpu_flags),
                "cpu_flags_any": list(self.requires.cpu_flags_any),
                "modules": list(self.requires.modules),
                "gpu": self.requires.gpu,
            },
            "weight": self.weight.to_dict(),
            "activation": self.activation.to_dict(),
            "bias": {"mode": self.bias.mode},
            "dynamic": {
                "supported": self.dynamic.supported,
                "default": self.dynamic.default,
                "granularity": self.dynamic.granularity,
                "ops": kinds(self.dynamic.ops),
                "activation": dict(self.dynamic.activation),
            },
            "allowed": {
                "weight": self.allowed.weight.to_dict(),
                "activation": self.allowed.activation.to_dict(weights=False),
                "weight_only_dtypes": list(self.allowed.weight_only_dtypes),
                "per_op": {
                    k.value: {"weight": w.to_dict(), "activation": a.to_dict(weights=False)}
                    for k, (w, a) in self.allowed.per_op.items()
                },
            },
            "ops": {
                "quantize": kinds(self.ops.quantize),
                "float_only": kinds(self.ops.float_only),
                "weight_only": kinds(self.ops.weight_only),
                "shared_scale": kinds(self.ops.shared_scale),
                "quantize_outputs": self.ops.quantize_outputs,
                "only_between_quantized": kinds(self.ops.only_between_quantized),
                "min_reduction": self.ops.min_reduction,
                "fixed_output": {
                    k.value: {"scale": v.scale, "zero_point": v.zero_point}
                    for k, v in self.ops.fixed_output.items()
                },
                "per_op": {
                    k.value: {role: dict(d) for role, d in v.items()}
                    for k, v in self.ops.per_op.items()
                },
            },
            "fusions": [[k.value for k in chain] for chain in self.fusions],
        }


def _merge_template(base: SpecTemplate, changes: Mapping[str, Any] | None) -> dict[str, Any]:
    d = base.to_dict()
    d.update(changes or {})
    if d.get("granularity") != "per_group":
        d.pop("group_size", None)
    return d


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def load_target(path: str | os.PathLike[str]) -> TargetSpec:
    """Read and validate a target spec TOML file.

    :raises TargetSpecError: the file cannot be read, is not valid TOML, or breaks the schema;
        the message names the file.
    """
    source = os.fspath(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise TargetSpecError(f"{source}: reading TOML needs Python >= 3.11 or the tomli package")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TargetSpecError(f"{source}: cannot read target spec: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TargetSpecError(f"{source}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetSpecError(f"{source}: invalid TOML: {exc}") from None
    return TargetSpec.from_dict(data, source=source)


def builtin_target_paths() -> list[Path]:
    """The target spec files shipped in ``quantfw/targets/``, sorted by name."""
    if not _BUILTIN_DIR.is_dir():  # pragma: no cover - broken install
        return []
    return sorted(_BUILTIN_DIR.glob("*.toml"))


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "name",
    "description",
    "simulation_only",
    "artifact",
    "backends",
    "requires",
    "weight",
    "activation",
    "bias",
    "dynamic",
    "allowed",
    "ops",
    "fusions",
)
_REQUIRED_TOP = ("name", "artifact", "weight", "activation", "ops")
_REQUIRES_KEYS = ("cpu_flags", "cpu_flags_any", "modules", "gpu")
_TEMPLATE_KEYS = ("dtype", "symmetric", "narrow_range", "granularity", "group_size")
_ALLOWED_SET_KEYS = ("dtypes", "granularities", "symmetric", "narrow_range", "group_sizes")
_ALLOWED_KEYS = ("weight", "activation", "per_op", "weight_only_dtypes")
_DYNAMIC_KEYS = ("supported", "default", "granularity", "ops", "activation")
_OPS_KEYS = (
    "quantize",
    "float_only",
    "shared_scale",
    "quantize_outputs",
    "fixed_output",
    "per_op",
    "only_between_quantized",
    "weight_only",
    "min_reduction",
)
_FIXED_KEYS = ("scale", "zero_point")


class _Parser:
    """Walks a parsed document, raising TargetSpecError with file, key, value and allowed."""

    def __init__(self, source: str) -> None:
        self.source = source

    # -- error helpers -------------------------------------------------------------------------
    def fail(self, key: str, message: str) -> TargetSpecError:
        where = f"{key}: " if key else "top level: "
        return TargetSpecError(f"{self.source}: {where}{message}")

    def bad(self, key: str, value: Any, what: str, allowed: str) -> TargetSpecError:
        return self.fail(key, f"{value!r} is not {what}; allowed: {allowed}")

    def table(self, value: Any, key: str, allowed_keys: Iterable[str]) -> Mapping[str, Any]:
        allowed_keys = tuple(allowed_keys)
        if not isinstance(value, Mapping):
            raise self.bad(key, value, "a table", f"a table with keys {_fmt_allowed(allowed_keys)}")
        for k, v in value.items():
            if k not in allowed_keys:
                where = f"{key}.{k}" if key else str(k)
                shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
                keys = _fmt_allowed(allowed_keys)
                raise self.fail(where, f"unknown key {k!r} (value {shown}); allowed keys: {keys}")
        return value

    def required(self, tbl: Mapping[str, Any], k: str, prefix: str, expected: str) -> Any:
        if k not in tbl:
            where = f"{prefix}.{k}" if prefix else k
            raise self.fail(where, f"required key is missing; expected {expected}")
        return tbl[k]

    # -- scalar helpers ------------------------------------------------------------------------
    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.bad(key, value, "a boolean", "true, false")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.bad(key, value, "a string", "any text in quotes")
        return value

    def choice(self, value: Any, key: str, choices: Iterable[str], what: str) -> str:
        choices = tuple(choices)
        if not isinstance(value, str) or value not in choices:
            raise self.bad(key, value, what, _fmt_allowed(choices))
        return value

    def positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.bad(key, value, "a positive integer", "1, 2, 3, …")
        return value

    def array(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.bad(key, value, "an array", "[…] of values")
        return value

    def dtype(self, value: Any, key: str) -> str:
        try:
            if not isinstance(value, str):
                raise ValueError
            return canonical_name(value)
        except ValueError:
            formats = _fmt_allowed(_all_format_names())
            raise self.bad(key, value, "a number format", formats) from None

    def op_kind(self, value: Any, key: str) -> OpKind:
        try:
            return OpKind(value)
        except ValueError:
            raise self.bad(
                key, value, "an op kind", _fmt_allowed(k.value for k in OpKind)
            ) from None

    def op_kinds(self, value: Any, key: str) -> frozenset[OpKind]:
        items = self.array(value, key)
        kinds: list[OpKind] = []
        for i, v in enumerate(items):
            kind = self.op_kind(v, f"{key}[{i}]")
            if kind in kinds:
                raise self.fail(f"{key}[{i}]", f"{v!r} is listed twice; list each op kind once")
            kinds.append(kind)
        return frozenset(kinds)

    # -- sections ------------------------------------------------------------------------------
    def target(self, data: Mapping[str, Any]) -> TargetSpec:
        data = self.table(data, "", _TOP_KEYS)
        name = self.required(data, "name", "", "a target name such as 'generic'")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.bad(
                "name",
                name,
                "a valid target name",
                "lower-case letters, digits, '_', '-', '.', starting with a letter or digit",
            )
        known = _fmt_allowed(ARTIFACT_KINDS)
        artifact = self.required(data, "artifact", "", f"a format name such as {known}")
        if not isinstance(artifact, str) or not _NAME_RE.match(artifact):
            raise self.bad(
                "artifact",
                artifact,
                "an artifact kind",
                f"a lower-case format name such as {known}",
            )
        for k in _REQUIRED_TOP:
            self.required(data, k, "", "a table" if k not in ("name", "artifact") else "a value")
        description = self.string(data.get("description", ""), "description")
        simulation_only = self.boolean(data.get("simulation_only", False), "simulation_only")
        requires = self.requires(data.get("requires", {}))
        weight = self.template(data["weight"], "weight")
        activation = self.template(data["activation"], "activation")
        bias_tbl = self.table(data.get("bias", {}), "bias", ("mode",))
        bias = BiasRule(
            self.choice(bias_tbl.get("mode", "int32"), "bias.mode", BIAS_MODES, "a bias mode")
        )
        ops = self.ops(data["ops"])
        dynamic = self.dynamic(data.get("dynamic", {}), ops)
        allowed = self.allowed(data.get("allowed", {}))
        fusions = self.fusions(data.get("fusions", []), ops)
        backends = tuple(self.names(data.get("backends", []), "backends", "a backend name"))
        spec = TargetSpec(
            name=name,
            artifact=artifact,
            weight=weight,
            activation=activation,
            bias=bias,
            ops=ops,
            description=description,
            simulation_only=simulation_only,
            requires=requires,
            dynamic=dynamic,
            allowed=allowed,
            fusions=fusions,
            backends=backends,
            source=self.source,
        )
        self.check_defaults_allowed(spec)
        return spec

    def names(self, value: Any, key: str, what: str) -> list[str]:
        items = self.array(value, key)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not _NAME_RE.match(item):
                raise self.bad(
                    f"{key}[{i}]", item, what, "lower-case letters, digits, '_', '-', '.'"
                )
        return items

    def requires(self, value: Any) -> Requirements:
        tbl = self.table(value, "requires", _REQUIRES_KEYS)

        def names(k: str, rx: re.Pattern[str], what: str, allowed: str) -> tuple[str, ...]:
            items = self.array(tbl.get(k, []), f"requires.{k}")
            for i, v in enumerate(items):
                if not isinstance(v, str) or not rx.match(v):
                    raise self.bad(f"requires.{k}[{i}]", v, what, allowed)
            return tuple(items)

        flag_help = "lower-case cpuinfo flag names such as avx2, avx512_vnni, asimddp"
        return Requirements(
            cpu_flags=names("cpu_flags", _FLAG_RE, "a CPU flag", flag_help),
            cpu_flags_any=names("cpu_flags_any", _FLAG_RE, "a CPU flag", flag_help),
            modules=names(
                "modules",
                _MODULE_RE,
                "a module name",
                "dotted Python module names such as onnxruntime, tflite_runtime",
            ),
            gpu=self.boolean(tbl.get("gpu", False), "requires.gpu"),
        )

    def template_fields(
        self,
        value: Any,
        key: str,
        partial: bool = False,
        keys: tuple[str, ...] = _TEMPLATE_KEYS,
    ) -> dict[str, Any]:
        """Spec fields of an inline table, each checked on its own."""
        tbl = self.table(value, key, keys)
        out: dict[str, Any] = {}
        if not partial:
            formats = _fmt_allowed(_all_format_names())
            self.required(tbl, "dtype", key, f"a number format: {formats}")
        if "dtype" in tbl:
            out["dtype"] = self.dtype(tbl["dtype"], f"{key}.dtype")
        for k in ("symmetric", "narrow_range"):
            if k in tbl:
                out[k] = self.boolean(tbl[k], f"{key}.{k}")
        if "granularity" in tbl:
            out["granularity"] = self.choice(
                tbl["granularity"], f"{key}.granularity", _STATIC_GRANULARITIES, "a granularity"
            )
        if "group_size" in tbl:
            out["group_size"] = self.positive_int(tbl["group_size"], f"{key}.group_size")
        return out

    def check_spec(self, d: Mapping[str, Any], key: str, dynamic: bool = False) -> None:
        """The fields must also make sense together (e.g. fp8 cannot be asymmetric)."""
        try:
            QuantSpec(
                **{
                    **d,
                    "axis": 0 if d.get("granularity") in ("per_channel", "per_group") else None,
                    "dynamic": dynamic,
                }
            )
        except SpecError as exc:
            raise self.fail(key, f"inconsistent spec {dict(d)!r}: {exc}") from None

    def template(self, value: Any, key: str) -> SpecTemplate:
        d = self.template_fields(value, key)
        tpl = SpecTemplate(**d)
        self.check_spec(tpl.to_dict(), key)
        return tpl

    def dynamic(self, value: Any, ops: OpRules) -> DynamicRule:
        tbl = self.table(value, "dynamic", _DYNAMIC_KEYS)
        supported = self.boolean(tbl.get("supported", False), "dynamic.supported")
        default = self.boolean(tbl.get("default", False), "dynamic.default")
        if default and not supported:
            raise self.bad(
                "dynamic.default",
                default,
                "possible while dynamic.supported is false",
                "false (or set dynamic.supported = true)",
            )
        gran = self.choice(
            tbl.get("granularity", "per_tensor"),
            "dynamic.granularity",
            _DYNAMIC_GRANULARITIES,
            "a dynamic granularity",
        )
        if "ops" in tbl:
            dyn_ops = self.op_kinds(tbl["ops"], "dynamic.ops")
            for i, kind in enumerate(self.array(tbl["ops"], "dynamic.ops")):
                if OpKind(kind) not in ops.quantize:
                    raise self.bad(
                        f"dynamic.ops[{i}]",
                        kind,
                        "in ops.quantize",
                        _fmt_allowed(sorted(k.value for k in ops.quantize)),
                    )
        else:
            dyn_ops = frozenset(ops.quantize & WEIGHTED)
        act = self.template_fields(
            tbl.get("activation", {}),
            "dynamic.activation",
            partial=True,
            keys=("dtype", "symmetric", "narrow_range"),
        )
        return DynamicRule(supported, default, gran, dyn_ops, act)

    def allowed_set(self, value: Any, key: str, weights: bool) -> AllowedSet:
        keys = _ALLOWED_SET_KEYS if weights else _ALLOWED_SET_KEYS[:-1]
        tbl = self.table(value, key, keys)
        out: dict[str, Any] = {}
        for k, v in tbl.items():
            sub = f"{key}.{k}"
            if v == "*":
                continue
            items = self.array(v, sub)
            if not items:
                raise self.fail(sub, 'an empty list allows nothing; write "*" to allow anything')
            vals: list[Any] = []
            for i, item in enumerate(items):
                where = f"{sub}[{i}]"
                if k == "dtypes":
                    vals.append(self.dtype(item, where))
                elif k == "granularities":
                    vals.append(
                        self.choice(item, where, [g.value for g in Granularity], "a granularity")
                    )
                elif k == "group_sizes":
                    vals.append(self.positive_int(item, where))
                else:
                    vals.append(self.boolean(item, where))
            out[k] = tuple(dict.fromkeys(vals))
        return AllowedSet(**out)

    def allowed(self, value: Any) -> Allowed:
        tbl = self.table(value, "allowed", _ALLOWED_KEYS)
        weight = self.allowed_set(tbl.get("weight", {}), "allowed.weight", True)
        act = self.allowed_set(tbl.get("activation", {}), "allowed.activation", False)
        per_op: dict[OpKind, tuple[AllowedSet, AllowedSet]] = {}
        per_op_tbl = tbl.get("per_op", {})
        if not isinstance(per_op_tbl, Mapping):
            raise self.bad(
                "allowed.per_op", per_op_tbl, "a table", "op kind = { weight, activation }"
            )
        for op_name, entry in per_op_tbl.items():
            kind = self.op_kind(op_name, "allowed.per_op")
            key = f"allowed.per_op.{op_name}"
            entry = self.table(entry, key, ("weight", "activation"))
            per_op[kind] = (
                self.allowed_set(entry.get("weight", {}), f"{key}.weight", True),
                self.allowed_set(entry.get("activation", {}), f"{key}.activation", False),
            )
        wod = self.array(tbl.get("weight_only_dtypes", []), "allowed.weight_only_dtypes")
        wo = tuple(self.dtype(v, f"allowed.weight_only_dtypes[{i}]") for i, v in enumerate(wod))
        return Allowed(weight, act, per_op, wo)

    def ops(self, value: Any) -> OpRules:
        tbl = self.table(value, "ops", _OPS_KEYS)
        quantize = self.op_kinds(
            self.required(tbl, "quantize", "ops", "an array of op kinds"), "ops.quantize"
        )
        float_only = self.op_kinds(tbl.get("float_only", []), "ops.float_only")
        shared = self.op_kinds(tbl.get("shared_scale", []), "ops.shared_scale")
        for key, kinds in (("ops.quantize", quantize), ("ops.shared_scale", shared)):
            both = kinds & float_only
            if both:
                names = sorted(k.value for k in both)
                raise self.fail(
                    "ops.float_only",
                    f"{names[0]!r} is also in {key}; an op kind cannot be both "
                    f"(float-only kinds: {_fmt_allowed(sorted(k.value for k in float_only))})",
                )
        policy = self.choice(
            tbl.get("quantize_outputs", "always"),
            "ops.quantize_outputs",
            OUTPUT_POLICIES,
            "an output policy",
        )
        fixed: dict[OpKind, FixedOutput] = {}
        fixed_tbl = tbl.get("fixed_output", {})
        if not isinstance(fixed_tbl, Mapping):
            raise self.bad(
                "ops.fixed_output", fixed_tbl, "a table", "op kind = { scale, zero_point }"
            )
        for op_name, entry in fixed_tbl.items():
            kind = self.op_kind(op_name, "ops.fixed_output")
            key = f"ops.fixed_output.{op_name}"
            if kind not in quantize:
                raise self.bad(
                    key,
                    op_name,
                    "in ops.quantize (only quantized ops have outputs to fix)",
                    _fmt_allowed(sorted(k.value for k in quantize)),
                )
            if kind in shared:
                raise self.fail(
                    key,
                    f"{op_name!r} is in ops.shared_scale; its output scale "
                    "cannot be both fixed and shared with its input",
                )
            entry = self.table(entry, key, _FIXED_KEYS)
            scale = self.scale(
                self.required(entry, "scale", key, "a positive number"), f"{key}.scale"
            )
            zp = self.required(entry, "zero_point", key, "an integer")
            if isinstance(zp, bool) or not isinstance(zp, int):
                raise self.bad(f"{key}.zero_point", zp, "an integer", "e.g. -128, 0, 127")
            fixed[kind] = FixedOutput(scale, zp)
        per_op: dict[OpKind, dict[str, dict[str, Any]]] = {}
        per_op_tbl = tbl.get("per_op", {})
        if not isinstance(per_op_tbl, Mapping):
            raise self.bad("ops.per_op", per_op_tbl, "a table", "op kind = { weight, activation }")
        for op_name, entry in per_op_tbl.items():
            kind = self.op_kind(op_name, "ops.per_op")
            key = f"ops.per_op.{op_name}"
            entry = self.table(entry, key, ("weight", "activation"))
            per_op[kind] = {
                role: self.template_fields(entry[role], f"{key}.{role}", partial=True)
                for role in ("weight", "activation")
                if role in entry
            }
        between = self.op_kinds(tbl.get("only_between_quantized", []), "ops.only_between_quantized")
        if not between <= quantize:
            extra = sorted(k.value for k in between - quantize)
            raise self.bad(
                "ops.only_between_quantized",
                extra[0],
                "in ops.quantize",
                _fmt_allowed(sorted(k.value for k in quantize)),
            )
        weight_only = self.weight_only_kinds(tbl.get("weight_only", []), quantize, float_only)
        min_reduction = tbl.get("min_reduction", 0)
        if (
            isinstance(min_reduction, bool)
            or not isinstance(min_reduction, int)
            or min_reduction < 0
        ):
            raise self.bad(
                "ops.min_reduction", min_reduction, "a non-negative integer", "e.g. 0, 16, 32"
            )
        return OpRules(
            quantize, float_only, shared, policy, fixed, per_op, between, weight_only, min_reduction
        )

    def weight_only_kinds(
        self, value: Any, quantize: frozenset[OpKind], float_only: frozenset[OpKind]
    ) -> frozenset[OpKind]:
        kinds = self.op_kinds(value, "ops.weight_only")
        weighted = _fmt_allowed(sorted(k.value for k in WEIGHTED))
        for i, name in enumerate(self.array(value, "ops.weight_only")):
            kind = OpKind(name)
            where = f"ops.weight_only[{i}]"
            if kind not in WEIGHTED:
                raise self.bad(where, name, "an op kind with a constant weight", weighted)
            for key, other, why in (
                ("ops.quantize", quantize, "which already quantizes its weight"),
                ("ops.float_only", float_only, "which quantizes nothing on its behalf"),
            ):
                if kind in other:
                    raise self.fail(
                        where,
                        f"{name!r} is also in {key} ({why}); an op kind cannot be both: "
                        f"remove it from one of the lists",
                    )
        return kinds

    def scale(self, value: Any, key: str) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                num = float(Fraction(value.replace(" ", "")))
            elif isinstance(value, (int, float)):
                num = float(value)
            else:
                raise ValueError
            if not (num > 0 and num != float("inf")):
                raise ValueError
        except (ValueError, ZeroDivisionError):
            raise self.bad(
                key,
                value,
                "a positive scale",
                'a positive number or a fraction string such as "1/256"',
            ) from None
        return num

    def fusions(self, value: Any, ops: OpRules) -> tuple[tuple[OpKind, ...], ...]:
        chains: list[tuple[OpKind, ...]] = []
        for i, chain in enumerate(self.array(value, "fusions")):
            key = f"fusions[{i}]"
            items = self.array(chain, key)
            if len(items) < 2:
                raise self.bad(key, chain, "a chain", 'two or more op kinds, e.g. ["conv", "relu"]')
            kinds = tuple(self.op_kind(v, f"{key}[{j}]") for j, v in enumerate(items))
            if kinds[0] not in ops.quantize:
                raise self.bad(
                    f"{key}[0]",
                    items[0],
                    "a quantized op kind (a fused chain starts with an op in ops.quantize)",
                    _fmt_allowed(sorted(k.value for k in ops.quantize)),
                )
            for j, kind in enumerate(kinds):
                if kind in ops.float_only:
                    raise self.fail(
                        f"{key}[{j}]",
                        f"{items[j]!r} is float-only and cannot be part "
                        "of a quantized fusion; remove it from ops.float_only or from "
                        "the chain",
                    )
            if kinds in chains:
                raise self.fail(key, f"{list(items)!r} is listed twice")
            chains.append(kinds)
        return tuple(chains)

    def check_defaults_allowed(self, spec: TargetSpec) -> None:
        """The target's own defaults must be consistent and pass its own ``allowed`` lists."""
        kinds = set(spec.ops.quantize) | set(spec.ops.per_op) | set(spec.ops.weight_only)
        for kind in sorted(kinds, key=lambda k: k.value):
            w_allowed, a_allowed = spec.allowed.for_op(kind)
            per_op = spec.ops.per_op.get(kind, {})
            checks = [("weight", spec.weight_template(kind), w_allowed, False)]
            if kind not in spec.ops.weight_only:  # a weight-only op has no quantized activation
                checks.append(("activation", spec.activation_template(kind), a_allowed, False))
            if spec.dynamic.supported and kind in spec.dynamic.ops:
                checks.append(("dynamic.activation", spec.dynamic_template(kind), a_allowed, True))
            for role, d, allowed, dynamic in checks:
                key = f"ops.per_op.{kind.value}.{role}" if role in per_op else role
                self.check_spec(d, key, dynamic=dynamic)
                axis = 0 if d.get("granularity") in ("per_channel", "per_group") else None
                qs = QuantSpec(**d, axis=axis, dynamic=dynamic)
                for fld, val, ok in allowed.violations(qs):
                    raise self.fail(
                        f"{key}.{fld}",
                        f"{val!r} (the default {role} {fld} for op kind {kind.value}) is not in "
                        f"the target's own allowed list; allowed: {_fmt_allowed(ok)}",
                    )
