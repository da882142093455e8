"""Target specs: what a deployment target accepts, as declarative, validated data.

A target spec is a TOML file that :func:`load_target` turns into a frozen :class:`TargetSpec`.
Backend plugins ship one file per target and register the loaded spec; the core ships
``quantfw/target/targets/generic.toml`` (see :func:`builtin_target_paths`), which carries a
commented example of every key.  ``docs/targets.md`` is the reference of every key.  Everything is
checked on load: a wrong value, a misspelt key or a missing required key raises
:class:`TargetSpecError` whose message names the file, the dotted key, the offending value and
what is allowed.
"""

from .load import builtin_target_paths, load_target
from .machine import nvidia_gpu_present, read_cpu_flags
from .reader import TargetSpecError
from .schema import ARTIFACT_KINDS, BIAS_MODES, OUTPUT_POLICIES
from .sections import (
    Allowed,
    AllowedSet,
    BiasRule,
    DynamicRule,
    FixedOutput,
    OpRules,
    Requirements,
    SpecTemplate,
)
from .spec import TargetSpec

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
