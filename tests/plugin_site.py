"""Fixtures for tests that install fake plugin distributions: a clean plugin state around each
test, and a folder on ``sys.path`` (here and in subprocesses) to install distributions into.
``tests/conftest.py`` loads this module as a pytest plugin; a test module asks for a clean
state with ``pytestmark = pytest.mark.usefixtures("clean_plugin_state")``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantfw.plugins import DISABLE_ENV_VAR, reset_plugin_manager


@pytest.fixture
def clean_plugin_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No plugin blocked by the environment, and a fresh plugin manager before and after."""
    monkeypatch.delenv(DISABLE_ENV_VAR, raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` (here and in subprocesses) to install fake distributions into;
    the modules imported from it are forgotten after the test."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    importlib.invalidate_caches()
    yield root
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]
