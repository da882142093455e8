"""Which of quantfw's own plugins a model file or target needs, and what to tell a user who lacks it.

When no frontend reads a model file, or a target name is unknown, the plugin that would serve it
is usually not installed, or installed but disabled.  These tables (well-known model suffixes and
target names → the quantfw extra whose plugin handles them) let the message say which, and how to
fix it: ``pip install "quantfw[onnx]"``, or how to re-enable a disabled plugin.  They serve
messages only; plugins still say for themselves what they read.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..api.formats import FORMAT_EXTRAS
from .manager import DISABLE_ENV_VAR
from .reports import PluginReport, canonical_name

if TYPE_CHECKING:  # pragma: no cover
    from .manager import QuantfwPluginManager

__all__ = ["SUFFIX_FORMATS", "TARGET_EXTRAS", "extra_for_model", "model_hint", "plugin_hint"]

#: Well-known model file suffixes → the model format they hold (see ``FORMAT_EXTRAS``).
SUFFIX_FORMATS: dict[str, str] = {
    ".onnx": "onnx",
    ".pt": "torch",
    ".pt2": "torch",
    ".pth": "torch",
    ".keras": "keras",
    ".h5": "keras",
    ".hdf5": "keras",
    ".tflite": "tflite",
}

#: Targets quantfw's own plugins define → the extra that brings them.
TARGET_EXTRAS: dict[str, str] = {"x86": "onnx", "x86-vnni": "onnx", "x86-avx2": "onnx"}

_EXTRA_NAMES = {"onnx": "ONNX", "torch": "PyTorch", "tf": "TensorFlow", "edge": "TFLite / Edge TPU"}


def extra_for_model(model: object) -> str | None:
    """The extra whose plugin reads ``model`` (a path), from its suffix or, for a folder, a
    TensorFlow SavedModel's ``saved_model.pb``; ``None`` when not a well-known kind."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model)
    if path.is_dir():
        return FORMAT_EXTRAS["savedmodel"] if (path / "saved_model.pb").is_file() else None
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    return FORMAT_EXTRAS.get(fmt) if fmt else None


def _extra_brings_nothing(extra: str) -> bool:
    """Whether the installed quantfw's extra ``extra`` names no package (its plugin has not
    landed); ``False`` when that cannot be told (quantfw run from a source tree)."""
    try:
        requires = importlib.metadata.requires("quantfw") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    marker = {f'extra == "{extra}"', f"extra == '{extra}'"}
    return not any(any(m in r for m in marker) for r in requires)


def _enable_hint(pm: QuantfwPluginManager | None, report: PluginReport) -> str:
    """How to undo what disabled ``report``'s plugin."""
    if pm is not None:
        keys = [report.name, report.name.rpartition(".")[2], report.distribution]
        for key in filter(None, keys):
            source = pm.disabled.get(canonical_name(key))
            if source == DISABLE_ENV_VAR:
                return f"remove {canonical_name(key)!r} from {DISABLE_ENV_VAR} to use it"
            if source:
                return f"run without --disable-plugin {key} to use it"
        if "*" in pm.disabled:
            return f"unset {DISABLE_ENV_VAR} (or list only the plugins to disable) to use it"
    return "re-enable it to use it"


def plugin_hint(
    extra: str,
    what: str,
    plugins: list[PluginReport],
    pm: QuantfwPluginManager | None = None,
) -> str:
    """Why the plugin of ``extra`` does not serve ``what`` (``".onnx files"``) and what to do:
    it is disabled (and how to re-enable it), failed to load (and why), or is not installed
    (``pip install "quantfw[extra]"``).  ``""`` when it is loaded: then its own components
    explain themselves."""
    dist = f"quantfw-{extra}"
    found = [
        r
        for r in plugins
        if canonical_name(r.name) == extra or canonical_name(r.distribution) == dist
    ]
    report = next((r for r in found if r.status != "loaded"), None)
    if found and report is None:
        return ""
    plugin = f"the {extra!r} plugin ({dist})"
    if report is not None and report.status == "blocked":
        return f"{what} need {plugin}, which is {report.reason}: {_enable_hint(pm, report)}"
    if report is not None:
        return f"{what} need {plugin}, which failed to load: {report.reason}"
    kind = _EXTRA_NAMES.get(extra, extra)
    if _extra_brings_nothing(extra):
        return (
            f"{what} need {plugin}, which is not installed; this quantfw release has no "
            f"{kind} plugin yet (the {extra!r} extra is empty)"
        )
    return f'{what} need {plugin}, which is not installed: pip install "quantfw[{extra}]"'


def model_hint(
    model: object, plugins: list[PluginReport], pm: QuantfwPluginManager | None = None
) -> str:
    """:func:`plugin_hint` for a model file of a well-known kind, else ``""``."""
    extra = extra_for_model(model)
    if extra is None:
        return ""
    path = Path(model)  # type: ignore[arg-type]  # a path: extra_for_model checked
    what = "TensorFlow SavedModel folders" if path.is_dir() else f"{path.suffix.lower()} files"
    hint = plugin_hint(extra, what, plugins, pm)
    if extra == "torch":  # its frontend reads no files: say so whether it is installed or not
        note = (
            "the 'torch' plugin quantizes torch.nn.Module objects from Python, not files: build "
            "the module, load its weights (quantfw_torch.load_state_dict) and call "
            "quantfw.quantize(module, ...)"
        )
        hint = f"{hint}; {note}" if hint else f"{what}: {note}"
    return hint
