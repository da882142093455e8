"""Progress reporting for one pipeline run: plugin event hooks plus optional progress bars."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .api.components import Stage

if TYPE_CHECKING:  # pragma: no cover
    from .plugins.registry import Registry

__all__ = ["Reporter", "Timer"]


@dataclass
class Timer:
    """Seconds a ``with reporter.stage(...)`` block took (set when it ends)."""

    elapsed: float = 0.0


class Reporter:
    """Sends ``quantfw_on_stage`` / ``quantfw_on_progress`` events to the registry's plugin
    manager and, when ``enabled``, draws tqdm progress bars on stderr."""

    def __init__(self, registry: Registry, enabled: bool = False) -> None:
        self.pm = registry.plugin_manager
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def progress(self, task: str, done: int, total: int | None) -> None:
        if self.pm is not None:
            from .plugins.events import emit_progress

            emit_progress(task, done, total, pm=self.pm)
        if self.enabled:
            bar = self._bars.get(task)
            if bar is None:
                from tqdm import tqdm

                bar = self._bars[task] = tqdm(desc=task, total=total, file=sys.stderr, leave=False)
            bar.update(done - bar.n)

    @contextmanager
    def stage(self, stage: str, algorithm: str, context: Any) -> Iterator[Timer]:
        timer = Timer()
        is_stage = stage in {s.value for s in Stage}
        emit = None
        if self.pm is not None and is_stage:
            from .plugins.events import emit_stage as emit

            emit(stage, "started", algorithm, context=context, pm=self.pm)
        start = time.perf_counter()
        try:
            yield timer
        finally:
            timer.elapsed = time.perf_counter() - start
            self.close()
        if emit is not None:
            emit(stage, "finished", algorithm, elapsed=timer.elapsed, context=context, pm=self.pm)

    def close(self) -> None:
        """Close (and clear) every open progress bar."""
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
