"""Send pipeline events to observer plugins (``quantfw_on_stage``, ``quantfw_on_progress``).

Observers must never break a quantization: each observer is called on its own, and one that
raises is logged as a warning with its traceback (once per plugin and hook; later failures of the
same observer are logged at debug level) while the remaining observers still get the event.
``KeyboardInterrupt`` and other non-``Exception`` errors propagate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from ..api.components import Stage
from ..api.hookspecs import StageEvent, StagePhase
from .manager import QuantfwPluginManager
from .reports import describe_plugin
from .state import get_plugin_manager

__all__ = ["emit_stage", "emit_progress", "stage_events"]

logger = logging.getLogger("quantfw.plugins")


def _notify(pm: QuantfwPluginManager, hook_name: str, args: dict[str, Any]) -> None:
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
        key = (impl.plugin_name, hook_name)
        if impl.wrapper or impl.hookwrapper:
            if key not in pm.observer_failures:
                pm.observer_failures.add(key)
                logger.warning(
                    "quantfw %s implements %s as a wrapper; event hooks must be plain functions, "
                    "so it is skipped",
                    describe_plugin(impl.plugin_name, *pm.origin(impl.plugin_name)),
                    hook_name,
                )
            continue
        try:
            impl.function(*(args[a] for a in impl.argnames))
        except Exception:
            first = key not in pm.observer_failures
            pm.observer_failures.add(key)
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "quantfw %s raised in %s; the event is ignored%s",
                describe_plugin(impl.plugin_name, *pm.origin(impl.plugin_name)),
                hook_name,
                "" if first else " (again)",
                exc_info=True,
            )


def emit_stage(
    stage: Stage | str,
    phase: StagePhase,
    algorithm: str,
    *,
    elapsed: float | None = None,
    context: Any = None,
    pm: QuantfwPluginManager | None = None,
) -> StageEvent:
    """Tell ``quantfw_on_stage`` observers that a stage started or finished.

    :param pm: the manager whose observers to call (default: :func:`get_plugin_manager`).
    :return: the event sent.
    """
    event = StageEvent(stage, phase, algorithm, elapsed=elapsed, context=context)
    _notify(pm or get_plugin_manager(), "quantfw_on_stage", {"event": event})
    return event


def emit_progress(
    task: str, done: int, total: int | None = None, *, pm: QuantfwPluginManager | None = None
) -> None:
    """Tell ``quantfw_on_progress`` observers that ``task`` has ``done`` of ``total`` units done."""
    args = {"task": task, "done": int(done), "total": None if total is None else int(total)}
    _notify(pm or get_plugin_manager(), "quantfw_on_progress", args)


@contextlib.contextmanager
def stage_events(
    stage: Stage | str,
    algorithm: str,
    *,
    context: Any = None,
    pm: QuantfwPluginManager | None = None,
) -> Iterator[None]:
    """Emit ``"started"`` on entry and ``"finished"`` (with the elapsed seconds) on a normal exit.

    If the block raises, no ``"finished"`` event is sent and the exception propagates.
    """
    pm = pm or get_plugin_manager()
    emit_stage(stage, "started", algorithm, context=context, pm=pm)
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    emit_stage(stage, "finished", algorithm, elapsed=elapsed, context=context, pm=pm)
