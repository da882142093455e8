"""quantfw's plugin system: loading, blocking, the component registry, and observer events.

Typical use::

    from quantfw.plugins import get_registry

    registry = get_registry()            # loads plugins on first use
    target = registry.target("x86-vnni")
    frontend = registry.frontend_for(model)

Built-ins (:data:`DEFAULT_PLUGINS`) and third-party plugins (entry-point group ``quantfw``) are
registered through the same hooks (:mod:`quantfw.api.hookspecs`).  ``$QUANTFW_DISABLE_PLUGINS`` (and
the ``disabled=`` argument) stop named plugins from being imported at all.  A plugin that fails
to import or register is logged and listed as failed; the others keep working.
"""

from .build import REGISTRATION_HOOKS, build_registry, coerce_registration
from .conformance import check_plugin, plugin_name, protocol_problems
from .conversions import ConversionError
from .errors import (
    PluginError,
    UnavailableComponentError,
    UnknownComponentError,
)
from .events import emit_progress, emit_stage, stage_events
from .manager import (
    DEFAULT_PLUGINS,
    DISABLE_ENV_VAR,
    ENTRY_POINT_GROUP,
    QuantfwPluginManager,
    hook_names,
    make_plugin_manager,
)
from .registry import DuplicateComponentError, Registry
from .reports import KINDS, ComponentStatus, Conflict, PluginReport, canonical_name
from .state import (
    current_registry,
    get_plugin_manager,
    get_registry,
    reset_plugin_manager,
    use_plugin_manager,
    using_registry,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "REGISTRATION_HOOKS",
    "ComponentStatus",
    "Conflict",
    "ConversionError",
    "DuplicateComponentError",
    "PluginError",
    "PluginReport",
    "QuantfwPluginManager",
    "Registry",
    "UnavailableComponentError",
    "UnknownComponentError",
    "build_registry",
    "canonical_name",
    "check_plugin",
    "coerce_registration",
    "current_registry",
    "emit_progress",
    "emit_stage",
    "get_plugin_manager",
    "get_registry",
    "hook_names",
    "make_plugin_manager",
    "plugin_name",
    "protocol_problems",
    "reset_plugin_manager",
    "stage_events",
    "use_plugin_manager",
    "using_registry",
]
