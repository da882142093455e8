"""The vocabulary of a target spec TOML file: the keys each table accepts and the fixed values.

``docs/targets.md`` documents every key listed in :data:`TABLES`; ``tests/test_docs.py`` checks
the two against each other, so that neither can change alone.
"""

from __future__ import annotations

import re

#: Well-known values of ``artifact`` (any lower-case name matching the same rule as target names
#: is accepted, so that third-party backends can name their own formats).
ARTIFACT_KINDS = ("none", "onnx", "tflite", "engine")
#: Values of ``bias.mode``.
BIAS_MODES = ("int32", "float", "none")
#: Values of ``ops.quantize_outputs``.
OUTPUT_POLICIES = ("always", "when_consumed")
#: Granularities a static template may use (per_token is dynamic only).
STATIC_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
#: Values of ``dynamic.granularity``.
DYNAMIC_GRANULARITIES = ("per_tensor", "per_token")

#: Target names and artifact kinds.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
#: Entries of ``requires.modules``.
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: Entries of ``requires.cpu_flags`` and ``requires.cpu_flags_any``.
FLAG_RE = re.compile(r"^[a-z0-9_.]+$")

TOP_KEYS = (
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
REQUIRED_TOP_KEYS = ("name", "artifact", "weight", "activation", "ops")
REQUIRES_KEYS = ("cpu_flags", "cpu_flags_any", "modules", "gpu")
TEMPLATE_KEYS = (
    "dtype",
    "symmetric",
    "narrow_range",
    "granularity",
    "group_size",
    "pair_limit",
)
BIAS_KEYS = ("mode",)
DYNAMIC_KEYS = ("supported", "default", "granularity", "ops", "activation")
DYNAMIC_ACTIVATION_KEYS = ("dtype", "symmetric", "narrow_range")
ALLOWED_KEYS = (
    "weight",
    "activation",
    "per_op",
    "weight_only_dtypes",
    "weight_only_granularities",
    "narrow_activations",
)
#: How activation grids narrower than their 8-bit storage are deployed (``allowed.narrow_activations``).
NARROW_ACTIVATIONS = ("own_type", "clip_8bit")
ALLOWED_SET_KEYS = ("dtypes", "granularities", "symmetric", "narrow_range", "group_sizes")
#: An activation's allowed set has no group sizes (activations are never per-group).
ALLOWED_ACTIVATION_SET_KEYS = ALLOWED_SET_KEYS[:-1]
PER_OP_KEYS = ("weight", "activation")
OPS_KEYS = (
    "quantize",
    "float_only",
    "shared_scale",
    "quantize_outputs",
    "fixed_output",
    "per_op",
    "only_between_quantized",
    "weight_only",
    "min_reduction",
    "float_outputs",
)
FIXED_KEYS = ("scale", "zero_point")

#: Every table of the format by dotted path (``""``: the top level; ``<op kind>``: any op kind)
#: and the keys it accepts.
TABLES: dict[str, tuple[str, ...]] = {
    "": TOP_KEYS,
    "requires": REQUIRES_KEYS,
    "weight": TEMPLATE_KEYS,
    "activation": TEMPLATE_KEYS,
    "bias": BIAS_KEYS,
    "dynamic": DYNAMIC_KEYS,
    "dynamic.activation": DYNAMIC_ACTIVATION_KEYS,
    "allowed": ALLOWED_KEYS,
    "allowed.weight": ALLOWED_SET_KEYS,
    "allowed.activation": ALLOWED_ACTIVATION_SET_KEYS,
    "allowed.per_op.<op kind>": PER_OP_KEYS,
    "allowed.per_op.<op kind>.weight": ALLOWED_SET_KEYS,
    "allowed.per_op.<op kind>.activation": ALLOWED_ACTIVATION_SET_KEYS,
    "ops": OPS_KEYS,
    "ops.fixed_output.<op kind>": FIXED_KEYS,
    "ops.per_op.<op kind>": PER_OP_KEYS,
    "ops.per_op.<op kind>.weight": TEMPLATE_KEYS,
    "ops.per_op.<op kind>.activation": TEMPLATE_KEYS,
}
